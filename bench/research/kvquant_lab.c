// KV-cache lossy codec lab for ShadowServe.
// Build: gcc -std=c11 -O2 -march=native -fopenmp -o lab lab.c -lzstd -ldeflate -lm
// Usage: ./lab [-k CFG] [-v CFG] [-z LEVELS] [-d LEVELS] [-s] [-n name]
//   CFG: comma list key=val: mode=minmax|std|absmax|lossless, bits=, c=, gt=, gc=, ctr=0|1,
//        rise=0|1 (mid-rise), lay=0|1 (0 token-major, 1 channel-major), delta=0|1, clip=K (clip at K*sigma),
//        lm=a:b:c:d:e:f (per-layer multiplier on c), sp=2|4 (scale precision bytes)
//   -z 1,3,19 zstd levels ("all" = 1..19);  -d 6,12 libdeflate levels; -s: decode speed test
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>
#include <time.h>
#include <zstd.h>
#include <libdeflate.h>

#define NL 6
#define NH 2
#define HD 128
#define NT 2048
#define NC (NH*HD)         /* 256 channels per token */
#define CH 256             /* chunk tokens */
#define NCHUNK (NT/CH)
#define FR (CH*NC)         /* symbols per frame = 65536 */
#define NQH 6
#define NQ 256
#define QS 1792
#define FRAME_HDR 64

static const char *DOCS[2] = {"shared_linuxdoc_cgroup-v2", "shared_pydoc_tutorial-classes"};

static inline float bf2f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7FFF + ((u >> 16) & 1); return (uint16_t)(u >> 16); }
static inline float rbf(float f) { return bf2f(f2bf(f)); }
static inline float rf16(float f) { return (float)(_Float16)f; }

