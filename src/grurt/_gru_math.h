/* Vectorizable float32 math for the GRU kernels: activations, the fused gate pass and the
 * register-blocked matrix products over weights packed at load.
 *
 * The portable part is plain C that GCC/Clang auto-vectorize, so the same source builds on
 * x86-64 and aarch64. On x86-64 with GCC the hot functions are compiled three times
 * (AVX-512, AVX2+FMA, baseline SSE2) and picked at load time by the dynamic loader
 * (target_clones); the gate pass also exists in AVX2 and AVX-512 intrinsics, and a few
 * products only for AVX-512 (8-row tiles, one pass for H <= 64), chosen at run time by
 * grurt_x86_level(); so a wheel built here runs on any x86-64 CPU. Building with
 * -DGRURT_NO_AVX512 leaves the AVX-512 code out (CI runs the tests on that build too).
 * On aarch64 the gate pass and the products exist in NEON intrinsics (NEON is part of the
 * base ISA: no run-time check); -DGRURT_NO_NEON builds the portable C there instead.
 *
 * Accuracy of the fast functions against float64, measured over 1e7 points in [-20, 20]
 * (tests/test_activations.py re-checks the bounds):
 *   grurt_exp:      relative error < 3e-7
 *   sigmoid:        absolute error < 2.5e-7 (2.1e-7 measured) in the fused gate pass;
 *                   relative error < 3e-7 elsewhere (Dense and Activation layers, other gates)
 *   tanh:           absolute error < 5e-7   (4.0e-7 measured without FMA, 3.3e-7 with)
 */
#ifndef GRURT_GRU_MATH_H
#define GRURT_GRU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(GRURT_NO_CLONES)
#define GRURT_X86_DISPATCH 1
#ifdef GRURT_NO_AVX512
/* a build that runs on any CPU what a CPU without AVX-512 runs (CI tests it) */
#define GRURT_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GRURT_X86_AVX512 1
#define GRURT_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#else
#define GRURT_HOT
#endif
#if defined(__aarch64__) && !defined(GRURT_NO_NEON)
#define GRURT_NEON 1
#include <arm_neon.h>
#endif
/* Helpers are forced inline so that each clone of a hot function gets its own copy,
 * compiled for the same instruction set (same FMA contraction, same vector width). */
#define GRURT_INLINE static inline __attribute__((always_inline))

/* Activation kinds, declared here only: _kernels.pyx maps the spec's names onto these constants
 * (ACTIVATION_CODES). */
enum {
    ACT_LINEAR = 0, ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_SOFTSIGN, ACT_SOFTPLUS,
    ACT_HARD_SIGMOID, ACT_LEAKY_RELU, ACT_ELU, ACT_AFFINE, ACT_SCALED_TANH,
    ACT_THRESHOLDED_RELU, ACT_SOFTMAX,
    ACT_GELU, ACT_SILU, ACT_MISH, ACT_SELU, ACT_HARD_SILU, ACT_CLIP
};

typedef struct {
    int kind;
    float alpha, beta;
} grurt_act;

/* exp(x) by Cody-Waite range reduction and a degree-6 polynomial; branch-free so it
 * vectorizes. Large inputs saturate at exp(88), tiny results flush to 0; NaN stays NaN. */
GRURT_INLINE float grurt_exp(float x) {
    float underflow = x < -87.0f ? 0.0f : 1.0f;   /* below, exp(x) is subnormal: flush to 0 */
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    /* n = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer held in the low mantissa
     * bits, without floorf (which does not vectorize on every target) */
    float shifted = x * 1.44269504088896341f + 12582912.0f;
    float n = shifted - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * underflow;
}

/* tanh as a 13/6-degree rational function of x on [-9, 9] (tanh is ±1 in float32 beyond):
 * tanh(x) ≈ x·p(x²)/q(x²) with the coefficients of Eigen's generic_fast_tanh_float (also used by
 * MLAS). One division and no exponential; odd, so tanh(-x) = -tanh(x)
 * exactly; NaN stays NaN.
 *
 * GRURT_TANH_PQ is the one statement of the coefficients and of their evaluation order
 * (Horner, highest power first), for grurt_tanh and for the intrinsics versions
 * (GRURT_DEFINE_TANH_SIMD): MADD(a, b, c) is a·b + c and K(c) makes a constant, so both
 * perform the same operations in the same order. */
#define GRURT_TANH_PQ(MADD, K, x2, p, q)                                                             \
    p = MADD(K(-2.76076847742355e-16f), x2, K(2.00018790482477e-13f));                              \
    p = MADD(p, x2, K(-8.60467152213735e-11f));                                                      \
    p = MADD(p, x2, K(5.12229709037114e-08f));                                                       \
    p = MADD(p, x2, K(1.48572235717979e-05f));                                                       \
    p = MADD(p, x2, K(6.37261928875436e-04f));                                                       \
    p = MADD(p, x2, K(4.89352455891786e-03f));                                                       \
    q = MADD(K(1.19825839466702e-06f), x2, K(1.18534705686654e-04f));                               \
    q = MADD(q, x2, K(2.26843463243900e-03f));                                                       \
    q = MADD(q, x2, K(4.89352518554385e-03f));
#define GRURT_TANH_MADD(a, b, c) ((a) * (b) + (c))
#define GRURT_TANH_CONST(c) (c)
/* |x| > 9, that is x² > 81: x·p/q is then beyond ±1 and clamped to it */
#define GRURT_TANH_MAX_X2 81.0f

GRURT_INLINE float grurt_tanh(float x) {
    float x2 = x * x, p, q;
    x2 = x2 > GRURT_TANH_MAX_X2 ? GRURT_TANH_MAX_X2 : x2;
    GRURT_TANH_PQ(GRURT_TANH_MADD, GRURT_TANH_CONST, x2, p, q)
    float t = x * p / q;
    t = t > 1.0f ? 1.0f : t;          /* rounding may step past ±1: gates must stay in [0, 1] */
    return t < -1.0f ? -1.0f : t;
}

/* sigmoid(x) = (1 + tanh(x/2)) / 2 */
GRURT_INLINE float grurt_sigmoid(float x) {
    return 0.5f + 0.5f * grurt_tanh(0.5f * x);
}

GRURT_INLINE float grurt_clampf(float v, float clip) {
    v = v > clip ? clip : v;
    return v < -clip ? -clip : v;
}

