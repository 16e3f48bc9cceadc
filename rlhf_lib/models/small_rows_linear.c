/* out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) for m < rows <= 8, in fp32.
 *
 * Why by hand: at 8 rows (one decoding step of a batch of 8), MKL's and oneDNN's fp32 GEMM repack
 * the weight on every call and stream it at ~12 GB/s on a 2-core Xeon; this kernel reads each weight
 * row once, prefetched, and multiplies it into all rows of x while it is in registers (~18 GB/s for
 * SmolLM2's layers, ~30 GB/s for its LM head).
 * Each thread takes a contiguous run of weight rows, two at a time, so its reads are sequential.
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

/* Floats to prefetch ahead of the row being read: far enough to hide DRAM latency (1024-4096 measured alike). */
#define PREFETCH_AHEAD 2048

static inline vec load(const float* p) { vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
/* Near the end of the weight this address lies past it: a prefetch never faults (GCC's documentation),
 * and computing the address as an integer keeps the expression itself valid. */
static inline void prefetch_ahead(const float* p) {
  __builtin_prefetch((const void*)((uintptr_t)p + PREFETCH_AHEAD * sizeof(float)));
}
static inline float lane_sum(vec v) { float s = 0; for (int i = 0; i < LANES; i++) s += v[i]; return s; }

/* One function per row count, so that the accumulators live in registers. */
#define DEFINE_KERNEL(ROWS)                                                                              \
static void linear_##ROWS(const float* x, const float* w, const float* bias, float* out, int n_out,      \
                          int k_in, int threads) {                                                       \
  _Pragma("omp parallel for num_threads(threads) schedule(static)")                                      \
  for (int n = 0; n < n_out; n += 2) {                                                                   \
    const int pair = n + 1 < n_out;                                                                      \
    const float* w0 = w + (size_t)n * k_in;                                                              \
    const float* w1 = w0 + (size_t)pair * k_in; /* the last odd row is computed twice, stored once */    \
    vec acc0[ROWS], acc1[ROWS];                                                                          \
    for (int m = 0; m < ROWS; m++) acc0[m] = acc1[m] = (vec){0};                                         \
    for (int k = 0; k < k_in; k += LANES) {                                                              \
      const vec a = load(w0 + k), b = load(w1 + k);                                                      \
      prefetch_ahead(w0 + k);                                                                            \
      prefetch_ahead(w1 + k);                                                                            \
      for (int m = 0; m < ROWS; m++) {                                                                   \
        const vec xv = load(x + (size_t)m * k_in + k);                                                   \
        acc0[m] += a * xv;                                                                               \
        acc1[m] += b * xv;                                                                               \
      }                                                                                                  \
    }                                                                                                    \
    for (int m = 0; m < ROWS; m++) {                                                                     \
      out[(size_t)m * n_out + n] = lane_sum(acc0[m]) + (bias ? bias[n] : 0.f);                           \
      if (pair) out[(size_t)m * n_out + n + 1] = lane_sum(acc1[m]) + (bias ? bias[n + 1] : 0.f);         \
    }                                                                                                    \
  }                                                                                                      \
}
DEFINE_KERNEL(1) DEFINE_KERNEL(2) DEFINE_KERNEL(3) DEFINE_KERNEL(4)
DEFINE_KERNEL(5) DEFINE_KERNEL(6) DEFINE_KERNEL(7) DEFINE_KERNEL(8)

int rlhf_small_rows_linear_lanes(void) { return LANES; }

/* Returns 0, or -1 (and writes nothing) where rows is not 1-8 or k_in is not a multiple of the lanes. */
int rlhf_small_rows_linear(const float* x, const float* w, const float* bias, float* out, int rows, int n_out,
                           int k_in, int threads) {
  static void (*const kernels[])(const float*, const float*, const float*, float*, int, int, int) = {
      0, linear_1, linear_2, linear_3, linear_4, linear_5, linear_6, linear_7, linear_8};
  if (rows < 1 || rows > 8 || k_in % LANES != 0) return -1;
  kernels[rows](x, w, bias, out, n_out, k_in, threads);
  return 0;
}