typedef struct {
    int mode;      // 0 minmax, 1 std-step, 2 absmax symmetric, 3 lossless bf16
    int bits; float c; int gt, gc; int ctr, rise, lay, delta; float clip; float lm[NL]; int sp;
    int lossless_variant;
    int unrope, cross, qw;   /* pca: undo RoPE before transform (K), use basis from the other document */
} qcfg;
/* PCA bases: [doc][layer][kv][head] U[128*128] (column j = eigvec j, sorted desc), mean[128] */
static float *BASIS[2][NL][2][NH], *BMEAN[2][NL][2][NH];
static int CUR_DOC = 0; static float GM = 1.0f;
static float ROPE_C[NT][64], ROPE_S[NT][64];
static void init_rope(void) {
    for (int p = 0; p < NT; p++) for (int i = 0; i < 64; i++) {
        double th = pow(500000.0, -2.0 * i / 128.0) * p; ROPE_C[p][i] = (float)cos(th); ROPE_S[p][i] = (float)sin(th); }
}
static inline void unrope(float *v, int p) { for (int i = 0; i < 64; i++) { float a = v[i], b = v[i + 64], c = ROPE_C[p][i], s = ROPE_S[p][i]; v[i] = a * c + b * s; v[i + 64] = b * c - a * s; } }
static inline void rerope(float *v, int p) { for (int i = 0; i < 64; i++) { float a = v[i], b = v[i + 64], c = ROPE_C[p][i], s = ROPE_S[p][i]; v[i] = a * c - b * s; v[i + 64] = b * c + a * s; } }
/* cyclic Jacobi eigen decomposition of symmetric A (n x n, double, destroyed); V out (columns eigvecs) */
static void jacobi(double *A, double *V, int n) {
    for (int i = 0; i < n * n; i++) V[i] = 0; for (int i = 0; i < n; i++) V[i * n + i] = 1;
    for (int sweep = 0; sweep < 30; sweep++) {
        double off = 0; for (int i = 0; i < n; i++) for (int j = i + 1; j < n; j++) off += A[i * n + j] * A[i * n + j];
        if (off < 1e-22) break;
        for (int p = 0; p < n; p++) for (int q = p + 1; q < n; q++) {
            double apq = A[p * n + q]; if (fabs(apq) < 1e-300) continue;
            double th = (A[q * n + q] - A[p * n + p]) / (2 * apq);
            double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1)), c = 1 / sqrt(t * t + 1), s = t * c;
            for (int k = 0; k < n; k++) { double akp = A[k * n + p], akq = A[k * n + q]; A[k * n + p] = c * akp - s * akq; A[k * n + q] = s * akp + c * akq; }
            for (int k = 0; k < n; k++) { double apk = A[p * n + k], aqk = A[q * n + k]; A[p * n + k] = c * apk - s * aqk; A[q * n + k] = s * apk + c * aqk; }
            for (int k = 0; k < n; k++) { double vkp = V[k * n + p], vkq = V[k * n + q]; V[k * n + p] = c * vkp - s * vkq; V[k * n + q] = s * vkp + c * vkq; }
        }
    }
}
static double EIG[2][NL][2][NH][HD];
static float SQW[2][NL][NH][HD]; /* sqrt of query-energy weight per (unroped) K channel, from doc's queries, mean w = 1 */
static int USE_QW = 0, QW_CROSS = 0;
static float *load_qtl(const char *name);
static void compute_qw(int doc, const char *name) {
    float *qt = load_qtl(name);
    for (int l = 0; l < NL; l++) for (int g = 0; g < NH; g++) {
        double w[HD] = {0};
        for (int i = 0; i < NQ; i++) for (int h = g * 3; h < g * 3 + 3; h++) { const float *qv = qt + (((size_t)l * NQ + i) * NQH + h) * HD;
            for (int d = 0; d < 64; d++) { double e = (double)qv[d] * qv[d] + (double)qv[d + 64] * qv[d + 64]; w[d] += e; w[d + 64] += e; } }
        double m = 0; for (int d = 0; d < HD; d++) m += w[d]; m /= HD;
        for (int d = 0; d < HD; d++) SQW[doc][l][g][d] = (float)sqrt(w[d] / m);
    }
    free(qt);
}
static void compute_basis(const float *kv, int doc, int unr) {
    #pragma omp parallel for
    for (int idx = 0; idx < NL * 2 * NH; idx++) {
        int l = idx / (2 * NH), kvi = (idx / NH) % 2, g = idx % NH;
        const float *X = kv + ((size_t)(2 * l + kvi) * NT) * NC + g * HD;
        double mean[HD] = {0}; double *A = calloc(HD * HD, 8), *V = malloc(HD * HD * 8); float v[HD];
        const float *sw = SQW[QW_CROSS ? doc : 1 - doc][l][g]; int useq = (kvi == 0 && USE_QW);
        for (int t = 0; t < NT; t++) { memcpy(v, X + (size_t)t * NC, sizeof v); if (kvi == 0 && unr) unrope(v, t); for (int d = 0; d < HD; d++) mean[d] += v[d]; }
        for (int d = 0; d < HD; d++) mean[d] /= NT;
        for (int t = 0; t < NT; t++) { memcpy(v, X + (size_t)t * NC, sizeof v); if (kvi == 0 && unr) unrope(v, t);
            double z[HD]; for (int d = 0; d < HD; d++) z[d] = (v[d] - mean[d]) * (useq ? sw[d] : 1.0f);
            for (int a = 0; a < HD; a++) { double za = z[a]; for (int b = 0; b <= a; b++) A[a * HD + b] += za * z[b]; } }
        for (int a = 0; a < HD; a++) for (int b = 0; b <= a; b++) { A[a * HD + b] /= NT; A[b * HD + a] = A[a * HD + b]; }
        jacobi(A, V, HD);
        int ord[HD]; for (int i = 0; i < HD; i++) ord[i] = i;
        for (int i = 0; i < HD; i++) for (int j = i + 1; j < HD; j++) if (A[ord[j] * HD + ord[j]] > A[ord[i] * HD + ord[i]]) { int t = ord[i]; ord[i] = ord[j]; ord[j] = t; }
        float *U = malloc(HD * HD * 4), *M = malloc(HD * 4);
        for (int d = 0; d < HD; d++) { M[d] = (float)mean[d]; for (int j = 0; j < HD; j++) U[d * HD + j] = (float)V[d * HD + ord[j]]; }
        for (int j = 0; j < HD; j++) EIG[doc][l][kvi][g][j] = A[ord[j] * HD + ord[j]];
        BASIS[doc][l][kvi][g] = U; BMEAN[doc][l][kvi][g] = M; free(A); free(V);
    }
}
/* PCA frame quant: y = U^T(x-mean) per token/head, uniform step delta = c * rms(frame) (fp16), symbols with escape.
   q layout: q[t*NC + g*HD + j] = coefficient j */
