/* A grouped linear of constant weights (DeepFilterNet's GroupedLinearEinsum: the ONNX Einsum
 * "...gi,gih->...gh"), with an optional activation, for grurt.tensor_passes:
 *
 *     y[r, g, h] = act( Σ_i x[r, g, i] · W[g, i, h] )        r < rows, g < G, i < I, h < H
 *
 * x and y contiguous. W is packed once per group as (I, Hp), Hp = H rounded up to 16 with zero
 * columns, so that every run of 16 outputs h is one vector. Per group (its weights stay in L1
 * across the rows) and run of 16 outputs, up to 4 rows at a time in registers; each row's sum
 * over i is four partial sums (i mod 4) added at the end whatever the number of rows, so a row's
 * result does not depend on the call's other rows (a stream's frame = the same frame in a block).
 * Included after _gru_math.h (activations, GRURT_HOT) and _conv2d.h (grurt_c2v).
 */
#ifndef GRURT_GROUPED_H
#define GRURT_GROUPED_H

#include <stddef.h>

typedef struct {
    int groups, n_in, n_out, padded;   /* G, I, H, and H rounded up to 16 */
    const float *w;         /* per group (n_in, padded) */
    grurt_act act;
} grurt_grouped;

/* RB rows × 16 outputs: out[r·16 + q] = Σ_i x[r·ldx + i] · w[i·ldw + q]. */
GRURT_INLINE void grurt_gl_tile(const int RB, const float *x, size_t ldx, const float *w, int n_in, int ldw,
                                float *out) {
    grurt_c2v s[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) s[r][u] = (grurt_c2v){0};
    int i = 0;
    for (; i + 4 <= n_in; i += 4)
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            grurt_c2v wv = *(const grurt_c2v *)(w + (size_t)(i + u) * ldw);
#pragma GCC unroll 4
            for (int r = 0; r < RB; ++r) s[r][u] += x[r * ldx + i + u] * wv;
        }
    for (int u = 0; i < n_in; ++i, ++u) {
        grurt_c2v wv = *(const grurt_c2v *)(w + (size_t)i * ldw);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) s[r][u] += x[r * ldx + i] * wv;
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) *(grurt_c2v *)(out + 16 * r) = (s[r][0] + s[r][1]) + (s[r][2] + s[r][3]);
}

GRURT_HOT static void grurt_grouped_run(const grurt_grouped *c, size_t rows, const float *x, float *y) {
    const int G = c->groups, K = c->n_in, H = c->n_out, ldw = c->padded;
    const size_t ldx = (size_t)G * K, ldy = (size_t)G * H;
    float out[4 * 16];
    for (int g = 0; g < G; ++g) {
        const float *wg = c->w + (size_t)g * K * ldw;
        for (int h0 = 0; h0 < H; h0 += 16) {
            const int n = H - h0 < 16 ? H - h0 : 16;
            for (size_t r0 = 0; r0 < rows; r0 += 4) {
                const int rb = rows - r0 < 4 ? (int)(rows - r0) : 4;
                const float *xr = x + r0 * ldx + (size_t)g * K;
                switch (rb) {
                case 4: grurt_gl_tile(4, xr, ldx, wg + h0, K, ldw, out); break;
                case 3: grurt_gl_tile(3, xr, ldx, wg + h0, K, ldw, out); break;
                case 2: grurt_gl_tile(2, xr, ldx, wg + h0, K, ldw, out); break;
                default: grurt_gl_tile(1, xr, ldx, wg + h0, K, ldw, out); break;
                }
                for (int r = 0; r < rb; ++r) {
                    float *dst = y + (r0 + r) * ldy + (size_t)g * H + h0;
                    for (int q = 0; q < n; ++q) dst[q] = out[16 * r + q];
                }
            }
        }
    }
    if (c->act.kind != ACT_LINEAR)
        for (size_t r = 0; r < rows; ++r) grurt_activate(&c->act, y + r * ldy, (int)ldy);
}

#endif
