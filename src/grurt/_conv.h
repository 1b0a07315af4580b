/* Layers over time: Conv1D, Pool1D, ZeroPad1D (grurt.spec). Included after _gru_math.h,
 * whose packed-panel product grurt_gemm and activations they use.
 *
 * Every function here works on one sequence: x (T, C) row-major, y (T_out, O) row-major;
 * the caller loops over the batch. Nothing is allocated: the caller passes scratch.
 *
 * Conv1D (cross-correlation, as every framework computes it):
 *
 *     y[t, o] = act(b[o] + Σ_j Σ_c W[o, c, j] · xp[t·s + j·d, g·Cg + c])      g = o / Og
 *
 * where xp is x with `left` and `right` zero frames added. With groups = 1 and dilation 1 the
 * k frames a window reads, xp[t·s .. t·s + k − 1], are k·C consecutive floats of a row-major
 * xp: the whole convolution is ONE product of the strided matrix (row t starts at xp + t·s·C,
 * k·C long, ldx = s·C) with W reordered (O, k, C) and packed into panels at plan time. No
 * im2col: the rows overlap in memory. With dilation d > 1 the taps are k such products of
 * C columns each (row t of tap j starts at xp + (t·s + j·d)·C), summed. Grouped and
 * depthwise convolutions run a direct loop vectorized over the output channels of a group
 * (or over the channels, depthwise).
 */
#ifndef GRURT_CONV_H
#define GRURT_CONV_H

#include <string.h>

typedef struct {
    int C, O, k, stride, dilation, groups;
    int left, right;            /* zero frames; same_upper/lower: computed per call (grurt_same_pads) */
    int same;                   /* 0: explicit, 1: same_upper, 2: same_lower */
    int ldy;                    /* floats per row of the product's output: O rounded up to panels */
    /* groups = 1: panels of W (O, k·C) (dilation 1) or k panel sets of (O, C) (dilation > 1) */
    const float *packed;
    long tap_stride;            /* floats of packed panels per tap (dilation > 1) */
    const float *bias_panels;   /* b padded to ldy */
    /* groups > 1: Wg[g][j][c][o'] = W[g·Og + o', c, j], vectorized over o' */
    const float *Wg;
    const float *bias;
    grurt_act act;
} grurt_conv;

/* SAME padding of T frames: ceil(T / s) outputs, total padding max((ceil(T/s) − 1)·s + span − T, 0),
 * the odd frame at the end (upper) or at the start (lower). */
static inline void grurt_same_pads(int T, int stride, int span, int lower, int *left, int *right) {
    int out = (T + stride - 1) / stride;
    int total = (out - 1) * stride + span - T;
    if (total < 0) total = 0;
    int small = total / 2, large = total - total / 2;
    *left = lower ? large : small;
    *right = lower ? small : large;
}

static inline int grurt_window_steps(int T, int left, int right, int span, int stride) {
    int padded = T + left + right;
    return padded < span ? 0 : (padded - span) / stride + 1;
}

static inline void grurt_conv_pads(const grurt_conv *c, int T, int *left, int *right) {
    if (c->same) grurt_same_pads(T, c->stride, (c->k - 1) * c->dilation + 1, c->same == 2, left, right);
    else { *left = c->left; *right = c->right; }
}

/* x (T, C) with `left` and `right` zero frames, into xp ((T + left + right) · C floats). */
static inline void grurt_pad_frames(int T, int C, int left, int right, const float *x, float *xp) {
    memset(xp, 0, (size_t)left * C * sizeof(float));
    memcpy(xp + (size_t)left * C, x, (size_t)T * C * sizeof(float));
    memset(xp + (size_t)(left + T) * C, 0, (size_t)right * C * sizeof(float));
}

/* Floats of scratch grurt_conv_seq needs for an input of T frames: the padded input and, when
 * the product's rows are wider than O (or taps are summed), its output rows. */
static inline size_t grurt_conv_scratch(const grurt_conv *c, int T) {
    int left, right;
    grurt_conv_pads(c, T, &left, &right);
    int out = grurt_window_steps(T, left, right, (c->k - 1) * c->dilation + 1, c->stride);
    return (size_t)(T + left + right) * c->C + 2 * (size_t)out * c->ldy + 64;
}

/* The convolution of one sequence x (T, C) into y (T_out, O), T_out >= 1 (checked by the caller).
 * `scratch` holds grurt_conv_scratch(c, T) floats, 64-byte aligned. */
