// One Decision Transformer decode step, fused: see tt_agents/models/native.py (why, how it is built and
// called) and DecisionTransformerNet.decode_step in dt.py (the torch step it equals, line for line:
// embeddings, the ring slots' validity, then each layer's attention over the ring and its MLP).
// Returns 0, or -1 (nothing changed) for a discrete previous action outside [0, A).
#include "native_ops.h"

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
            block_rest(x, y, M, C, Q, h, f, tmp);
        } else {  // s_t's row of every env only, gathered: (B, C)
            float *xl = qkv, *yl = qkv + (int64_t)B * C;  // the keys and values are in the cache by now
            for (int b = 0; b < B; b++) {
                memcpy(xl + (int64_t)b * C, x + (int64_t)(3 * b + 2) * C, sizeof(float) * C);
                memcpy(yl + (int64_t)b * C, y + (int64_t)(3 * b + 2) * C, sizeof(float) * C);
            }
            block_rest(xl, yl, B, C, Q, h, f, tmp);
            layer_norm(xl, B, C, lnf_g, lnf_b, h);
            linear(h, B, C, w_head, b_head, A, out);
            if (head_kind == 1)
                for (int64_t j = 0; j < (int64_t)B * A; j++) out[j] = tanhf(out[j]);
        }
    }
    return 0;
}
