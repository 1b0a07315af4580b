/* Matrix products over reduced-precision weights: bf16 and int8 with per-row scales.
 *
 * Y = init + X · Aᵀ for X (rows, n_in) float32 and A (n_out, n_in) stored in fewer bytes per
 * weight, packed at load (_kernels.pyx) into the panels of _gru_math.h, GRURT_PANEL = 32
 * output columns each. The products of a GRU step stream their weights from L2 or L3: fewer
 * bytes per weight is what makes them faster. State, gates, activations and sums stay float32.
 *
 * Layout, both modes. Inputs are taken in groups of G consecutive k (G = 2 for bf16, 4 for
 * int8; n_in padded with zero weights to whole groups). Panel p, group q holds 128 bytes:
 * two halves of 16 32-bit lanes, lane c of half h holding A[32p + 16h + c, G·q + j] for
 * j = 0 .. G-1 from the low bits up. That is the operand order of AVX512_BF16 vdpbf16ps and
 * AVX512-VNNI vpdpbusd (each lane sums G products), and the widening path reads it too:
 *   bf16: element j = 0 is (lane << 16), j = 1 is (lane & 0xffff0000), as float32 bits;
 *   int8: element j is the arithmetic shift (lane << 8(3-j)) >> 24, converted to float.
 * int8 rows carry a float32 scale per output row (A ≈ scale · q) and, for the VNNI path, the
 * sum of each row's q times 128 (int32).
 *
 * Two ways to compute, measured in bench/lowp_bench.c:
 *   widening (portable C, auto-vectorized; every CPU): each weight becomes float32 and meets
 *     the float32 x in an FMA, x·A summed in float32 like the float32 kernels;
 *   dot (x86-64 with AVX512_BF16 / AVX512-VNNI, aarch64 with BF16 / DotProd, chosen at run
 *     time): each row of x is rounded to bf16 (bf16 mode), or quantized to int8 with one scale
 *     per row (int8 mode: xq = round(x · 127 / max|x|), stored as xq + 128 in unsigned bytes
 *     for vpdpbusd, as signed bytes for SDOT), then vdpbf16ps / BFDOT or vpdpbusd / SDOT
 *     multiply G pairs per lane per instruction. The int8 sums are exact in int32:
 *     y = init + scale · (max|x| / 127) · (Σ (xq+128)·q − 128 Σ q) on x86, Σ xq·q on aarch64.
 * Either way every row of X goes through the same arithmetic whatever the batch, so a
 * sequence's result does not depend on the batch it runs in; the two ways differ from each
 * other by the rounding of x (dot only). ``backward`` reverses the order of the groups as in
 * _gru_math.h (GRURT_K): the GRU loop alternates it from step to step.
 *
 * ``work``: scratch of at least GRURT_LOWP_WORK_BYTES(n_in) bytes, 64-byte aligned (the dot
 * path's converted rows of x).
 */
#ifndef GRURT_LOWP_H
#define GRURT_LOWP_H

#include "_gru_math.h"

#define GRURT_LOWP_TILE 16     /* rows of x converted at a time by the dot path */
#define GRURT_LOWP_ROW_BYTES(n_in) ((((size_t)(n_in) + 3) / 4 * 4 * 2 + 4 + 63) / 64 * 64)
#define GRURT_LOWP_WORK_BYTES(n_in) (GRURT_LOWP_TILE * GRURT_LOWP_ROW_BYTES(n_in))

/* which way the products go: 0 best available, 1 widening only (tests use it to check the
 * portable path on CPUs that have the dot instructions) */
static int grurt_lowp_force_widening = 0;

/* The widening kernels use 8-lane vectors, as the float32 kernels do: a wider generic
 * vector is split by GCC on AVX2, and then some of its multiply-adds may be contracted to FMAs
 * and others not, differently in the 1-row and the 4-row tiles; at the target's own width
 * every tile rounds alike, so a row's result does not depend on its batch. */
typedef uint32_t grurt_u8v __attribute__((vector_size(32), aligned(4)));
typedef int32_t grurt_i8v __attribute__((vector_size(32), aligned(4)));

#define GRURT_G(i, n_groups) (backward ? (n_groups) - 1 - (i) : (i))

