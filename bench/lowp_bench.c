/* Standalone check and timing of the reduced-precision products (src/grurt/_lowp.h) against
 * the float32 ones (_gru_math.h) on the shapes of the benchmark workloads.
 *   gcc -O3 -fno-trapping-math -fno-math-errno -Isrc/grurt bench/lowp_bench.c -o /tmp/lowp_bench -lm
 *   /tmp/lowp_bench
 * Prints, per shape and kernel, the max abs error against a float64 product of the float32
 * weights, and the median time per call (calls alternate forward/backward like a GRU loop). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "_lowp.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static float frand(void) { return (float)rand() / RAND_MAX * 2.0f - 1.0f; }
static void *amalloc(size_t n) { void *p; if (posix_memalign(&p, 64, n + 64)) abort(); memset(p, 0, n + 64); return p; }

static uint16_t to_bf16(float f) { uint32_t b; memcpy(&b, &f, 4); return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16); }

/* the packers of _kernels.pyx, in C */
static float *pack_f32(const float *a, int n_out, int n_in, int np) {
    float *p = amalloc((size_t)np * n_in * 32 * 4);
    for (int o = 0; o < n_out; ++o) for (int k = 0; k < n_in; ++k)
        p[((size_t)(o / 32) * n_in + k) * 32 + o % 32] = a[(size_t)o * n_in + k];
    return p;
}
static uint16_t *pack_bf16(const float *a, int n_out, int n_in, int np) {
    int ng = (n_in + 1) / 2;
    uint16_t *p = amalloc((size_t)np * ng * 64 * 2);
    for (int o = 0; o < n_out; ++o) for (int k = 0; k < n_in; ++k)
        p[((size_t)(o / 32) * ng + k / 2) * 64 + (o % 32) * 2 + k % 2] = to_bf16(a[(size_t)o * n_in + k]);
    return p;
}
static int8_t *pack_i8(const float *a, int n_out, int n_in, int np, float *scale, int32_t *colsum) {
    int ng = (n_in + 3) / 4;
    int8_t *p = amalloc((size_t)np * ng * 128);
    for (int o = 0; o < n_out; ++o) {
        float m = 0; for (int k = 0; k < n_in; ++k) m = fmaxf(m, fabsf(a[(size_t)o * n_in + k]));
        float s = m > 0 ? m / 127 : 1; scale[o] = s; int sum = 0;
        for (int k = 0; k < n_in; ++k) {
            int q = (int)lrintf(a[(size_t)o * n_in + k] / s); sum += q;
            p[((size_t)(o / 32) * ng + k / 4) * 128 + (o % 32) * 4 + k % 4] = (int8_t)q;
        }
        colsum[o] = 128 * sum;
    }
    return p;
}

enum { F32, BF16_WIDEN, BF16_DOT, I8_WIDEN, I8_DOT, N_KERNELS };
static const char *names[] = {"f32", "bf16-widen", "bf16-dot", "i8-widen", "i8-vnni"};

typedef struct { int rows, n_in, n_out, np; float *x, *packed, *init, *y, *scale; uint16_t *pb; int8_t *pi; int32_t *colsum; void *work; } shape_t;

static void call(int kernel, shape_t *s, int backward) {
    int ld = s->np * 32;
    switch (kernel) {
    case F32: grurt_gemm(s->rows, s->n_in, s->np, s->x, s->n_in, s->packed, s->init, s->y, ld, backward); break;
    case BF16_WIDEN: grurt_gemm_bf16_widen(s->rows, s->n_in, s->np, s->x, s->n_in, s->pb, s->init, s->y, ld, backward); break;
    case BF16_DOT: grurt_gemm_bf16_dot(s->rows, s->n_in, s->np, s->x, s->n_in, s->pb, s->init, s->y, ld, backward, s->work); break;
    case I8_WIDEN: grurt_gemm_i8_widen(s->rows, s->n_in, s->np, s->x, s->n_in, s->pi, s->scale, s->init, s->y, ld, backward); break;
    case I8_DOT: grurt_gemm_i8_dot(s->rows, s->n_in, s->np, s->x, s->n_in, s->pi, s->scale, s->colsum, s->init, s->y, ld, backward, s->work); break;
    }
}

