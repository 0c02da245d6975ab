// One Trajectory Transformer decode step of beam search, fused: see tt_agents/models/tt_native.py (the cache
// it reads, why, how it is called) and TrajectoryTransformer.decode with a RingKVCache or ForkKVCache (the
// torch step it equals: embedding, each layer's rotary attention over the window and its MLP, the head).
//
// The keys and values live in one buffer per layer, (R rows, W slots, C): the token that row r decoded at
// step s sits at [r][s % W]. A row does not own a ring; it holds W indices (idx), which row's entry at each
// slot is its own history (-1: nothing to see there). Forking a beam or keeping the best ones copies those
// indices, never keys or values: beams that share a past read the same entries. A row's tokens between two
// prunings lie side by side, so its history is read in runs of whole transitions.
#include "native_ops.h"

// Entries a row reads lie far apart (other rows' runs), where no hardware prefetcher looks: the step asks
// for them ahead of use.
static inline void prefetch_row(const void *p, int bytes) {
    for (int c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)p + c, 0, 3);
}

// Entries are float32, or bfloat16 (BF: the upper half of a float32's bits, rounded to nearest even when
// written; read back exactly as that float32).
static inline float ld1(const void *p, int64_t i, const int BF) {
    if (!BF) return ((const float *)p)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// The entry (keys or values of one token, `entry` bytes) that row r wrote at slot s of a layer's buffer.
static inline char *entry_at(char *layer, int64_t r, int W, int s, int64_t entry) {
    return layer + (r * W + s) * entry;
}

static inline void store_entry(void *dst, const float *x, int C, const int BF) {
    if (!BF) {
        memcpy(dst, x, sizeof(float) * C);
        return;
    }
    for (int c = 0; c < C; c++) {
        uint32_t bits;
        memcpy(&bits, x + c, sizeof bits);
        ((uint16_t *)dst)[c] = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);  // finite values only
    }
}


