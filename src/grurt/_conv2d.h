/* ONNX Conv and ConvTranspose over (N, C, H, W) float32 tensors (a 1-D one is H = 1), for the
 * general graph's ops (grurt.ops.conv). Included after _gru_math.h (activations, GRURT_HOT).
 *
 * Conv is, per group g and run of output positions, the product
 *
 *     y[g·Mg + m, p] = b[g·Mg + m] + Σ_k Wt[g][k][m] · B_k[p]        k = (c, i, j) < Cg·kh·kw
 *
 * where B_k[p] is the input seen by tap (i, j) of channel c at output position p. B's rows are
 * not copied when they are rows of the (padded) input already: with a column stride of 1 and
 * rows of at least 16 outputs, B_k over the Wo outputs of output row r starts at
 * xp[c, r·sh + i·dh, j·dw] (mode 0); with a 1-wide window unpadded along W and one output row
 * (or row stride 1) the whole output is one run, B_k = xp[c, i·dh] onward (mode 1). Otherwise
 * (column strides, narrow rows) B's rows are gathered for a block of output rows (mode 2: im2col
 * of that block). The product runs in register tiles of 8 (up to 12) output channels × 32
 * positions that the compiler vectorizes (AVX-512: 16 accumulators of 16 floats), grurt_c2_run; runs
 * of fewer than 16 positions in tiles over 64 output channels instead (grurt_c2_run_narrow).
 * A depthwise Conv (one input and one output channel per group) pads a channel at a time and sums
 * its few taps per 16 positions of the flat padded plane in a register instead, whatever the width of
 * its rows (grurt_c2_depthwise). A fused activation is applied to each finished
 * block of output rows while it is in cache.
 *
 * ConvTranspose (few channels per group; grurt.ops.conv runs the others as one matmul) spreads each input
 * channel once into a zero-filled plane, its columns sw apart (zeros between), and each output row is then
 * a sum over taps of contiguous runs of those rows: vectors, where the scatter of sw-strided stores was scalar.
 *
 * Nothing is allocated here: the caller passes scratch of grurt_conv2d_scratch() bytes. A call may
 * run on several threads of the worker pool (_pool.h), each claiming items of an image's work.
 * Measured on W10's convolutions (docs/performance.md): 2-8x numpy's im2col + BLAS at 1 and 20
 * frames; BLAS wins on large products, which grurt.ops.conv keeps on numpy (KERNEL_MAX_TAPS,
 * KERNEL_MAX_FMAS).
 */
#ifndef GRURT_CONV2D_H
#define GRURT_CONV2D_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_pool.h"

typedef struct {
    int C, H, W;            /* input channels, rows, columns */
    int M, Ho, Wo;          /* output channels, rows, columns */
    int groups, kh, kw, sh, sw, dh, dw;
    int pt, pl, pb, pr;     /* zero padding: top, left, bottom, right */
    const float *wt;        /* Conv: per group, W transposed (Cg·kh·kw, Mg); ConvTranspose: W as given */
    const float *bias;      /* M floats, or NULL */
    grurt_act act;
} grurt_conv2d;

typedef float grurt_c2v __attribute__((vector_size(64), aligned(4)));

#define GRURT_C2_MB 8            /* output channels per tile */
#define GRURT_C2_MB_MAX 12       /* ... or up to this many, the last of a group (10 = one tile, not 8 + 2) */
#define GRURT_C2_CHUNK 512       /* gathered positions per block, about */

/* How a Conv reads its input: 0 rows of the padded input per output row, 1 one run of every
 * position, 2 gathered blocks of output rows. */
static inline int grurt_conv2d_mode(const grurt_conv2d *c) {
    int Wp = c->W + c->pl + c->pr;
    if (c->sw == 1 && c->Wo == Wp && (c->sh == 1 || c->Ho == 1)) return 1;
    if (c->sw == 1 && c->Wo >= 16) return 0;
    return 2;
}

/* One input and one output channel per group. */
static inline int grurt_conv2d_depthwise(const grurt_conv2d *c) { return c->C == c->groups && c->M == c->groups; }

/* A depthwise Conv's channel plane, padded, has rows of Wb floats: Wp rounded up to a multiple of sw, so
 * that output row r starts at position t = r·sh·Wb/sw of the flat output z[t] = b + Σ_k w_k · xp[t·sw + off_k]. */
static inline int grurt_c2_dw_wb(const grurt_conv2d *c) {
    int Wp = c->W + c->pl + c->pr;
    return (Wp + c->sw - 1) / c->sw * c->sw;
}

/* Positions of z computed (whole vectors of 16: every output of the plane, and the pad columns between). */
static inline size_t grurt_c2_dw_positions(const grurt_conv2d *c) {
    size_t T = (size_t)(c->Ho - 1) * c->sh * (grurt_c2_dw_wb(c) / c->sw) + c->Wo;
    return (T + 15) & ~(size_t)15;
}