/* y[i] = act(y[i]) for i < n; softmax is applied to the whole vector. */
GRURT_HOT static void grurt_activate(const grurt_act *act, float *y, int n) {
    const float a = act->alpha, b = act->beta;
    int i;
    switch (act->kind) {
    case ACT_LINEAR: break;
    case ACT_SIGMOID:   /* with relative accuracy in the tails: a sigmoid output is a probability */
        for (i = 0; i < n; ++i) {
            float e = grurt_exp(-fabsf(y[i]));
            float s = 1.0f / (1.0f + e);
            y[i] = y[i] >= 0.0f ? s : (y[i] != y[i] ? y[i] : e * s);
        }
        break;
    case ACT_TANH: for (i = 0; i < n; ++i) y[i] = grurt_tanh(y[i]); break;
    case ACT_RELU: for (i = 0; i < n; ++i) y[i] = y[i] > 0.0f ? y[i] : (y[i] != y[i] ? y[i] : 0.0f); break;
    case ACT_SOFTSIGN: for (i = 0; i < n; ++i) y[i] = y[i] / (1.0f + fabsf(y[i])); break;
    case ACT_SOFTPLUS:
        for (i = 0; i < n; ++i) y[i] = (y[i] > 0.0f ? y[i] : 0.0f) + log1pf(grurt_exp(-fabsf(y[i])));
        break;
    case ACT_HARD_SIGMOID:
        for (i = 0; i < n; ++i) {
            float v = a * y[i] + b;
            v = v > 1.0f ? 1.0f : v;
            y[i] = v < 0.0f ? 0.0f : v;
        }
        break;
    case ACT_LEAKY_RELU: for (i = 0; i < n; ++i) y[i] = y[i] >= 0.0f ? y[i] : a * y[i]; break;
    case ACT_ELU:
        for (i = 0; i < n; ++i) {
            float v = y[i];
            /* exp(v) - 1 cancels near 0: a series there keeps relative accuracy */
            float neg = a * (fabsf(v) < 0.0625f ? v + v * v * (0.5f + v * (1.0f / 6 + v * (1.0f / 24 + v * (1.0f / 120))))
                                                : grurt_exp(v) - 1.0f);
            y[i] = v >= 0.0f ? v : neg;
        }
        break;
    case ACT_AFFINE: for (i = 0; i < n; ++i) y[i] = a * y[i] + b; break;
    case ACT_SCALED_TANH: for (i = 0; i < n; ++i) y[i] = a * grurt_tanh(b * y[i]); break;
    case ACT_THRESHOLDED_RELU: for (i = 0; i < n; ++i) y[i] = y[i] > a ? y[i] : 0.0f; break;
    /* Keras 3 / PyTorch activations: libm where accuracy needs it (Dense and Activation layers,
     * not the fused gate pass); each within a few float32 ulps of its float64 formula */
    case ACT_GELU:      /* x·Φ(x) = x/2·erfc(−x/√2): no cancellation for x < 0 */
        for (i = 0; i < n; ++i) y[i] = 0.5f * y[i] * erfcf(-0.70710678118654752f * y[i]);
        break;
    case ACT_SILU:      /* x·sigmoid(x), the sigmoid as in ACT_SIGMOID */
        for (i = 0; i < n; ++i) {
            float e = grurt_exp(-fabsf(y[i]));
            float s = 1.0f / (1.0f + e);
            y[i] *= y[i] >= 0.0f ? s : e * s;
        }
        break;
    case ACT_MISH:      /* x·tanh(softplus(x)) */
        for (i = 0; i < n; ++i)
            y[i] *= tanhf((y[i] > 0.0f ? y[i] : 0.0f) + log1pf(grurt_exp(-fabsf(y[i]))));
        break;
    case ACT_SELU:      /* β·(x > 0 ? x : α(eˣ − 1)) */
        for (i = 0; i < n; ++i) y[i] = b * (y[i] > 0.0f ? y[i] : a * expm1f(y[i]));
        break;
    case ACT_HARD_SILU: /* x·relu6(x + 3)/6 */
        for (i = 0; i < n; ++i) {
            float v = y[i] + 3.0f;
            v = v > 6.0f ? 6.0f : (v < 0.0f ? 0.0f : v);
            y[i] = y[i] * v / 6.0f;
        }
        break;
    case ACT_CLIP: for (i = 0; i < n; ++i) y[i] = y[i] < a ? a : (y[i] > b ? b : y[i]); break;
    case ACT_SOFTMAX: {
        float m = y[0], s = 0.0f;
        for (i = 1; i < n; ++i) m = y[i] > m ? y[i] : m;
        for (i = 0; i < n; ++i) { y[i] = expf(y[i] - m); s += y[i]; }
        for (i = 0; i < n; ++i) y[i] /= s;
        break;
    }
    }
}

/* ---- the per-step gate pass -------------------------------------------------------
 * xp: the input projection of this step, [z r h] (3H), with Wb + Rb folded in for z and r,
 *     Wbh for h (and Rbh too when linear_before_reset = 0).
 * hr: h·Rᵀ of this step: [z r h] (3H) with Rb_h added to h for linear_before_reset = 1,
 *     [z r] for = 0.
 * h:  the state (H), updated in place.
 * gates: scratch of 3H floats.
 */

/* The common case, fused in one loop: sigmoid / tanh, no clip, linear_before_reset = 1.
 * It runs over whole blocks of GRURT_UNIT_BLOCK units, never a scalar remainder: h has room
 * for H rounded up to a block, and xp and hr are readable that far past each gate's H values
 * (the extra lanes compute unused numbers). */
#define GRURT_UNIT_BLOCK 16
#ifndef GRURT_NEON     /* (aarch64: grurt_gates_lbr1_neon, below) */
GRURT_HOT static void grurt_gates_lbr1_vectorized(int H, const float *restrict xp, const float *restrict hr,
                                                  float *restrict h) {
    int units = (H + GRURT_UNIT_BLOCK - 1) & -GRURT_UNIT_BLOCK;
    for (int j = 0; j < units; ++j) {
        float z = grurt_sigmoid(xp[j] + hr[j]);
        float r = grurt_sigmoid(xp[H + j] + hr[H + j]);
        float n = grurt_tanh(xp[2 * H + j] + r * hr[2 * H + j]);
        h[j] = n + z * (h[j] - n);
    }
}
#endif

#ifdef GRURT_X86_DISPATCH
#include <immintrin.h>
/* The same pass with AVX2 or AVX-512 intrinsics: the clamps become single min/max
 * instructions (GCC if-converts the C ones into compare-and-blend sequences). Same
 * operations in the same order as grurt_tanh (both expand GRURT_TANH_PQ; the C one's a·b + c
 * are contracted to FMAs in the AVX2 and AVX-512 clones) and grurt_sigmoid, so the results
 * equal the C pass's; NaN propagates the same way (vminps and vmaxps return their second operand when
 * either is NaN: a NaN x² becomes 81 and x·p/q NaN). */
#define GRURT_DEFINE_TANH_SIMD(NAME, ARCH, V, PS)                                                    \
__attribute__((target(ARCH))) GRURT_INLINE V NAME(V x) {                                             \
    V x2 = PS(min)(PS(mul)(x, x), PS(set1)(GRURT_TANH_MAX_X2)), p, q;                                \
    GRURT_TANH_PQ(PS(fmadd), PS(set1), x2, p, q)                                                     \
    V t = PS(div)(PS(mul)(x, p), q);                                                                 \
    return PS(max)(PS(set1)(-1.0f), PS(min)(PS(set1)(1.0f), t));                                     \
}
#define GRURT_PS8(op) _mm256_##op##_ps
GRURT_DEFINE_TANH_SIMD(grurt_tanh8, "arch=x86-64-v3", __m256, GRURT_PS8)