// One query's attention over n entries (kp, vp: their keys and values, C = H * hd floats each), every head:
// the scores of 8 entries at a time (8 dot products reduced together, one vector of 8 scores), the softmax
// with exp_neg (arguments <= 0), then the weighted sum of the values, head by head.
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline __m256 ld8(const void *p, int64_t i, const int BF) {
    if (!BF) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

static inline __attribute__((always_inline)) void attend_row_v(const float *q, const void *const *kp,
                                                               const void *const *vp, int n, int H, int hd,
                                                               float *sc, float *y, const int NV, const int BF) {
    const int C = H * hd, es = BF ? 2 : 4;
    float mx[16];  // each head's largest score (at most 16 heads: tt_step_supported)
    __m256 mv[16];
    for (int hh = 0; hh < H; hh++) mv[hh] = _mm256_set1_ps(-INFINITY), mx[hh] = -INFINITY;
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        for (int u = t + 8; u < n && u < t + 16; u++) prefetch_row(kp[u], C * es);  // the next 8 keys
        for (int hh = 0; hh < H; hh++) {
            const float *qh = q + hh * hd;
            __m256 a[8];
            for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
            for (int j = 0; j < NV; j++) {
                const __m256 qv = _mm256_loadu_ps(qh + 8 * j);
                for (int u = 0; u < 8; u++) a[u] = _mm256_fmadd_ps(qv, ld8(kp[t + u], hh * hd + 8 * j, BF), a[u]);
            }
            const __m256 s8 = hsum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
            _mm256_storeu_ps(sc + (int64_t)hh * n + t, s8);
            mv[hh] = _mm256_max_ps(mv[hh], s8);
        }
    }
    for (; t < n; t++)
        for (int hh = 0; hh < H; hh++) {
            float a = 0.f;
            for (int j = 0; j < hd; j++) a += q[hh * hd + j] * ld1(kp[t], hh * hd + j, BF);
            sc[(int64_t)hh * n + t] = a;
            mx[hh] = a > mx[hh] ? a : mx[hh];
        }
    float *pt = sc + (int64_t)H * n;  // the weights transposed, (n, H): one entry's heads side by side
    for (int hh = 0; hh < H; hh++) {
        float m8[8], sum = 0.f, *sh = sc + (int64_t)hh * n;
        _mm256_storeu_ps(m8, mv[hh]);
        for (int j = 0; j < 8; j++) mx[hh] = m8[j] > mx[hh] ? m8[j] : mx[hh];
        for (int u = 0; u < n; u++) {
            sh[u] = exp_neg(sh[u] - mx[hh]);
            sum += sh[u];
        }
        const float inv = 1.0f / sum;
        for (int u = 0; u < n; u++) pt[(int64_t)u * H + hh] = sh[u] * inv;
    }
    if (C % 64 == 0) {  // 64 columns at a time (8 vector sums), every entry's value read once
        for (int c0 = 0; c0 < C; c0 += 64) {
            const int h0 = c0 / hd;
            __m256 a[8];
            for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
            for (int u = 0; u < n; u++) {
                if (u + 4 < n) prefetch_row((const char *)vp[u + 4] + c0 * es, 64 * es);
                const float *pu = pt + (int64_t)u * H + h0;
                for (int j = 0; j < 8; j++)
                    // vector j of the chunk belongs to its head j / NV (a constant: the compiler shares the broadcasts)
                    a[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(pu + j / NV), ld8(vp[u], c0 + 8 * j, BF), a[j]);
            }
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(y + c0 + 8 * j, a[j]);
        }
        return;
    }
    for (int hh = 0; hh < H; hh++) {
        __m256 a[NV];
        for (int j = 0; j < NV; j++) a[j] = _mm256_setzero_ps();
        for (int u = 0; u < n; u++) {
            const __m256 p = _mm256_broadcast_ss(pt + (int64_t)u * H + hh);
            for (int j = 0; j < NV; j++) a[j] = _mm256_fmadd_ps(p, ld8(vp[u], hh * hd + 8 * j, BF), a[j]);
        }
        for (int j = 0; j < NV; j++) _mm256_storeu_ps(y + hh * hd + 8 * j, a[j]);
    }
}
#endif

static void attend_row_c(const float *q, const void *const *kp, const void *const *vp, int n, int H, int hd,
                         float *sc, float *y, const int BF) {
    for (int hh = 0; hh < H; hh++) {
        float *sh = sc + (int64_t)hh * n, mx = -INFINITY, sum = 0.f;
        for (int t = 0; t < n; t++) {
            float a = 0.f;
            for (int j = 0; j < hd; j++) a += q[hh * hd + j] * ld1(kp[t], hh * hd + j, BF);
            sh[t] = a;
            mx = a > mx ? a : mx;
        }
        for (int t = 0; t < n; t++) {
            sh[t] = exp_neg(sh[t] - mx);
            sum += sh[t];
        }
        float *yh = y + hh * hd;
        for (int j = 0; j < hd; j++) yh[j] = 0.f;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < hd; j++) yh[j] += sh[t] * ld1(vp[t], hh * hd + j, BF);
        for (int j = 0; j < hd; j++) yh[j] /= sum;
    }
}

static void attend_row(const float *q, const void *const *kp, const void *const *vp, int n, int H, int hd,
                       float *sc, float *y, int bf16) {
#if defined(__AVX2__) && defined(__FMA__)
#define ATTEND_V(NV)                                                          \
    do {                                                                      \
        if (bf16)                                                             \
            attend_row_v(q, kp, vp, n, H, hd, sc, y, NV, 1);                  \
        else                                                                  \
            attend_row_v(q, kp, vp, n, H, hd, sc, y, NV, 0);                  \
        return;                                                               \
    } while (0)
    switch (hd) {
        case 8: ATTEND_V(1);
        case 16: ATTEND_V(2);
        case 32: ATTEND_V(4);
        case 64: ATTEND_V(8);
        default: break;
    }
#undef ATTEND_V
#endif
    if (bf16)
        attend_row_c(q, kp, vp, n, H, hd, sc, y, 1);
    else
        attend_row_c(q, kp, vp, n, H, hd, sc, y, 0);
}