/* ---- widening, portable -------------------------------------------------------------- */
/* Multiplies and adds round separately here (no FMA contraction): GCC contracts some
 * multiply-adds of a tile and not others depending on how it vectorizes the tile, and then
 * the 1-row and 4-row tiles round differently and a row's result depends on its batch. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

/* ROWS rows × one panel, bf16: the 32 columns as four 8-lane quarters. */
GRURT_INLINE void grurt_bf16_widen_tile(int ROWS, int n_in, const float *restrict x, int ldx,
                                        const uint16_t *restrict panel, const float *restrict init,
                                        float *restrict y, int ldy, int backward) {
    int n_groups = (n_in + 1) / 2, full = n_in / 2;
    grurt_v8 acc[4 * 4];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) acc[4 * r + i] = GRURT_INIT(init, 0, i);
    const grurt_u8v hi_mask = (grurt_u8v){0} + 0xffff0000u;
    for (int g = 0; g < n_groups; ++g) {
        int q = GRURT_G(g, n_groups);
        const grurt_u8v *w = (const grurt_u8v *)(panel + (size_t)q * 64);
        grurt_v8 lo0 = (grurt_v8)(w[0] << 16), hi0 = (grurt_v8)(w[0] & hi_mask);
        grurt_v8 lo1 = (grurt_v8)(w[1] << 16), hi1 = (grurt_v8)(w[1] & hi_mask);
        grurt_v8 lo2 = (grurt_v8)(w[2] << 16), hi2 = (grurt_v8)(w[2] & hi_mask);
        grurt_v8 lo3 = (grurt_v8)(w[3] << 16), hi3 = (grurt_v8)(w[3] & hi_mask);
        int odd = q < full;     /* the group's second input exists */
#pragma GCC unroll 4
        for (int r = 0; r < ROWS; ++r) {
            const float *xr = x + (size_t)r * ldx + 2 * q;
            float x0 = xr[0], x1 = odd ? xr[1] : 0.0f;
            acc[4 * r] += x0 * lo0; acc[4 * r + 1] += x0 * lo1; acc[4 * r + 2] += x0 * lo2; acc[4 * r + 3] += x0 * lo3;
            acc[4 * r] += x1 * hi0; acc[4 * r + 1] += x1 * hi1; acc[4 * r + 2] += x1 * hi2; acc[4 * r + 3] += x1 * hi3;
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) ((grurt_v8 *)(y + (size_t)r * ldy))[i] = acc[4 * r + i];
}

GRURT_HOT static void grurt_gemm_bf16_widen(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                                            const uint16_t *restrict packed, const float *restrict init,
                                            float *restrict y, int ldy, int backward) {
    size_t panel = (size_t)(n_in + 1) / 2 * 64;
    int r = 0;
    for (; r + 3 < rows; r += 4)
        for (int p = 0; p < n_panels; ++p)
            grurt_bf16_widen_tile(4, n_in, x + (size_t)r * ldx, ldx, packed + p * panel,
                                  init ? init + p * GRURT_PANEL : NULL, y + (size_t)r * ldy + p * GRURT_PANEL,
                                  ldy, backward);
    for (; r < rows; ++r)
        for (int p = 0; p < n_panels; ++p)
            grurt_bf16_widen_tile(1, n_in, x + (size_t)r * ldx, ldx, packed + p * panel,
                                  init ? init + p * GRURT_PANEL : NULL, y + (size_t)r * ldy + p * GRURT_PANEL,
                                  ldy, backward);
}

/* int8: element j of each lane, sign-extended, as float */
#define GRURT_I8_ELEMENT(v, j) \
    __builtin_convertvector((grurt_i8v)((grurt_u8v)(v) << (8 * (3 - (j)))) >> 24, grurt_v8)