/* units j .. j+LANES-1 of the gate pass, loading and storing through LOAD / STORE */
#define GRURT_GATE_BLOCK(V, PS, TANH, LOAD, STORE) {                                                 \
    V half = PS(set1)(0.5f);                                                                         \
    V z = PS(fmadd)(half, TANH(PS(mul)(half, PS(add)(LOAD(xp + j), LOAD(hr + j)))), half);           \
    V r = PS(fmadd)(half, TANH(PS(mul)(half, PS(add)(LOAD(xp + H + j), LOAD(hr + H + j)))), half);   \
    V n = TANH(PS(fmadd)(r, LOAD(hr + 2 * H + j), LOAD(xp + 2 * H + j)));                            \
    STORE(h + j, PS(fmadd)(z, PS(sub)(LOAD(h + j), n), n));                                          \
}

/* AVX2: whole 8-unit blocks, with the padding of grurt_gates_lbr1_vectorized */
__attribute__((target("arch=x86-64-v3"))) static void grurt_gates_lbr1_avx2(
        int H, const float *restrict xp, const float *restrict hr, float *restrict h) {
    for (int j = 0; j < H; j += 8)
        GRURT_GATE_BLOCK(__m256, GRURT_PS8, grurt_tanh8, _mm256_loadu_ps, _mm256_storeu_ps)
}

/* the x86-64 level of this CPU: 4 (AVX-512), 3 (AVX2 + FMA) or 0; cached */
static int grurt_x86_level(void) {
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 0;
    }
    return level;
}
#endif

#ifdef GRURT_X86_AVX512
/* AVX-512: 16-unit blocks, the last partial block a masked 8- or 16-lane one */
#define GRURT_PS16(op) _mm512_##op##_ps
GRURT_DEFINE_TANH_SIMD(grurt_tanh16, "arch=x86-64-v4", __m512, GRURT_PS16)
#define GRURT_MASKED_LOAD16(ptr) _mm512_maskz_loadu_ps(mask16, ptr)
#define GRURT_MASKED_STORE16(ptr, v) _mm512_mask_storeu_ps(ptr, mask16, v)
#define GRURT_MASKED_LOAD8(ptr) _mm256_maskz_loadu_ps(mask8, ptr)
#define GRURT_MASKED_STORE8(ptr, v) _mm256_mask_storeu_ps(ptr, mask8, v)

__attribute__((target("arch=x86-64-v4"))) static void grurt_gates_lbr1_avx512(
        int H, const float *restrict xp, const float *restrict hr, float *restrict h) {
    int j = 0;
    for (; j + 16 <= H; j += 16)
        GRURT_GATE_BLOCK(__m512, GRURT_PS16, grurt_tanh16, _mm512_loadu_ps, _mm512_storeu_ps)
    if (H - j > 8) {
        __mmask16 mask16 = (__mmask16)((1u << (H - j)) - 1);
        GRURT_GATE_BLOCK(__m512, GRURT_PS16, grurt_tanh16, GRURT_MASKED_LOAD16, GRURT_MASKED_STORE16)
    } else if (H - j > 0) {
        __mmask8 mask8 = (__mmask8)((1u << (H - j)) - 1);
        GRURT_GATE_BLOCK(__m256, GRURT_PS8, grurt_tanh8, GRURT_MASKED_LOAD8, GRURT_MASKED_STORE8)
    }
}
#endif

#ifdef GRURT_NEON
/* NEON: 4-unit blocks, with the padding of grurt_gates_lbr1_vectorized. The same operations in
 * the same order as grurt_tanh and grurt_sigmoid, the a·b + c as FMAs: GCC contracts the C ones
 * on aarch64 (FMA is in the base ISA, -ffp-contract=fast), so the results equal the portable
 * pass's. vminq/vmaxq return NaN when either operand is NaN: NaN propagates as in the C. */
#define GRURT_NEON_MADD(a, b, c) vfmaq_f32(c, a, b)
GRURT_INLINE float32x4_t grurt_tanh4(float32x4_t x) {
    float32x4_t x2 = vminq_f32(vmulq_f32(x, x), vdupq_n_f32(GRURT_TANH_MAX_X2)), p, q;
    GRURT_TANH_PQ(GRURT_NEON_MADD, vdupq_n_f32, x2, p, q)
    float32x4_t t = vdivq_f32(vmulq_f32(x, p), q);
    return vmaxq_f32(vdupq_n_f32(-1.0f), vminq_f32(vdupq_n_f32(1.0f), t));
}

static void grurt_gates_lbr1_neon(int H, const float *restrict xp, const float *restrict hr, float *restrict h) {
    const float32x4_t half = vdupq_n_f32(0.5f);
    for (int j = 0; j < H; j += 4) {
        float32x4_t z = vfmaq_f32(half, half, grurt_tanh4(vmulq_f32(half, vaddq_f32(vld1q_f32(xp + j),
                                                                                      vld1q_f32(hr + j)))));
        float32x4_t r = vfmaq_f32(half, half, grurt_tanh4(vmulq_f32(half, vaddq_f32(vld1q_f32(xp + H + j),
                                                                                      vld1q_f32(hr + H + j)))));
        float32x4_t n = grurt_tanh4(vfmaq_f32(vld1q_f32(xp + 2 * H + j), r, vld1q_f32(hr + 2 * H + j)));
        vst1q_f32(h + j, vfmaq_f32(n, z, vsubq_f32(vld1q_f32(h + j), n)));
    }
}
#endif

static void grurt_gates_lbr1_fast(int H, const float *restrict xp, const float *restrict hr, float *restrict h) {
#ifdef GRURT_NEON
    grurt_gates_lbr1_neon(H, xp, hr, h);
#else
#ifdef GRURT_X86_AVX512
    if (grurt_x86_level() >= 4) {
        grurt_gates_lbr1_avx512(H, xp, hr, h);
        return;
    }
#endif
#ifdef GRURT_X86_DISPATCH
    if (grurt_x86_level() >= 3) {
        grurt_gates_lbr1_avx2(H, xp, hr, h);
        return;
    }
#endif
    grurt_gates_lbr1_vectorized(H, xp, hr, h);
#endif
}

/* Any activations and clip, linear_before_reset = 1. */
GRURT_HOT static void grurt_gates_lbr1(int H, const float *restrict xp, const float *restrict hr,
                                       float *restrict h, float *restrict gates,
                                       const grurt_act *f, const grurt_act *g, float clip) {
    int j;
    for (j = 0; j < 2 * H; ++j) gates[j] = xp[j] + hr[j];
    if (clip > 0.0f) for (j = 0; j < 2 * H; ++j) gates[j] = grurt_clampf(gates[j], clip);
    grurt_activate(f, gates, 2 * H);
    float *n = gates + 2 * H;
    for (j = 0; j < H; ++j) n[j] = xp[2 * H + j] + gates[H + j] * hr[2 * H + j];
    if (clip > 0.0f) for (j = 0; j < H; ++j) n[j] = grurt_clampf(n[j], clip);
    grurt_activate(g, n, H);
    for (j = 0; j < H; ++j) h[j] = n[j] + gates[j] * (h[j] - n[j]);
}