static size_t quant_pca(const qcfg *cf, int layer, int kvi, int chunk, const float *x, int32_t *q, float *xh) {
    int bd = cf->cross ? 1 - CUR_DOC : CUR_DOC;
    double s2 = 0; for (int i = 0; i < FR; i++) s2 += (double)x[i] * x[i];
    float delta = rf16(cf->c * cf->lm[layer] * GM * (float)sqrt(s2 / FR));
    for (int g = 0; g < NH; g++) {
        const float *U = BASIS[bd][layer][kvi][g], *M = BMEAN[bd][layer][kvi][g];
        for (int t = 0; t < CH; t++) {
            int p = chunk * CH + t; float v[HD], y[HD];
            memcpy(v, x + t * NC + g * HD, sizeof v);
            if (kvi == 0 && cf->unrope) unrope(v, p);
            const float *sw = SQW[1 - CUR_DOC][layer][g]; int useq = (kvi == 0 && cf->qw);
            for (int d = 0; d < HD; d++) { v[d] -= M[d]; if (useq) v[d] *= sw[d]; }
            for (int j = 0; j < HD; j++) y[j] = 0;
            for (int d = 0; d < HD; d++) { float vd = v[d]; const float *u = U + d * HD; for (int j = 0; j < HD; j++) y[j] += vd * u[j]; }
            for (int j = 0; j < HD; j++) { int r = (int)lrintf(y[j] / delta); if (r > 32767) r = 32767; if (r < -32767) r = -32767; q[t * NC + g * HD + j] = r; y[j] = r * delta; }
            for (int d = 0; d < HD; d++) { const float *u = U + d * HD; float a = 0; for (int j = 0; j < HD; j++) a += u[j] * y[j]; v[d] = M[d] + (useq ? a / sw[d] : a); }
            if (kvi == 0 && cf->unrope) rerope(v, p);
            for (int d = 0; d < HD; d++) xh[t * NC + g * HD + d] = rbf(v[d]);
        }
    }
    return 2;
}
/* escape-coded symbol bytes: zigzag(q) < 255 -> 1 byte; else 255 then 2 bytes LE appended to escape area at end */
static size_t layout_esc(const qcfg *cf, const int32_t *q, uint8_t *out) {
    uint8_t esc[2 * FR * 2]; size_t ne = 0;
    for (int i = 0; i < FR; i++) {
        int t, j; if (cf->lay == 0) { t = i / NC; j = i % NC; } else { j = i / CH; t = i % CH; }
        int32_t v = q[t * NC + j]; uint32_t z = v >= 0 ? 2u * v : -2u * v - 1;
        if (z < 255) out[i] = (uint8_t)z; else { out[i] = 255; esc[ne++] = z & 0xff; esc[ne++] = z >> 8; }
    }
    memcpy(out + FR, esc, ne); return FR + ne;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static void parse_cfg(qcfg *q, const char *s) {
    char buf[512]; strncpy(buf, s, 511); buf[511] = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '='); if (!eq) { fprintf(stderr, "bad cfg %s\n", tok); exit(1); }
        *eq = 0; const char *k = tok, *v = eq + 1;
        if (!strcmp(k, "mode")) q->mode = !strcmp(v, "minmax") ? 0 : !strcmp(v, "std") ? 1 : !strcmp(v, "absmax") ? 2 : !strcmp(v, "pca") ? 4 : 3;
        else if (!strcmp(k, "bits")) q->bits = atoi(v);
        else if (!strcmp(k, "c")) q->c = atof(v);
        else if (!strcmp(k, "gt")) q->gt = atoi(v);
        else if (!strcmp(k, "gc")) q->gc = atoi(v);
        else if (!strcmp(k, "ctr")) q->ctr = atoi(v);
        else if (!strcmp(k, "rise")) q->rise = atoi(v);
        else if (!strcmp(k, "lay")) q->lay = atoi(v);
        else if (!strcmp(k, "delta")) q->delta = atoi(v);
        else if (!strcmp(k, "clip")) q->clip = atof(v);
        else if (!strcmp(k, "sp")) q->sp = atoi(v);
        else if (!strcmp(k, "lv")) q->lossless_variant = atoi(v);
        else if (!strcmp(k, "unrope")) q->unrope = atoi(v);
        else if (!strcmp(k, "cross")) q->cross = atoi(v);
        else if (!strcmp(k, "qw")) q->qw = atoi(v);
        else if (!strcmp(k, "lm")) { char *p = (char *)v; for (int i = 0; i < NL; i++) { q->lm[i] = strtof(p, &p); if (*p == ':') p++; } }
        else { fprintf(stderr, "unknown key %s\n", k); exit(1); }
    }
}

/* Quantize one frame x[CH][NC] (token-major). Outputs int symbols q[CH][NC], reconstructed xh (bf16-rounded),
   returns side-info bytes. */