GRURT_INLINE void grurt_i8_widen_tile(int ROWS, int n_in, const float *restrict x, int ldx,
                                      const int8_t *restrict panel, const float *restrict scale,
                                      const float *restrict init, float *restrict y, int ldy, int backward) {
    int n_groups = (n_in + 3) / 4, full = n_in / 4;
    grurt_v8 acc[4 * 4];
#pragma GCC unroll 16
    for (int r = 0; r < 4 * ROWS; ++r) acc[r] = (grurt_v8){0};
    for (int g = 0; g < n_groups; ++g) {
        int q = GRURT_G(g, n_groups);
        const grurt_i8v *w = (const grurt_i8v *)(panel + (size_t)q * 128);
        grurt_v8 e[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
            grurt_i8v v = w[i];
            e[0][i] = GRURT_I8_ELEMENT(v, 0);
            e[1][i] = GRURT_I8_ELEMENT(v, 1);
            e[2][i] = GRURT_I8_ELEMENT(v, 2);
            e[3][i] = GRURT_I8_ELEMENT(v, 3);
        }
        int left = q < full ? 4 : n_in - 4 * q;
#pragma GCC unroll 4
        for (int r = 0; r < ROWS; ++r) {
            const float *xr = x + (size_t)r * ldx + 4 * q;
            float xs[4] = {xr[0], left > 1 ? xr[1] : 0.0f, left > 2 ? xr[2] : 0.0f, left > 3 ? xr[3] : 0.0f};
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j)
#pragma GCC unroll 4
                for (int i = 0; i < 4; ++i) acc[4 * r + i] += xs[j] * e[j][i];
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
            ((grurt_v8 *)(y + (size_t)r * ldy))[i] = GRURT_INIT(init, 0, i) + ((const grurt_v8 *)scale)[i] * acc[4 * r + i];
}

GRURT_HOT static void grurt_gemm_i8_widen(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                                          const int8_t *restrict packed, const float *restrict scale,
                                          const float *restrict init, float *restrict y, int ldy, int backward) {
    size_t panel = (size_t)(n_in + 3) / 4 * 128;
    int r = 0;
    for (; r + 3 < rows; r += 4)
        for (int p = 0; p < n_panels; ++p)
            grurt_i8_widen_tile(4, n_in, x + (size_t)r * ldx, ldx, packed + p * panel, scale + p * GRURT_PANEL,
                                init ? init + p * GRURT_PANEL : NULL, y + (size_t)r * ldy + p * GRURT_PANEL,
                                ldy, backward);
    for (; r < rows; ++r)
        for (int p = 0; p < n_panels; ++p)
            grurt_i8_widen_tile(1, n_in, x + (size_t)r * ldx, ldx, packed + p * panel, scale + p * GRURT_PANEL,
                                init ? init + p * GRURT_PANEL : NULL, y + (size_t)r * ldy + p * GRURT_PANEL,
                                ldy, backward);
}

#pragma GCC pop_options

/* ---- dot instructions, x86-64 with AVX-512 ------------------------------------------- */
#ifdef GRURT_X86_AVX512
#define GRURT_BF16_TARGET __attribute__((target("arch=x86-64-v4,avx512bf16")))
#define GRURT_VNNI_TARGET __attribute__((target("arch=x86-64-v4,avx512vnni")))

static int grurt_has_bf16(void) {
    static int has = -1;
    if (has < 0) { __builtin_cpu_init(); has = grurt_x86_level() >= 4 && __builtin_cpu_supports("avx512bf16"); }
    return has;
}
static int grurt_has_vnni(void) {
    static int has = -1;
    if (has < 0) { __builtin_cpu_init(); has = grurt_x86_level() >= 4 && __builtin_cpu_supports("avx512vnni"); }
    return has;
}

/* rows of x → bf16 pairs, zero-padded to whole groups (round to nearest even) */
GRURT_BF16_TARGET static void grurt_rows_to_bf16(int rows, int n_in, const float *x, int ldx, uint16_t *out,
                                                 size_t row_bytes) {
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + (size_t)r * ldx;
        uint16_t *o = (uint16_t *)((char *)out + r * row_bytes);
        int k = 0;
        for (; k + 16 <= n_in; k += 16)
            _mm256_storeu_si256((__m256i *)(o + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xr + k)));
        if (k < n_in) {
            __mmask16 m = (__mmask16)((1u << (n_in - k)) - 1);
            _mm256_storeu_si256((__m256i *)(o + k), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, xr + k)));
        }
        else o[k] = 0;   /* an odd n_in's pad (the store above wrote zeros past n_in) */
    }
}

/* ROWS rows × NP panels: 2·ROWS·NP accumulators */
GRURT_INLINE GRURT_BF16_TARGET void grurt_bf16_dot_tile(int ROWS, int NP, int n_groups, const uint16_t *xb,
                                                        size_t row_bytes, const uint16_t *restrict panels,
                                                        size_t panel, const float *restrict init,
                                                        float *restrict y, int ldy, int backward) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
        for (int j = 0; j < 2 * NP; ++j)
            acc[r * 2 * NP + j] = init ? _mm512_loadu_ps(init + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < n_groups; ++i) {
        int q = GRURT_G(i, n_groups);
        __m512i w[8];
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j)
            w[j] = _mm512_load_si512((const void *)(panels + (j / 2) * panel + (size_t)q * 64 + (j % 2) * 32));
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) {
            __m512i xv = _mm512_set1_epi32(((const int32_t *)((const char *)xb + r * row_bytes))[q]);
#pragma GCC unroll 8
            for (int j = 0; j < 2 * NP; ++j)
                acc[r * 2 * NP + j] = _mm512_dpbf16_ps(acc[r * 2 * NP + j], (__m512bh)xv, (__m512bh)w[j]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j)
            _mm512_storeu_ps(y + (size_t)r * ldy + 16 * j, acc[r * 2 * NP + j]);
}