/* linear_before_reset = 0, first half: z and r into gates[0:2H], r⊙h into rh. */
GRURT_HOT static void grurt_gates_lbr0_zr(int H, const float *restrict xp, const float *restrict hr,
                                          const float *restrict h, float *restrict gates, float *restrict rh,
                                          const grurt_act *f, float clip) {
    int j;
    for (j = 0; j < 2 * H; ++j) gates[j] = xp[j] + hr[j];
    if (clip > 0.0f) for (j = 0; j < 2 * H; ++j) gates[j] = grurt_clampf(gates[j], clip);
    grurt_activate(f, gates, 2 * H);
    for (j = 0; j < H; ++j) rh[j] = gates[H + j] * h[j];
}

/* linear_before_reset = 0, second half: hn = (r⊙h)·Rhᵀ; n = g(xp_h + hn); h updated. */
GRURT_HOT static void grurt_gates_lbr0_h(int H, const float *restrict xp, const float *restrict hn,
                                         float *restrict h, float *restrict gates,
                                         const grurt_act *g, float clip) {
    int j;
    float *n = gates + 2 * H;
    for (j = 0; j < H; ++j) n[j] = xp[2 * H + j] + hn[j];
    if (clip > 0.0f) for (j = 0; j < H; ++j) n[j] = grurt_clampf(n[j], clip);
    grurt_activate(g, n, H);
    for (j = 0; j < H; ++j) h[j] = n[j] + gates[j] * (h[j] - n[j]);
}

/* ---- matrix products with weights packed at load -----------------------------------
 * Y = init + X · Aᵀ for X (rows, n_in) and A (n_out, n_in), with A packed at load
 * (_plan.pxi, pack_panels) into panels of GRURT_PANEL output columns: panel p, row k
 * holds A[p*GRURT_PANEL + c, k] for c < GRURT_PANEL, zero past n_out. ``init`` (one value
 * per column, padded; NULL for zeros) carries the biases. Rows of Y have room for
 * n_panels * GRURT_PANEL floats.
 *
 * Packing once at load is what beats a BLAS call here: sgemm packs its operands on every
 * call, and a GRU multiplies by the same weights at every time step.
 */
#define GRURT_PANEL 32
typedef float grurt_v8 __attribute__((vector_size(32), aligned(4)));

/* the four 8-float vectors of panel p of init, or zeros */
#define GRURT_INIT(init, p, i) ((init) ? ((const grurt_v8 *)((init) + (size_t)(p) * GRURT_PANEL))[i] \
                                       : (grurt_v8){0})

/* Every kernel below sums h·Rᵀ over k = 0, 1, ..., n_in - 1, or with ``backward`` over
 * k = n_in - 1, ..., 0. The GRU loop alternates the two from step to step: weights a little
 * larger than a cache level (R of H = 128 against L1, H = 1024 against L2) are then read
 * starting where the previous step stopped, while that part is still cached, which makes the
 * one-row product 4-6% faster. Each kernel applies the same order to every row, so a
 * sequence's result does not depend on the batch it runs in. */
#define GRURT_K(i) (backward ? n_in - 1 - (i) : (i))

#ifndef GRURT_NEON     /* (aarch64: the NEON kernels of the same names, below) */
/* One row: two panels per pass, so eight independent accumulators keep both FMA pipes busy;
 * backward also runs the passes last panel first. */
