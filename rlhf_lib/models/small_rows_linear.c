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
typedef int lane_index __attribute__((vector_size(LANES * sizeof(int))));
/* Lanes of two vectors picked by index (0..LANES-1 from a, LANES.. from b). */
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (lane_index){__VA_ARGS__})
#endif

/* Floats to prefetch ahead of the row being read: far enough to hide DRAM latency (1024-4096 measured alike). */
#define PREFETCH_AHEAD 2048

static inline vec load(const float* p) { vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
/* Near the end of the weight this address lies past it: a prefetch never faults (GCC's documentation),
 * and computing the address as an integer keeps the expression itself valid. */
static inline void prefetch_ahead(const float* p) {
  __builtin_prefetch((const void*)((uintptr_t)p + PREFETCH_AHEAD * sizeof(float)));
}

/* sums[j] = the sum of v[j]'s lanes, for 16 vectors at once: a tree of shuffles and adds, each level halving
 * the lanes per vector. One vector at a time would be a chain of dependent scalar adds each, which cost
 * more than the products for short rows (576 x 16: 12.8 us against 5.1 us). */
#if LANES == 16
static inline void sum_lanes(const vec v[16], float sums[16]) {
  vec t[8], u[4], w[2];
  for (int i = 0; i < 8; i++)
    t[i] = SHUFFLE(v[2*i], v[2*i+1], 0,1,2,3,4,5,6,7, 16,17,18,19,20,21,22,23)
         + SHUFFLE(v[2*i], v[2*i+1], 8,9,10,11,12,13,14,15, 24,25,26,27,28,29,30,31);
  for (int i = 0; i < 4; i++)
    u[i] = SHUFFLE(t[2*i], t[2*i+1], 0,1,2,3, 8,9,10,11, 16,17,18,19, 24,25,26,27)
         + SHUFFLE(t[2*i], t[2*i+1], 4,5,6,7, 12,13,14,15, 20,21,22,23, 28,29,30,31);
  for (int i = 0; i < 2; i++)
    w[i] = SHUFFLE(u[2*i], u[2*i+1], 0,1, 4,5, 8,9, 12,13, 16,17, 20,21, 24,25, 28,29)
         + SHUFFLE(u[2*i], u[2*i+1], 2,3, 6,7, 10,11, 14,15, 18,19, 22,23, 26,27, 30,31);
  vec z = SHUFFLE(w[0], w[1], 0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,30)
        + SHUFFLE(w[0], w[1], 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31);
  __builtin_memcpy(sums, &z, sizeof z);
}
#else
static inline void sum_lanes(const vec v[16], float sums[16]) {
  vec t[8], u[4], w[2];
  for (int i = 0; i < 8; i++)
    t[i] = SHUFFLE(v[2*i], v[2*i+1], 0,1,2,3, 8,9,10,11) + SHUFFLE(v[2*i], v[2*i+1], 4,5,6,7, 12,13,14,15);
  for (int i = 0; i < 4; i++)
    u[i] = SHUFFLE(t[2*i], t[2*i+1], 0,1, 4,5, 8,9, 12,13) + SHUFFLE(t[2*i], t[2*i+1], 2,3, 6,7, 10,11, 14,15);
  for (int i = 0; i < 2; i++)
    w[i] = SHUFFLE(u[2*i], u[2*i+1], 0,2,4,6,8,10,12,14) + SHUFFLE(u[2*i], u[2*i+1], 1,3,5,7,9,11,13,15);
  __builtin_memcpy(sums, w, sizeof w);
}
#endif

/* One function per row count, so that the accumulators live in registers: acc[2m] and acc[2m + 1] are
 * row m of x times weight rows n and n + 1. */
#define DEFINE_KERNEL(ROWS)                                                                              \
static void linear_##ROWS(const float* x, const float* w, const float* bias, float* out, int n_out,      \
                          int k_in, int threads) {                                                       \
  _Pragma("omp parallel for num_threads(threads) schedule(static)")                                      \
  for (int n = 0; n < n_out; n += 2) {                                                                   \
    const int pair = n + 1 < n_out;                                                                      \
    const float* w0 = w + (size_t)n * k_in;                                                              \
    const float* w1 = w0 + (size_t)pair * k_in; /* the last odd row is computed twice, stored once */    \
    vec acc[16];                                                                                         \
    for (int i = 0; i < 16; i++) acc[i] = (vec){0};                                                      \
    for (int k = 0; k < k_in; k += LANES) {                                                              \
      const vec a = load(w0 + k), b = load(w1 + k);                                                      \
      prefetch_ahead(w0 + k);                                                                            \
      prefetch_ahead(w1 + k);                                                                            \
      for (int m = 0; m < ROWS; m++) {                                                                   \
        const vec xv = load(x + (size_t)m * k_in + k);                                                   \
        acc[2 * m] += a * xv;                                                                            \
        acc[2 * m + 1] += b * xv;                                                                        \
      }                                                                                                  \
    }                                                                                                    \
    float sums[16];                                                                                      \
    sum_lanes(acc, sums);                                                                                \
    for (int m = 0; m < ROWS; m++) {                                                                     \
      out[(size_t)m * n_out + n] = sums[2 * m] + (bias ? bias[n] : 0.f);                                 \
      if (pair) out[(size_t)m * n_out + n + 1] = sums[2 * m + 1] + (bias ? bias[n + 1] : 0.f);           \
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