static size_t quant_frame(const qcfg *cf, int layer, const float *x, int32_t *q, float *xh) {
    size_t side = 0;
    int gt = cf->gt, gc = cf->gc;
    float c = cf->c * cf->lm[layer] * GM;
    int sp = cf->sp;
    for (int t0 = 0; t0 < CH; t0 += gt)
        for (int c0 = 0; c0 < NC; c0 += gc) {
            double s = 0, s2 = 0; float mn = INFINITY, mx = -INFINITY, am = 0; int n = gt * gc;
            for (int t = t0; t < t0 + gt; t++)
                for (int j = c0; j < c0 + gc; j++) {
                    float v = x[t * NC + j]; s += v; s2 += (double)v * v;
                    if (v < mn) mn = v; if (v > mx) mx = v; if (fabsf(v) > am) am = fabsf(v);
                }
            float mu = 0, delta; int lo, hi;
            if (cf->mode == 0) {
                int L = (1 << cf->bits) - 1;
                float m16 = sp == 2 ? rf16(mn) : mn;
                delta = (mx - m16) / L; if (delta <= 0) delta = 1e-3f;
                delta = sp == 2 ? rf16(delta) : delta;
                if (sp == 2 && (m16 + L * delta) < mx) { delta = rf16(delta * 1.0009766f); }
                mu = m16; lo = 0; hi = L; side += 2 * sp;
                for (int t = t0; t < t0 + gt; t++)
                    for (int j = c0; j < c0 + gc; j++) {
                        float v = x[t * NC + j];
                        int r = (int)lrintf((v - mu) / delta); if (r < lo) r = lo; if (r > hi) r = hi;
                        q[t * NC + j] = r; xh[t * NC + j] = rbf(mu + r * delta);
                    }
                continue;
            }
            if (cf->mode == 1) {
                double m = cf->ctr ? s / n : 0;
                double var = s2 / n - (cf->ctr ? m * m : 0); if (var < 1e-12) var = 1e-12;
                mu = cf->ctr ? (sp == 2 ? rf16((float)m) : (float)m) : 0;
                delta = c * (float)sqrt(var);
                side += sp * (cf->ctr ? 2 : 1);
                int Q = 32767;
                if (cf->clip > 0) { int Qc = (int)floorf(cf->clip / c); if (Qc < Q) Q = Qc; }
                if (cf->bits > 0) { int Qb = (1 << (cf->bits - 1)) - 1; if (Qb < Q) Q = Qb; }
                lo = cf->rise ? -Q - 1 : -Q; hi = Q;
            } else { /* absmax symmetric: delta = absmax / (2^(b-1)-1) */
                int Q = (1 << (cf->bits - 1)) - 1;
                delta = am / Q; lo = -Q; hi = Q; side += sp;
            }
            if (delta <= 0) delta = 1e-6f;
            if (sp == 2) { delta = rf16(delta); if (delta <= 0) delta = 6e-8f; }
            for (int t = t0; t < t0 + gt; t++)
                for (int j = c0; j < c0 + gc; j++) {
                    float v = (x[t * NC + j] - mu) / delta; int r; float rec;
                    if (cf->rise) { r = (int)floorf(v); if (r < lo) r = lo; if (r > hi) r = hi; rec = mu + (r + 0.5f) * delta; }
                    else { r = (int)lrintf(v); if (r < lo) r = lo; if (r > hi) r = hi; rec = mu + r * delta; }
                    q[t * NC + j] = r; xh[t * NC + j] = rbf(rec);
                }
        }
    return side;
}

/* symbols -> bytes with layout & delta */
static void layout_syms(const qcfg *cf, const int32_t *q, uint8_t *out) {
    for (int t = 0; t < CH; t++)
        for (int j = 0; j < NC; j++) {
            int32_t v = q[t * NC + j];
            if (cf->delta && t > 0) v -= q[(t - 1) * NC + j];
            uint8_t b = (uint8_t)(v & 0xFF);
            if (cf->lay == 0) out[t * NC + j] = b; else out[j * CH + t] = b;
        }
}

/* ---- attention ---- */
typedef struct { float *kv; float *qt; double *O; } doc_t;  /* kv: [NL][2][NT][NC] float, qt: [NL][NQ][NQH][HD] */

static float *load_kvd(const char *name) {
    char p[512]; snprintf(p, sizeof p, "%s.kvd", name);
    FILE *f = fopen(p, "rb"); if (!f) { perror(p); exit(1); }
    fseek(f, 24, SEEK_SET);
    size_t n = (size_t)NL * 2 * NT * NC;
    uint16_t *b = malloc(n * 2); if (fread(b, 2, n, f) != n) { fprintf(stderr, "short read\n"); exit(1); } fclose(f);
    float *x = malloc(n * 4); for (size_t i = 0; i < n; i++) x[i] = bf2f(b[i]); free(b); return x;
}
static float *load_qtl(const char *name) {
    char p[512]; snprintf(p, sizeof p, "%s.qtl", name);
    FILE *f = fopen(p, "rb"); if (!f) { perror(p); exit(1); }
    fseek(f, 28, SEEK_SET);
    size_t n = (size_t)NL * NQ * NQH * HD;
    uint16_t *b = malloc(n * 2); if (fread(b, 2, n, f) != n) { fprintf(stderr, "short read\n"); exit(1); } fclose(f);
    float *x = malloc(n * 4); for (size_t i = 0; i < n; i++) x[i] = bf2f(b[i]); free(b); return x;
}