GRURT_INLINE void grurt_gemv_pass(int n_in, int two, const float *restrict x, const float *restrict packed,
                                  const float *restrict init, float *restrict y, int backward) {
    const grurt_v8 *a = (const grurt_v8 *)packed;
    const grurt_v8 *b = a + 4 * (size_t)n_in;
    grurt_v8 a0 = GRURT_INIT(init, 0, 0), a1 = GRURT_INIT(init, 0, 1);
    grurt_v8 a2 = GRURT_INIT(init, 0, 2), a3 = GRURT_INIT(init, 0, 3);
    grurt_v8 *out = (grurt_v8 *)y;
    if (two) {
        grurt_v8 b0 = GRURT_INIT(init, 1, 0), b1 = GRURT_INIT(init, 1, 1);
        grurt_v8 b2 = GRURT_INIT(init, 1, 2), b3 = GRURT_INIT(init, 1, 3);
        for (int i = 0; i < n_in; ++i) {
            int k = GRURT_K(i);
            const grurt_v8 *ak = a + 4 * (size_t)k, *bk = b + 4 * (size_t)k;
            float xk = x[k];
            a0 += xk * ak[0]; a1 += xk * ak[1]; a2 += xk * ak[2]; a3 += xk * ak[3];
            b0 += xk * bk[0]; b1 += xk * bk[1]; b2 += xk * bk[2]; b3 += xk * bk[3];
        }
        out[4] = b0; out[5] = b1; out[6] = b2; out[7] = b3;
    } else {
        for (int i = 0; i < n_in; ++i) {
            int k = GRURT_K(i);
            const grurt_v8 *ak = a + 4 * (size_t)k;
            float xk = x[k];
            a0 += xk * ak[0]; a1 += xk * ak[1]; a2 += xk * ak[2]; a3 += xk * ak[3];
        }
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

GRURT_INLINE void grurt_gemv_panels(int n_in, int n_panels, const float *restrict x,
                                    const float *restrict packed, const float *restrict init,
                                    float *restrict y, int backward) {
    int passes = (n_panels + 1) / 2;
    for (int i = 0; i < passes; ++i) {
        int p = 2 * (backward ? passes - 1 - i : i);
        grurt_gemv_pass(n_in, p + 1 < n_panels, x, packed + (size_t)p * n_in * GRURT_PANEL,
                        init ? init + (size_t)p * GRURT_PANEL : NULL, y + (size_t)p * GRURT_PANEL, backward);
    }
}

/* Several rows: tiles of 3 rows × 1 panel (twelve accumulators) reuse each weight vector
 * three times while the panel stays in L1; leftover rows go through the one-row kernel,
 * whose arithmetic per element is the same, so results do not depend on the batch. */
GRURT_HOT static void grurt_gemm_panels(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                                        const float *restrict packed, const float *restrict init,
                                        float *restrict y, int ldy, int backward) {
    int r = 0;
    for (; r + 2 < rows; r += 3) {
        const float *x0 = x + (size_t)r * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx;
        for (int p = 0; p < n_panels; ++p) {
            const grurt_v8 *w = (const grurt_v8 *)(packed + (size_t)p * n_in * GRURT_PANEL);
            grurt_v8 a0 = GRURT_INIT(init, p, 0), a1 = GRURT_INIT(init, p, 1);
            grurt_v8 a2 = GRURT_INIT(init, p, 2), a3 = GRURT_INIT(init, p, 3);
            grurt_v8 b0 = a0, b1 = a1, b2 = a2, b3 = a3, c0 = a0, c1 = a1, c2 = a2, c3 = a3;
            for (int i = 0; i < n_in; ++i) {
                int k = GRURT_K(i);
                const grurt_v8 *wk = w + 4 * (size_t)k;
                float s = x0[k], t = x1[k], u = x2[k];
                a0 += s * wk[0]; b0 += t * wk[0]; c0 += u * wk[0];
                a1 += s * wk[1]; b1 += t * wk[1]; c1 += u * wk[1];
                a2 += s * wk[2]; b2 += t * wk[2]; c2 += u * wk[2];
                a3 += s * wk[3]; b3 += t * wk[3]; c3 += u * wk[3];
            }
            grurt_v8 *y0 = (grurt_v8 *)(y + (size_t)r * ldy + (size_t)p * GRURT_PANEL);
            grurt_v8 *y1 = (grurt_v8 *)((float *)y0 + ldy), *y2 = (grurt_v8 *)((float *)y1 + ldy);
            y0[0] = a0; y0[1] = a1; y0[2] = a2; y0[3] = a3;
            y1[0] = b0; y1[1] = b1; y1[2] = b2; y1[3] = b3;
            y2[0] = c0; y2[1] = c1; y2[2] = c2; y2[3] = c3;
        }
    }
    for (; r < rows; ++r)
        grurt_gemv_panels(n_in, n_panels, x + (size_t)r * ldx, packed, init, y + (size_t)r * ldy, backward);
}

#else
/* NEON: ROWS rows × one panel of y = init + x·Aᵀ in 8·ROWS accumulators of 4 floats (24 of
 * the 32 vector registers for 3 rows). x is loaded four k at a time and each x[k] used by lane
 * (vfmaq_laneq_f32: no broadcast), the n_in % 4 k left over one at a time; backward reverses
 * each block of x and walks the weights' rows down, and ends with the k left over at the
 * bottom. So k runs in the order of GRURT_K, and every output is the chain of FMAs of the
 * portable kernels (which GCC contracts on aarch64): results equal theirs whatever the tile,
 * hence whatever the batch. */
GRURT_INLINE void grurt_neon_tile(const int ROWS, int n_in, const float *restrict x, int ldx,
                                  const float *restrict panel, const float *restrict init, float *restrict y,
                                  int ldy, int backward) {
    float32x4_t acc[24], xv[3];
#pragma GCC unroll 3
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) acc[8 * r + i] = init ? vld1q_f32(init + 4 * i) : vdupq_n_f32(0.0f);
    /* += x[k] (lane LANE of xv) times the panel's row k at w. One row loads four vectors per
     * instruction (ld1); with three rows the four registers that holds make GCC 12 spill
     * accumulators, so there the weight vectors come one at a time. */
#define GRURT_NEON_K(w, LANE)                                                                        \
    _Pragma("GCC unroll 2") for (int h = 0; h < 2; ++h) {                                            \
        float32x4x4_t w4;                                                                            \
        if (ROWS == 1) w4 = vld1q_f32_x4((w) + 16 * h);                                              \
        _Pragma("GCC unroll 4") for (int i = 0; i < 4; ++i) {                                        \
            float32x4_t wi = ROWS == 1 ? w4.val[i] : vld1q_f32((w) + 16 * h + 4 * i);                \
            _Pragma("GCC unroll 3") for (int r = 0; r < ROWS; ++r)                                   \
                acc[8 * r + 4 * h + i] = vfmaq_laneq_f32(acc[8 * r + 4 * h + i], wi, xv[r], LANE);   \
        }                                                                                            \
    }
    const int blocks = n_in / 4, left = n_in % 4;
    /* per block of four k: lane j of xv and the row at wk + j·row are the j-th k summed;
     * pointers move from block to block */
    const float *xk = x + (backward ? n_in - 4 : 0);
    const float *wk = panel + (size_t)(backward ? n_in - 1 : 0) * GRURT_PANEL;
    const long step = backward ? -4 : 4, row = backward ? -GRURT_PANEL : GRURT_PANEL;
    for (int b = 0; b < blocks; ++b, xk += step, wk += step * GRURT_PANEL) {
#pragma GCC unroll 3
        for (int r = 0; r < ROWS; ++r) {
            float32x4_t v = vld1q_f32(xk + (size_t)r * ldx);
            xv[r] = backward ? vextq_f32(vrev64q_f32(v), vrev64q_f32(v), 2) : v;
        }
        GRURT_NEON_K(wk, 0) GRURT_NEON_K(wk + row, 1) GRURT_NEON_K(wk + 2 * row, 2) GRURT_NEON_K(wk + 3 * row, 3)
    }
    for (int i = 0; i < left; ++i) {
        int k = backward ? left - 1 - i : 4 * blocks + i;
#pragma GCC unroll 3
        for (int r = 0; r < ROWS; ++r) xv[r] = vld1q_dup_f32(x + (size_t)r * ldx + k);
        GRURT_NEON_K(panel + (size_t)k * GRURT_PANEL, 0)
    }
#undef GRURT_NEON_K
#pragma GCC unroll 3
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) vst1q_f32(y + (size_t)r * ldy + 4 * i, acc[8 * r + i]);
}

/* One row: a panel at a time (8 accumulators), backward last panel first. (Two panels at a
 * time, 16 accumulators, made GCC 12 spill some: more instructions per FMA, not fewer.) */
static void grurt_gemv_panels(int n_in, int n_panels, const float *restrict x, const float *restrict packed,
                              const float *restrict init, float *restrict y, int backward) {
    for (int i = 0; i < n_panels; ++i) {
        int p = backward ? n_panels - 1 - i : i;
        grurt_neon_tile(1, n_in, x, 0, packed + (size_t)p * n_in * GRURT_PANEL,
                        init ? init + (size_t)p * GRURT_PANEL : NULL, y + (size_t)p * GRURT_PANEL, 0, backward);
    }
}

/* Several rows: tiles of 3 rows × 1 panel (24 accumulators), each weight vector used three
 * times; leftover rows through the one-row kernel. */
static void grurt_gemm_panels(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                              const float *restrict packed, const float *restrict init, float *restrict y,
                              int ldy, int backward) {
    int r = 0;
    for (; r + 2 < rows; r += 3)
        for (int p = 0; p < n_panels; ++p)
            grurt_neon_tile(3, n_in, x + (size_t)r * ldx, ldx, packed + (size_t)p * n_in * GRURT_PANEL,
                            init ? init + (size_t)p * GRURT_PANEL : NULL, y + (size_t)r * ldy + (size_t)p * GRURT_PANEL,
                            ldy, backward);
    for (; r < rows; ++r)
        grurt_gemv_panels(n_in, n_panels, x + (size_t)r * ldx, packed, init, y + (size_t)r * ldy, backward);
}
#endif

/* Batches: AVX-512 tiles of 8 rows × 1 panel (two 16-float vectors per row, sixteen
 * accumulators, each weight vector used eight times) where the CPU has it, the tiles above
 * for the rows left. Every output element is the same FMA sequence either way. */
#ifdef GRURT_X86_AVX512
typedef float grurt_v16 __attribute__((vector_size(64), aligned(4)));
#define GRURT_AVX512_ROWS 8

