/* The data movement and broadcast arithmetic of the native executor (grurt.tensor_native, _native.pxi):
 * a strided copy (Transpose, Slice, Concat, Split, a GRU's layout changes) and a float32 Add, Sub, Mul or Div
 * with broadcasting, each over an N-d index space whose adjacent dims the planner merged where every operand
 * allows it (a contiguous copy is one memcpy, a same-shaped Add one loop). Strides are in bytes, any sign;
 * the shape has no zero dim. Each element is one IEEE operation on its two operands (no contraction, no
 * reassociation): the bits numpy's ufuncs give. Included after _gru_math.h (GRURT_HOT).
 */
#ifndef GRURT_NATIVE_H
#define GRURT_NATIVE_H

#include <stddef.h>
#include <string.h>

#define GRURT_NATIVE_DIMS 8

typedef struct {
    int nd;                                 /* 1 .. GRURT_NATIVE_DIMS */
    ptrdiff_t shape[GRURT_NATIVE_DIMS];
    ptrdiff_t a[GRURT_NATIVE_DIMS];         /* strides of the source (copy) or the first operand */
    ptrdiff_t b[GRURT_NATIVE_DIMS];         /* of the second operand (binary) */
    ptrdiff_t y[GRURT_NATIVE_DIMS];         /* of the destination */
} grurt_strided;

enum { GRURT_ADD = 0, GRURT_SUB, GRURT_MUL, GRURT_DIV };

/* Steps the outer index (all dims but the last) of s, moving the three pointers; 0 once every index is done. */
static inline int grurt_native_next(const grurt_strided *s, ptrdiff_t *index, const char **a, const char **b,
                                    char **y) {
    for (int d = s->nd - 2; d >= 0; --d) {
        if (++index[d] < s->shape[d]) {
            *a += s->a[d];
            *b += s->b[d];
            *y += s->y[d];
            return 1;
        }
        index[d] = 0;
        *a -= s->a[d] * (s->shape[d] - 1);
        *b -= s->b[d] * (s->shape[d] - 1);
        *y -= s->y[d] * (s->shape[d] - 1);
    }
    return 0;
}

static void grurt_native_copy(const grurt_strided *s, size_t itemsize, const char *src, char *dst) {
    ptrdiff_t index[GRURT_NATIVE_DIMS] = {0};
    const int last = s->nd - 1;
    const ptrdiff_t n = s->shape[last], sa = s->a[last], sy = s->y[last];
    const char *unused = src;
    do {
        if (sa == (ptrdiff_t)itemsize && sy == (ptrdiff_t)itemsize) {
            memcpy(dst, src, (size_t)n * itemsize);
        } else if (itemsize == 4) {
            for (ptrdiff_t i = 0; i < n; ++i) memcpy(dst + i * sy, src + i * sa, 4);
        } else if (itemsize == 8) {
            for (ptrdiff_t i = 0; i < n; ++i) memcpy(dst + i * sy, src + i * sa, 8);
        } else {
            for (ptrdiff_t i = 0; i < n; ++i) memcpy(dst + i * sy, src + i * sa, itemsize);
        }
    } while (grurt_native_next(s, index, &src, &unused, &dst));
}

#define GRURT_NATIVE_LOOPS(OP)                                                                   \
    if (sa == 4 && sb == 4 && sy == 4) {                                                          \
        for (ptrdiff_t i = 0; i < n; ++i) y[i] = a[i] OP b[i];                                    \
    } else if (sa == 4 && sb == 0 && sy == 4) {                                                   \
        const float v = b[0];                                                                     \
        for (ptrdiff_t i = 0; i < n; ++i) y[i] = a[i] OP v;                                       \
    } else if (sa == 0 && sb == 4 && sy == 4) {                                                   \
        const float v = a[0];                                                                     \
        for (ptrdiff_t i = 0; i < n; ++i) y[i] = v OP b[i];                                       \
    } else {                                                                                      \
        for (ptrdiff_t i = 0; i < n; ++i)                                                         \
            *(float *)((char *)y + i * sy) = *(const float *)((const char *)a + i * sa)           \
                OP *(const float *)((const char *)b + i * sb);                                    \
    }

/* One run of n elements of y = a OP b (strides in bytes). y may be a or b exactly (in place), never
 * another overlap (the planner writes in place only into an operand no other one shares memory with). */
GRURT_HOT static void grurt_native_row(int op, ptrdiff_t n, const float *a, ptrdiff_t sa, const float *b,
                                       ptrdiff_t sb, float *y, ptrdiff_t sy) {
    switch (op) {
    case GRURT_ADD: GRURT_NATIVE_LOOPS(+) break;
    case GRURT_SUB: GRURT_NATIVE_LOOPS(-) break;
    case GRURT_MUL: GRURT_NATIVE_LOOPS(*) break;
    default: GRURT_NATIVE_LOOPS(/) break;
    }
}

static void grurt_native_binary(const grurt_strided *s, int op, const char *a, const char *b, char *y) {
    ptrdiff_t index[GRURT_NATIVE_DIMS] = {0};
    const int last = s->nd - 1;
    do {
        grurt_native_row(op, s->shape[last], (const float *)a, s->a[last], (const float *)b, s->b[last],
                         (float *)y, s->y[last]);
    } while (grurt_native_next(s, index, &a, &b, &y));
}

#endif