/* O[NL][NQH][NQ][HD] */
static void attention(const float *kv, const float *qt, float *O) {
    #pragma omp parallel for schedule(dynamic)
    for (int lh = 0; lh < NL * NQH; lh++) {
        int l = lh / NQH, h = lh % NQH, g = h / 3;
        const float *K = kv + ((size_t)(2 * l) * NT) * NC, *V = kv + ((size_t)(2 * l + 1) * NT) * NC;
        float *Kt = malloc(sizeof(float) * HD * NT);
        for (int t = 0; t < NT; t++) for (int d = 0; d < HD; d++) Kt[d * NT + t] = K[t * NC + g * HD + d];
        float *s = malloc(sizeof(float) * NT);
        for (int i = 0; i < NQ; i++) {
            int p = QS + i, nk = p + 1;
            const float *qv = qt + (((size_t)l * NQ + i) * NQH + h) * HD;
            for (int j = 0; j < nk; j++) s[j] = 0;
            for (int d = 0; d < HD; d++) { float qd = qv[d] * 0.08838834764831845f; const float *kr = Kt + d * NT; for (int j = 0; j < nk; j++) s[j] += qd * kr[j]; }
            float m = -INFINITY; for (int j = 0; j < nk; j++) if (s[j] > m) m = s[j];
            float z = 0; for (int j = 0; j < nk; j++) { s[j] = expf(s[j] - m); z += s[j]; }
            float o[HD]; for (int d = 0; d < HD; d++) o[d] = 0;
            for (int j = 0; j < nk; j++) { float w = s[j]; const float *vr = V + (size_t)j * NC + g * HD; for (int d = 0; d < HD; d++) o[d] += w * vr[d]; }
            float *Op = O + (((size_t)l * NQH + h) * NQ + i) * HD;
            for (int d = 0; d < HD; d++) Op[d] = o[d] / z;
        }
        free(s); free(Kt);
    }
}

static int parse_levels(const char *s, int *lv) {
    if (!strcmp(s, "all")) { for (int i = 0; i < 19; i++) lv[i] = i + 1; return 19; }
    int n = 0; char buf[256]; strncpy(buf, s, 255); buf[255] = 0;
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) lv[n++] = atoi(t);
    return n;
}

static double H0(const uint8_t *b, size_t n) {
    size_t h[256] = {0}; for (size_t i = 0; i < n; i++) h[b[i]]++;
    double e = 0; for (int i = 0; i < 256; i++) if (h[i]) e -= h[i] * log2((double)h[i] / n);
    return e / 8.0;  /* bytes */
}

/* lossless bf16 frame transforms: variant 0 plain bytes; 1 byte planes (hi, lo); 2 planes of XOR with prev token;
   3 planes: sign+exp (rotated: exp byte = (h>>7)&0xff, sign|mantissa byte = (h>>15)<<7 | (h&0x7f)) */
static void lossless_xform(int var, const uint16_t *h, uint8_t *out) {
    int n = FR;
    for (int i = 0; i < n; i++) {
        uint16_t v = h[i];
        if (var == 2 && i >= NC) v ^= h[i - NC];
        if (var == 0) { out[2 * i] = v & 0xff; out[2 * i + 1] = v >> 8; }
        else if (var == 1 || var == 2) { out[i] = v >> 8; out[n + i] = v & 0xff; }
        else if (var == 3) { out[i] = (v >> 7) & 0xff; out[n + i] = (uint8_t)(((v >> 15) << 7) | (v & 0x7f)); }
        else if (var == 4) { /* channel-major planes */ int t = i / NC, j = i % NC; out[j * CH + t] = (v >> 7) & 0xff; out[n + j * CH + t] = (uint8_t)(((v >> 15) << 7) | (v & 0x7f)); }
    }
}