__attribute__((target("arch=x86-64-v4"))) static void grurt_gemm_rows8_avx512(
        int rows, int n_in, int n_panels, const float *restrict x, int ldx, const float *restrict packed,
        const float *restrict init, float *restrict y, int ldy, int backward) {
    for (int r = 0; r + GRURT_AVX512_ROWS <= rows; r += GRURT_AVX512_ROWS) {
        const float *x0 = x + (size_t)r * ldx;
        for (int p = 0; p < n_panels; ++p) {
            const grurt_v16 *w = (const grurt_v16 *)(packed + (size_t)p * n_in * GRURT_PANEL);
            grurt_v16 i0 = {0}, i1 = {0};
            if (init) {
                i0 = ((const grurt_v16 *)(init + (size_t)p * GRURT_PANEL))[0];
                i1 = ((const grurt_v16 *)(init + (size_t)p * GRURT_PANEL))[1];
            }
            grurt_v16 acc[2 * GRURT_AVX512_ROWS];
#pragma GCC unroll 8
            for (int i = 0; i < GRURT_AVX512_ROWS; ++i) { acc[2 * i] = i0; acc[2 * i + 1] = i1; }
            for (int j = 0; j < n_in; ++j) {
                int k = GRURT_K(j);
                grurt_v16 w0 = w[2 * (size_t)k], w1 = w[2 * (size_t)k + 1];
#pragma GCC unroll 8
                for (int i = 0; i < GRURT_AVX512_ROWS; ++i) {
                    float s = x0[(size_t)i * ldx + k];
                    acc[2 * i] += s * w0;
                    acc[2 * i + 1] += s * w1;
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < GRURT_AVX512_ROWS; ++i) {
                grurt_v16 *out = (grurt_v16 *)(y + (size_t)(r + i) * ldy + (size_t)p * GRURT_PANEL);
                out[0] = acc[2 * i];
                out[1] = acc[2 * i + 1];
            }
        }
    }
}

/* One row, every panel in a single pass: two 16-float accumulators per panel stay in the 32
 * AVX-512 registers for up to 6 panels (a GRU with H <= 64), so x is read once and each
 * accumulator's FMA chain is n_in long, not twice that as with two panels per pass. Every
 * output is the same FMA sequence as in grurt_gemv_panels. From one panel up: for the 2
 * panels of a GRU with H = 16 a streaming step took 82 ns instead of 126 (the two-panel pass
 * of grurt_gemv_panels), and Dense heads of up to 64 outputs take it too. */
#define GRURT_WIDE_MIN_PANELS 1
#define GRURT_WIDE_MAX_PANELS 6
#define GRURT_DEFINE_GEMV_WIDE(NP)                                                                   \
__attribute__((target("arch=x86-64-v4"))) static void grurt_gemv_wide_##NP(                          \
        int n_in, const float *restrict x, const float *restrict packed, const float *restrict init, \
        float *restrict y, int backward) {                                                           \
    const size_t panel = (size_t)n_in * GRURT_PANEL;                                                 \
    grurt_v16 acc[2 * NP];                                                                           \
    _Pragma("GCC unroll 12") for (int i = 0; i < 2 * NP; ++i)                                        \
        acc[i] = init ? ((const grurt_v16 *)init)[i] : (grurt_v16){0};                               \
    for (int i = 0; i < n_in; ++i) {                                                                 \
        int k = GRURT_K(i);                                                                          \
        const float *row = packed + (size_t)k * GRURT_PANEL;                                         \
        float xk = x[k];                                                                             \
        _Pragma("GCC unroll 6") for (int p = 0; p < NP; ++p) {                                       \
            acc[2 * p] += xk * ((const grurt_v16 *)(row + p * panel))[0];                            \
            acc[2 * p + 1] += xk * ((const grurt_v16 *)(row + p * panel))[1];                        \
        }                                                                                            \
    }                                                                                                \
    _Pragma("GCC unroll 12") for (int i = 0; i < 2 * NP; ++i) ((grurt_v16 *)y)[i] = acc[i];          \
}
GRURT_DEFINE_GEMV_WIDE(1)
GRURT_DEFINE_GEMV_WIDE(2)
GRURT_DEFINE_GEMV_WIDE(3)
GRURT_DEFINE_GEMV_WIDE(4)
GRURT_DEFINE_GEMV_WIDE(5)
GRURT_DEFINE_GEMV_WIDE(6)

typedef void (*grurt_gemv_fn)(int, const float *, const float *, const float *, float *, int);
static const grurt_gemv_fn grurt_gemv_wide[GRURT_WIDE_MAX_PANELS - GRURT_WIDE_MIN_PANELS + 1] = {
    grurt_gemv_wide_1, grurt_gemv_wide_2, grurt_gemv_wide_3, grurt_gemv_wide_4, grurt_gemv_wide_5,
    grurt_gemv_wide_6};
#endif

static void grurt_gemm(int rows, int n_in, int n_panels, const float *restrict x, int ldx,
                       const float *restrict packed, const float *restrict init, float *restrict y, int ldy,
                       int backward) {
#ifdef GRURT_X86_AVX512
    int avx512 = grurt_x86_level() >= 4;
    if (avx512 && rows >= GRURT_AVX512_ROWS) {
        int tiled = rows / GRURT_AVX512_ROWS * GRURT_AVX512_ROWS;
        grurt_gemm_rows8_avx512(tiled, n_in, n_panels, x, ldx, packed, init, y, ldy, backward);
        rows -= tiled;
        x += (size_t)tiled * ldx;
        y += (size_t)tiled * ldy;
    }
    if (avx512 && n_panels >= GRURT_WIDE_MIN_PANELS && n_panels <= GRURT_WIDE_MAX_PANELS) {
        for (int r = 0; r < rows; ++r)
            grurt_gemv_wide[n_panels - GRURT_WIDE_MIN_PANELS](n_in, x + (size_t)r * ldx, packed, init,
                                                               y + (size_t)r * ldy, backward);
        return;
    }
#endif
    grurt_gemm_panels(rows, n_in, n_panels, x, ldx, packed, init, y, ldy, backward);
}


/* ---- small GRU layers: a sequence's steps with the state in registers --------------------
 * For H = 8, 16, 24, 32 (sigmoid/tanh, no clip, linear_before_reset = 1, float32 panels) a step
 * is a short chain of latency: the product h·Rᵀ, the reset gate, the candidate, the new state,
 * each waiting for the one before. The general loop stretches it with calls, buffers and
 * reloads of the state. Here one function per H, compiled for AVX2 and for AVX-512 (32
 * registers, vrangeps clamps, 16-lane vectors for H = 32), runs all the steps of one sequence
 * with the state in registers. Per step, for each gate's sums a (z, r: x_t·Wᵀ + biases, the
 * projection, which does not wait for the state, then + h·Rᵀ), c = x_t·W_hᵀ + biases and
 * d = h·R_hᵀ + Rb_h (the recurrent sums over k in interleaved partial sums, see
 * GRURT_DEFINE_GRU_SMALL):
 *
 *   s   = sigmoid(a) − 1/2                  (tanh(a/2)/2 as one rational function of a)
 *   n   = tanh(c + d/2 + s_r·d)            (= tanh(c + r·d): d/2 is added off the chain)
 *   h'  = (1/2 − s_z)·n + (1/2 + s_z)·h    (= n + z·(h − n): one FMA once n is known)
 *
 * with GRURT_TANH_PQ's rational function evaluated for latency (GRURT_DEFINE_RATIONAL). Every
 * step of every sequence runs the same operations, so a block gives the bits of single steps,
 * a session in a pool those of its own stream, and a sequence those it has alone; results are
 * within the float64 reference's tolerance (tests/test_speed_paths.py) but not the bits of the
 * general loop. x86-64 builds with dispatch only (grurt_gru_small_kernel); elsewhere the
 * general loop runs these layers. */
