/* Layers over the features of each step and over the time axis of each sequence (issue 12):
 * layer normalisation, unit (L2) normalisation, global pooling over time, flattening of a
 * fixed-length sequence. Plain C over contiguous float32 rows; the equations are those of
 * grurt.spec (LayerNorm, UnitNorm, GlobalPool, Flatten), the numpy ones in grurt.reference.
 *
 * Sums run in double: a step's F features are summed once for the mean and once for the
 * variance (two passes, no cancellation), so the float32 result is within a few ulps of the
 * float64 reference whatever the offset of the features.
 */
#ifndef GRURT_NORM_H
#define GRURT_NORM_H

#include <math.h>
#include <stddef.h>
#include <string.h>

enum { GRURT_POOL_AVERAGE = 0, GRURT_POOL_MAX = 1 };

/* y = (x − μ) / √(σ² + eps) · gamma + beta per row of n features; μ, σ² (biased) of the row.
 * x and y may be the same buffer. */
static void grurt_layer_norm(const float* x, float* y, size_t rows, int n,
                             const float* gamma, const float* beta, float eps)
{
    for (size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * (size_t)n;
        float* yr = y + r * (size_t)n;
        double sum = 0.0, squares = 0.0;
        for (int j = 0; j < n; ++j)
            sum += xr[j];
        const double mean = sum / n;
        for (int j = 0; j < n; ++j) {
            const double d = xr[j] - mean;
            squares += d * d;
        }
        const float inv = (float)(1.0 / sqrt(squares / n + (double)eps));
        const float m = (float)mean;
        for (int j = 0; j < n; ++j)
            yr[j] = (xr[j] - m) * inv * gamma[j] + beta[j];
    }
}

/* y = x / max(‖x‖₂, eps) per row of n features; a row whose norm is 0 (and eps 0) gives zeros. */
static void grurt_unit_norm(const float* x, float* y, size_t rows, int n, float eps)
{
    for (size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * (size_t)n;
        float* yr = y + r * (size_t)n;
        double squares = 0.0;
        for (int j = 0; j < n; ++j)
            squares += (double)xr[j] * xr[j];
        double norm = sqrt(squares);
        if (norm < eps)
            norm = eps;
        const float inv = norm > 0.0 ? (float)(1.0 / norm) : 0.0f;
        for (int j = 0; j < n; ++j)
            yr[j] = xr[j] * inv;
    }
}

/* y[b] = mean or max of x[b, :L_b] over time: x (B, T, F) → y (B, F); L_b = lengths[b], or T
 * when lengths is NULL (every L_b ≥ 1: the callers check lengths). */
static void grurt_global_pool(const float* x, float* y, int B, int T, int F, const int* lengths, int mode)
{
    for (int b = 0; b < B; ++b) {
        const int L = lengths ? lengths[b] : T;
        const float* xb = x + (size_t)b * T * F;
        float* yb = y + (size_t)b * F;
        memcpy(yb, xb, (size_t)F * sizeof(float));
        if (mode == GRURT_POOL_MAX) {
            for (int t = 1; t < L; ++t)
                for (int j = 0; j < F; ++j) {
                    const float v = xb[(size_t)t * F + j];
                    /* NaN propagates, as in numpy's max and the frameworks' */
                    yb[j] = (v > yb[j] || v != v) ? v : yb[j];
                }
        } else {
            for (int j = 0; j < F; ++j) {
                double sum = 0.0;
                for (int t = 0; t < L; ++t)
                    sum += xb[(size_t)t * F + j];
                yb[j] = (float)(sum / L);
            }
        }
    }
}

/* x (B, T, F) → y (B, T·F), step-major, with steps past each sequence's length zero (the
 * value grurt gives padding). */
static void grurt_flatten(const float* x, float* y, int B, int T, int F, const int* lengths)
{
    const size_t row = (size_t)T * F;
    for (int b = 0; b < B; ++b) {
        const int L = lengths ? lengths[b] : T;
        memcpy(y + b * row, x + b * row, (size_t)L * F * sizeof(float));
        if (L < T)
            memset(y + b * row + (size_t)L * F, 0, (size_t)(T - L) * F * sizeof(float));
    }
}

#endif
