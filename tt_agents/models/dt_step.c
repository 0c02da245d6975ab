// One Decision Transformer decode step, fused: see tt_agents/models/native.py (why, how it is built and
// called) and DecisionTransformerNet.decode_step in dt.py (the torch step it equals, line for line:
// embeddings, the ring slots' validity, then each layer's attention over the ring and its MLP).
// Returns 0, or -1 (nothing changed) for a discrete previous action outside [0, A).
#include <math.h>
#include <stdint.h>
#include <string.h>

// y[m, n] = b[n] + sum_k x[m, k] * w[n, k], with w packed as native.py's pack() does: tiles of 32 output
// columns, each a contiguous (K, 32) block (the transpose of those rows of nn.Linear's weight; the last
// tile zero-padded). A tile of MB rows x 32 columns accumulates in registers over k, reading its
// block front to back (no horizontal sums, no strided reads).
static inline __attribute__((always_inline)) void tile(const float *restrict x, int K, const float *restrict wp,
                                                        const float *restrict b, int n0, int nb, float *restrict y,
                                                        int N, const int MB) {
    float acc[4][32];
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

static void linear(const float *restrict x, int M, int K, const float *restrict wp, const float *restrict b, int N,
                   float *restrict y) {
    for (int n0 = 0; n0 < N; n0 += 32) {  // each weight tile read from memory once, for every row
        const int nb = N - n0 < 32 ? N - n0 : 32;
        const float *w = wp + (int64_t)(n0 / 32) * K * 32;
        for (int m0 = 0; m0 < M; m0 += 4) {
            const int mb = M - m0 < 4 ? M - m0 : 4;
            const float *xm = x + (int64_t)m0 * K;
            float *ym = y + (int64_t)m0 * N;
            switch (mb) {
                case 4: tile(xm, K, w, b, n0, nb, ym, N, 4); break;
                case 3: tile(xm, K, w, b, n0, nb, ym, N, 3); break;
                case 2: tile(xm, K, w, b, n0, nb, ym, N, 2); break;
                default: tile(xm, K, w, b, n0, nb, ym, N, 1); break;
            }
        }
    }
}

// torch.nn.LayerNorm over the last C of each of M rows (eps 1e-5, biased variance), out of place
static void layer_norm(const float *restrict x, int M, int C, const float *restrict g, const float *restrict b,
                       float *restrict y) {
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
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i] * 0.70710678118654752f, a = fabsf(v);
        const float t = 1.0f / (1.0f + 0.3275911f * a);
        const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        const float e = 1.0f - poly * exp_neg(-a * a);
        x[i] = 0.5f * x[i] * (1.0f + (v < 0.0f ? -e : e));
    }
}