typedef struct {
    const float *W;      /* packed Wᵀ of one direction, n_in rows per panel */
    const float *R;      /* packed Rᵀ, H rows per panel */
    const float *bias;   /* the projection's folded biases [z r h] */
    const float *rinit;  /* [0 0 Rb_h] */
    int n_in;
} grurt_small_gru;

#define GRURT_SMALL_MAX_H 32

#ifdef GRURT_X86_DISPATCH
/* NAME(x) = x·p(x²)/q(x²) with GRURT_TANH_PQ's coefficients, x first clamped at ±X_MAX, p's
 * coefficient of y^i scaled by SP^i and q's by SQ·SP^i: with SP = SQ = 1, X_MAX = 9, tanh(x);
 * with SP = 1/4, SQ = 4, X_MAX = 18, tanh(x/2)/2 = sigmoid(x) − 1/2 (y = x²/4; powers of two:
 * exact). The order is for latency: p by Estrin's scheme, 1/q computed while p is, x·p
 * multiplied by it (one rounding more than a division, 4 cycles sooner). Absolute error
 * against float64 over 1e7 points in [-20, 20]: 3.0e-7 (tanh), 1.6e-7 (sigmoid), with AVX2
 * and AVX-512 alike. The result is not clamped: rounding may take it an ulp past ±1 (±1/2),
 * which the callers clamp where it matters (GRURT_SMALL_CLAMP: min and max, NaN stays NaN;
 * vrangeps would be one instruction but turns NaN into the bound). */
#define GRURT_SMALL_CLAMP(PS, v, c) PS(max)(PS(set1)(-(c)), PS(min)(PS(set1)(c), v))
#define GRURT_DEFINE_RATIONAL(NAME, ARCH, V, PS, SP, SQ, X_MAX)                                        \
__attribute__((target(ARCH))) GRURT_INLINE V NAME(V x) {                                              \
    const float s1 = SP, s2 = s1 * s1, s3 = s2 * s1, s4 = s2 * s2, s5 = s4 * s1, s6 = s3 * s3;        \
    x = GRURT_SMALL_CLAMP(PS, x, X_MAX);                                                              \
    V y = PS(mul)(x, x), y2 = PS(mul)(y, y), y4 = PS(mul)(y2, y2);                                    \
    V a0 = PS(fmadd)(PS(set1)(6.37261928875436e-04f * s1), y, PS(set1)(4.89352455891786e-03f));      \
    V a1 = PS(fmadd)(PS(set1)(5.12229709037114e-08f * s3), y, PS(set1)(1.48572235717979e-05f * s2)); \
    V a2 = PS(fmadd)(PS(set1)(2.00018790482477e-13f * s5), y, PS(set1)(-8.60467152213735e-11f * s4)); \
    V p = PS(fmadd)(PS(fmadd)(PS(set1)(-2.76076847742355e-16f * s6), y2, a2), y4, PS(fmadd)(a1, y2, a0)); \
    V q = PS(fmadd)(PS(fmadd)(PS(set1)((SQ) * 1.19825839466702e-06f * s3), y,                         \
                              PS(set1)((SQ) * 1.18534705686654e-04f * s2)), y2,                       \
                    PS(fmadd)(PS(set1)((SQ) * 2.26843463243900e-03f * s1), y,                         \
                              PS(set1)((SQ) * 4.89352518554385e-03f)));                               \
    return PS(mul)(PS(mul)(x, p), PS(div)(PS(set1)(1.0f), q));                                        \
}
GRURT_DEFINE_RATIONAL(grurt_small_tanh8, "arch=x86-64-v3", __m256, GRURT_PS8, 1.0f, 1.0f, 9.0f)
GRURT_DEFINE_RATIONAL(grurt_small_half_tanh8, "arch=x86-64-v3", __m256, GRURT_PS8, 0.25f, 4.0f, 18.0f)
#ifdef GRURT_X86_AVX512
GRURT_DEFINE_RATIONAL(grurt_small_tanh16, "arch=x86-64-v4", __m512, GRURT_PS16, 1.0f, 1.0f, 9.0f)
GRURT_DEFINE_RATIONAL(grurt_small_half_tanh16, "arch=x86-64-v4", __m512, GRURT_PS16, 0.25f, 4.0f, 18.0f)
#endif

/* columns c .. c+L-1 of row k of packed panels of `rows` rows (c a multiple of L: within a panel) */
#define GRURT_SMALL_AT(base, rows, c, k) \
    ((base) + (size_t)((c) / GRURT_PANEL) * (rows) * GRURT_PANEL + (size_t)(k) * GRURT_PANEL + (c) % GRURT_PANEL)

/* The kernel NAME for H units in vectors V of L lanes (PS: their intrinsics), TANH and
 * HALF_TANH the rational functions above. The recurrent product's sums: r's
 * decide when the step can go on (the candidate waits for r), so they run in GRURT_SMALL_SR
 * interleaved partial sums (k mod 4); d's are needed a rational function later, in 2; z's at
 * the end of the step, in one. Vectors of gate g hold units L·u .. L·u + L − 1, u < G. */