/* Floats of the padded plane: the plane, and the slack the last vectors read past it (zeroed). */
static inline size_t grurt_c2_dw_plane_floats(const grurt_conv2d *c) {
    size_t plane = (size_t)(c->H + c->pt + c->pb) * grurt_c2_dw_wb(c);
    size_t reach = (grurt_c2_dw_positions(c) + 16) * c->sw + (size_t)(c->kh - 1) * c->dh * grurt_c2_dw_wb(c)
                   + (size_t)(c->kw - 1) * c->dw;
    return reach > plane ? reach : plane;
}

static inline int grurt_conv2d_block_rows(const grurt_conv2d *c) {
    int r = GRURT_C2_CHUNK / c->Wo;
    return r < 1 ? 1 : r > c->Ho ? c->Ho : r;
}

static inline size_t grurt_c2_round(size_t n) { return (n + 15) & ~(size_t)15; }

/* Floats between gathered rows of L positions: room for the tiles' reads of 32 (past L: read, never
 * stored), never a multiple of 1 KB (rows a multiple of 4 KB apart compete for the same few lines of L1). */
static inline size_t grurt_c2_cols_stride(size_t L) {
    size_t ld = (L + 31) & ~(size_t)31;
    return ld % 256 ? ld : ld + 16;
}

/* Floats of `cols`: gathered rows (mode 2, depthwise not by rows). */
static inline size_t grurt_c2_cols_floats(const grurt_conv2d *c, size_t K) {
    if (grurt_conv2d_depthwise(c)) return 0;
    if (grurt_conv2d_mode(c) == 2)
        return K * grurt_c2_cols_stride((size_t)grurt_conv2d_block_rows(c) * c->Wo);
    return 0;
}


/* dst[q] = line[q·sw] for q < n; strides 1 and 2 written out (vectorized, the second by shuffles). */
GRURT_INLINE void grurt_c2_gather(float *restrict dst, const float *restrict line, int n, int sw) {
    if (sw == 1)
        for (int q = 0; q < n; ++q) dst[q] = line[q];
    else if (sw == 2)
        for (int q = 0; q < n; ++q) dst[q] = line[2 * q];
    else
        for (int q = 0; q < n; ++q) dst[q] = line[(size_t)q * sw];
}

/* One tile: y[i·ldy + q] = b[i] + Σ_k wt[k·ldw + i] · rows[k][p + q] for MB output channels i and
 * 16·NV positions q. */
GRURT_INLINE void grurt_c2_tile(const int MB, const int NV, int K, const float *const *rows, size_t p,
                                const float *wt, int ldw, const float *bias, float *y, size_t ldy) {
    if (MB == 1) {      /* one channel: four partial sums over k, else one chain of K dependent FMAs */
        grurt_c2v s[4][2] = {{{0}}};
        int k = 0;
        for (; k + 4 <= K; k += 4)
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u) {
                const float *r = rows[k + u] + p, wk = wt[(size_t)(k + u) * ldw];
                s[u][0] += wk * *(const grurt_c2v *)r;
                if (NV > 1) s[u][1] += wk * *(const grurt_c2v *)(r + 16);
            }
        for (; k < K; ++k) {
            const float *r = rows[k] + p, wk = wt[(size_t)k * ldw];
            s[0][0] += wk * *(const grurt_c2v *)r;
            if (NV > 1) s[0][1] += wk * *(const grurt_c2v *)(r + 16);
        }
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            *(grurt_c2v *)(y + 16 * v) = (s[0][v] + s[1][v]) + (s[2][v] + s[3][v]) + (bias ? bias[0] : 0.0f);
        return;
    }
    grurt_c2v acc[GRURT_C2_MB_MAX][2];