static int cmp(const void *a, const void *b) { double d = *(double *)a - *(double *)b; return d < 0 ? -1 : d > 0; }

int main(int argc, char **argv) {
    int shapes[][3] = {{1, 50, 150}, {1, 128, 384}, {16, 40, 384}, {16, 128, 384}, {1, 1024, 3072}, {16, 512, 3072},
                       {1, 400, 1200}, {3, 37, 70}, {5, 33, 96}};
    int reps = argc > 1 ? atoi(argv[1]) : 15;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; ++si) {
        shape_t s = {shapes[si][0], shapes[si][1], shapes[si][2]};
        s.np = (s.n_out + 31) / 32;
        float *a = amalloc((size_t)s.n_out * s.n_in * 4);
        float bound = 1.0f / sqrtf(s.n_in);   /* PyTorch's init */
        for (size_t i = 0; i < (size_t)s.n_out * s.n_in; ++i) a[i] = bound * frand();
        s.x = amalloc((size_t)s.rows * s.n_in * 4);
        for (int i = 0; i < s.rows * s.n_in; ++i) s.x[i] = frand();   /* a state in [-1, 1] */
        s.init = amalloc(s.np * 32 * 4);
        for (int i = 0; i < s.n_out; ++i) s.init[i] = 0.1f * frand();
        s.y = amalloc((size_t)s.rows * s.np * 32 * 4);
        s.scale = amalloc(s.np * 32 * 4); s.colsum = amalloc(s.np * 32 * 4);
        s.packed = pack_f32(a, s.n_out, s.n_in, s.np);
        s.pb = pack_bf16(a, s.n_out, s.n_in, s.np);
        s.pi = pack_i8(a, s.n_out, s.n_in, s.np, s.scale, s.colsum);
        s.work = amalloc(GRURT_LOWP_WORK_BYTES(s.n_in));
        printf("rows %2d  n_in %4d  n_out %4d  (f32 weights %7.1f KB)\n", s.rows, s.n_in, s.n_out, s.n_out * s.n_in * 4 / 1024.0);
        double err[N_KERNELS];
        for (int kern = 0; kern < N_KERNELS; ++kern) {
            double e = 0;
            for (int backward = 0; backward < 2; ++backward) {
                call(kern, &s, backward);
                for (int r = 0; r < s.rows; ++r) for (int o = 0; o < s.n_out; ++o) {
                    double ref = s.init[o];
                    for (int k = 0; k < s.n_in; ++k) ref += (double)s.x[r * s.n_in + k] * a[(size_t)o * s.n_in + k];
                    double d = fabs(ref - s.y[(size_t)r * s.np * 32 + o]);
                    e = d > e ? d : e;
                }
            }
            err[kern] = e;
        }
        /* time: batches of calls, kernels interleaved batch by batch */
        double best_ops = 1e7 / ((double)s.rows * s.n_in * s.n_out + 1);
        int calls = best_ops < 20 ? 20 : best_ops > 20000 ? 20000 : (int)best_ops;
        double t[N_KERNELS][64];
        for (int rep = 0; rep < reps; ++rep)
            for (int kern = 0; kern < N_KERNELS; ++kern) {
                double t0 = now();
                for (int c = 0; c < calls; ++c) call(kern, &s, c & 1);
                t[kern][rep] = (now() - t0) / calls;
            }
        for (int kern = 0; kern < N_KERNELS; ++kern) {
            qsort(t[kern], reps, sizeof(double), cmp);
            double med = t[kern][reps / 2];
            printf("  %-11s err %.2e  %9.3f us  %5.2fx f32  %6.1f GB/s of weights\n", names[kern], err[kern], med * 1e6,
                   t[F32][reps / 2] / med,
                   (double)s.n_out * s.n_in * (kern == F32 ? 4 : kern <= BF16_DOT ? 2 : 1) / med / 1e9);
        }
    }
    return 0;
}