#define GRURT_SMALL_SR 4
#define GRURT_SMALL_SH 2
#define GRURT_SMALL_SZ 2
#define GRURT_DEFINE_GRU_SMALL(NAME, ARCH, V, PS, L, H, TANH, HALF_TANH)                               \
__attribute__((target(ARCH))) static void NAME(const grurt_small_gru *g, int steps, const float *x, long x_step, \
                                               float *h, float *y, long y_step) {                     \
    enum { G = (H) / (L), SR = GRURT_SMALL_SR, SH = GRURT_SMALL_SH, SZ = GRURT_SMALL_SZ };            \
    const int n_in = g->n_in;                                                                         \
    float hs[H] __attribute__((aligned(64)));       /* the state, for broadcasts */                   \
    V hv[G], az[SZ][G], ar[SR][G], ad[SH][G], c[G];                                                   \
    const V half = PS(set1)(0.5f);                                                                    \
    _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                             \
        hv[u] = PS(loadu)(h + (L) * u);                                                               \
        PS(store)(hs + (L) * u, hv[u]);                                                               \
    }                                                                                                 \
    for (int s = 0; s < steps; ++s) {                                                                 \
        const float *xt = x + (long)s * x_step;                                                       \
        /* the projection: into the first partial sums of z and r, and c */                           \
        _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                         \
            az[0][u] = PS(loadu)(g->bias + (L) * u);                                                  \
            ar[0][u] = PS(loadu)(g->bias + (H) + (L) * u);                                            \
            c[u] = PS(loadu)(g->bias + 2 * (H) + (L) * u);                                            \
        }                                                                                             \
        for (int k = 0; k < n_in; ++k) {                                                              \
            V xk = PS(set1)(xt[k]);                                                                   \
            _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                     \
                az[0][u] = PS(fmadd)(xk, PS(loadu)(GRURT_SMALL_AT(g->W, n_in, (L) * u, k)), az[0][u]); \
                ar[0][u] = PS(fmadd)(xk, PS(loadu)(GRURT_SMALL_AT(g->W, n_in, (H) + (L) * u, k)), ar[0][u]); \
                c[u] = PS(fmadd)(xk, PS(loadu)(GRURT_SMALL_AT(g->W, n_in, 2 * (H) + (L) * u, k)), c[u]); \
            }                                                                                         \
        }                                                                                             \
        _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                         \
            ad[0][u] = PS(loadu)(g->rinit + 2 * (H) + (L) * u);                                       \
            _Pragma("GCC unroll 4") for (int q = 1; q < SR; ++q) ar[q][u] = PS(setzero)();            \
            _Pragma("GCC unroll 4") for (int q = 1; q < SH; ++q) ad[q][u] = PS(setzero)();            \
            _Pragma("GCC unroll 4") for (int q = 1; q < SZ; ++q) az[q][u] = PS(setzero)();            \
        }                                                                                             \
        /* the recurrent product */                                                                   \
        _Pragma("GCC unroll 32") for (int k = 0; k < (H); ++k) {                                      \
            V hk = PS(set1)(hs[k]);                                                                   \
            _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                     \
                ar[k % SR][u] = PS(fmadd)(hk, PS(loadu)(GRURT_SMALL_AT(g->R, H, (H) + (L) * u, k)), ar[k % SR][u]); \
                ad[k % SH][u] = PS(fmadd)(hk, PS(loadu)(GRURT_SMALL_AT(g->R, H, 2 * (H) + (L) * u, k)),     \
                                          ad[k % SH][u]);                                             \
                az[k % SZ][u] = PS(fmadd)(hk, PS(loadu)(GRURT_SMALL_AT(g->R, H, (L) * u, k)), az[k % SZ][u]); \
            }                                                                                         \
        }                                                                                             \
        /* the gates: s = sigmoid − 1/2; n = tanh(c + d/2 + s_r·d); h' = (1/2 − s_z)·n + (1/2 + s_z)·h */ \
        _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) {                                         \
            V r = PS(add)(PS(add)(ar[0][u], ar[1][u]), PS(add)(ar[2][u], ar[3][u]));                  \
            V d = PS(add)(ad[0][u], ad[1][u]);                                                        \
            V sz = GRURT_SMALL_CLAMP(PS, HALF_TANH(PS(add)(az[0][u], az[1][u])), 0.5f), sr = HALF_TANH(r);            \
            V n = GRURT_SMALL_CLAMP(PS, TANH(PS(fmadd)(sr, d, PS(fmadd)(half, d, c[u]))), 1.0f);         \
            hv[u] = PS(fmadd)(PS(sub)(half, sz), n, PS(mul)(PS(add)(half, sz), hv[u]));               \
            PS(store)(hs + (L) * u, hv[u]);                                                           \
            if (y) PS(storeu)(y + (long)s * y_step + (L) * u, hv[u]);                                 \
        }                                                                                             \
    }                                                                                                 \
    _Pragma("GCC unroll 4") for (int u = 0; u < G; ++u) PS(storeu)(h + (L) * u, hv[u]);              \
}
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx2_8, "arch=x86-64-v3", __m256, GRURT_PS8, 8, 8, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx2_16, "arch=x86-64-v3", __m256, GRURT_PS8, 8, 16, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx2_24, "arch=x86-64-v3", __m256, GRURT_PS8, 8, 24, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx2_32, "arch=x86-64-v3", __m256, GRURT_PS8, 8, 32, grurt_small_tanh8,
                       grurt_small_half_tanh8)
#ifdef GRURT_X86_AVX512
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx512_8, "arch=x86-64-v4", __m256, GRURT_PS8, 8, 8, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx512_16, "arch=x86-64-v4", __m256, GRURT_PS8, 8, 16, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx512_24, "arch=x86-64-v4", __m256, GRURT_PS8, 8, 24, grurt_small_tanh8,
                       grurt_small_half_tanh8)
GRURT_DEFINE_GRU_SMALL(grurt_gru_small_avx512_32, "arch=x86-64-v4", __m512, GRURT_PS16, 16, 32, grurt_small_tanh16,
                       grurt_small_half_tanh16)
#endif
typedef void (*grurt_small_fn)(const grurt_small_gru *, int, const float *, long, float *, float *, long);
#endif

/* The function for H on this CPU, or NULL (the general loop then runs the layer). */
static void *grurt_gru_small_kernel(int H) {
#ifdef GRURT_X86_DISPATCH
    if (H % 8 || H < 8 || H > GRURT_SMALL_MAX_H)
        return NULL;
#ifdef GRURT_X86_AVX512
    static const grurt_small_fn avx512[4] = {grurt_gru_small_avx512_8, grurt_gru_small_avx512_16,
                                             grurt_gru_small_avx512_24, grurt_gru_small_avx512_32};
    if (grurt_x86_level() >= 4)
        return (void *)avx512[H / 8 - 1];
#endif
    static const grurt_small_fn avx2[4] = {grurt_gru_small_avx2_8, grurt_gru_small_avx2_16,
                                           grurt_gru_small_avx2_24, grurt_gru_small_avx2_32};
    if (grurt_x86_level() >= 3)
        return (void *)avx2[H / 8 - 1];
#else
    (void)H;
#endif
    return NULL;
}

/* Run `steps` steps of one sequence with kernel `fn` (from grurt_gru_small_kernel): x at its
 * first step's input, x_step floats between steps (negative: back to front); h (H) updated;
 * each step's state to y (y_step apart) unless y is NULL. */
static void grurt_gru_small(void *fn, const grurt_small_gru *g, int steps, const float *x, long x_step, float *h,
                            float *y, long y_step) {
#ifdef GRURT_X86_DISPATCH
    ((grurt_small_fn)fn)(g, steps, x, x_step, h, y, y_step);
#else
    (void)fn; (void)g; (void)steps; (void)x; (void)x_step; (void)h; (void)y; (void)y_step;
#endif
}

/* y = x·Wᵀ + b for a Dense layer of few outputs (n_out < GRURT_DENSE_FEW), W (n_out, n_in)
 * row-major: per row and output, 8 lanes summing k = l, l + 8, ... (vectorized), the lanes
 * added pairwise (l + 4, then + 2, then + 1), then the bias. The same operations for every
 * row, whatever the number of rows; a panel kernel would compute a tile of GRURT_PANEL columns
 * to use one or two. */
#define GRURT_DENSE_FEW 4
GRURT_HOT static void grurt_dense_few(size_t rows, int n_in, int n_out, const float *restrict x,
                                      const float *restrict W, const float *restrict b, float *restrict y) {
    const int whole = n_in / 8 * 8;
    for (size_t r = 0; r < rows; ++r) {
        const float *xr = x + r * n_in;
        for (int o = 0; o < n_out; ++o) {
            const float *w = W + (size_t)o * n_in;
            float acc[8] = {0};
            for (int k = 0; k < whole; k += 8)
                for (int l = 0; l < 8; ++l) acc[l] += xr[k + l] * w[k + l];
            for (int k = whole; k < n_in; ++k) acc[k - whole] += xr[k] * w[k];
            for (int l = 0; l < 4; ++l) acc[l] += acc[l + 4];
            for (int l = 0; l < 2; ++l) acc[l] += acc[l + 2];
            y[r * n_out + o] = (acc[0] + acc[1]) + b[o];
        }
    }
}

#endif