GRURT_BF16_TARGET static void grurt_gemm_bf16_dot(int rows, int n_in, int n_panels, const float *restrict x,
                                                  int ldx, const uint16_t *restrict packed,
                                                  const float *restrict init, float *restrict y, int ldy,
                                                  int backward, void *work) {
    int n_groups = (n_in + 1) / 2;
    size_t panel = (size_t)n_groups * 64, row_bytes = GRURT_LOWP_ROW_BYTES(n_in);
    uint16_t *xb = (uint16_t *)work;
    for (int r0 = 0; r0 < rows; r0 += GRURT_LOWP_TILE) {
        int tile = rows - r0 < GRURT_LOWP_TILE ? rows - r0 : GRURT_LOWP_TILE;
        grurt_rows_to_bf16(tile, n_in, x + (size_t)r0 * ldx, ldx, xb, row_bytes);
        float *yt = y + (size_t)r0 * ldy;
        int r = 0;
        for (; r + 3 < tile; r += 4)
            for (int p = 0; p < n_panels; ++p)
                grurt_bf16_dot_tile(4, 1, n_groups, (const uint16_t *)((char *)xb + r * row_bytes), row_bytes,
                                    packed + p * panel, panel, init ? init + p * GRURT_PANEL : NULL,
                                    yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        for (; r < tile; ++r) {
            const uint16_t *xr = (const uint16_t *)((char *)xb + r * row_bytes);
            int p = 0;
            /* one row: four panels per pass (eight accumulators); backward, last pass first */
            int passes = n_panels / 4;
            for (int i = 0; i < passes; ++i) {
                p = 4 * (backward ? passes - 1 - i : i);
                grurt_bf16_dot_tile(1, 4, n_groups, xr, row_bytes, packed + p * panel, panel,
                                    init ? init + p * GRURT_PANEL : NULL, yt + (size_t)r * ldy + p * GRURT_PANEL,
                                    ldy, backward);
            }
            for (p = 4 * passes; p < n_panels; ++p)
                grurt_bf16_dot_tile(1, 1, n_groups, xr, row_bytes, packed + p * panel, panel,
                                    init ? init + p * GRURT_PANEL : NULL, yt + (size_t)r * ldy + p * GRURT_PANEL,
                                    ldy, backward);
        }
    }
}

/* rows of x → unsigned bytes xq + 128, one scale max|x| / 127 per row after the bytes */
GRURT_VNNI_TARGET static void grurt_rows_to_u8(int rows, int n_in, const float *x, int ldx, uint8_t *out,
                                               size_t row_bytes) {
    int padded = (n_in + 3) / 4 * 4;
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + (size_t)r * ldx;
        uint8_t *o = out + r * row_bytes;
        __m512 m = _mm512_setzero_ps();
        int k = 0;
        for (; k + 16 <= n_in; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
        __mmask16 tail = (__mmask16)((1u << (n_in - k)) - 1);
        if (k < n_in) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, xr + k)));
        float maxabs = _mm512_reduce_max_ps(m);
        float inv = maxabs > 0.0f ? 127.0f / maxabs : 0.0f;
        __m512 vinv = _mm512_set1_ps(inv);
        __m512i bias = _mm512_set1_epi32(128);
        for (k = 0; k + 16 <= n_in; k += 16)
            _mm_storeu_si128((__m128i *)(o + k), _mm512_cvtepi32_epi8(_mm512_add_epi32(
                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), vinv)), bias)));
        if (k < n_in)
            _mm_mask_storeu_epi8(o + k, tail, _mm512_cvtepi32_epi8(_mm512_add_epi32(
                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xr + k), vinv)), bias)));
        for (k = n_in; k < padded; ++k) o[k] = 128;
        float s = maxabs / 127.0f;
        memcpy(o + padded, &s, sizeof s);
    }
}

