/* aarch64: the NEON kernels of _gru_math.h against the portable C, bit for bit.
 *
 * This file is compiled three times: once with the NEON kernels, once with -DGRURT_NO_NEON
 * (each defines its variant's entry points under a prefix), once as the main program:
 *
 *   CC="aarch64-linux-gnu-gcc -O3 -fno-trapping-math -fno-math-errno -Isrc/grurt"
 *   $CC -DVARIANT=neon -c tests/c/neon_harness.c -o neon.o
 *   $CC -DVARIANT=portable -DGRURT_NO_NEON -c tests/c/neon_harness.c -o portable.o
 *   $CC tests/c/neon_harness.c neon.o portable.o -lm -o neon_harness
 *   qemu-aarch64 -L /usr/aarch64-linux-gnu ./neon_harness
 *
 * (the flags are setup.py's). Checks: grurt_gemm over rows 1..7, n_in 1..13 and 50, 1..5
 * panels, with and without init, both summation orders; grurt_gates_lbr1_fast over H 1..70 on
 * inputs up to ±12 (the clamps included) and NaN. The two must agree exactly: the NEON kernels
 * perform the portable code's operations in its order, with FMAs where GCC contracts them.
 */
#pragma GCC diagnostic ignored "-Wunused-function"   /* the kernels not checked here */
#include "_gru_math.h"
#ifdef VARIANT
#define NAME2(v, f) v##_##f
#define NAME(v, f) NAME2(v, f)
void NAME(VARIANT, gemm)(int rows, int n_in, int n_panels, const float *x, int ldx, const float *packed,
                          const float *init, float *y, int ldy, int backward) {
    grurt_gemm(rows, n_in, n_panels, x, ldx, packed, init, y, ldy, backward);
}
void NAME(VARIANT, gates)(int H, const float *xp, const float *hr, float *h) {
    grurt_gates_lbr1_fast(H, xp, hr, h);
}
#else
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void gemm_fn(int, int, int, const float *, int, const float *, const float *, float *, int, int);
typedef void gates_fn(int, const float *, const float *, float *);
gemm_fn neon_gemm, portable_gemm;
gates_fn neon_gates, portable_gates;

static unsigned seed = 1;
static float uniform(float scale) {        /* in [-scale, scale) */
    seed = seed * 1103515245u + 12345u;
    return scale * ((float)(seed >> 8) / (1u << 24) * 2.0f - 1.0f);
}
static float *random_floats(size_t n, float scale) {
    float *v = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < n; ++i) v[i] = uniform(scale);
    return v;
}
static int failures = 0, cases = 0;
static void same(const char *what, const float *a, const float *b, size_t n, int p0, int p1, int p2) {
    ++cases;
    if (memcmp(a, b, n * sizeof(float)) != 0 && failures++ < 10)
        fprintf(stderr, "differ: %s (%d, %d, %d)\n", what, p0, p1, p2);
}

int main(void) {
    int n_ins[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 50};
    for (int rows = 1; rows <= 7; ++rows)
        for (size_t a = 0; a < sizeof n_ins / sizeof *n_ins; ++a)
            for (int n_panels = 1; n_panels <= 5; ++n_panels)
                for (int variant = 0; variant < 4; ++variant) {
                    int n_in = n_ins[a], ldx = n_in + 3, ldy = n_panels * GRURT_PANEL + 8;
                    int backward = variant & 1, with_init = variant >> 1;
                    float *x = random_floats((size_t)rows * ldx, 2.0f);
                    float *w = random_floats((size_t)n_panels * n_in * GRURT_PANEL, 1.0f);
                    float *init = with_init ? random_floats((size_t)n_panels * GRURT_PANEL, 1.0f) : NULL;
                    float *y0 = random_floats((size_t)rows * ldy, 1.0f), *y1 = random_floats((size_t)rows * ldy, 1.0f);
                    memcpy(y1, y0, (size_t)rows * ldy * sizeof(float));
                    neon_gemm(rows, n_in, n_panels, x, ldx, w, init, y0, ldy, backward);
                    portable_gemm(rows, n_in, n_panels, x, ldx, w, init, y1, ldy, backward);
                    same("gemm rows, n_in, panels", y0, y1, (size_t)rows * ldy, rows, n_in, n_panels);
                    free(x); free(w); free(init); free(y0); free(y1);
                }
    for (int H = 1; H <= 70; ++H) {
        int padded = (H + GRURT_UNIT_BLOCK - 1) / GRURT_UNIT_BLOCK * GRURT_UNIT_BLOCK;
        float *xp = random_floats(3 * (size_t)H + GRURT_UNIT_BLOCK, 12.0f);
        float *hr = random_floats(3 * (size_t)H + GRURT_UNIT_BLOCK, 12.0f);
        float *h0 = random_floats(padded, 1.0f), *h1 = random_floats(padded, 1.0f);
        if (H == 7) xp[2 * H + 3] = NAN;
        memcpy(h1, h0, padded * sizeof(float));
        neon_gates(H, xp, hr, h0);
        portable_gates(H, xp, hr, h1);
        same("gates H", h0, h1, H, H, 0, 0);
        if (H == 7 && !isnan(h0[3])) { fprintf(stderr, "NaN lost\n"); ++failures; }
        free(xp); free(hr); free(h0); free(h1);
    }
    printf("neon_harness: %d cases, %d differ\n", cases, failures);
    return failures != 0;
}
#endif
