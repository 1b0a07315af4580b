/* Softmax and LogSoftmax over the rows of a contiguous float32 array (the last axis of a tensor).
 *
 * Per row of n: the max (NaN ignored there), exp(x − max) by grurt_exp (relative error < 3e-7,
 * _gru_math.h), their sum in double, then a scale by 1/sum (Softmax) or a shift by −log(sum)
 * (LogSoftmax). The loops run over LANES independent accumulators so that GCC vectorizes them
 * without -ffast-math (a plain reduction would keep its order, one element at a time); each clone
 * of GRURT_HOT gets its own vector width. So a Softmax output is within ~5e-7 relative of the
 * float64 one.
 *
 * Special rows give what numpy's and onnxruntime's softmax give: a NaN or +inf anywhere makes the
 * row NaN (the sum is NaN), a row of −inf only is NaN (−inf − −inf), a −inf among finite values is
 * 0 (−inf for LogSoftmax). exp(x − max) below e^−87 is 0 (its true value is below 2e-38).
 */
#ifndef GRURT_SOFTMAX_H
#define GRURT_SOFTMAX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_gru_math.h"

typedef float grurt_sm_f16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t grurt_sm_i16 __attribute__((vector_size(64), aligned(4)));
typedef float grurt_sm_f8 __attribute__((vector_size(32), aligned(4)));
typedef double grurt_sm_d8 __attribute__((vector_size(64), aligned(4)));

/* the largest of x[0..n), NaN ignored (−inf for none); vector lanes: GCC keeps a scalar max
 * reduction in order without -ffast-math, one element at a time */
GRURT_INLINE float grurt_row_max(const float *x, size_t n) {
    float m = -INFINITY;
    size_t i = 0;
    if (n >= 16) {
        grurt_sm_f16 top = *(const grurt_sm_f16 *)x;
        for (i = 16; i + 16 <= n; i += 16) {
            grurt_sm_f16 v = *(const grurt_sm_f16 *)(x + i);
            grurt_sm_i16 more = v > top;
            top = (grurt_sm_f16)(((grurt_sm_i16)v & more) | ((grurt_sm_i16)top & ~more));
        }
        for (int j = 0; j < 16; ++j) m = top[j] > m ? top[j] : m;
    }
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

/* y[i] = exp(x[i] − m) for i < n: the difference's rounding error (exact by 2Sum) corrects the
 * exponential, exp(d + err) = exp(d)·(1 + err), so the result is as accurate as grurt_exp however
 * far x is below m. Differences of −inf or NaN, or below −87 (exp 0), take no correction. */
GRURT_INLINE void grurt_exp_shifted(const float *x, float m, float *y, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        float d = x[i] - m;
        float back = d - x[i];
        float err = (x[i] - (d - back)) + (-m - back);
        err = d > -87.0f ? err : 0.0f;
        float e = grurt_exp(d);
        y[i] = e + e * err;
    }
}

/* the sum of y[0..n) in double (two vectors of 8 lanes, then the rest) */
GRURT_INLINE double grurt_row_sum(const float *y, size_t n) {
    grurt_sm_d8 a = {0}, b = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a += __builtin_convertvector(*(const grurt_sm_f8 *)(y + i), grurt_sm_d8);
        b += __builtin_convertvector(*(const grurt_sm_f8 *)(y + i + 8), grurt_sm_d8);
    }
    a += b;
    double s = 0.0;
    for (int j = 0; j < 8; ++j) s += a[j];
    for (; i < n; ++i) s += y[i];
    return s;
}

#define GRURT_SOFTMAX_CHUNK 256

/* softmax (log_softmax = 0) or log-softmax (1) of each of ``rows`` rows of n floats; y may be x. */
GRURT_HOT static void grurt_softmax_rows(const float *x, float *y, size_t rows, size_t n, int log_softmax) {
    float chunk[GRURT_SOFTMAX_CHUNK];
    for (size_t r = 0; r < rows; ++r) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        const float m = grurt_row_max(xr, n);
        double s = 0.0;
        if (log_softmax) {       /* the exps go to a chunk on the stack: y is written once, at the end */
            for (size_t i = 0; i < n; i += GRURT_SOFTMAX_CHUNK) {
                size_t count = n - i < GRURT_SOFTMAX_CHUNK ? n - i : GRURT_SOFTMAX_CHUNK;
                grurt_exp_shifted(xr + i, m, chunk, count);
                s += grurt_row_sum(chunk, count);
            }
            const float shift = (float)log(s);
            for (size_t i = 0; i < n; ++i) yr[i] = (xr[i] - m) - shift;
        } else {
            grurt_exp_shifted(xr, m, yr, n);
            const float scale = (float)(1.0 / grurt_row_sum(yr, n));
            for (size_t i = 0; i < n; ++i) yr[i] *= scale;
        }
    }
}

#endif