GRURT_INLINE GRURT_VNNI_TARGET void grurt_i8_dot_tile(int ROWS, int NP, int n_groups, const uint8_t *xq,
                                                      size_t row_bytes, const int8_t *restrict panels, size_t panel,
                                                      const float *restrict scale, const int32_t *restrict colsum,
                                                      const float *restrict init, float *restrict y, int ldy,
                                                      int backward) {
    __m512i acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 2 * ROWS * NP; ++j) acc[j] = _mm512_setzero_si512();
    for (int i = 0; i < n_groups; ++i) {
        int q = GRURT_G(i, n_groups);
        __m512i w[8];
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j)
            w[j] = _mm512_load_si512((const void *)(panels + (j / 2) * panel + (size_t)q * 128 + (j % 2) * 64));
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; ++r) {
            __m512i xv = _mm512_set1_epi32(((const int32_t *)(xq + r * row_bytes))[q]);
#pragma GCC unroll 8
            for (int j = 0; j < 2 * NP; ++j)
                acc[r * 2 * NP + j] = _mm512_dpbusd_epi32(acc[r * 2 * NP + j], xv, w[j]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
        float sx;
        memcpy(&sx, xq + r * row_bytes + 4 * n_groups, sizeof sx);
#pragma GCC unroll 8
        for (int j = 0; j < 2 * NP; ++j) {
            __m512 s = _mm512_mul_ps(_mm512_loadu_ps(scale + 16 * j), _mm512_set1_ps(sx));
            __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r * 2 * NP + j], _mm512_loadu_si512(colsum + 16 * j)));
            __m512 b = init ? _mm512_loadu_ps(init + 16 * j) : _mm512_setzero_ps();
            _mm512_storeu_ps(y + (size_t)r * ldy + 16 * j, _mm512_fmadd_ps(s, v, b));
        }
    }
}