// dims: L, H, C, S, A, D, T_max, B, discrete, head_kind (0 linear, 1 tanh, 2 categorical)
// P: 13 global pointers, then 12 per layer (native.py's _params); the linear layers' weights packed (native.py's pack)
// io: prev_action, has_prev, rtg, obs, timestep, starts, valid (in/out), k, v, out, band, own, slots, is_ring, work
int dt_step(const int64_t *dims, const float *const *P, void *const *io, int64_t phase) {
    const int L = (int)dims[0], H = (int)dims[1], C = (int)dims[2], S = (int)dims[3], A = (int)dims[4];
    const int D = (int)dims[5], T_max = (int)dims[6], B = (int)dims[7], discrete = (int)dims[8];
    const int head_kind = (int)dims[9];
    const int hd = C / H;
    const float *w_obs = P[0], *b_obs = P[1], *w_act = P[2], *b_act = P[3], *w_ret = P[4], *b_ret = P[5];
    const float *temb = P[6], *lne_g = P[7], *lne_b = P[8], *lnf_g = P[9], *lnf_b = P[10], *w_head = P[11],
                *b_head = P[12];
    const float *prev_f = (const float *)io[0];
    const int64_t *prev_i = (const int64_t *)io[0];
    const uint8_t *has_prev = (const uint8_t *)io[1];
    const float *rtg = (const float *)io[2];
    const float *obs = (const float *)io[3];
    const int64_t *ts = (const int64_t *)io[4];
    const uint8_t *starts = (const uint8_t *)io[5];
    uint8_t *valid = (uint8_t *)io[6];
    float *kbuf = (float *)io[7], *vbuf = (float *)io[8], *out = (float *)io[9];
    const uint8_t *band = (const uint8_t *)io[10] + (int64_t)phase * 3 * S;
    const uint8_t *own = (const uint8_t *)io[11] + (int64_t)phase * 3 * S;
    const int64_t *slots = (const int64_t *)io[12] + phase * 3;
    const uint8_t *is_ring = (const uint8_t *)io[13];
    float *work = (float *)io[14];
    // workspace: x (3B, C), h (3B, C), qkv (3B, 3C), y (3B, C), f (3B, 4C), sc (S), tmp (3B, C)
    const int M = 3 * B;
    float *x = work, *h = x + (int64_t)M * C, *qkv = h + (int64_t)M * C, *y = qkv + (int64_t)M * 3 * C;
    float *f = y + (int64_t)M * C, *sc = f + (int64_t)M * 4 * C, *tmp = sc + S;
    const float scale = 1.0f / sqrtf((float)hd);

    if (discrete)  // refused before anything changes (the cache stays as it was)
        for (int b = 0; b < B; b++)
            if (prev_i[b] < 0 || prev_i[b] >= A) return -1;

    // embeddings: tokens a_{t-1}, R_t, s_t of every env, rows 3b + 0, 1, 2
    linear(obs, B, D, w_obs, b_obs, C, tmp);  // (B, C)
    if (!discrete) linear(prev_f, B, A, w_act, b_act, C, h);  // (B, C)
    for (int b = 0; b < B; b++) {
        float *xa = x + (int64_t)(3 * b) * C, *xr = xa + C, *xs = xr + C;
        if (discrete) {
            memcpy(xa, w_act + prev_i[b] * C, sizeof(float) * C);
        } else {
            memcpy(xa, h + (int64_t)b * C, sizeof(float) * C);
        }
        for (int c = 0; c < C; c++) xr[c] = rtg[b] * w_ret[c] + b_ret[c];
        memcpy(xs, tmp + (int64_t)b * C, sizeof(float) * C);
        for (int i = 0; i < 3; i++) {
            int64_t t = ts[b] - (i == 0);
            t = t < 0 ? 0 : (t > T_max - 1 ? T_max - 1 : t);
            float *xi = xa + (int64_t)i * C;
            for (int c = 0; c < C; c++) xi[c] += temb[t * C + c];
        }
        // validity: restarting envs forget their episode; the new tokens' slots
        uint8_t *vb = valid + (int64_t)b * S;
        if (starts[b])
            for (int s = 0; s < S; s++) vb[s] = vb[s] && !is_ring[s];
        vb[slots[0]] = has_prev[b] ? 1 : 0;
        vb[slots[1]] = 1;
        vb[slots[2]] = 1;
    }
    layer_norm(x, M, C, lne_g, lne_b, tmp);
    memcpy(x, tmp, sizeof(float) * M * C);

    for (int l = 0; l < L; l++) {
        const float *const *Q = P + 13 + 12 * l;
        const int last = l == L - 1;
        layer_norm(x, M, C, Q[0], Q[1], h);
        linear(h, M, C, Q[2], Q[3], 3 * C, qkv);  // (M, 3C): q | k | v, each (H, hd)
        for (int b = 0; b < B; b++) {
            const uint8_t *vb = valid + (int64_t)b * S;
            for (int hh = 0; hh < H; hh++) {
                float *kh = kbuf + ((((int64_t)l * B + b) * H + hh) * S) * hd;
                float *vh = vbuf + ((((int64_t)l * B + b) * H + hh) * S) * hd;
                for (int i = 0; i < 3; i++) {  // write the new keys and values first
                    const float *row = qkv + (int64_t)(3 * b + i) * 3 * C;
                    memcpy(kh + slots[i] * hd, row + C + hh * hd, sizeof(float) * hd);
                    memcpy(vh + slots[i] * hd, row + 2 * C + hh * hd, sizeof(float) * hd);
                }
                for (int i = last ? 2 : 0; i < 3; i++) {  // the last layer: s_t's query only
                    const float *q = qkv + (int64_t)(3 * b + i) * 3 * C + hh * hd;
                    const uint8_t *bi = band + i * S, *oi = own + i * S;
                    float mx = -INFINITY;
                    for (int s = 0; s < S; s++) {
                        if ((bi[s] && vb[s]) || oi[s]) {
                            const float *ks = kh + (int64_t)s * hd;
                            float a = 0.f;
                            for (int d = 0; d < hd; d++) a += (q[d] * scale) * ks[d];
                            sc[s] = a;
                            if (a > mx) mx = a;
                        } else {
                            sc[s] = -INFINITY;
                        }
                    }
                    float sum = 0.f;
                    for (int s = 0; s < S; s++) {
                        float e = sc[s] == -INFINITY ? 0.f : expf(sc[s] - mx);
                        sc[s] = e;
                        sum += e;
                    }
                    float *yo = y + (int64_t)(3 * b + i) * C + hh * hd;
                    for (int d = 0; d < hd; d++) yo[d] = 0.f;
                    for (int s = 0; s < S; s++) {
                        if (sc[s] == 0.f) continue;
                        const float p = sc[s] / sum, *vs = vh + (int64_t)s * hd;
                        for (int d = 0; d < hd; d++) yo[d] += p * vs[d];
                    }
                }
            }
        }
        if (!last) {
            linear(y, M, C, Q[4], Q[5], C, tmp);
            for (int64_t j = 0; j < (int64_t)M * C; j++) x[j] += tmp[j];
            layer_norm(x, M, C, Q[6], Q[7], h);
            linear(h, M, C, Q[8], Q[9], 4 * C, f);
            gelu(f, (int64_t)M * 4 * C);
            linear(f, M, 4 * C, Q[10], Q[11], C, tmp);
            for (int64_t j = 0; j < (int64_t)M * C; j++) x[j] += tmp[j];
        } else {  // s_t's row of every env only, gathered: (B, C)
            float *xl = qkv;  // the keys and values are in the cache by now
            for (int b = 0; b < B; b++) memcpy(h + (int64_t)b * C, y + (int64_t)(3 * b + 2) * C, sizeof(float) * C);
            linear(h, B, C, Q[4], Q[5], C, tmp);
            for (int b = 0; b < B; b++)
                for (int c = 0; c < C; c++) xl[(int64_t)b * C + c] = x[(int64_t)(3 * b + 2) * C + c] + tmp[(int64_t)b * C + c];
            layer_norm(xl, B, C, Q[6], Q[7], h);
            linear(h, B, C, Q[8], Q[9], 4 * C, f);
            gelu(f, (int64_t)B * 4 * C);
            linear(f, B, 4 * C, Q[10], Q[11], C, tmp);
            for (int64_t j = 0; j < (int64_t)B * C; j++) xl[j] += tmp[j];
            layer_norm(xl, B, C, lnf_g, lnf_b, h);
            linear(h, B, C, w_head, b_head, A, out);
            if (head_kind == 1)
                for (int64_t j = 0; j < (int64_t)B * A; j++) out[j] = tanhf(out[j]);
        }
    }
    return 0;
}