// dims: L, H, C, W, V (bins), N (rows now), R (rows of the buffers), slot, d (the new tokens' dimension),
//       attendable (0: the new tokens are hidden from later ones, as value tokens are), bf16 (the entries' type),
//       threads (rows split among them: OpenMP, where the library was built with it), linear_bf16 (1: the linear
//       layers' weights in P are bfloat16, packed by tt_native.pack_bf16; only where tt_bf16_linear() says so)
// P: tok_emb, ln_f g, b, the heads packed (td, tiles, C, 32), then 12 per layer (tt_native.py's _params)
// io: tokens (N, int64), idx (N, W, int32; in/out), k, v (L, R, W, C), cos, sin (head_dim / 2), logits (N, V), work,
//     order (N, int32: the order in which rows attend; any order gives the same outputs)
int tt_step(const int64_t *dims, const float *const *P, void *const *io) {
    const int L = (int)dims[0], H = (int)dims[1], C = (int)dims[2], W = (int)dims[3], V = (int)dims[4];
    const int N = (int)dims[5], R = (int)dims[6], slot = (int)dims[7], d = (int)dims[8];
    const int attendable = (int)dims[9], bf16 = (int)dims[10];
    n_threads = dims[11] > 1 ? (int)dims[11] : 1;
    const int linear_bf16 = (int)dims[12];
    if (linear_bf16 && !TT_HAVE_BF16) return -2;
    const int64_t es = bf16 ? 2 : 4, entry = C * es;  // bytes of an entry's keys (or values)
    const int hd = C / H, half = hd / 2;
    const float *tok_emb = P[0], *lnf_g = P[1], *lnf_b = P[2], *heads = P[3];
    const int64_t *tokens = (const int64_t *)io[0];
    int32_t *idx = (int32_t *)io[1];
    char *kbuf = (char *)io[2], *vbuf = (char *)io[3];
    const float *cs = (const float *)io[4], *sn = (const float *)io[5];
    float *logits = (float *)io[6], *work = (float *)io[7];
    const int32_t *order = (const int32_t *)io[8];
    // workspace: x (N, C), h (N, C), qkv (N, 3C), y (N, C), f (N, 4C), tmp (N, C), the linear layers' inputs as
    // bfloat16 pairs (N, 2C + 1; uint32), then per thread: sc (2, H, W), kp, vp (W pointers each), 64-byte aligned
    // (tt_native.py sizes it)
    float *x = work, *h = x + (int64_t)N * C, *qkv = h + (int64_t)N * C, *y = qkv + (int64_t)N * 3 * C;
    float *f = y + (int64_t)N * C, *tmp = f + (int64_t)N * 4 * C;
    uint32_t *xb = (uint32_t *)(tmp + (int64_t)N * C);
    const uintptr_t scratch0 = ((uintptr_t)(xb + (int64_t)N * (2 * C + 1)) + 63) & ~(uintptr_t)63;
    const int64_t scratch = ((int64_t)2 * H * W * 4 + (int64_t)2 * W * 8 + 63) / 64 * 64;  // bytes per thread
    const float scale = 1.0f / sqrtf((float)hd);

    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= V) return -1;  // refused before anything changes
    for (int i = 0; i < N; i++) {
        memcpy(x + (int64_t)i * C, tok_emb + (tokens[i] + (int64_t)d * V) * C, sizeof(float) * C);
        idx[(int64_t)i * W + slot] = attendable ? i : -1;  // the new token's slot (its old token left the window)
    }

    lin_bf16 = linear_bf16 ? xb : 0;  // this thread's linear layers, until the step returns
    for (int l = 0; l < L; l++) {
        const float *const *Q = P + 4 + 12 * l;
        char *kl = kbuf + (int64_t)l * W * R * entry, *vl = vbuf + (int64_t)l * W * R * entry;
        layer_norm(x, N, C, Q[0], Q[1], h);
        linear(h, N, C, Q[2], Q[3], 3 * C, qkv);  // (N, 3C): q | k | v, each (H, hd)
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1 && N >= 64)
        for (int i = 0; i < N; i++) {
            float *q = qkv + (int64_t)i * 3 * C, *k = q + C;
            for (int hh = 0; hh < H; hh++)  // rotary embedding (GPT-NeoX's halves) of the query and the key
                for (int j = 0; j < half; j++) {
                    float *a = q + hh * hd, *b = k + hh * hd;
                    const float q1 = a[j], q2 = a[j + half], k1 = b[j], k2 = b[j + half];
                    a[j] = q1 * cs[j] - q2 * sn[j];
                    a[j + half] = q1 * sn[j] + q2 * cs[j];
                    b[j] = k1 * cs[j] - k2 * sn[j];
                    b[j + half] = k1 * sn[j] + k2 * cs[j];
                }
            for (int c = 0; c < C; c++) q[c] *= scale;
            store_entry(entry_at(kl, i, W, slot, entry), k, C, bf16);
            store_entry(entry_at(vl, i, W, slot, entry), q + 2 * C, C, bf16);
        }
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1 && N >= 64)
        for (int o = 0; o < N; o++) {  // each row over the entries its indices name, rows sharing a past in turn
#ifdef _OPENMP
            const int tid = omp_get_thread_num();
#else
            const int tid = 0;
#endif
            float *sc = (float *)(scratch0 + tid * scratch);
            const void **kp = (const void **)(sc + (int64_t)2 * H * W), **vp = kp + W;
            const int i = order[o];
            const int32_t *ix = idx + (int64_t)i * W;
            if (o + 1 < N) {  // ask for the next row's entries that this row does not read (into L2)
                const int32_t *jx = idx + (int64_t)order[o + 1] * W;
                for (int s = 0; s < W; s++)
                    if (jx[s] >= 0 && jx[s] != ix[s]) {
                        const char *kq = entry_at(kl, jx[s], W, s, entry), *vq = entry_at(vl, jx[s], W, s, entry);
                        for (int64_t c = 0; c < entry; c += 64) {
                            __builtin_prefetch(kq + c, 0, 2);
                            __builtin_prefetch(vq + c, 0, 2);
                        }
                    }
            }
            int n = 0;
            for (int s = 0; s < W; s++)
                if (ix[s] >= 0) {
                    kp[n] = entry_at(kl, ix[s], W, s, entry);
                    vp[n++] = entry_at(vl, ix[s], W, s, entry);
                }
            if (n == 0) {  // a query that sees nothing sees itself
                kp[0] = entry_at(kl, i, W, slot, entry);
                vp[n++] = entry_at(vl, i, W, slot, entry);
            }
            attend_row(qkv + (int64_t)i * 3 * C, kp, vp, n, H, hd, sc, y + (int64_t)i * C, bf16);
        }
        block_rest(x, y, N, C, Q, h, f, tmp);
    }
    layer_norm(x, N, C, lnf_g, lnf_b, h);
    const int tiles = (V + 31) / 32;
    const int64_t head = linear_bf16 ? (int64_t)tiles * ((C + 1) / 2) * 32 : (int64_t)tiles * C * 32;  // floats
    linear(h, N, C, heads + d * head, 0, V, logits);
    lin_bf16 = 0;
    return 0;
}

// Whether this build has the bfloat16 linear layers (the CPU has AVX512-BF16): 1 or 0.
int tt_bf16_linear(void) { return TT_HAVE_BF16; }