GRURT_VNNI_TARGET static void grurt_gemm_i8_dot(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                                                const int8_t *restrict packed, const float *restrict scale,
                                                const int32_t *restrict colsum, const float *restrict init,
                                                float *restrict y, int ldy, int backward, void *work) {
    int n_groups = (n_in + 3) / 4;
    size_t panel = (size_t)n_groups * 128, row_bytes = GRURT_LOWP_ROW_BYTES(n_in);
    uint8_t *xq = (uint8_t *)work;
#define GRURT_I8_ARGS(P) packed + (P) * panel, panel, scale + (P) * GRURT_PANEL, colsum + (P) * GRURT_PANEL, \
                         init ? init + (P) * GRURT_PANEL : NULL
    for (int r0 = 0; r0 < rows; r0 += GRURT_LOWP_TILE) {
        int tile = rows - r0 < GRURT_LOWP_TILE ? rows - r0 : GRURT_LOWP_TILE;
        grurt_rows_to_u8(tile, n_in, x + (size_t)r0 * ldx, ldx, xq, row_bytes);
        float *yt = y + (size_t)r0 * ldy;
        int r = 0;
        for (; r + 3 < tile; r += 4)
            for (int p = 0; p < n_panels; ++p)
                grurt_i8_dot_tile(4, 1, n_groups, xq + r * row_bytes, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        for (; r < tile; ++r) {
            const uint8_t *xr = xq + r * row_bytes;
            int p = 0, passes = n_panels / 4;
            for (int i = 0; i < passes; ++i) {
                p = 4 * (backward ? passes - 1 - i : i);
                grurt_i8_dot_tile(1, 4, n_groups, xr, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
            }
            for (p = 4 * passes; p < n_panels; ++p)
                grurt_i8_dot_tile(1, 1, n_groups, xr, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        }
    }
#undef GRURT_I8_ARGS
}
#endif

/* ---- dot instructions, aarch64 with BFDOT / SDOT ------------------------------------- */
/* FEAT_BF16 (BFDOT, BFCVTN) and FEAT_DotProd (SDOT) are optional from Armv8.2-A on: only the
 * functions below are compiled for them (target attributes; GCC's arm_neon.h declares the
 * intrinsics for armv8.2-a+bf16 / +dotprod), picked at run time from the kernel's hwcaps
 * (getauxval, Linux), so the rest of the build runs on any ARMv8.0 CPU. Same layout and the
 * same arithmetic as the x86 dot path: bf16 x rounded to nearest even, BFDOT summing each
 * lane's pair into the float32 accumulators; int8 x quantized exactly as for vpdpbusd but
 * kept signed (SDOT multiplies s8 by s8, so no +128 offset and no column sums to subtract):
 * the int32 sums are the same numbers, and y = init + (scale·sx)·sum the same FMA. */
#if defined(GRURT_NEON) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define GRURT_ARM_DOT 1
#include <sys/auxv.h>
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1UL << 14)
#endif
#define GRURT_BF16_TARGET __attribute__((target("arch=armv8.2-a+bf16")))
#define GRURT_SDOT_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))
/* 24 accumulators of the 32 vector registers: tiles of 3 rows × 1 panel, or one row × 2 panels */
#define GRURT_ARM_DOT_ROWS 3
#define GRURT_ARM_DOT_PANELS 2

static int grurt_has_bf16(void) {
    static int has = -1;
    if (has < 0) has = (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
    return has;
}
static int grurt_has_sdot(void) {
    static int has = -1;
    if (has < 0) has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    return has;
}

/* rows of x → bf16 pairs, zero-padded to whole groups (BFCVTN: round to nearest even) */
GRURT_BF16_TARGET static void grurt_rows_to_bf16(int rows, int n_in, const float *x, int ldx, uint16_t *out,
                                                 size_t row_bytes) {
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + (size_t)r * ldx;
        uint16_t *o = (uint16_t *)((char *)out + r * row_bytes);
        int k = 0;
        for (; k + 4 <= n_in; k += 4) vst1_bf16((bfloat16_t *)(o + k), vcvt_bf16_f32(vld1q_f32(xr + k)));
        for (; k < n_in; ++k) {
            bfloat16_t b = vcvth_bf16_f32(xr[k]);
            memcpy(o + k, &b, sizeof b);
        }
        if (n_in & 1) o[n_in] = 0;
    }
}

/* ROWS rows × NP panels: 8·ROWS·NP accumulators; x's pair of group q in every 32-bit lane */
GRURT_INLINE GRURT_BF16_TARGET void grurt_bf16_dot_tile(int ROWS, int NP, int n_groups, const uint16_t *xb,
                                                        size_t row_bytes, const uint16_t *restrict panels,
                                                        size_t panel, const float *restrict init,
                                                        float *restrict y, int ldy, int backward) {
    float32x4_t acc[24];
#pragma GCC unroll 3
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
        for (int j = 0; j < 8 * NP; ++j) acc[8 * NP * r + j] = init ? vld1q_f32(init + 4 * j) : vdupq_n_f32(0.0f);
    /* group q's pair of x (one 32-bit lane) and 64 weights, by pointers moved group to group */
    const long step = backward ? -1 : 1;
    const uint32_t *xg = (const uint32_t *)xb + (backward ? n_groups - 1 : 0);
    const uint16_t *wg = panels + (size_t)(backward ? n_groups - 1 : 0) * 64;
    for (int i = 0; i < n_groups; ++i, xg += step, wg += step * 64) {
        bfloat16x8_t xv[GRURT_ARM_DOT_ROWS];
#pragma GCC unroll 3
        for (int r = 0; r < ROWS; ++r)
            xv[r] = vreinterpretq_bf16_u32(vld1q_dup_u32((const uint32_t *)((const char *)xg + r * row_bytes)));
#pragma GCC unroll 16
        for (int j = 0; j < 8 * NP; ++j) {
            bfloat16x8_t w = vreinterpretq_bf16_u16(vld1q_u16(wg + (j / 8) * panel + (j % 8) * 8));
#pragma GCC unroll 3
            for (int r = 0; r < ROWS; ++r) acc[8 * NP * r + j] = vbfdotq_f32(acc[8 * NP * r + j], w, xv[r]);
        }
    }
#pragma GCC unroll 3
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
        for (int j = 0; j < 8 * NP; ++j) vst1q_f32(y + (size_t)r * ldy + 4 * j, acc[8 * NP * r + j]);
}

GRURT_BF16_TARGET static void grurt_gemm_bf16_dot(int rows, int n_in, int n_panels, const float *restrict x,
                                                  int ldx, const uint16_t *restrict packed,
                                                  const float *restrict init, float *restrict y, int ldy,
                                                  int backward, void *work) {
    int n_groups = (n_in + 1) / 2;
    size_t panel = (size_t)n_groups * 64, row_bytes = GRURT_LOWP_ROW_BYTES(n_in);
    uint16_t *xb = (uint16_t *)work;
#define GRURT_BF16_ARGS(P) packed + (P) * panel, panel, init ? init + (P) * GRURT_PANEL : NULL
    for (int r0 = 0; r0 < rows; r0 += GRURT_LOWP_TILE) {
        int tile = rows - r0 < GRURT_LOWP_TILE ? rows - r0 : GRURT_LOWP_TILE;
        grurt_rows_to_bf16(tile, n_in, x + (size_t)r0 * ldx, ldx, xb, row_bytes);
        float *yt = y + (size_t)r0 * ldy;
        int r = 0;
        for (; r + GRURT_ARM_DOT_ROWS <= tile; r += GRURT_ARM_DOT_ROWS)
            for (int p = 0; p < n_panels; ++p)
                grurt_bf16_dot_tile(GRURT_ARM_DOT_ROWS, 1, n_groups, (const uint16_t *)((char *)xb + r * row_bytes),
                                    row_bytes, GRURT_BF16_ARGS(p), yt + (size_t)r * ldy + p * GRURT_PANEL, ldy,
                                    backward);
        for (; r < tile; ++r) {
            const uint16_t *xr = (const uint16_t *)((char *)xb + r * row_bytes);
            /* one row: two panels per pass; backward, last pass first */
            int p, passes = n_panels / GRURT_ARM_DOT_PANELS;
            for (int i = 0; i < passes; ++i) {
                p = GRURT_ARM_DOT_PANELS * (backward ? passes - 1 - i : i);
                grurt_bf16_dot_tile(1, GRURT_ARM_DOT_PANELS, n_groups, xr, row_bytes, GRURT_BF16_ARGS(p),
                                    yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
            }
            for (p = GRURT_ARM_DOT_PANELS * passes; p < n_panels; ++p)
                grurt_bf16_dot_tile(1, 1, n_groups, xr, row_bytes, GRURT_BF16_ARGS(p),
                                    yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        }
    }
#undef GRURT_BF16_ARGS
}

/* rows of x → signed bytes xq = round(x · 127 / max|x|) (FCVTNS: to nearest even, as
 * vcvtps2dq), zero-padded to whole groups, one scale max|x| / 127 per row after the bytes */
GRURT_SDOT_TARGET static void grurt_rows_to_s8(int rows, int n_in, const float *x, int ldx, int8_t *out,
                                               size_t row_bytes) {
    int padded = (n_in + 3) / 4 * 4;
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *o = out + r * row_bytes;
        float32x4_t m = vdupq_n_f32(0.0f);
        int k = 0;
        for (; k + 4 <= n_in; k += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(xr + k)));
        float maxabs = vmaxvq_f32(m);
        for (; k < n_in; ++k) maxabs = fabsf(xr[k]) > maxabs ? fabsf(xr[k]) : maxabs;
        float inv = maxabs > 0.0f ? 127.0f / maxabs : 0.0f;
        float32x4_t vinv = vdupq_n_f32(inv);
        for (k = 0; k + 4 <= n_in; k += 4) {
            int16x4_t h = vmovn_s32(vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xr + k), vinv)));
            int8x8_t b = vmovn_s16(vcombine_s16(h, h));
            vst1_lane_s32((int32_t *)(o + k), vreinterpret_s32_s8(b), 0);
        }
        for (; k < n_in; ++k) o[k] = (int8_t)vgetq_lane_s32(vcvtnq_s32_f32(vdupq_n_f32(xr[k] * inv)), 0);
        for (k = n_in; k < padded; ++k) o[k] = 0;
        float s = maxabs / 127.0f;
        memcpy(o + padded, &s, sizeof s);
    }
}