#pragma GCC unroll 12
    for (int i = 0; i < MB; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = (grurt_c2v){0} + (bias ? bias[i] : 0.0f);
    for (int k = 0; k < K; ++k) {
        const float *r = rows[k] + p, *w = wt + (size_t)k * ldw;
        grurt_c2v b0 = *(const grurt_c2v *)r, b1 = NV > 1 ? *(const grurt_c2v *)(r + 16) : b0;
#pragma GCC unroll 12
        for (int i = 0; i < MB; ++i) {
            acc[i][0] += w[i] * b0;
            if (NV > 1) acc[i][1] += w[i] * b1;
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < MB; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) *(grurt_c2v *)(y + (size_t)i * ldy + 16 * v) = acc[i][v];
}

/* Fewer than 16 positions (a frame of 8 frequencies): the product vectorized over the output
 * channels instead, PB positions × 64 channels in 16 accumulators, each weight vector used PB times;
 * each accumulator holds 16 channels of one position, stored down the output's rows. */
GRURT_INLINE void grurt_c2_narrow_tile(const int PB, int K, const float *const *rows, size_t p, const float *wt,
                                       int Mg, const float *bias, float *y, size_t ldy) {
    grurt_c2v acc[4][4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        grurt_c2v b = bias ? *(const grurt_c2v *)(bias + 16 * v) : (grurt_c2v){0};
#pragma GCC unroll 4
        for (int i = 0; i < PB; ++i) acc[i][v] = b;
    }
    for (int k = 0; k < K; ++k) {
        const float *w = wt + (size_t)k * Mg;
        grurt_c2v w0 = *(const grurt_c2v *)w, w1 = *(const grurt_c2v *)(w + 16);
        grurt_c2v w2 = *(const grurt_c2v *)(w + 32), w3 = *(const grurt_c2v *)(w + 48);
#pragma GCC unroll 4
        for (int i = 0; i < PB; ++i) {
            float x = rows[k][p + i];
            acc[i][0] += x * w0; acc[i][1] += x * w1; acc[i][2] += x * w2; acc[i][3] += x * w3;
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < PB; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            float t[16];
            *(grurt_c2v *)t = acc[i][v];
            for (int j = 0; j < 16; ++j) y[(size_t)(16 * v + j) * ldy + p + i] = t[j];
        }
}

/* grurt_c2_run for L < 16 positions and Mg a multiple of 64. */
GRURT_HOT static void grurt_c2_run_narrow(int K, const float *const *rows, size_t L, const float *wt, int Mg,
                                          const float *bias, float *y, size_t ldy) {
    for (int m = 0; m < Mg; m += 64)
        for (size_t p = 0; p < L; p += 4) {
            const float *bm = bias ? bias + m : NULL;
            switch (L - p < 4 ? L - p : 4) {
            case 4: grurt_c2_narrow_tile(4, K, rows, p, wt + m, Mg, bm, y + (size_t)m * ldy, ldy); break;
            case 3: grurt_c2_narrow_tile(3, K, rows, p, wt + m, Mg, bm, y + (size_t)m * ldy, ldy); break;
            case 2: grurt_c2_narrow_tile(2, K, rows, p, wt + m, Mg, bm, y + (size_t)m * ldy, ldy); break;
            default: grurt_c2_narrow_tile(1, K, rows, p, wt + m, Mg, bm, y + (size_t)m * ldy, ldy);
            }
        }
}

/* The Mg output channels of one group over one run of L positions: rows[k] (K of them) are
 * B's rows; y points at the run's first position of the group's first channel. Per block of 32
 * positions B's rows are copied together (`pack`, K × 32 floats) when several tiles of channels
 * read them and the rows `alias` (lie a multiple of 4 KB apart: L1 holds few such lines at once),
 * and for the last L % 32 positions unless the rows are `readable` that far (gathered rows are);
 * the outputs of a last partial block go through `out` (GRURT_C2_MB_MAX rows of 32). Small copies are loops,
 * not calls: a call per row of B costs more than the row's products at a frame of 8 positions. */
GRURT_HOT static void grurt_c2_run(int K, const float *const *rows, size_t L, const float *wt, int Mg,
                                   const float *bias, float *y, size_t ldy, int alias, int readable, float *pack,
                                   const float **pack_rows, float *out) {
    if (L < 16 && Mg % 64 == 0) {
        grurt_c2_run_narrow(K, rows, L, wt, Mg, bias, y, ldy);
        return;
    }
    for (size_t p = 0; p < L; p += 32) {
        int n = L - p < 32 ? (int)(L - p) : 32;
        int whole = n == 32 || n == 16, nv = n > 16 ? 2 : 1;
        const float *const *b = rows;
        size_t at = p;
        if ((!whole && !readable) || (alias && Mg > GRURT_C2_MB)) {
            for (int k = 0; k < K; ++k) {
                float *t = pack + (size_t)k * 32;
                const float *r = rows[k] + p;
                int q = 0;
                for (; q < n; ++q) t[q] = r[q];
                for (; q < 16 * nv; ++q) t[q] = 0.0f;
                pack_rows[k] = t;
            }
            b = pack_rows;
            at = 0;
        }
        for (int m = 0; m < Mg;) {
            int left = Mg - m;
            int mb = left > GRURT_C2_MB_MAX ? GRURT_C2_MB : left >= 8 ? left : left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const float *bm = bias ? bias + m : NULL;
            float *ym = whole ? y + (size_t)m * ldy + p : out;
            size_t ld = whole ? ldy : 32;
#define GRURT_C2_TILES(NV)                                                          \
            switch (mb) {                                                           \
            case 12: grurt_c2_tile(12, NV, K, b, at, wt + m, Mg, bm, ym, ld); break; \
            case 11: grurt_c2_tile(11, NV, K, b, at, wt + m, Mg, bm, ym, ld); break; \
            case 10: grurt_c2_tile(10, NV, K, b, at, wt + m, Mg, bm, ym, ld); break; \
            case 9: grurt_c2_tile(9, NV, K, b, at, wt + m, Mg, bm, ym, ld); break;   \
            case 8: grurt_c2_tile(8, NV, K, b, at, wt + m, Mg, bm, ym, ld); break;   \
            case 4: grurt_c2_tile(4, NV, K, b, at, wt + m, Mg, bm, ym, ld); break;   \
            case 2: grurt_c2_tile(2, NV, K, b, at, wt + m, Mg, bm, ym, ld); break;   \
            default: grurt_c2_tile(1, NV, K, b, at, wt + m, Mg, bm, ym, ld);         \
            }
            if (nv == 2) {
                GRURT_C2_TILES(2)
            } else {
                GRURT_C2_TILES(1)
            }
#undef GRURT_C2_TILES
            if (!whole)
                for (int i = 0; i < mb; ++i) {
                    float *dst = y + (size_t)(m + i) * ldy + p;
                    const float *src = out + (size_t)i * 32;
                    for (int q = 0; q < n; ++q) dst[q] = src[q];
                }
            m += mb;
        }
    }
}

/* The output rows r0 .. r0 + R − 1 of every channel activated. */
static void grurt_c2_activate(const grurt_conv2d *c, float *y, int r0, int R) {
    if (c->act.kind == ACT_LINEAR) return;
    size_t plane = (size_t)c->Ho * c->Wo;
    for (int m = 0; m < c->M; ++m) grurt_activate(&c->act, y + m * plane + (size_t)r0 * c->Wo, R * c->Wo);
}

/* One channel x (H, W) padded into xp (H + pt + pb, W + pl + pr): the borders zeroed, the rows copied by
 * loops (rows are short: a call each costs more). */
GRURT_INLINE void grurt_c2_pad_plane(const float *x, int H, int W, int pt, int pl, int pb, int pr, float *xp) {
    const int Wp = W + pl + pr;
    memset(xp, 0, (size_t)pt * Wp * sizeof(float));
    for (int r = 0; r < H; ++r) {
        float *row = xp + (size_t)(r + pt) * Wp;
        const float *in = x + (size_t)r * W;
        for (int q = 0; q < pl; ++q) row[q] = 0.0f;
        for (int q = 0; q < W; ++q) row[pl + q] = in[q];
        for (int q = pl + W; q < Wp; ++q) row[q] = 0.0f;
    }
    memset(xp + (size_t)(pt + H) * Wp, 0, (size_t)pb * Wp * sizeof(float));
}

/* The 16 floats line[2q], q < 16: the even lanes of two loads. */
typedef int grurt_c2i __attribute__((vector_size(64)));
#define GRURT_C2_EVENS(line)                                                                    \
    __builtin_shuffle(*(const grurt_c2v *)(line), *(const grurt_c2v *)((line) + 16),            \
                      (grurt_c2i){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})

typedef float grurt_c2h __attribute__((vector_size(32), aligned(4)));

/* dst[q] = src[q] for q < n by vectors (the last one overlapping): rows are short, and a loop the
 * compiler turns into a call of memmove (the empty asm hides the loop's pattern) costs more than the copy. */
GRURT_INLINE void grurt_c2_copy(float *restrict dst, const float *restrict src, int n) {
    if (n >= 16) {
        for (int q = 0; q + 16 <= n; q += 16) {
            __asm__("" : "+r"(q));
            *(grurt_c2v *)(dst + q) = *(const grurt_c2v *)(src + q);
        }
        *(grurt_c2v *)(dst + n - 16) = *(const grurt_c2v *)(src + n - 16);
    } else if (n >= 8) {
        *(grurt_c2h *)dst = *(const grurt_c2h *)src;
        *(grurt_c2h *)(dst + n - 8) = *(const grurt_c2h *)(src + n - 8);
    } else
        for (int q = 0; q < n; ++q) dst[q] = src[q];
}

/* Channel o of a Conv of one input and one output channel per group (depthwise) over one image x: the
 * channel copied into `xp` (rows of Wb floats, grurt_c2_dw_wb; a plane that stays in cache, its borders
 * zeroed by the caller once for every channel), then the
 * flat output z[t] = b + Σ_k w_k · xp[t·sw + off_k] 16 positions at a time in a register, the taps in
 * order (column stride 1: one load a tap, 2: the even lanes of two), over every position of the plane
 * whatever the width of its rows (narrow rows cost no gathers, a few pad columns are computed and
 * dropped), then output row r copied from z[r·sh·Wb/sw ...]; rows of 16 outputs or more (column strides 1, 2)
 * are computed into y instead, a vector at a time (the last one overlapping), the same sums. */
GRURT_HOT static void grurt_c2_depthwise(const grurt_conv2d *c, const float *x, float *xp, float *z,
                                         const float **taps, float *y, int o) {
    /* the fields in locals: stores through y may alias *c for a compiler without strict aliasing */
    const int kh = c->kh, kw = c->kw, K = kh * kw, Ho = c->Ho, Wo = c->Wo, sh = c->sh, sw = c->sw, dh = c->dh,
              dw = c->dw, H = c->H, W = c->W, pt = c->pt, pl = c->pl, Wb = grurt_c2_dw_wb(c);
    const size_t T = grurt_c2_dw_positions(c);
    const size_t per_row = (size_t)sh * (Wb / sw);
    const float *w = c->wt + (size_t)o * K, *in = x + (size_t)o * H * W;
    const float b = c->bias ? c->bias[o] : 0.0f;
    for (int r = 0; r < H; ++r) grurt_c2_copy(xp + (size_t)(r + pt) * Wb + pl, in + (size_t)r * W, W);
    for (int i = 0; i < kh; ++i)
        for (int j = 0; j < kw; ++j) taps[i * kw + j] = xp + (size_t)i * dh * Wb + (size_t)j * dw;
    float *yo = y + (size_t)o * Ho * Wo;
    if (Wo >= 16 && sw <= 2) {      /* rows of whole vectors (the last one overlapping): into y, no copy */
        for (int r = 0; r < Ho; ++r)
            for (int q = 0; q < Wo; q += 16) {
                const int q0 = q + 16 <= Wo ? q : Wo - 16;
                const size_t t = (size_t)r * per_row + q0;
                grurt_c2v acc = (grurt_c2v){0} + b;
                if (sw == 1)
                    for (int k = 0; k < K; ++k) acc += w[k] * *(const grurt_c2v *)(taps[k] + t);
                else
                    for (int k = 0; k < K; ++k) acc += w[k] * GRURT_C2_EVENS(taps[k] + 2 * t);
                *(grurt_c2v *)(yo + (size_t)r * Wo + q0) = acc;
            }
        grurt_activate(&c->act, yo, Ho * Wo);
        return;
    }
    if (sw == 1)
        for (size_t t = 0; t < T; t += 16) {
            grurt_c2v acc = (grurt_c2v){0} + b;
            for (int k = 0; k < K; ++k) acc += w[k] * *(const grurt_c2v *)(taps[k] + t);
            *(grurt_c2v *)(z + t) = acc;
        }
    else if (sw == 2)
        for (size_t t = 0; t < T; t += 16) {
            grurt_c2v acc = (grurt_c2v){0} + b;
            for (int k = 0; k < K; ++k) acc += w[k] * GRURT_C2_EVENS(taps[k] + 2 * t);
            *(grurt_c2v *)(z + t) = acc;
        }
    else
        for (size_t t = 0; t < T; ++t) {
            float acc = b;
            for (int k = 0; k < K; ++k) acc += w[k] * taps[k][t * sw];
            z[t] = acc;
        }
    for (int r = 0; r < Ho; ++r) grurt_c2_copy(yo + (size_t)r * Wo, z + (size_t)r * per_row, Wo);
    grurt_activate(&c->act, yo, Ho * Wo);
}

/* A Conv's work on one image, split in items that threads claim (grurt_claim): blocks of output rows
 * (modes 0 and 2: each with its gathers, its activation), chunks of positions of one group (mode 1),
 * channels (depthwise). The padded image, when the Conv pads, is made before by the caller. */
typedef struct {
    const grurt_conv2d *c;
    const float *src;        /* the image, padded when the Conv pads (a depthwise Conv: as given) */
    const float *hist;       /* with Hh > 0: the image's first Hh rows (each channel's), src its other H − Hh */
    int Hh;
    float *y;                /* the image's output */
    char *parts;             /* per thread: `part` bytes of scratch, 64-byte aligned */
    size_t part;
    int items, next;         /* next: the next item to claim, atomic */
} grurt_c2_job;

#define GRURT_C2_CHUNK_POSITIONS 256     /* mode 1: positions per item */

static inline int grurt_c2_items(const grurt_conv2d *c) {
    int mode = grurt_conv2d_mode(c);
    if (grurt_conv2d_depthwise(c)) return c->M;
    if (mode == 1)
        return c->groups * (int)(((size_t)c->Ho * c->Wo + GRURT_C2_CHUNK_POSITIONS - 1) / GRURT_C2_CHUNK_POSITIONS);
    if (mode == 0) return c->Ho;
    int R = grurt_conv2d_block_rows(c);
    return (c->Ho + R - 1) / R;
}

/* Bytes of one thread's scratch: gathered columns, the packed block of B, the tail's outputs, B's row
 * pointers (two sets); a depthwise Conv's: the padded channel, its flat output, the taps' pointers. */
static inline size_t grurt_c2_part_bytes(const grurt_conv2d *c) {
    size_t K = (size_t)(c->C / c->groups) * c->kh * c->kw;
    size_t floats = grurt_conv2d_depthwise(c)
                    ? grurt_c2_round(grurt_c2_dw_plane_floats(c)) + grurt_c2_dw_positions(c)
                    : grurt_c2_round(grurt_c2_cols_floats(c, K)) + K * 32 + GRURT_C2_MB_MAX * 32;
    return (floats * sizeof(float) + 2 * K * sizeof(float *) + 63) & ~(size_t)63;
}

/* Bytes of scratch a call on up to `threads` threads needs: the padded image (but for depthwise Convs,
 * which pad a channel at a time) and a part per thread. */
static inline size_t grurt_conv2d_scratch(const grurt_conv2d *c, int threads) {
    int padded = c->pt || c->pl || c->pb || c->pr;
    size_t image = padded && !grurt_conv2d_depthwise(c)
                   ? grurt_c2_round((size_t)c->C * (c->H + c->pt + c->pb) * (c->W + c->pl + c->pr) + 32) : 0;
    return image * sizeof(float) + (size_t)threads * grurt_c2_part_bytes(c) + 64;
}

/* Input row t of channel ch (unpadded): of the history below Hh, of src from there. */
static inline const float *grurt_c2_input_row(const grurt_conv2d *c, const float *hist, int Hh, const float *src,
                                              int ch, int t) {
    if (t < Hh) return hist + ((size_t)ch * Hh + t) * c->W;
    return src + ((size_t)ch * (c->H - Hh) + t - Hh) * c->W;
}

static void grurt_c2_item(const grurt_conv2d *c, const float *src, const float *hist, int Hh, float *yn, int item,
                          char *part) {
    if (grurt_conv2d_depthwise(c)) {        /* first: a channel's work is small, the geometry below is not needed */
        float *plane = (float *)part, *z = plane + grurt_c2_round(grurt_c2_dw_plane_floats(c));
        grurt_c2_depthwise(c, src, plane, z, (const float **)(z + grurt_c2_dw_positions(c)), yn, item);
        return;
    }
    /* the fields in locals: stores through y may alias *c for a compiler without strict aliasing */
    const int G = c->groups, Cg = c->C / G, Mg = c->M / G, kh = c->kh, kw = c->kw, Wo = c->Wo, Ho = c->Ho;
    const int sh = c->sh, sw = c->sw, dh = c->dh, dw = c->dw;
    const int pt = c->pt, pl = c->pl, pb = c->pb, pr = c->pr;
    const float *wt = c->wt, *bias = c->bias;
    const int Hp = c->H + pt + pb, Wp = c->W + pl + pr, K = Cg * kh * kw, mode = Hh ? 0 : grurt_conv2d_mode(c);
    const int alias = (Hp * Wp) % 1024 == 0;       /* B's rows a multiple of 4 KB apart */
    const int R = grurt_conv2d_block_rows(c);
    const size_t in_plane = (size_t)Hp * Wp, out_plane = (size_t)Ho * Wo;
    float *cols = (float *)part;
    float *pack = cols + grurt_c2_round(grurt_c2_cols_floats(c, K));
    float *out = pack + (size_t)K * 32;
    const float **rows = (const float **)(out + GRURT_C2_MB_MAX * 32), **pack_rows = rows + K;
    const int lead = Hh < Ho ? Hh : Ho;       /* with a history: the output rows reading some of it */
    if (mode == 1 || (Hh && item >= lead)) {
        /* positions [p0, p0 + L) of group g; the caller activates the output. With a history (the rows past its
         * Hh, whose inputs are all src's, H − Hh rows a channel), positions from Hh·Wo on. */
        const size_t first = Hh ? (size_t)Hh * Wo : 0, plane = Hh ? (size_t)(c->H - Hh) * Wp : in_plane;
        int chunks = (int)((out_plane - first + GRURT_C2_CHUNK_POSITIONS - 1) / GRURT_C2_CHUNK_POSITIONS);
        int g = (item - lead) / chunks;
        size_t p0 = first + (size_t)((item - lead) % chunks) * GRURT_C2_CHUNK_POSITIONS;
        size_t L = out_plane - p0 < GRURT_C2_CHUNK_POSITIONS ? out_plane - p0 : GRURT_C2_CHUNK_POSITIONS;
        int k = 0;
        for (int ci = 0; ci < Cg; ++ci)
            for (int i = 0; i < kh; ++i)
                for (int j = 0; j < kw; ++j)
                    rows[k++] = src + (size_t)(g * Cg + ci) * plane + (size_t)i * dh * Wp + j * dw + p0 - first;
        grurt_c2_run(K, rows, L, wt + (size_t)g * K * Mg, Mg, bias ? bias + g * Mg : NULL,
                     yn + (size_t)g * Mg * out_plane + p0, out_plane, alias, 0, pack, pack_rows, out);
        return;
    }
    int r0 = mode == 0 ? item : item * R, rn = mode == 0 ? 1 : (Ho - r0 < R ? Ho - r0 : R);     /* Hh: mode 0 */
    size_t L = (size_t)rn * Wo;
    for (int g = 0; g < G; ++g) {
        int k = 0;
        for (int ci = 0; ci < Cg; ++ci)
            for (int i = 0; i < kh; ++i)
                for (int j = 0; j < kw; ++j, ++k) {
                    const float *plane = src + (size_t)(g * Cg + ci) * in_plane + (size_t)i * dh * Wp + j * dw;
                    if (mode == 0) {
                        rows[k] = Hh ? grurt_c2_input_row(c, hist, Hh, src, g * Cg + ci, r0 * sh + i * dh) + j * dw
                                     : plane + (size_t)r0 * sh * Wp;
                        continue;
                    }
                    float *col = cols + (size_t)k * grurt_c2_cols_stride(L);
                    for (int r = 0; r < rn; ++r)
                        grurt_c2_gather(col + (size_t)r * Wo, plane + (size_t)(r0 + r) * sh * Wp, Wo, sw);
                    for (size_t q = L; q < ((L + 31) & ~(size_t)31); ++q) col[q] = 0.0f;   /* read, not used */
                    rows[k] = col;
                }
        grurt_c2_run(K, rows, L, wt + (size_t)g * K * Mg, Mg, bias ? bias + g * Mg : NULL,
                     yn + (size_t)g * Mg * out_plane + (size_t)r0 * Wo, out_plane, mode == 2 ? 0 : alias,
                     mode == 2, pack, pack_rows, out);
    }
    grurt_c2_activate(c, yn, r0, rn);
}

static void grurt_c2_work(void *arg, int slot) {
    grurt_c2_job *job = (grurt_c2_job *)arg;
    char *part = job->parts + (size_t)slot * job->part;
    for (int item = grurt_claim(&job->next); item < job->items; item = grurt_claim(&job->next))
        grurt_c2_item(job->c, job->src, job->hist, job->Hh, job->y, item, part);
}

/* Conv of N images x (N, C, H, W) into y (N, M, Ho, Wo) on up to `threads` threads of the worker pool
 * (items claimed: a late or busy worker leaves its share to the others). `scratch` holds
 * grurt_conv2d_scratch(c, threads) bytes. */
static void grurt_conv2d_run(const grurt_conv2d *c, int N, const float *x, float *y, void *scratch, int threads) {
    const int C = c->C, H = c->H, W = c->W, pt = c->pt, pl = c->pl, pb = c->pb, pr = c->pr;
    const int padded = pt || pl || pb || pr, mode = grurt_conv2d_mode(c);
    const size_t in_plane = (size_t)(H + pt + pb) * (W + pl + pr), out_plane = (size_t)c->Ho * c->Wo;
    float *xp = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    const int whole_image = padded && !grurt_conv2d_depthwise(c);
    grurt_c2_job job;
    job.c = c;
    job.parts = (char *)(xp + (whole_image ? grurt_c2_round((size_t)C * in_plane + 32) : 0));
    job.part = grurt_c2_part_bytes(c);
    job.items = grurt_c2_items(c);
    job.hist = NULL;
    job.Hh = 0;
    for (int n = 0; n < N; ++n) {
        const float *xn = x + (size_t)n * C * H * W;
        job.src = xn;
        job.y = y + (size_t)n * c->M * out_plane;
        if (whole_image) {
            for (int ch = 0; ch < C; ++ch)
                grurt_c2_pad_plane(xn + (size_t)ch * H * W, H, W, pt, pl, pb, pr, xp + ch * in_plane);
            job.src = xp;
        }
        if (n == 0 && grurt_conv2d_depthwise(c))      /* the planes' borders: zero, the channels copied inside */
            for (int t = 0; t < threads; ++t) memset(job.parts + (size_t)t * job.part, 0,
                                                     grurt_c2_dw_plane_floats(c) * sizeof(float));
        job.next = 0;
        if (threads > 1 && job.items > 1)
            grurt_pool_run(threads < job.items ? threads : job.items, grurt_c2_work, &job);
        else                                /* in order, without claiming (an atomic an item: 64 a depthwise Conv) */
            for (int item = 0; item < job.items; ++item)
                grurt_c2_item(c, job.src, NULL, 0, job.y, item, job.parts);
        if (mode == 1 && !grurt_conv2d_depthwise(c)) grurt_c2_activate(c, job.y, 0, c->Ho);
    }
}

/* grurt_conv2d_run of the rows of `hist` (N, C, Hh, W) followed by those of x (N, C, H − Hh, W) along H, without
 * their concatenation (a causal conv's history and new frames): the same bits (an output's sum does not depend
 * on how positions are grouped). For a Conv of one run (mode 1: unpadded, row stride 1 or one row, Wo = W;
 * grurt_conv2d_reads_history): the first Hh output rows one an item, reading rows of either (mode 0's reads),
 * the rest, whose inputs are all x's, in runs of x (mode 1's). */
static inline int grurt_conv2d_reads_history(const grurt_conv2d *c) {
    return !(c->pt || c->pl || c->pb || c->pr) && grurt_conv2d_mode(c) == 1 && !grurt_conv2d_depthwise(c);
}

static void grurt_conv2d_run_history(const grurt_conv2d *c, int N, const float *hist, int Hh, const float *x, float *y,
                                     void *scratch, int threads) {
    grurt_c2_job job;
    job.c = c;
    job.parts = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    job.part = grurt_c2_part_bytes(c);
    const int rows = Hh < c->Ho ? Hh : c->Ho;
    const size_t rest = (size_t)(c->Ho - rows) * c->Wo;
    job.items = rows + c->groups * (int)((rest + GRURT_C2_CHUNK_POSITIONS - 1) / GRURT_C2_CHUNK_POSITIONS);
    job.Hh = Hh;
    for (int n = 0; n < N; ++n) {
        job.hist = hist + (size_t)n * c->C * Hh * c->W;
        job.src = x + (size_t)n * c->C * (c->H - Hh) * c->W;
        job.y = y + (size_t)n * c->M * c->Ho * c->Wo;
        job.next = 0;
        if (threads > 1 && job.items > 1)
            grurt_pool_run(threads < job.items ? threads : job.items, grurt_c2_work, &job);
        else
            for (int item = 0; item < job.items; ++item)
                grurt_c2_item(c, job.src, job.hist, Hh, job.y, item, job.parts);
        if (rows < c->Ho) grurt_c2_activate(c, job.y, rows, c->Ho - rows);
    }
}

/* A ConvTranspose's spread row: x's row r at columns P + q·sw, zeros elsewhere, Ls floats, so that the input
 * seen by output column o through tap j is row[o + pl − j·dw + P] (a zero where no input column falls). */
static inline int grurt_ct_left(const grurt_conv2d *c) {
    int p = (c->kw - 1) * c->dw - c->pl;
    return p > 0 ? p : 0;
}

static inline size_t grurt_ct_row(const grurt_conv2d *c) {
    size_t spread = (size_t)(c->W - 1) * c->sw + 1, reach = (size_t)c->Wo + (c->pl > 0 ? c->pl : 0);
    return grurt_c2_round((spread > reach ? spread : reach) + grurt_ct_left(c));
}

/* Bytes of a ConvTranspose's scratch: one spread channel plane. */
static inline size_t grurt_conv_transpose2d_scratch(const grurt_conv2d *c) {
    return (size_t)c->H * grurt_ct_row(c) * sizeof(float) + 64;
}

/* One tap row of a ConvTranspose's output row: y[o] += w[j] · u[o − j·dw] for j < kw in order, the sum kept in a
 * register over the taps (one load and one store of y per 16 outputs, not per tap); the last Wo % 16 outputs a
 * tap at a time, as before (a scalar sum kept in a register is not the same bits there). */
GRURT_INLINE void grurt_ct_row_taps(float *restrict yr, const float *restrict u, const float *w, int kw, int dw,
                                    int Wo) {
    int o = 0;
    for (; o + 16 <= Wo; o += 16) {
        grurt_c2v acc = *(const grurt_c2v *)(yr + o);
        for (int j = 0; j < kw; ++j) acc += w[j] * *(const grurt_c2v *)(u + o - j * dw);
        *(grurt_c2v *)(yr + o) = acc;
    }
    for (int j = 0; j < kw; ++j) {
        const float wv = w[j];
        const float *restrict uj = u - j * dw;
        for (int q = o; q < Wo; ++q) yr[q] += wv * uj[q];
    }
}

/* ConvTranspose of N images x (N, C, H, W) into y (N, M, Ho, Wo), W (C, Mg, kh, kw) as given:
 * y[g·Mg + m, r·sh + i·dh − pt, q·sw + j·dw − pl] += x[g·Cg + c, r, q] · W[g·Cg + c, m, i, j],
 * the positions outside [0, Ho) × [0, Wo) dropped (pads), then the bias and the activation. Each output's
 * sum: the bias, then over c, and (i, j) in order (the zeros between spread columns add nothing). `scratch`:
 * grurt_conv_transpose2d_scratch(c) bytes. */
GRURT_HOT static void grurt_conv_transpose2d_run(const grurt_conv2d *c, int N, const float *x, float *y,
                                                 void *scratch) {
    /* the fields in locals: stores through y may alias *c for a compiler without strict aliasing */
    const int G = c->groups, Cg = c->C / G, Mg = c->M / G, kh = c->kh, kw = c->kw, Ho = c->Ho, Wo = c->Wo;
    const int H = c->H, W = c->W, sh = c->sh, sw = c->sw, dh = c->dh, dw = c->dw, pt = c->pt, pl = c->pl, M = c->M;
    const int P = grurt_ct_left(c);
    const size_t Ls = grurt_ct_row(c), in_plane = (size_t)H * W, out_plane = (size_t)Ho * Wo;
    const float *wt = c->wt, *bias = c->bias;
    float *spread = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    memset(spread, 0, (size_t)H * Ls * sizeof(float));      /* the zeros between columns stay zero */
    for (int n = 0; n < N; ++n) {
        const float *xn = x + (size_t)n * c->C * in_plane;
        float *yn = y + (size_t)n * M * out_plane;
        for (int o = 0; o < M; ++o) {
            float b = bias ? bias[o] : 0.0f;
            for (size_t p = 0; p < out_plane; ++p) yn[o * out_plane + p] = b;
        }
        for (int g = 0; g < G; ++g)
            for (int ci = 0; ci < Cg; ++ci) {
                const float *xc = xn + (size_t)(g * Cg + ci) * in_plane;
                for (int r = 0; r < H; ++r) {
                    float *row = spread + (size_t)r * Ls + P;
                    const float *xr = xc + (size_t)r * W;
                    if (sw == 1)
                        memcpy(row, xr, (size_t)W * sizeof(float));
                    else
                        for (int q = 0; q < W; ++q) row[(size_t)q * sw] = xr[q];
                }
                for (int m = 0; m < Mg; ++m) {
                    float *yc = yn + (size_t)(g * Mg + m) * out_plane;
                    const float *w = wt + ((size_t)(g * Cg + ci) * Mg + m) * kh * kw;
                    for (int ro = 0; ro < Ho; ++ro) {
                        float *restrict yr = yc + (size_t)ro * Wo;
                        for (int i = 0; i < kh; ++i) {
                            int t = ro + pt - i * dh, r = sh == 1 ? t : t / sh;     /* t = r·sh */
                            if (t < 0 || (sh != 1 && t % sh) || r >= H) continue;
                            grurt_ct_row_taps(yr, spread + (size_t)r * Ls + P + pl, w + i * kw, kw, dw, Wo);
                        }
                    }
                }
            }
        if (c->act.kind != ACT_LINEAR)
            for (int o = 0; o < M; ++o) grurt_activate(&c->act, yn + o * out_plane, (int)out_plane);
    }
}

#endif
