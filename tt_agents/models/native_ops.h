// The fused steps' shared parts (dt_step.c, tt_step.c): packed linear layers, layer norm, GELU, the rest of a
// block after attention.
// Plain C that the compiler vectorizes; see native.py for why these are hand-written and how they are built.
#ifndef TT_AGENTS_NATIVE_OPS_H
#define TT_AGENTS_NATIVE_OPS_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

// Threads for the loops below (a step sets it from torch.get_num_threads() where it runs large batches; 1:
// serial). Each output is computed the same way whatever the split, so results do not depend on it. One per
// calling thread: steps called from several Python threads at once do not share it (only the thread that
// meets a parallel loop reads it).
static _Thread_local int n_threads = 1;

// y[m, n] = b[n] + sum_k x[m, k] * w[n, k], with w packed as native.py's pack() does: tiles of 32 output
// columns, each a contiguous (K, 32) block (the transpose of those rows of nn.Linear's weight; the last
// tile zero-padded). A tile of MB (up to 8) rows x 32 columns accumulates in registers over k, reading its
// block front to back (no horizontal sums, no strided reads).
static inline __attribute__((always_inline)) void tile(const float *restrict x, int K, const float *restrict wp,
                                                        const float *restrict b, int n0, int nb, float *restrict y,
                                                        int N, const int MB) {
    float acc[8][32];
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < 32; j++) acc[i][j] = (b && j < nb) ? b[n0 + j] : 0.f;
    for (int k = 0; k < K; k++) {
        const float *w = wp + (int64_t)k * 32;
        for (int i = 0; i < MB; i++) {
            const float xv = x[(int64_t)i * K + k];
            for (int j = 0; j < 32; j++) acc[i][j] += xv * w[j];
        }
    }
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < nb; j++) y[(int64_t)i * N + n0 + j] = acc[i][j];
}

// Linear layers in bfloat16 (an opt-in of the TT step: PlanConfig.linear_dtype), where the CPU has AVX512-BF16:
// the inputs rounded to bfloat16 (nearest even) and the weights packed as bfloat16 (tt_native.py's pack_bf16:
// tiles of 32 output columns, each (ceil(K / 2), 32, 2), two inputs' weights side by side), products summed in
// float32 by vdpbf16ps, two products per lane per instruction: twice the float32 FMA's rate (benchmarks.md,
// "planning"). Set per calling thread, like n_threads: the scratch for the rounded inputs (M x ceil(K / 2)
// pairs), or null for float32.
static _Thread_local uint32_t *lin_bf16 = 0;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define TT_HAVE_BF16 1

static void to_bf16_pairs(const float *restrict x, int M, int K, uint32_t *restrict xb) {
    const int K2 = (K + 1) / 2;
    for (int m = 0; m < M; m++) {
        const float *xm = x + (int64_t)m * K;
        uint32_t *out = xb + (int64_t)m * K2;
        int k = 0;
        for (; k + 32 <= K; k += 32)  // 32 floats -> 16 pairs, the even input in each pair's low half
            _mm512_storeu_si512(out + k / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xm + k + 16),
                                                                         _mm512_loadu_ps(xm + k)));
        for (; k < K; k += 2) {
            const __m128 lo = _mm_set_ss(xm[k]), hi = _mm_set_ss(k + 1 < K ? xm[k + 1] : 0.f);
            const __m128i b = (__m128i)_mm_cvtne2ps_pbh(hi, lo);  // bf16 of lo at element 0, hi at element 4
            out[k / 2] = (uint32_t)(uint16_t)_mm_extract_epi16(b, 0) | (uint32_t)(uint16_t)_mm_extract_epi16(b, 4) << 16;
        }
    }
}

static inline __attribute__((always_inline)) void tile_bf16(const uint32_t *restrict xb, int K2,
                                                             const uint16_t *restrict wp, const float *restrict b,
                                                             int n0, int nb, float *restrict y, int N, const int MB) {
    const __mmask16 m0 = nb >= 16 ? 0xFFFF : (__mmask16)((1u << nb) - 1);
    const __mmask16 m1 = nb >= 32 ? 0xFFFF : nb > 16 ? (__mmask16)((1u << (nb - 16)) - 1) : 0;
    const __m512 b0 = b ? _mm512_maskz_loadu_ps(m0, b + n0) : _mm512_setzero_ps();
    const __m512 b1 = b ? _mm512_maskz_loadu_ps(m1, b + n0 + 16) : _mm512_setzero_ps();
    __m512 a0[8], a1[8];
    for (int i = 0; i < MB; i++) a0[i] = b0, a1[i] = b1;
    for (int k = 0; k < K2; k++) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp + (int64_t)k * 64);
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp + (int64_t)k * 64 + 32);
        for (int i = 0; i < MB; i++) {
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xb[(int64_t)i * K2 + k]);
            a0[i] = _mm512_dpbf16_ps(a0[i], xv, w0);
            a1[i] = _mm512_dpbf16_ps(a1[i], xv, w1);
        }
    }
    for (int i = 0; i < MB; i++) {
        _mm512_mask_storeu_ps(y + (int64_t)i * N + n0, m0, a0[i]);
        _mm512_mask_storeu_ps(y + (int64_t)i * N + n0 + 16, m1, a1[i]);
    }
}

#else
#define TT_HAVE_BF16 0
#endif

// One tile of MB rows x 32 columns, of float32 inputs (tile) or bfloat16 pairs (BF: tile_bf16)
static inline __attribute__((always_inline)) void tile_of(const void *x, int K, const void *w, const float *b, int n0,
                                                           int nb, float *y, int N, const int MB, const int BF) {
#if TT_HAVE_BF16
    if (BF) {
        tile_bf16((const uint32_t *)x, K, (const uint16_t *)w, b, n0, nb, y, N, MB);
        return;
    }
#endif
    tile((const float *)x, K, (const float *)w, b, n0, nb, y, N, MB);
}