GRURT_INLINE GRURT_SDOT_TARGET void grurt_i8_dot_tile(int ROWS, int NP, int n_groups, const int8_t *xq,
                                                      size_t row_bytes, const int8_t *restrict panels, size_t panel,
                                                      const float *restrict scale, const float *restrict init,
                                                      float *restrict y, int ldy, int backward) {
    int32x4_t acc[24];
#pragma GCC unroll 24
    for (int j = 0; j < 8 * ROWS * NP; ++j) acc[j] = vdupq_n_s32(0);
    /* group q's 4 bytes of x and 128 weights, by pointers moved group to group */
    const long step = backward ? -1 : 1;
    const int32_t *xg = (const int32_t *)xq + (backward ? n_groups - 1 : 0);
    const int8_t *wg = panels + (size_t)(backward ? n_groups - 1 : 0) * 128;
    for (int i = 0; i < n_groups; ++i, xg += step, wg += step * 128) {
        int8x16_t xv[GRURT_ARM_DOT_ROWS];
#pragma GCC unroll 3
        for (int r = 0; r < ROWS; ++r)
            xv[r] = vreinterpretq_s8_s32(vld1q_dup_s32((const int32_t *)((const char *)xg + r * row_bytes)));
#pragma GCC unroll 16
        for (int j = 0; j < 8 * NP; ++j) {
            int8x16_t w = vld1q_s8(wg + (j / 8) * panel + (j % 8) * 16);
#pragma GCC unroll 3
            for (int r = 0; r < ROWS; ++r) acc[8 * NP * r + j] = vdotq_s32(acc[8 * NP * r + j], w, xv[r]);
        }
    }
#pragma GCC unroll 3
    for (int r = 0; r < ROWS; ++r) {
        float sx;
        memcpy(&sx, xq + r * row_bytes + 4 * n_groups, sizeof sx);
#pragma GCC unroll 16
        for (int j = 0; j < 8 * NP; ++j) {
            float32x4_t s = vmulq_f32(vld1q_f32(scale + 4 * j), vdupq_n_f32(sx));
            float32x4_t b = init ? vld1q_f32(init + 4 * j) : vdupq_n_f32(0.0f);
            vst1q_f32(y + (size_t)r * ldy + 4 * j, vfmaq_f32(b, s, vcvtq_f32_s32(acc[8 * NP * r + j])));
        }
    }
}