static size_t quant_pca(const qcfg *, int, int, int, const float *, int32_t *, float *);
static double attn_err(const float *O0, const float *O1) {
    double en = 0, es = 0; size_t n = (size_t)NL * NQH * NQ * HD;
    for (size_t i = 0; i < n; i++) { double d = O1[i] - O0[i]; en += d * d; es += (double)O0[i] * O0[i]; }
    return sqrt(en / es);
}
static double quick_eval(const qcfg *kc, const qcfg *vc, const float *kv, const float *qt, const float *O0, float *dec, float *O1) {
    #pragma omp parallel
    {
        int32_t *q = malloc(FR * 4);
        #pragma omp for
        for (int fi = 0; fi < NL * 2 * NCHUNK; fi++) {
            int l = fi / (2 * NCHUNK), kvi = (fi / NCHUNK) % 2, ch = fi % NCHUNK;
            const qcfg *cf = kvi ? vc : kc; size_t off = (((size_t)(2 * l + kvi) * NT) + (size_t)ch * CH) * NC;
            if (cf->mode == 3) memcpy(dec + off, kv + off, FR * 4);
            else if (cf->mode == 4) quant_pca(cf, l, kvi, ch, kv + off, q, dec + off);
            else quant_frame(cf, l, kv + off, q, dec + off);
        }
        free(q);
    }
    attention(dec, qt, O1); return attn_err(O0, O1);
}
int main(int argc, char **argv) {
    qcfg kc = {0}, vc = {0};
    kc.mode = 0; kc.bits = 0; kc.gt = 256; kc.gc = 1; kc.sp = 2;
    vc.mode = 0; vc.bits = 0; vc.gt = 1; vc.gc = 256; vc.sp = 2;
    for (int i = 0; i < NL; i++) kc.lm[i] = vc.lm[i] = 1;
    double target = 0; int zl[32], nz = 0, dl[16], nd = 0, speed = 0, ndocs = 2; const char *name = "";
    nz = parse_levels("1,3,19", zl); nd = parse_levels("6,12", dl);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-k")) parse_cfg(&kc, argv[++i]);
        else if (!strcmp(argv[i], "-v")) parse_cfg(&vc, argv[++i]);
        else if (!strcmp(argv[i], "-z")) nz = parse_levels(argv[++i], zl);
        else if (!strcmp(argv[i], "-d")) nd = parse_levels(argv[++i], dl);
        else if (!strcmp(argv[i], "-s")) speed = 1;
        else if (!strcmp(argv[i], "-1")) ndocs = 1;
        else if (!strcmp(argv[i], "-t")) target = atof(argv[++i]);
        else if (!strcmp(argv[i], "-n")) name = argv[++i];
    }
    const size_t NV = (size_t)NL * 2 * NT * NC;
    const double RAW = NV * 2.0;
    ZSTD_CCtx *zc = ZSTD_createCCtx();
    struct libdeflate_compressor *dcs[16]; for (int i = 0; i < nd; i++) dcs[i] = libdeflate_alloc_compressor(dl[i]);
    size_t cap = ZSTD_compressBound(4 * FR) + 1024; uint8_t *cbuf = malloc(cap);
    init_rope();
    if (kc.qw) { USE_QW = 1; QW_CROSS = kc.cross; for (int d = 0; d < 2; d++) compute_qw(d, DOCS[d]); }
    if (kc.mode == 4 || vc.mode == 4) for (int d = 0; d < 2; d++) { float *t = load_kvd(DOCS[d]); compute_basis(t, d, kc.unrope); free(t); }
    if ((kc.mode == 4 || vc.mode == 4) && getenv("EIG")) for (int l = 0; l < NL; l++) for (int k = 0; k < 2; k++) {
        printf("L%d %s gain(bits)", l, k ? "V" : "K");
        for (int g = 0; g < NH; g++) { double am = 0, lg = 0; for (int j = 0; j < HD; j++) { double e = EIG[0][l][k][g][j] > 1e-9 ? EIG[0][l][k][g][j] : 1e-9; am += e; lg += log(e); }
            am /= HD; lg /= HD; printf(" %.2f", 0.5 * log2(am / exp(lg))); }
        printf("  top eig %.2f %.2f %.2f\n", EIG[0][l][k][0][0], EIG[0][l][k][0][1], EIG[0][l][k][0][10]); }
    for (int di = 0; di < ndocs; di++) {
        CUR_DOC = di; float *kv = load_kvd(DOCS[di]); float *qt = load_qtl(DOCS[di]);
        float *dec = malloc(NV * 4);
        if (target > 0) {
            float *O0 = malloc(sizeof(float) * NL * NQH * NQ * HD), *O1 = malloc(sizeof(float) * NL * NQH * NQ * HD);
            attention(kv, qt, O0);
            double lo = log(1e-2), hi = log(30.0);
            for (int it = 0; it < 12; it++) { double m = 0.5 * (lo + hi); GM = (float)exp(m); double e = quick_eval(&kc, &vc, kv, qt, O0, dec, O1); if (e > target) hi = m; else lo = m; }
            GM = (float)exp(lo); free(O0); free(O1);
        }
        /* totals per coder: [0..nz-1] zstd levels, [nz] best zstd, [nz+1..] deflate levels, last: raw syms, H0 */
        double tot_z[32] = {0}, tot_zbest = 0, tot_d[16] = {0}, tot_raw = 0, tot_h0 = 0, side_tot = 0;
        double errK = 0, sK = 0, errV = 0, sV = 0;
        int32_t *q = malloc(FR * 4); float *xh = malloc(FR * 4); uint8_t *sy = malloc(4 * FR); float *xf = malloc(FR * 4);
        /* for speed test keep compressed frames (zstd level zl[0]) */
        uint8_t **zfr = speed ? calloc(NL * 2 * NCHUNK, sizeof(uint8_t *)) : NULL; size_t *zfn = speed ? calloc(NL * 2 * NCHUNK, sizeof(size_t)) : NULL;
        float **scl = speed ? calloc(NL * 2 * NCHUNK, sizeof(float *)) : NULL;
        for (int l = 0; l < NL; l++)
            for (int kvi = 0; kvi < 2; kvi++) {
                const qcfg *cf = kvi ? &vc : &kc;
                for (int ch = 0; ch < NCHUNK; ch++) {
                    size_t off = (((size_t)(2 * l + kvi) * NT) + (size_t)ch * CH) * NC;
                    const float *x = kv + off;
                    size_t side, nsym;
                    if (cf->mode == 3) {
                        uint16_t hb[FR]; for (int i = 0; i < FR; i++) hb[i] = f2bf(x[i]);
                        lossless_xform(cf->lossless_variant, hb, sy); nsym = 2 * FR; side = 0;
                        memcpy(xh, x, FR * 4);
                    } else if (cf->mode == 4) {
                        side = quant_pca(cf, l, kvi, ch, x, q, xh); nsym = layout_esc(cf, q, sy);
                    } else {
                        side = quant_frame(cf, l, x, q, xh);
                        if (cf->mode == 1 && !cf->delta) nsym = layout_esc(cf, q, sy); else { layout_syms(cf, q, sy); nsym = FR; }
                    }
                    side += FRAME_HDR; side_tot += side;
                    for (int i = 0; i < FR; i++) { double e = xh[i] - x[i]; if (kvi) { errV += e * e; sV += (double)x[i] * x[i]; } else { errK += e * e; sK += (double)x[i] * x[i]; } }
                    memcpy(dec + off, xh, FR * 4);
                    tot_raw += nsym + side; tot_h0 += H0(sy, nsym) + side;
                    size_t best = (size_t)-1;
                    for (int zi = 0; zi < nz; zi++) {
                        size_t r;
                        if (cf->mode == 3 && getenv("SPLIT")) { /* each byte plane as its own zstd frame */
                            r = ZSTD_compressCCtx(zc, cbuf, cap, sy, FR, zl[zi]); r += ZSTD_compressCCtx(zc, cbuf, cap, sy + FR, FR, zl[zi]);
                        } else r = ZSTD_compressCCtx(zc, cbuf, cap, sy, nsym, zl[zi]);
                        if (ZSTD_isError(r)) { fprintf(stderr, "zstd err\n"); exit(1); }
                        if (r > nsym) r = nsym + 4; /* store raw fallback */
                        tot_z[zi] += r + side; if (r < best) best = r;
                        if (speed && zi == 0) { int fi = (2 * l + kvi) * NCHUNK + ch; zfr[fi] = malloc(r); memcpy(zfr[fi], cbuf, r); zfn[fi] = r; }
                    }
                    tot_zbest += best + side;
                    for (int k = 0; k < nd; k++) {
                        size_t r = libdeflate_deflate_compress(dcs[k], sy, nsym, cbuf, cap);
                        if (r == 0 || r > nsym) r = nsym + 4;
                        tot_d[k] += r + side;
                    }
                }
            }
        float *O0 = malloc(sizeof(float) * NL * NQH * NQ * HD), *O1 = malloc(sizeof(float) * NL * NQH * NQ * HD);
        attention(kv, qt, O0); attention(dec, qt, O1);
        double en = 0, es = 0, enl[NL] = {0}, esl[NL] = {0};
        size_t per = (size_t)NQH * NQ * HD;
        for (int l = 0; l < NL; l++) for (size_t i = 0; i < per; i++) { double d = O1[l * per + i] - O0[l * per + i]; enl[l] += d * d; esl[l] += (double)O0[l * per + i] * O0[l * per + i]; }
        for (int l = 0; l < NL; l++) { en += enl[l]; es += esl[l]; }
        printf("%-28s %-8.8s GM %.4f", name, DOCS[di] + 7, GM);
        for (int zi = 0; zi < nz; zi++) printf(" z%d %5.3f", zl[zi], RAW / tot_z[zi]);
        printf(" zbest %5.3f", RAW / tot_zbest);
        for (int k = 0; k < nd; k++) printf(" d%d %5.3f", dl[k], RAW / tot_d[k]);
        printf(" raw %5.3f H0 %5.3f | side %.1f%% | K %.4f V %.4f | attn %.4f |", RAW / tot_raw, RAW / tot_h0, 100 * side_tot / tot_zbest, sqrt(errK / sK), sqrt(errV / sV), sqrt(en / es));
        for (int l = 0; l < NL; l++) printf(" %.4f", sqrt(enl[l] / esl[l]));
        printf("\n"); fflush(stdout);
        if (speed) { extern void speed_test(const qcfg *, const qcfg *, uint8_t **, size_t *, const float *, double); speed_test(&kc, &vc, zfr, zfn, kv, RAW); }
        free(kv); free(qt); free(dec); free(O0); free(O1); free(q); free(xh); free(sy); free(xf);
    }
    return 0;
}