static void grurt_conv_seq(const grurt_conv *c, int T, const float *x, float *y, float *scratch) {
    int left, right, C = c->C, O = c->O, k = c->k, s = c->stride, d = c->dilation;
    grurt_conv_pads(c, T, &left, &right);
    int Tp = T + left + right;
    int out = grurt_window_steps(T, left, right, (k - 1) * d + 1, s);
    const float *xp = x;
    float *rest = scratch;
    if (left || right) {
        grurt_pad_frames(T, C, left, right, x, scratch);
        xp = scratch;
        rest = scratch + (((size_t)Tp * C + 15) & ~(size_t)15);
    }
    int n_panels = c->ldy / GRURT_PANEL;
    if (c->groups == 1) {
        /* rows straight into y when they are exactly O wide, else into panel-wide rows */
        int direct = c->ldy == O;
        float *acc = direct ? y : rest;
        if (d == 1) {
            /* y[t] = b + [xp[t·s], ..., xp[t·s + k − 1]] · W(O, k·C)ᵀ */
            grurt_gemm(out, k * C, n_panels, xp, s * C, c->packed, c->bias_panels, acc, c->ldy, 0);
        } else {
            float *tap = rest + (size_t)out * c->ldy;
            grurt_gemm(out, C, n_panels, xp, s * C, c->packed, c->bias_panels, acc, c->ldy, 0);
            for (int j = 1; j < k; ++j) {
                /* tap j: rows xp[t·s + j·d] */
                grurt_gemm(out, C, n_panels, xp + (size_t)j * d * C, s * C, c->packed + (size_t)j * c->tap_stride,
                           NULL, tap, c->ldy, 0);
                for (size_t i = 0; i < (size_t)out * c->ldy; ++i) acc[i] += tap[i];
            }
        }
        if (!direct)
            for (int t = 0; t < out; ++t) memcpy(y + (size_t)t * O, acc + (size_t)t * c->ldy, O * sizeof(float));
    } else {
        int G = c->groups, Cg = C / G, Og = O / G;
        for (int t = 0; t < out; ++t) {
            float *yr = y + (size_t)t * O;
            memcpy(yr, c->bias, O * sizeof(float));
            if (Cg == 1 && Og == 1) {
                /* depthwise: vectorized over the channels */
                for (int j = 0; j < k; ++j) {
                    const float *xr = xp + (size_t)(t * s + j * d) * C, *w = c->Wg + (size_t)j * C;
                    for (int o = 0; o < O; ++o) yr[o] += w[o] * xr[o];
                }
                continue;
            }
            for (int g = 0; g < G; ++g) {
                float *yg = yr + (size_t)g * Og;
                for (int j = 0; j < k; ++j) {
                    const float *xr = xp + (size_t)(t * s + j * d) * C + (size_t)g * Cg;
                    const float *w = c->Wg + ((size_t)g * k + j) * Cg * Og;
                    for (int ci = 0; ci < Cg; ++ci) {
                        float xv = xr[ci];
                        const float *wc = w + (size_t)ci * Og;
                        for (int o = 0; o < Og; ++o) yg[o] += xv * wc[o];
                    }
                }
            }
        }
    }
    if (c->act.kind == ACT_SOFTMAX)      /* per frame */
        for (int t = 0; t < out; ++t) grurt_activate(&c->act, y + (size_t)t * O, O);
    else if (c->act.kind != ACT_LINEAR)
        grurt_activate(&c->act, y, out * O);
}

/* One streaming step of a causal Conv1D (stride 1, padding ((k − 1)·d, 0)) for one stream:
 * `history` holds span = (k − 1)·d + 1 frames of C floats, the last span − 1 input frames
 * in its rows 1 .. span − 1 (row 0 is spare). The frames move up by one, the new frame goes
 * last, and the one output frame is computed from the buffer: no padding, one window. */
static void grurt_conv_step(const grurt_conv *c, float *history, const float *frame, float *y, float *scratch) {
    int span = (c->k - 1) * c->dilation + 1;
    memmove(history, history + c->C, (size_t)(span - 1) * c->C * sizeof(float));
    memcpy(history + (size_t)(span - 1) * c->C, frame, c->C * sizeof(float));
    grurt_conv c1 = *c;
    c1.left = c1.right = 0;
    c1.same = 0;
    grurt_conv_seq(&c1, span, history, y, scratch);
}

/* Pool1D over one sequence x (T, F): window t covers frames t·stride − left .. + size − 1,
 * clipped to the real ones; max ignores padding, average divides by size (include_pad) or
 * by the real frames in the window. */
static void grurt_pool_seq(int T, int F, const float *x, int size, int stride, int left, int out, int is_max,
                           int include_pad, float *y) {
    for (int t = 0; t < out; ++t) {
        int start = t * stride - left, lo = start < 0 ? 0 : start, hi = start + size > T ? T : start + size;
        float *yr = y + (size_t)t * F;
        memcpy(yr, x + (size_t)lo * F, F * sizeof(float));
        for (int u = lo + 1; u < hi; ++u) {
            const float *xr = x + (size_t)u * F;
            if (is_max)
                for (int f = 0; f < F; ++f) yr[f] = xr[f] > yr[f] ? xr[f] : yr[f];
            else
                for (int f = 0; f < F; ++f) yr[f] += xr[f];
        }
        if (!is_max) {
            float scale = 1.0f / (float)(include_pad ? size : hi - lo);
            for (int f = 0; f < F; ++f) yr[f] *= scale;
        }
    }
}

#endif