GRURT_SDOT_TARGET static void grurt_gemm_i8_dot(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                                                const int8_t *restrict packed, const float *restrict scale,
                                                const float *restrict init, float *restrict y, int ldy, int backward,
                                                void *work) {
    int n_groups = (n_in + 3) / 4;
    size_t panel = (size_t)n_groups * 128, row_bytes = GRURT_LOWP_ROW_BYTES(n_in);
    int8_t *xq = (int8_t *)work;
#define GRURT_I8_ARGS(P) packed + (P) * panel, panel, scale + (P) * GRURT_PANEL, init ? init + (P) * GRURT_PANEL : NULL
    for (int r0 = 0; r0 < rows; r0 += GRURT_LOWP_TILE) {
        int tile = rows - r0 < GRURT_LOWP_TILE ? rows - r0 : GRURT_LOWP_TILE;
        grurt_rows_to_s8(tile, n_in, x + (size_t)r0 * ldx, ldx, xq, row_bytes);
        float *yt = y + (size_t)r0 * ldy;
        int r = 0;
        for (; r + GRURT_ARM_DOT_ROWS <= tile; r += GRURT_ARM_DOT_ROWS)
            for (int p = 0; p < n_panels; ++p)
                grurt_i8_dot_tile(GRURT_ARM_DOT_ROWS, 1, n_groups, xq + r * row_bytes, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        for (; r < tile; ++r) {
            const int8_t *xr = xq + r * row_bytes;
            int p, passes = n_panels / GRURT_ARM_DOT_PANELS;
            for (int i = 0; i < passes; ++i) {
                p = GRURT_ARM_DOT_PANELS * (backward ? passes - 1 - i : i);
                grurt_i8_dot_tile(1, GRURT_ARM_DOT_PANELS, n_groups, xr, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
            }
            for (p = GRURT_ARM_DOT_PANELS * passes; p < n_panels; ++p)
                grurt_i8_dot_tile(1, 1, n_groups, xr, row_bytes, GRURT_I8_ARGS(p),
                                  yt + (size_t)r * ldy + p * GRURT_PANEL, ldy, backward);
        }
    }
#undef GRURT_I8_ARGS
}
#endif

/* ---- dispatch ------------------------------------------------------------------------ */

/* 1 when grurt_gemm_bf16 rounds x to bf16 (the dot path) on this CPU, 0 when it widens */
static int grurt_bf16_uses_dot(void) {
#if defined(GRURT_X86_AVX512) || defined(GRURT_ARM_DOT)
    return !grurt_lowp_force_widening && grurt_has_bf16();
#else
    return 0;
#endif
}

static int grurt_i8_uses_dot(void) {
#ifdef GRURT_X86_AVX512
    return !grurt_lowp_force_widening && grurt_has_vnni();
#elif defined(GRURT_ARM_DOT)
    return !grurt_lowp_force_widening && grurt_has_sdot();
#else
    return 0;
#endif
}

static void grurt_gemm_bf16(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                            const uint16_t *restrict packed, const float *restrict init, float *restrict y,
                            int ldy, int backward, void *work) {
#if defined(GRURT_X86_AVX512) || defined(GRURT_ARM_DOT)
    if (grurt_bf16_uses_dot()) {
        grurt_gemm_bf16_dot(rows, n_in, n_panels, x, ldx, packed, init, y, ldy, backward, work);
        return;
    }
#endif
    (void)work;
    grurt_gemm_bf16_widen(rows, n_in, n_panels, x, ldx, packed, init, y, ldy, backward);
}

static void grurt_gemm_i8(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                          const int8_t *restrict packed, const float *restrict scale, const int32_t *restrict colsum,
                          const float *restrict init, float *restrict y, int ldy, int backward, void *work) {
#ifdef GRURT_X86_AVX512
    if (grurt_i8_uses_dot()) {
        grurt_gemm_i8_dot(rows, n_in, n_panels, x, ldx, packed, scale, colsum, init, y, ldy, backward, work);
        return;
    }
#elif defined(GRURT_ARM_DOT)
    if (grurt_i8_uses_dot()) {
        grurt_gemm_i8_dot(rows, n_in, n_panels, x, ldx, packed, scale, init, y, ldy, backward, work);
        return;
    }
#endif
    (void)work; (void)colsum;
    grurt_gemm_i8_widen(rows, n_in, n_panels, x, ldx, packed, scale, init, y, ldy, backward);
}

#endif