/* Decode speed: zstd decompress + dequantize (sym byte -> bf16) for each frame, using per-group float scales.
   Scales are recomputed here from the original data (they'd be read from the frame in production). Single thread. */
void speed_test(const qcfg *kc, const qcfg *vc, uint8_t **zfr, size_t *zfn, const float *kv, double RAW) {
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    uint8_t *sy = malloc(4 * FR); uint16_t *outb = malloc(FR * 2);
    /* per-frame per-group delta / mu (approximate: use group=frame-level constants for timing; cost is the same) */
    int reps = 5; double t0 = now(), tz = 0; volatile uint32_t sink = 0;
    for (int r = 0; r < reps; r++)
        for (int fi = 0; fi < NL * 2 * NCHUNK; fi++) {
            const qcfg *cf = (fi / NCHUNK) % 2 ? vc : kc;
            double a = now();
            size_t n = ZSTD_decompressDCtx(dc, sy, 2 * FR, zfr[fi], zfn[fi]);
            tz += now() - a;
            if (cf->mode == 3) { sink += (uint32_t)n; continue; }
            if (cf->mode == 4) { /* coefficient-major symbols -> y -> U y + mean -> (re-RoPE for K) -> bf16 */
                int kvi = (fi / NCHUNK) % 2, l = fi / (2 * NCHUNK), ch = fi % NCHUNK;
                for (int g = 0; g < NH; g++) { const float *U = BASIS[0][l][kvi][g], *M = BMEAN[0][l][kvi][g];
                    static float UT[HD * HD]; for (int d = 0; d < HD; d++) for (int j = 0; j < HD; j++) UT[j * HD + d] = U[d * HD + j]; /* would be precomputed once */
                    for (int t = 0; t < CH; t++) { float y[HD], v[HD];
                        for (int j = 0; j < HD; j++) { uint8_t z = sy[(g * HD + j) * CH + t]; y[j] = (float)((z >> 1) ^ -(int)(z & 1)) * 0.01f; }
                        for (int d = 0; d < HD; d++) v[d] = M[d];
                        for (int j = 0; j < HD; j++) { float yj = y[j]; if (yj == 0.0f) continue; const float *u = UT + j * HD; for (int d = 0; d < HD; d++) v[d] += yj * u[d]; }
                        if (kvi == 0 && cf->unrope) rerope(v, ch * CH + t);
                        for (int d = 0; d < HD; d++) outb[t * NC + g * HD + d] = f2bf(v[d]); } }
                sink += outb[fi & 1023]; continue; }
            /* dequantize: groups gt x gc with delta,mu; token-major layout assumed */
            float dl[NC], mu[NC];
            for (int j = 0; j < NC; j++) { dl[j] = 0.01f * (1 + (j & 7)); mu[j] = 0.001f * j; }
            if (cf->delta) { /* prefix sum along tokens */
                int8_t acc[NC]; memset(acc, 0, sizeof acc);
                for (int t = 0; t < CH; t++) for (int j = 0; j < NC; j++) { acc[j] += (int8_t)sy[t * NC + j]; sy[t * NC + j] = (uint8_t)acc[j]; }
            }
            for (int t = 0; t < CH; t++) {
                const int8_t *s = (const int8_t *)sy + t * NC; uint16_t *o = outb + t * NC;
                if (cf->gc < NC && cf->gt == 1) { /* per-token-group scale */
                    for (int g = 0; g < NC; g += cf->gc) { float d = dl[g / cf->gc & 7], m = mu[g]; for (int j = g; j < g + cf->gc; j++) o[j] = f2bf(m + s[j] * d); }
                } else {
                    for (int j = 0; j < NC; j++) o[j] = f2bf(mu[j] + s[j] * dl[j]);
                }
            }
            sink += outb[fi & 1023];
        }
    double tt = now() - t0;
    double bytes = RAW * reps;
    printf("  speed (1 core): total %.2f GB/s bf16 out (zstd part %.2f GB/s, dequant part %.2f GB/s) sink=%u\n",
           bytes / tt / 1e9, bytes / tz / 1e9, bytes / (tt - tz) / 1e9, sink);
}