// y = x w^T + b for M rows of K stored inputs: floats, or with BF bfloat16 pairs (K = ceil(inputs / 2)); either
// way 4 bytes per stored input, and a weight tile of K x 128 bytes.
static inline __attribute__((always_inline)) void linear_tiles(const char *x, int M, int K, const char *wp,
                                                                const float *b, int N, float *y, const int BF) {
    const int64_t row = (int64_t)K * 4, tile_bytes = (int64_t)K * 128;
#pragma omp parallel for collapse(2) schedule(static) num_threads(n_threads) if (n_threads > 1 && M >= 64)
    for (int m1 = 0; m1 < M; m1 += 64) {  // blocks of 64 rows (their inputs stay in cache across the tiles)
        for (int n0 = 0; n0 < N; n0 += 32) {  // each weight tile read from memory once per block of rows
            const int m2 = M - m1 < 64 ? M : m1 + 64;
            const int nb = N - n0 < 32 ? N - n0 : 32;
            const char *w = wp + (int64_t)(n0 / 32) * tile_bytes;
            int m0 = m1;
            for (; m0 + 8 <= m2; m0 += 8)  // 8 rows x 32 columns: 16 vector accumulators
                tile_of(x + m0 * row, K, w, b, n0, nb, y + (int64_t)m0 * N, N, 8, BF);
            if (m0 + 4 <= m2) {
                tile_of(x + m0 * row, K, w, b, n0, nb, y + (int64_t)m0 * N, N, 4, BF);
                m0 += 4;
            }
            const char *xm = x + m0 * row;
            float *ym = y + (int64_t)m0 * N;
            switch (m2 - m0) {
                case 3: tile_of(xm, K, w, b, n0, nb, ym, N, 3, BF); break;
                case 2: tile_of(xm, K, w, b, n0, nb, ym, N, 2, BF); break;
                case 1: tile_of(xm, K, w, b, n0, nb, ym, N, 1, BF); break;
                default: break;
            }
        }
    }
}

static void linear(const float *restrict x, int M, int K, const float *restrict wp, const float *restrict b, int N,
                   float *restrict y) {
#if TT_HAVE_BF16
    if (lin_bf16) {  // wp holds bfloat16 weights (the caller set lin_bf16 only with those)
        to_bf16_pairs(x, M, K, lin_bf16);
        linear_tiles((const char *)lin_bf16, M, (K + 1) / 2, (const char *)wp, b, N, y, 1);
        return;
    }
#endif
    linear_tiles((const char *)x, M, K, (const char *)wp, b, N, y, 0);
}

// torch.nn.LayerNorm over the last C of each of M rows (eps 1e-5, biased variance), out of place
static void layer_norm(const float *restrict x, int M, int C, const float *restrict g, const float *restrict b,
                       float *restrict y) {
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1 && M >= 64)
    for (int m = 0; m < M; m++) {
        const float *xm = x + (int64_t)m * C;
        float *ym = y + (int64_t)m * C;
        float mean = 0.f;
        for (int c = 0; c < C; c++) mean += xm[c];
        mean /= (float)C;
        float var = 0.f;
        for (int c = 0; c < C; c++) {
            float d = xm[c] - mean;
            var += d * d;
        }
        var /= (float)C;
        float inv = 1.0f / sqrtf(var + 1e-5f);
        for (int c = 0; c < C; c++) ym[c] = (xm[c] - mean) * inv * g[c] + b[c];
    }
}

// e^x for x <= 0 (the GELU's e^(-x^2 / 2)), branch-free so that the loop vectorizes: x = n ln 2 + r,
// |r| <= ln 2 / 2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7 here), 2^n from the
// exponent bits; below -87 it returns 2^-126 (e^-87 is 1.6e-38: the GELU's term is zero either way).
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// exact (erf) GELU, torch's default, with erf as torch's own vectorized CPU kernels compute it
// (Abramowitz & Stegun 7.1.26: absolute error < 1.5e-7)
static void gelu(float *x, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1 && n >= 16384)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i] * 0.70710678118654752f, a = fabsf(v);
        const float t = 1.0f / (1.0f + 0.3275911f * a);
        const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        const float e = 1.0f - poly * exp_neg(-a * a);
        x[i] = 0.5f * x[i] * (1.0f + (v < 0.0f ? -e : e));
    }
}

// The rest of a pre-norm block after attention, for M rows: x += proj(y); x += mlp(ln_2(x)). Q: the block's
// 12 tensors (ln_1 g, b, c_attn w, b, c_proj w, b, ln_2 g, b, c_fc w, b, mlp c_proj w, b), linear weights
// packed; h (M, C), f (M, 4C), tmp (M, C): workspace.
static void block_rest(float *restrict x, const float *restrict y, int M, int C, const float *const *Q,
                       float *restrict h, float *restrict f, float *restrict tmp) {
    linear(y, M, C, Q[4], Q[5], C, tmp);
    for (int64_t j = 0; j < (int64_t)M * C; j++) x[j] += tmp[j];
    layer_norm(x, M, C, Q[6], Q[7], h);
    linear(h, M, C, Q[8], Q[9], 4 * C, f);
    gelu(f, (int64_t)M * 4 * C);
    linear(f, M, 4 * C, Q[10], Q[11], C, tmp);
    for (int64_t j = 0; j < (int64_t)M * C; j++) x[j] += tmp[j];
}
#endif
