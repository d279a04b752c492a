/*
 * The one definition of bmx's bit-level semantics, shared by the MXNet operator
 * library (ops.cc) and the Cython extension (bmx/_xnor.pyx).
 *
 * Sign convention: sign(x) = +1 if x >= 0 else -1 (so sign(0) = +1, and NaN maps
 * to -1). Bit encoding: bit 1 <=> +1, bit 0 <=> -1.
 *
 * Packing: n values become ceil(n / 64) uint64 words; value j lives in bit
 * (j % 64) of word (j / 64). Bits past n in the tail word are 0. With that rule
 * the +/-1 dot product of two packed rows of true length n is exactly
 *     n - 2 * popcount(a XOR b)
 * because padding bits are 0 in both operands and never contribute to the XOR.
 *
 * Kernels come in variants chosen at run time, never at build time, so one
 * binary runs on any x86-64: AVX-512 with VPOPCNTDQ, AVX2, and portable C; on
 * AArch64, NEON (bitops_neon.h) and portable C; elsewhere portable C only. All
 * give identical results. Entry points:
 * bmx_kernel_best / bmx_kernel_available, bmx_pack_rows / bmx_pack_nchw (sign +
 * pack; for NCHW optionally behind a per-channel affine threshold, a BatchNorm
 * folded in), bmx_xnor_pack_panels (weights), bmx_xnor_gemm, bmx_xnor_conv
 * (binary convolution into int32 NHWC, float32 NCHW, or BatchNorm + sign packed
 * bits) and bmx_conv_tap_sums.
 * They run on OpenMP threads when compiled with -fopenmp.
 */
#ifndef BMX_BITOPS_H_
#define BMX_BITOPS_H_

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define BMX_X86 1
#include <immintrin.h>
#endif

#if defined(__aarch64__)
#define BMX_NEON 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

static inline float bmx_sign_f32(float x) { return x >= 0.0f ? 1.0f : -1.0f; }

static inline uint64_t bmx_sign_bit_f32(float x) { return x >= 0.0f ? 1u : 0u; }

static inline size_t bmx_words_for_bits(size_t n) { return (n + 63) / 64; }

/* Packs n contiguous floats into ceil(n/64) words (tail bits zero). */
static inline void bmx_pack_row_f32(const float* src, size_t n, uint64_t* dst) {
  size_t full = n / 64;
  for (size_t w = 0; w < full; ++w) {
    const float* s = src + 64 * w;
    uint64_t word = 0;
    /* a fixed trip count lets the compiler turn this into compare + movemask */
    for (int j = 0; j < 64; ++j) word |= bmx_sign_bit_f32(s[j]) << j;
    dst[w] = word;
  }
  size_t rest = n - 64 * full;
  if (rest) {
    const float* s = src + 64 * full;
    uint64_t word = 0;
    for (size_t j = 0; j < rest; ++j) word |= bmx_sign_bit_f32(s[j]) << j;
    dst[full] = word;
  }
}

/* ------------------------------------------------------------------------- */
/* Kernel selection                                                           */
/* ------------------------------------------------------------------------- */

enum { BMX_KERNEL_PORTABLE = 0, BMX_KERNEL_AVX2 = 1, BMX_KERNEL_AVX512 = 2, BMX_KERNEL_NEON = 3 };

/* Whether this CPU (and OS: libgcc checks the XSAVE state) can run a kernel variant. */
static inline int bmx_kernel_available(int kernel) {
  switch (kernel) {
    case BMX_KERNEL_PORTABLE:
      return 1;
#ifdef BMX_X86
    case BMX_KERNEL_AVX2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") != 0;
    case BMX_KERNEL_AVX512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
#ifdef BMX_NEON
    case BMX_KERNEL_NEON:
#if defined(__linux__) && defined(HWCAP_ASIMD)
      return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
      return 1; /* part of the AArch64 base ISA elsewhere (e.g. Apple silicon) */
#endif
#endif
    default:
      return 0;
  }
}

static inline int bmx_kernel_best(void) {
  if (bmx_kernel_available(BMX_KERNEL_AVX512)) return BMX_KERNEL_AVX512;
  if (bmx_kernel_available(BMX_KERNEL_AVX2)) return BMX_KERNEL_AVX2;
  if (bmx_kernel_available(BMX_KERNEL_NEON)) return BMX_KERNEL_NEON;
  return BMX_KERNEL_PORTABLE;
}

/* ------------------------------------------------------------------------- */
/* xnor-popcount micro-kernels                                               */
/* ------------------------------------------------------------------------- */
/*
 * The right-hand operand (weights) is stored in panels of BMX_PANEL rows,
 * transposed so that word k of the panel's 32 rows is contiguous:
 *     panel[k * BMX_PANEL + j] = row (32 * p + j), word k   (0 past the last row)
 * The micro-kernels vectorise across those rows (output columns) and broadcast
 * one word of a left-hand row at a time. Compared with vectorising along K this
 * needs no horizontal reduction and wastes nothing when K is not a multiple of
 * 512 bits: K only has to be a whole number of words.
 *
 * A left-hand row is a sequence of segments (for a convolution: one segment per
 * kernel tap, each the tap's input pixel channel words), given by a table of
 * segment pointers: rows[s * BMX_TABLE_MR + r] is segment s of row r. A plain
 * GEMM is the one-segment case.
 *
 * Every micro-kernel writes c[r * ldc + j] = k_bits - 2 * popcount for mr rows
 * and ncols (<= its column width) columns. nseg and seglen are at least 1: loops
 * known to run keep the accumulators in registers (with a zero-trip path GCC
 * spills them all around the loop).
 */
#define BMX_PANEL 32
#define BMX_TABLE_MR 8

typedef void (*bmx_microkernel)(int mr, const uint64_t* const* rows, size_t nseg, size_t seglen,
                                const uint64_t* bp, int32_t* c, size_t ldc, int ncols,
                                int32_t k_bits);

/* SWAR popcount: __builtin_popcountll without -mpopcnt is a libgcc call. */
static inline uint64_t bmx_popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return (x * 0x0101010101010101ULL) >> 56;
}

#define BMX_MR_PORTABLE 4
#define BMX_COLS_PORTABLE 4

static inline __attribute__((always_inline)) void bmx_mk_portable_body(
    const int mr, const uint64_t* const* rows, size_t nseg, size_t seglen, const uint64_t* bp,
    int32_t* c, size_t ldc, int ncols, int32_t k_bits) {
  uint64_t acc[BMX_MR_PORTABLE][BMX_COLS_PORTABLE] = {{0}};
  size_t s = 0;
  do {
    const uint64_t* a[BMX_MR_PORTABLE];
    for (int r = 0; r < mr; ++r) a[r] = rows[s * BMX_TABLE_MR + r];
    size_t w = 0;
    do {
      for (int r = 0; r < mr; ++r) {
        uint64_t x = a[r][w];
        for (int j = 0; j < BMX_COLS_PORTABLE; ++j) acc[r][j] += bmx_popcount64(x ^ bp[j]);
      }
      bp += BMX_PANEL;
    } while (++w < seglen);
  } while (++s < nseg);
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < ncols; ++j) c[r * ldc + j] = k_bits - 2 * (int32_t)acc[r][j];
}

static inline void bmx_mk_portable(int mr, const uint64_t* const* rows, size_t nseg,
                                   size_t seglen, const uint64_t* bp, int32_t* c, size_t ldc,
                                   int ncols, int32_t k_bits) {
  /* constant mr per case keeps the accumulators in registers */
  switch (mr) {
    case 4: bmx_mk_portable_body(4, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 3: bmx_mk_portable_body(3, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 2: bmx_mk_portable_body(2, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    default: bmx_mk_portable_body(1, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
  }
}

#ifdef BMX_X86

#define BMX_AVX2_TARGET __attribute__((target("avx2")))
#define BMX_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

/*
 * AVX2 has no vector popcount: count nibbles with a 16-entry shuffle table into
 * byte counters, which are widened with SAD before they can overflow (a byte
 * gains at most 8 per word, so 31 words fit in 255).
 */
#define BMX_MR_AVX2 4
#define BMX_COLS_AVX2 8
#define BMX_AVX2_FLUSH 31

static inline __attribute__((always_inline)) BMX_AVX2_TARGET __m256i
bmx_popcount_bytes_avx2(__m256i x, __m256i table, __m256i low) {
  __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
  __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  return _mm256_add_epi8(lo, hi);
}

static inline __attribute__((always_inline)) BMX_AVX2_TARGET void bmx_mk_avx2_body(
    const int mr, const uint64_t* const* rows, size_t nseg, size_t seglen, const uint64_t* bp,
    int32_t* c, size_t ldc, int ncols, int32_t k_bits) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i bytes[BMX_MR_AVX2][2], wide[BMX_MR_AVX2][2];
  for (int r = 0; r < mr; ++r) {
    bytes[r][0] = bytes[r][1] = zero;
    wide[r][0] = wide[r][1] = zero;
  }
  int pending = 0;
  size_t s = 0;
  do {
    const uint64_t* a[BMX_MR_AVX2];
    for (int r = 0; r < mr; ++r) a[r] = rows[s * BMX_TABLE_MR + r];
    size_t w = 0;
    do {
      __m256i b0 = _mm256_loadu_si256((const __m256i*)bp);
      __m256i b1 = _mm256_loadu_si256((const __m256i*)(bp + 4));
      for (int r = 0; r < mr; ++r) {
        __m256i x = _mm256_set1_epi64x((long long)a[r][w]);
        bytes[r][0] = _mm256_add_epi8(
            bytes[r][0], bmx_popcount_bytes_avx2(_mm256_xor_si256(x, b0), table, low));
        bytes[r][1] = _mm256_add_epi8(
            bytes[r][1], bmx_popcount_bytes_avx2(_mm256_xor_si256(x, b1), table, low));
      }
      if (++pending == BMX_AVX2_FLUSH) {
        for (int r = 0; r < mr; ++r) {
          wide[r][0] = _mm256_add_epi64(wide[r][0], _mm256_sad_epu8(bytes[r][0], zero));
          wide[r][1] = _mm256_add_epi64(wide[r][1], _mm256_sad_epu8(bytes[r][1], zero));
          bytes[r][0] = bytes[r][1] = zero;
        }
        pending = 0;
      }
      bp += BMX_PANEL;
    } while (++w < seglen);
  } while (++s < nseg);
  for (int r = 0; r < mr; ++r) {
    int64_t counts[BMX_COLS_AVX2];
    _mm256_storeu_si256((__m256i*)counts,
                        _mm256_add_epi64(wide[r][0], _mm256_sad_epu8(bytes[r][0], zero)));
    _mm256_storeu_si256((__m256i*)(counts + 4),
                        _mm256_add_epi64(wide[r][1], _mm256_sad_epu8(bytes[r][1], zero)));
    for (int j = 0; j < ncols; ++j) c[r * ldc + j] = k_bits - 2 * (int32_t)counts[j];
  }
}

static inline BMX_AVX2_TARGET void bmx_mk_avx2(int mr, const uint64_t* const* rows, size_t nseg,
                                               size_t seglen, const uint64_t* bp, int32_t* c,
                                               size_t ldc, int ncols, int32_t k_bits) {
  switch (mr) {
    case 4: bmx_mk_avx2_body(4, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 3: bmx_mk_avx2_body(3, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 2: bmx_mk_avx2_body(2, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    default: bmx_mk_avx2_body(1, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
  }
}

/*
 * AVX-512: 6 rows x 32 columns = 24 zmm accumulators, plus 4 panel vectors and
 * a broadcast: 30 of the 32 registers. Each accumulator update is xor, popcount,
 * add, the minimum for this formulation; 24 independent chains hide latency.
 */
#define BMX_MR_AVX512 6
#define BMX_COLS_AVX512 32

#define BMX_XNOR_ACC(acc, x, b) \
  (acc) = _mm512_add_epi64((acc), _mm512_popcnt_epi64(_mm512_xor_si512((x), (b))))

static inline __attribute__((always_inline)) BMX_AVX512_TARGET void bmx_mk_avx512_body(
    const int mr, const uint64_t* const* rows, size_t nseg, size_t seglen, const uint64_t* bp,
    int32_t* c, size_t ldc, int ncols, int32_t k_bits) {
  __m512i acc[BMX_MR_AVX512][4];
  for (int r = 0; r < mr; ++r)
    acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_si512();
  size_t s = 0;
  do {
    const uint64_t* a[BMX_MR_AVX512];
    for (int r = 0; r < mr; ++r) a[r] = rows[s * BMX_TABLE_MR + r];
    size_t w = 0;
    do {
      __m512i b0 = _mm512_loadu_si512((const void*)bp);
      __m512i b1 = _mm512_loadu_si512((const void*)(bp + 8));
      __m512i b2 = _mm512_loadu_si512((const void*)(bp + 16));
      __m512i b3 = _mm512_loadu_si512((const void*)(bp + 24));
      for (int r = 0; r < mr; ++r) {
        __m512i x = _mm512_set1_epi64((long long)a[r][w]);
        BMX_XNOR_ACC(acc[r][0], x, b0);
        BMX_XNOR_ACC(acc[r][1], x, b1);
        BMX_XNOR_ACC(acc[r][2], x, b2);
        BMX_XNOR_ACC(acc[r][3], x, b3);
      }
      bp += BMX_PANEL;
    } while (++w < seglen);
  } while (++s < nseg);
  /* one permute narrows two accumulators (counts < 2^31) into 16 int32 lanes */
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                               28, 30);
  const __m512i kv = _mm512_set1_epi32(k_bits);
  /*
   * Only constant accumulator indices below: a data-dependent one (say, a loop
   * that stops at ncols) makes the compiler spill all 24 accumulators first.
   */
  const __mmask16 first = ncols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncols) - 1);
  const __mmask16 second =
      ncols >= 32 ? (__mmask16)0xffff : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1);
  for (int r = 0; r < mr; ++r) {
    __m512i lo = _mm512_permutex2var_epi32(acc[r][0], low_halves, acc[r][1]);
    __m512i hi = _mm512_permutex2var_epi32(acc[r][2], low_halves, acc[r][3]);
    lo = _mm512_sub_epi32(kv, _mm512_add_epi32(lo, lo));
    hi = _mm512_sub_epi32(kv, _mm512_add_epi32(hi, hi));
    if (ncols >= 32) {
      /* plain stores: a full-width masked store is slower (on Zen 4) */
      _mm512_storeu_si512((void*)(c + r * ldc), lo);
      _mm512_storeu_si512((void*)(c + r * ldc + 16), hi);
    } else {
      _mm512_mask_storeu_epi32(c + r * ldc, first, lo);
      _mm512_mask_storeu_epi32(c + r * ldc + 16, second, hi);
    }
  }
}

#undef BMX_XNOR_ACC

static inline BMX_AVX512_TARGET void bmx_mk_avx512(int mr, const uint64_t* const* rows,
                                                   size_t nseg, size_t seglen, const uint64_t* bp,
                                                   int32_t* c, size_t ldc, int ncols,
                                                   int32_t k_bits) {
  switch (mr) {
    case 6: bmx_mk_avx512_body(6, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 5: bmx_mk_avx512_body(5, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 4: bmx_mk_avx512_body(4, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 3: bmx_mk_avx512_body(3, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    case 2: bmx_mk_avx512_body(2, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
    default: bmx_mk_avx512_body(1, rows, nseg, seglen, bp, c, ldc, ncols, k_bits); break;
  }
}

#endif /* BMX_X86 */

/* ------------------------------------------------------------------------- */
/* Threshold packing: the fused "BatchNorm + sign" after a binary layer      */
/* ------------------------------------------------------------------------- */
/*
 * Output channel o of an integer result y becomes bit o of the packed output:
 *     bit = (sgn[o] * y[o] >= thr[o]),   sgn[o] in {-1, 0, +1}
 * which expresses sign(BN(y)) for any BatchNorm (sgn = sign of the BN scale; a
 * zero scale makes the bit the constant 0 >= thr). Tail bits stay 0.
 *
 * The kernels use the equivalent bit = (y[o] >= lo[o]) XOR flip bit o, one
 * compare per channel: -y >= t is "not y >= 1 - t", and a constant bit compares
 * with INT32_MIN. That needs |y| < 2^31 - 1, which holds for k_bits < 2^31 - 1.
 */
static inline void bmx_threshold_prepare(size_t n, const int32_t* sgn, const int32_t* thr,
                                         int32_t* lo, uint64_t* flip) {
  memset(flip, 0, bmx_words_for_bits(n) * sizeof(uint64_t));
  for (size_t o = 0; o < n; ++o) {
    int64_t bound = sgn[o] > 0 ? thr[o] : sgn[o] < 0 ? 1 - (int64_t)thr[o] : INT32_MIN;
    lo[o] = (int32_t)(bound > INT32_MAX ? INT32_MAX : bound);
    if (sgn[o] < 0 || (sgn[o] == 0 && thr[o] > 0)) flip[o / 64] |= (uint64_t)1 << (o % 64);
  }
}

typedef void (*bmx_threshold_fn)(const int32_t* y, size_t rows, size_t n, const int32_t* lo,
                                 const uint64_t* flip, uint64_t* out, size_t ldo);

/* Rows of n results (row stride n) -> rows of ceil(n/64) words (row stride ldo). */
static inline void bmx_threshold_pack_portable(const int32_t* y, size_t rows, size_t n,
                                               const int32_t* lo, const uint64_t* flip,
                                               uint64_t* out, size_t ldo) {
  for (size_t r = 0; r < rows; ++r, y += n, out += ldo) {
    for (size_t w = 0; w < bmx_words_for_bits(n); ++w) {
      size_t hi = 64 * w + 64 < n ? 64 * w + 64 : n;
      uint64_t word = 0;
      for (size_t o = 64 * w; o < hi; ++o) word |= (uint64_t)(y[o] >= lo[o]) << (o - 64 * w);
      out[w] = word ^ flip[w];
    }
  }
}

#ifdef BMX_X86
static inline BMX_AVX2_TARGET void bmx_threshold_pack_avx2(const int32_t* y, size_t rows, size_t n,
                                                           const int32_t* lo, const uint64_t* flip,
                                                           uint64_t* out, size_t ldo) {
  const size_t full = n / 64;
  for (size_t r = 0; r < rows; ++r, y += n, out += ldo) {
    for (size_t w = 0; w < full; ++w) {
      uint64_t below = 0;
      for (int q = 0; q < 8; ++q) {
        size_t o = 64 * w + 8 * q;
        __m256i lt = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i*)(lo + o)),
                                        _mm256_loadu_si256((const __m256i*)(y + o)));
        below |= (uint64_t)_mm256_movemask_ps(_mm256_castsi256_ps(lt)) << (8 * q);
      }
      out[w] = ~below ^ flip[w];
    }
    if (n > 64 * full)
      bmx_threshold_pack_portable(y + 64 * full, 1, n - 64 * full, lo + 64 * full, flip + full,
                                  out + full, 0);
  }
}

static inline BMX_AVX512_TARGET void bmx_threshold_pack_avx512(const int32_t* y, size_t rows,
                                                               size_t n, const int32_t* lo,
                                                               const uint64_t* flip,
                                                               uint64_t* out, size_t ldo) {
  for (size_t r = 0; r < rows; ++r, y += n, out += ldo) {
    for (size_t w = 0; 64 * w < n; ++w) {
      uint64_t word = 0;
      for (int q = 0; q < 4; ++q) {
        size_t o = 64 * w + 16 * q;
        size_t live = o >= n ? 0 : n - o >= 16 ? 16 : n - o;
        __mmask16 keep = (__mmask16)((1u << live) - 1);
        __m512i v = _mm512_maskz_loadu_epi32(keep, y + o);
        __m512i t = _mm512_maskz_loadu_epi32(keep, lo + o);
        word |= (uint64_t)_mm512_mask_cmpge_epi32_mask(keep, v, t) << (16 * q);
      }
      out[w] = word ^ flip[w];
    }
  }
}
#endif

/* ------------------------------------------------------------------------- */
/* Float NCHW output: int32 result rows transposed into channel planes       */
/* ------------------------------------------------------------------------- */
/*
 * Rows m0 .. m0+count-1 of int32 results (row m = n * pixels + p, an NHWC pixel)
 * with ncols columns, c[i * ldc + j], are stored as float32 NCHW planes:
 *     out[n * ldn + j * ldo + p] = (float)c[i * ldc + j]
 * (out points at the first column's plane). float32 holds |y| <= 2^24 exactly,
 * larger values round to nearest. Doing this per tile, while the results are
 * still in cache, saves a pass over an int32 copy of the whole output.
 */
typedef void (*bmx_store_fn)(const int32_t* c, size_t ldc, size_t m0, size_t count, size_t ncols,
                             size_t pixels, float* out, size_t ldn, size_t ldo);

/* rows consecutive pixels of one image (dst: the first pixel in the first column's plane) */
static inline void bmx_store_image_portable(const int32_t* c, size_t ldc, size_t rows,
                                            size_t ncols, float* dst, size_t ldo) {
  for (size_t j = 0; j < ncols; ++j)
    for (size_t r = 0; r < rows; ++r) dst[j * ldo + r] = (float)c[r * ldc + j];
}

/* Calls store_image(c, ldc, rows, ncols, dst, ldo) for each stretch of rows within one image. */
#define BMX_STORE_BY_IMAGE(store_image)                                  \
  for (size_t i = 0; i < count;) {                                      \
    const size_t m = m0 + i, n = m / pixels, p = m % pixels;            \
    const size_t rows = pixels - p < count - i ? pixels - p : count - i; \
    store_image(c + i * ldc, ldc, rows, ncols, out + n * ldn + p, ldo); \
    i += rows;                                                          \
  }

static inline void bmx_store_nchw_portable(const int32_t* c, size_t ldc, size_t m0, size_t count,
                                           size_t ncols, size_t pixels, float* out, size_t ldn,
                                           size_t ldo) {
  BMX_STORE_BY_IMAGE(bmx_store_image_portable)
}

#ifdef BMX_X86
/* 8 x 8 blocks: convert 8 rows of 8 columns, transpose in registers, store 8 planes' pixels. */
static inline BMX_AVX2_TARGET void bmx_store_image_avx2(const int32_t* c, size_t ldc, size_t rows,
                                                        size_t ncols, float* dst, size_t ldo) {
  const size_t rows8 = rows / 8 * 8, cols8 = ncols / 8 * 8;
  for (size_t r = 0; r < rows8; r += 8) {
    for (size_t j = 0; j < cols8; j += 8) {
      __m256 v[8], t[8], u[8];
      for (int k = 0; k < 8; ++k)
        v[k] = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(c + (r + k) * ldc + j)));
      for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(v[k], v[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(v[k], v[k + 1]);
      }
      for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xee);
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xee);
      }
      for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(dst + (j + k) * ldo + r, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
        _mm256_storeu_ps(dst + (j + k + 4) * ldo + r, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
      }
    }
    for (size_t j = cols8; j < ncols; ++j)
      for (size_t k = r; k < r + 8; ++k) dst[j * ldo + k] = (float)c[k * ldc + j];
  }
  bmx_store_image_portable(c + rows8 * ldc, ldc, rows - rows8, ncols, dst + rows8, ldo);
}

static inline BMX_AVX2_TARGET void bmx_store_nchw_avx2(const int32_t* c, size_t ldc, size_t m0,
                                                       size_t count, size_t ncols, size_t pixels,
                                                       float* out, size_t ldn, size_t ldo) {
  BMX_STORE_BY_IMAGE(bmx_store_image_avx2)
}
#endif

/* ------------------------------------------------------------------------- */
/* Sign + pack of float tensors, vectorised (same bits as bmx_pack_row_f32)   */
/* ------------------------------------------------------------------------- */
/*
 * Ordered ">= 0" compares give the sign convention exactly: -0.0 >= 0 holds,
 * NaN >= 0 does not.
 *
 * NCHW packing may first apply a per-channel affine threshold, the BatchNorm
 * before a binary layer folded into its sign: channel c's bit is
 *     m_c * x >= u_c    for m_c = +1 or -1 (m_c * x is x or -x, exactly)
 *     0 >= u_c          for m_c = 0: a constant, whatever x is (NaN included)
 * compared in float32 and ordered (a NaN x or u_c gives 0 when m_c != 0). The
 * plain sign is m_c = +1, u_c = 0. The kernels take it prepared per channel
 * (bmx_affine_prepare), so that every channel costs the same branch-free
 * compare: `negate` is XORed into x's bits (0, or the sign bit: -x exactly),
 * `bound` is u_c (NaN where m_c = 0, so that the compare never holds) and
 * `ones` has, per packed word of a group, the constant 1 bits to OR in.
 */
typedef struct bmx_affine {
  const uint32_t* negate;
  const float* bound;
  const uint64_t* ones;
} bmx_affine;

#define BMX_SIGN_MASK 0x80000000u

/*
 * channels = groups * cg values of m and u -> negate, bound (channels each) and
 * ones (groups * ceil(cg / 64) words, each group's channels packed on their own).
 */
static inline void bmx_affine_prepare(size_t channels, size_t groups, const int32_t* m,
                                      const float* u, uint32_t* negate, float* bound,
                                      uint64_t* ones) {
  const size_t cg = channels / groups, gw = bmx_words_for_bits(cg);
  memset(ones, 0, groups * gw * sizeof(uint64_t));
  for (size_t c = 0; c < channels; ++c) {
    negate[c] = m[c] < 0 ? BMX_SIGN_MASK : 0;
    bound[c] = m[c] == 0 ? __builtin_nanf("") : u[c];
    if (m[c] == 0 && 0.0f >= u[c]) ones[c / cg * gw + c % cg / 64] |= (uint64_t)1 << (c % cg % 64);
  }
}

/*
 * Packs pixels p0 .. p0+count-1 of an NCHW plane of `channels` channels (channel
 * stride hw) along C, into dst[p * dst_stride + w]; a is NULL for the plain
 * sign. One pixel at a time.
 */
static inline void bmx_pack_pixels_portable(const float* src, size_t channels, size_t hw,
                                            size_t p0, size_t count, const bmx_affine* a,
                                            uint64_t* dst, size_t dst_stride) {
  const size_t words = bmx_words_for_bits(channels);
  for (size_t p = p0; p < p0 + count; ++p) {
    for (size_t w = 0; w < words; ++w) {
      const size_t c1 = 64 * w + 64 < channels ? 64 * w + 64 : channels;
      uint64_t word = 0;
      for (size_t c = 64 * w; c < c1; ++c) {
        const float v = src[c * hw + p];
        const uint64_t bit =
            a == NULL ? bmx_sign_bit_f32(v) : (uint64_t)((a->negate[c] ? -v : v) >= a->bound[c]);
        word |= bit << (c - 64 * w);
      }
      dst[p * dst_stride + w] = a == NULL ? word : word | a->ones[w];
    }
  }
}

#ifdef BMX_X86
static inline BMX_AVX2_TARGET void bmx_pack_row_avx2(const float* src, size_t n, uint64_t* dst) {
  const __m256 zero = _mm256_setzero_ps();
  size_t full = n / 64;
  for (size_t w = 0; w < full; ++w) {
    uint64_t word = 0;
    for (int q = 0; q < 8; ++q) {
      __m256 v = _mm256_loadu_ps(src + 64 * w + 8 * q);
      word |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)) << (8 * q);
    }
    dst[w] = word;
  }
  if (n > 64 * full) bmx_pack_row_f32(src + 64 * full, n - 64 * full, dst + full);
}

static inline BMX_AVX512_TARGET void bmx_pack_row_avx512(const float* src, size_t n,
                                                         uint64_t* dst) {
  const __m512 zero = _mm512_setzero_ps();
  for (size_t w = 0; 64 * w < n; ++w) {
    uint64_t word = 0;
    for (int q = 0; q < 4; ++q) {
      size_t lo = 64 * w + 16 * q;
      size_t live = lo >= n ? 0 : n - lo >= 16 ? 16 : n - lo;
      /* masked-off lanes neither fault nor set bits, so the tail word needs no scalar code */
      __mmask16 keep = (__mmask16)((1u << live) - 1);
      __m512 v = _mm512_maskz_loadu_ps(keep, src + lo);
      word |= (uint64_t)_mm512_mask_cmp_ps_mask(keep, v, zero, _CMP_GE_OQ) << (16 * q);
    }
    dst[w] = word;
  }
}

/*
 * NCHW packs along C with channel stride hw: walk 8 (AVX2) or 16 (AVX-512)
 * neighbouring pixels together so that every load is contiguous, and OR each
 * channel's compare result into the pixels' words as bit c. The bodies take
 * `affine` as a constant so that the plain sign keeps its plain loop.
 */
static inline __attribute__((always_inline)) BMX_AVX2_TARGET void bmx_pack_pixels_avx2_body(
    const int affine, const float* src, size_t channels, size_t hw, size_t p0, size_t count,
    const bmx_affine* a, uint64_t* dst, size_t dst_stride) {
  size_t p = p0, words = bmx_words_for_bits(channels);
  for (; p + 8 <= p0 + count; p += 8) {
    for (size_t w = 0; w < words; ++w) {
      __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
      __m256i bit = _mm256_set1_epi64x(1);
      size_t c1 = 64 * w + 64 < channels ? 64 * w + 64 : channels;
      for (size_t c = 64 * w; c < c1; ++c) {
        __m256 v = _mm256_loadu_ps(src + c * hw + p), bound = _mm256_setzero_ps();
        if (affine) {
          v = _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32((int)a->negate[c])));
          bound = _mm256_set1_ps(a->bound[c]);
        }
        __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(v, bound, _CMP_GE_OQ));
        lo = _mm256_or_si256(lo, _mm256_and_si256(
                                     _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ge)), bit));
        hi = _mm256_or_si256(hi, _mm256_and_si256(
                                     _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ge, 1)), bit));
        bit = _mm256_slli_epi64(bit, 1);
      }
      uint64_t out[8];
      _mm256_storeu_si256((__m256i*)out, lo);
      _mm256_storeu_si256((__m256i*)(out + 4), hi);
      const uint64_t ones = affine ? a->ones[w] : 0;
      for (int i = 0; i < 8; ++i) dst[(p + i) * dst_stride + w] = out[i] | ones;
    }
  }
  bmx_pack_pixels_portable(src, channels, hw, p, p0 + count - p, a, dst, dst_stride);
}

static inline BMX_AVX2_TARGET void bmx_pack_pixels_avx2(const float* src, size_t channels,
                                                        size_t hw, size_t p0, size_t count,
                                                        const bmx_affine* a, uint64_t* dst,
                                                        size_t dst_stride) {
  if (a != NULL)
    bmx_pack_pixels_avx2_body(1, src, channels, hw, p0, count, a, dst, dst_stride);
  else
    bmx_pack_pixels_avx2_body(0, src, channels, hw, p0, count, a, dst, dst_stride);
}

static inline __attribute__((always_inline)) BMX_AVX512_TARGET void bmx_pack_pixels_avx512_body(
    const int affine, const float* src, size_t channels, size_t hw, size_t p0, size_t count,
    const bmx_affine* a, uint64_t* dst, size_t dst_stride) {
  /*
   * 32-bit lanes take a whole 16-pixel compare mask in one masked OR; 64 pixels
   * per channel visit read 4 whole cache lines, so each channel row streams.
   */
  const size_t words = bmx_words_for_bits(channels);
  for (size_t p = p0; p < p0 + count; p += 64) {
    const size_t live = p0 + count - p < 64 ? p0 + count - p : 64;
    __mmask16 keep[4];
    for (int q = 0; q < 4; ++q) {
      size_t lanes = live <= 16 * (size_t)q ? 0 : live - 16 * q >= 16 ? 16 : live - 16 * q;
      keep[q] = (__mmask16)((1u << lanes) - 1);
    }
    for (size_t w = 0; w < words; ++w) {
      uint32_t half[2][64];
      for (int h = 0; h < 2; ++h) {
        __m512i acc[4], bit = _mm512_set1_epi32(1);
        for (int q = 0; q < 4; ++q) acc[q] = _mm512_setzero_si512();
        size_t c0 = 64 * w + 32 * h, c1 = c0 + 32 < channels ? c0 + 32 : channels;
        for (size_t c = c0; c < c1; ++c) {
          __m512i negate = _mm512_setzero_si512();
          __m512 bound = _mm512_setzero_ps();
          if (affine) {
            negate = _mm512_set1_epi32((int)a->negate[c]);
            bound = _mm512_set1_ps(a->bound[c]);
          }
          for (int q = 0; q < 4; ++q) {
            __m512 v = _mm512_maskz_loadu_ps(keep[q], src + c * hw + p + 16 * q);
            if (affine) v = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), negate));
            acc[q] = _mm512_mask_or_epi32(acc[q], _mm512_cmp_ps_mask(v, bound, _CMP_GE_OQ),
                                          acc[q], bit);
          }
          bit = _mm512_slli_epi32(bit, 1);
        }
        for (int q = 0; q < 4; ++q) _mm512_storeu_si512((void*)(half[h] + 16 * q), acc[q]);
      }
      const uint64_t ones = affine ? a->ones[w] : 0;
      for (size_t i = 0; i < live; ++i)
        dst[(p + i) * dst_stride + w] = (half[0][i] | (uint64_t)half[1][i] << 32) | ones;
    }
  }
}

static inline BMX_AVX512_TARGET void bmx_pack_pixels_avx512(const float* src, size_t channels,
                                                            size_t hw, size_t p0, size_t count,
                                                            const bmx_affine* a, uint64_t* dst,
                                                            size_t dst_stride) {
  if (a != NULL)
    bmx_pack_pixels_avx512_body(1, src, channels, hw, p0, count, a, dst, dst_stride);
  else
    bmx_pack_pixels_avx512_body(0, src, channels, hw, p0, count, a, dst, dst_stride);
}
#endif

#include "bitops_neon.h"

#undef BMX_STORE_BY_IMAGE

typedef void (*bmx_pack_row_fn)(const float* src, size_t n, uint64_t* dst);
typedef void (*bmx_pack_pixels_fn)(const float* src, size_t channels, size_t hw, size_t p0,
                                   size_t count, const bmx_affine* a, uint64_t* dst,
                                   size_t dst_stride);

/* OpenMP team size for a thread request (<= 0: the OpenMP default, i.e. OMP_NUM_THREADS). */
static inline int bmx_team_size(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

/* Below this many floats a thread team costs more than it saves. */
#define BMX_PACK_GRAIN 65536

/* Packs each of `rows` rows of n floats (row stride n) into words_for_bits(n) words. */
static inline void bmx_pack_rows(const float* x, size_t rows, size_t n, uint64_t* out,
                                 int kernel, int threads) {
  bmx_pack_row_fn pack = bmx_pack_row_f32;
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) pack = bmx_pack_row_avx512;
  if (kernel == BMX_KERNEL_AVX2) pack = bmx_pack_row_avx2;
#endif
#ifdef BMX_NEON
  if (kernel == BMX_KERNEL_NEON) pack = bmx_pack_row_neon;
#endif
  (void)kernel;
  const size_t words = bmx_words_for_bits(n);
  const int team = bmx_team_size(threads);
  (void)team;
#pragma omp parallel for schedule(static) num_threads(team) \
    if (team > 1 && rows * n > BMX_PACK_GRAIN)
  for (long r = 0; r < (long)rows; ++r) pack(x + (size_t)r * n, n, out + (size_t)r * words);
}

/*
 * Packs an NCHW tensor along C: (batch, channels, hw) floats -> (batch, hw,
 * groups * words_for_bits(channels / groups)) words, each group of channels
 * starting on a word boundary. With m and u (channels values each, see
 * bmx_affine above) channel c's bit is m[c] * x >= u[c]; both NULL: the sign.
 * Returns 0, or -1 when memory ran out (out then undefined).
 */
static inline int bmx_pack_nchw(const float* x, size_t batch, size_t channels, size_t hw,
                                size_t groups, const int32_t* m, const float* u, uint64_t* out,
                                int kernel, int threads) {
  bmx_pack_pixels_fn pack = bmx_pack_pixels_portable;
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) pack = bmx_pack_pixels_avx512;
  if (kernel == BMX_KERNEL_AVX2) pack = bmx_pack_pixels_avx2;
#endif
#ifdef BMX_NEON
  if (kernel == BMX_KERNEL_NEON) pack = bmx_pack_pixels_neon;
#endif
  (void)kernel;
  const size_t cg = channels / groups, gw = bmx_words_for_bits(cg), pixel_words = groups * gw;
  const size_t blocks = (hw + 63) / 64, tasks = batch * groups * blocks;
  const int affine = m != NULL;
  /* one allocation: negate and bound per channel, then the constant words */
  char* prepared = affine ? (char*)malloc(channels * 8 + pixel_words * sizeof(uint64_t)) : NULL;
  if (affine && prepared == NULL) return -1;
  if (affine)
    bmx_affine_prepare(channels, groups, m, u, (uint32_t*)prepared,
                       (float*)(prepared + channels * 4), (uint64_t*)(prepared + channels * 8));
  const int team = bmx_team_size(threads);
  (void)team;
#pragma omp parallel for schedule(static) num_threads(team) \
    if (team > 1 && batch * channels * hw > BMX_PACK_GRAIN)
  for (long t = 0; t < (long)tasks; ++t) {
    size_t b = (size_t)t / (groups * blocks), g = (size_t)t / blocks % groups;
    size_t p0 = 64 * ((size_t)t % blocks), count = hw - p0 < 64 ? hw - p0 : 64;
    bmx_affine group;
    if (affine) {
      group.negate = (const uint32_t*)prepared + g * cg;
      group.bound = (const float*)(prepared + channels * 4) + g * cg;
      group.ones = (const uint64_t*)(prepared + channels * 8) + g * gw;
    }
    pack(x + (b * channels + g * cg) * hw, cg, hw, p0, count, affine ? &group : NULL,
         out + b * hw * pixel_words + g * gw, pixel_words);
  }
  free(prepared);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Packed weights and the convolution / GEMM driver                          */
/* ------------------------------------------------------------------------- */

/*
 * A binary convolution over packed NHWC input. Input pixel (n, h, w) starts at
 * word ((n * in_h + h) * in_w + w) * pixel_words; group g's group_bits channels
 * are the group_words = ceil(group_bits / 64) words from g * group_words on
 * (each group packed on its own, tail bits 0). Padding taps read as -1 (all
 * bits 0), or as 0 when pad_zero is set (an exact per-tap correction).
 *
 * Weights: row o (output channel o, group o / out_per_group) is kernel_h *
 * kernel_w taps of group_words words each, tap (kh, kw) at (kh * kernel_w + kw),
 * i.e. an (O, KH, KW, group_words) array, converted once with bmx_xnor_pack_panels.
 *
 * Output row m = (n * out_h + oh) * out_w + ow (NHWC), column o. A GEMM
 * C = A (M x K) . B (N x K)^T is the 1x1 case: M x 1 image, pixel_words = lda.
 */
typedef struct bmx_conv_shape {
  size_t batch, in_h, in_w, pixel_words;
  size_t groups, group_bits, out_per_group;
  size_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int pad_zero;
} bmx_conv_shape;

static inline size_t bmx_conv_out_extent(size_t in, size_t pad, size_t kernel, size_t stride,
                                         size_t dilation) {
  size_t span = dilation * (kernel - 1) + 1;
  return in + 2 * pad < span ? 0 : (in + 2 * pad - span) / stride + 1;
}

static inline size_t bmx_panels_for_rows(size_t rows) { return (rows + BMX_PANEL - 1) / BMX_PANEL; }

/* Words of panel storage for groups x rows_per_group rows of row_words words. */
static inline size_t bmx_xnor_panel_words(size_t groups, size_t rows_per_group, size_t row_words) {
  return groups * bmx_panels_for_rows(rows_per_group) * row_words * BMX_PANEL;
}

/* Transposes rows (groups * rows_per_group of them, row o at w + o * ldw) into panels. */
static inline void bmx_xnor_pack_panels(const uint64_t* w, size_t ldw, size_t groups,
                                        size_t rows_per_group, size_t row_words,
                                        uint64_t* panels) {
  size_t np = bmx_panels_for_rows(rows_per_group);
  for (size_t g = 0; g < groups; ++g) {
    for (size_t p = 0; p < np; ++p) {
      uint64_t* dst = panels + (g * np + p) * row_words * BMX_PANEL;
      size_t first = BMX_PANEL * p;
      size_t live = rows_per_group - first < BMX_PANEL ? rows_per_group - first : BMX_PANEL;
      if (live < BMX_PANEL) memset(dst, 0, row_words * BMX_PANEL * sizeof(uint64_t));
      for (size_t j = 0; j < live; ++j) {
        const uint64_t* src = w + (g * rows_per_group + first + j) * ldw;
        for (size_t k = 0; k < row_words; ++k) dst[k * BMX_PANEL + j] = src[k];
      }
    }
  }
}

typedef struct bmx_conv_plan {
  bmx_microkernel kernel;
  bmx_threshold_fn threshold;
  bmx_store_fn store;
  int mr, cols;
} bmx_conv_plan;

static inline bmx_conv_plan bmx_plan_for(int kernel) {
  bmx_conv_plan plan = {bmx_mk_portable, bmx_threshold_pack_portable, bmx_store_nchw_portable,
                        BMX_MR_PORTABLE, BMX_COLS_PORTABLE};
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) {
    plan.kernel = bmx_mk_avx512;
    plan.threshold = bmx_threshold_pack_avx512;
    plan.store = bmx_store_nchw_avx2; /* AVX-512 CPUs have AVX2; a small pass either way */
    plan.mr = BMX_MR_AVX512;
    plan.cols = BMX_COLS_AVX512;
  } else if (kernel == BMX_KERNEL_AVX2) {
    plan.kernel = bmx_mk_avx2;
    plan.threshold = bmx_threshold_pack_avx2;
    plan.store = bmx_store_nchw_avx2;
    plan.mr = BMX_MR_AVX2;
    plan.cols = BMX_COLS_AVX2;
  }
#endif
#ifdef BMX_NEON
  if (kernel == BMX_KERNEL_NEON) {
    plan.kernel = bmx_mk_neon;
    plan.threshold = bmx_threshold_pack_neon;
    plan.store = bmx_store_nchw_neon;
    plan.mr = BMX_MR_NEON;
    plan.cols = BMX_COLS_NEON;
  }
#endif
  (void)kernel;
  return plan;
}

/* Word offsets of the kernel taps from the top-left tap, for taps inside the image. */
static inline void bmx_conv_tap_offsets(const bmx_conv_shape* sh, size_t* offsets) {
  for (size_t kh = 0; kh < sh->kernel_h; ++kh)
    for (size_t kw = 0; kw < sh->kernel_w; ++kw)
      offsets[kh * sh->kernel_w + kw] =
          (kh * sh->dilation_h * sh->in_w + kw * sh->dilation_w) * sh->pixel_words;
}

/*
 * Fills the segment tables of rows m0 .. m0+count-1, one table of taps *
 * BMX_TABLE_MR pointers per block of mr rows, for group g; border[b] tells
 * whether block b reads any padding tap. offsets: bmx_conv_tap_offsets.
 */
static inline void bmx_conv_row_tables(const bmx_conv_shape* sh, size_t out_h, size_t out_w,
                                       const uint64_t* x, const uint64_t* zeros,
                                       const size_t* offsets, size_t m0, size_t count, int mr,
                                       size_t g, const uint64_t** tables, unsigned char* border) {
  const size_t group_words = bmx_words_for_bits(sh->group_bits), taps = sh->kernel_h * sh->kernel_w;
  const size_t table_size = taps * BMX_TABLE_MR;
  const size_t span_h = (sh->kernel_h - 1) * sh->dilation_h;
  const size_t span_w = (sh->kernel_w - 1) * sh->dilation_w;
  size_t n = m0 / (out_h * out_w), oh = m0 / out_w % out_h, ow = m0 % out_w, b = 0;
  int r = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t** table = tables + b * table_size + r;
    if (r == 0) border[b] = 0;
    /* unsigned wrap-around makes "above / left of the image" also fail the < tests */
    const size_t ih0 = oh * sh->stride_h - sh->pad_h, iw0 = ow * sh->stride_w - sh->pad_w;
    if (ih0 < sh->in_h && ih0 + span_h < sh->in_h && iw0 < sh->in_w && iw0 + span_w < sh->in_w) {
      /* the whole window is inside: the common case, worth its own loop */
      const uint64_t* base =
          x + ((n * sh->in_h + ih0) * sh->in_w + iw0) * sh->pixel_words + g * group_words;
      for (size_t t = 0; t < taps; ++t) table[t * BMX_TABLE_MR] = base + offsets[t];
    } else {
      for (size_t kh = 0; kh < sh->kernel_h; ++kh) {
        size_t ih = ih0 + kh * sh->dilation_h;
        for (size_t kw = 0; kw < sh->kernel_w; ++kw) {
          size_t iw = iw0 + kw * sh->dilation_w;
          const uint64_t** slot = table + (kh * sh->kernel_w + kw) * BMX_TABLE_MR;
          if (ih < sh->in_h && iw < sh->in_w) {
            *slot = x + ((n * sh->in_h + ih) * sh->in_w + iw) * sh->pixel_words + g * group_words;
          } else {
            *slot = zeros;
            border[b] = 1;
          }
        }
      }
    }
    /* incremental coordinates: a division per row would rival a small kernel call */
    if (++ow == out_w) {
      ow = 0;
      if (++oh == out_h) {
        oh = 0;
        ++n;
      }
    }
    if (++r == mr) {
      r = 0;
      ++b;
    }
  }
}

/*
 * Zero padding: a padding tap read as -1 adds -sum_c w[o, tap, c]; adding back
 * sums[tap * O + o] = sum_c w[o, tap, c] (in +/-1: 2 * popcount - group_bits)
 * makes the tap contribute 0, exactly. Depends on the weights only, so callers
 * may compute it once.
 */
static inline void bmx_conv_tap_sums(size_t groups, size_t group_bits, size_t out_per_group,
                                     size_t taps, const uint64_t* panels, int32_t* sums) {
  const size_t group_words = bmx_words_for_bits(group_bits), row_words = taps * group_words;
  const size_t np = bmx_panels_for_rows(out_per_group), out_channels = groups * out_per_group;
  for (size_t g = 0; g < groups; ++g) {
    for (size_t p = 0; p < np; ++p) {
      const uint64_t* panel = panels + (g * np + p) * row_words * BMX_PANEL;
      size_t live = out_per_group - p * BMX_PANEL < BMX_PANEL ? out_per_group - p * BMX_PANEL
                                                              : BMX_PANEL;
      for (size_t t = 0; t < taps; ++t) {
        int32_t ones[BMX_PANEL] = {0};
        for (size_t k = t * group_words; k < (t + 1) * group_words; ++k)
          for (size_t j = 0; j < BMX_PANEL; ++j)
            ones[j] += (int32_t)bmx_popcount64(panel[k * BMX_PANEL + j]);
        for (size_t j = 0; j < live; ++j)
          sums[t * out_channels + g * out_per_group + p * BMX_PANEL + j] =
              2 * ones[j] - (int32_t)group_bits;
      }
    }
  }
}

/* Adds the padding taps' corrections to columns col0 .. col1-1 of mr rows (c: column col0). */
static inline void bmx_conv_apply_correction(const bmx_conv_shape* sh, size_t out_h, size_t out_w,
                                             const int32_t* corr, size_t m0, int mr, int32_t* c,
                                             size_t ldc, size_t col0, size_t col1) {
  size_t out_channels = sh->groups * sh->out_per_group;
  for (int r = 0; r < mr; ++r) {
    size_t m = m0 + r, oh = m / out_w % out_h, ow = m % out_w;
    for (size_t kh = 0; kh < sh->kernel_h; ++kh) {
      size_t ih = oh * sh->stride_h + kh * sh->dilation_h - sh->pad_h;
      for (size_t kw = 0; kw < sh->kernel_w; ++kw) {
        size_t iw = ow * sh->stride_w + kw * sh->dilation_w - sh->pad_w;
        if (ih < sh->in_h && iw < sh->in_w) continue;
        const int32_t* add = corr + (kh * sh->kernel_w + kw) * out_channels;
        for (size_t o = col0; o < col1; ++o) c[r * ldc + o - col0] += add[o];
      }
    }
  }
}

/* Panels per tile of the int32 and float forms: 128 columns keep a tile's panels in L1/L2. */
#define BMX_TILE_PANELS 4
#define BMX_TILE_BLOCKS 16
/* int32 results a fused tile may buffer before thresholding (128 KiB) */
#define BMX_FUSED_SCRATCH 32768

/*
 * Where bmx_xnor_conv writes its M x O results (rows m = (n * OH + oh) * OW + ow),
 * in exactly one form:
 *   y (int32, row stride ldy): y[m * ldy + o], the sum over taps of the +/-1 dot
 *     products (NHWC);
 *   nchw (float32): nchw[n * batch_stride + o * channel_stride + oh * OW + ow],
 *     the same values converted (exact for |y| <= 2^24), each channel's OH x OW
 *     plane contiguous; a channel slice of a larger NCHW tensor fits;
 *   bits (uint64, row stride ldb) with thresholds sgn/thr: the packed sign of
 *     the per-channel affine map, see bmx_threshold_prepare.
 * The other pointers are NULL.
 */
typedef struct bmx_conv_output {
  int32_t* y;
  size_t ldy;
  float* nchw;
  size_t batch_stride, channel_stride;
  const int32_t *sgn, *thr;
  uint64_t* bits;
  size_t ldb;
} bmx_conv_output;

/*
 * Runs a binary convolution (or GEMM) into `out`. With pad_zero, tap_sums is the
 * table of bmx_conv_tap_sums, or NULL to compute it here. threads <= 0 uses the
 * OpenMP default (OMP_NUM_THREADS). Returns 0; -1 when memory ran out (outputs
 * then undefined); -2 for an empty kernel (no taps or no input channels) or one
 * of 2^31 - 1 bits or more.
 */
static inline int bmx_xnor_conv(const bmx_conv_shape* sh, const uint64_t* x,
                                const uint64_t* panels, const int32_t* tap_sums,
                                const bmx_conv_output* out, int kernel, int threads) {
  const bmx_conv_plan plan = bmx_plan_for(kernel);
  const size_t out_h = bmx_conv_out_extent(sh->in_h, sh->pad_h, sh->kernel_h, sh->stride_h,
                                           sh->dilation_h);
  const size_t out_w = bmx_conv_out_extent(sh->in_w, sh->pad_w, sh->kernel_w, sh->stride_w,
                                           sh->dilation_w);
  const size_t rows = sh->batch * out_h * out_w, out_channels = sh->groups * sh->out_per_group;
  const size_t taps = sh->kernel_h * sh->kernel_w, group_words = bmx_words_for_bits(sh->group_bits);
  const size_t row_words = taps * group_words, np = bmx_panels_for_rows(sh->out_per_group);
  const size_t table_size = taps * BMX_TABLE_MR;
  const int32_t k_bits = (int32_t)(taps * sh->group_bits);
  const int fused = out->bits != NULL, to_float = out->nchw != NULL;
  /* the micro-kernels need a non-empty K, and int32 results with room for thresholds */
  if (taps == 0 || group_words == 0 || taps * sh->group_bits >= INT32_MAX) return -2;
  if (rows == 0 || out_channels == 0) return 0;

  /* shared and read-only in the team: padding words, tap sums, prepared thresholds */
  const int zero_pad = sh->pad_zero && (sh->pad_h || sh->pad_w);
  const int own_sums_needed = zero_pad && tap_sums == NULL;
  const size_t out_words = bmx_words_for_bits(out_channels);
  uint64_t* zeros = (uint64_t*)calloc(group_words, sizeof(uint64_t));
  int32_t* own_sums =
      own_sums_needed ? (int32_t*)malloc(taps * out_channels * sizeof(int32_t)) : NULL;
  int32_t* lo = fused ? (int32_t*)malloc(out_channels * sizeof(int32_t)) : NULL;
  uint64_t* flip = fused ? (uint64_t*)malloc(out_words * sizeof(uint64_t)) : NULL;
  if (zeros == NULL || (own_sums_needed && own_sums == NULL) ||
      (fused && (lo == NULL || flip == NULL))) {
    free(zeros);
    free(own_sums);
    free(lo);
    free(flip);
    return -1;
  }
  if (own_sums_needed)
    bmx_conv_tap_sums(sh->groups, sh->group_bits, sh->out_per_group, taps, panels, own_sums);
  const int32_t* corr = zero_pad ? (tap_sums != NULL ? tap_sums : own_sums) : NULL;
  if (fused) bmx_threshold_prepare(out_channels, out->sgn, out->thr, lo, flip);

  /*
   * Work is cut into tiles of row blocks x panels, enough of them to balance the
   * team. Within a tile each panel in turn stays in L1 while the tile's row blocks
   * (mr rows each, whose input words also fit L1) meet it. The fused form needs
   * every column of a row before thresholding, so its tiles span all groups and
   * panels. The fused and float forms buffer a tile's int32 results (row stride
   * ldc) and convert them at its end.
   */
  const size_t blocks = (rows + plan.mr - 1) / plan.mr;
  size_t team = (size_t)bmx_team_size(threads);
  const size_t panel_groups = (np + BMX_TILE_PANELS - 1) / BMX_TILE_PANELS;
  const size_t panel_tiles = fused ? 1 : sh->groups * panel_groups;
  size_t blocks_per_tile = (blocks * panel_tiles + 8 * team - 1) / (8 * team);
  if (blocks_per_tile > BMX_TILE_BLOCKS) blocks_per_tile = BMX_TILE_BLOCKS;
  if (fused && blocks_per_tile * plan.mr * out_channels > BMX_FUSED_SCRATCH)
    blocks_per_tile = BMX_FUSED_SCRATCH / (plan.mr * out_channels);
  if (blocks_per_tile < 1) blocks_per_tile = 1;
  const size_t row_tiles = (blocks + blocks_per_tile - 1) / blocks_per_tile;
  const long tiles = (long)(row_tiles * panel_tiles);
  const size_t tile_cols = (np < BMX_TILE_PANELS ? np : BMX_TILE_PANELS) * BMX_PANEL;
  const size_t ldc = fused ? out_channels : to_float ? tile_cols : out->ldy;
  if ((size_t)tiles < team) team = (size_t)tiles;
  int failed = 0;

#pragma omp parallel num_threads((int)team) if (team > 1)
  {
    const uint64_t** tables =
        (const uint64_t**)malloc(blocks_per_tile * table_size * sizeof(uint64_t*));
    size_t* offsets = (size_t*)malloc(taps * sizeof(size_t));
    unsigned char* border = (unsigned char*)malloc(blocks_per_tile);
    int32_t* scratch = fused || to_float ? (int32_t*)malloc(blocks_per_tile * plan.mr * ldc *
                                                            sizeof(int32_t))
                                         : NULL;
    const int ready = tables != NULL && offsets != NULL && border != NULL &&
                      (scratch != NULL || !(fused || to_float));
    if (offsets != NULL) bmx_conv_tap_offsets(sh, offsets);
    if (!ready) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (long t = 0; t < tiles; ++t) {
      if (!ready) continue;
      const size_t rt = (size_t)t / panel_tiles, pt = (size_t)t % panel_tiles;
      const size_t g0 = fused ? 0 : pt / panel_groups, g1 = fused ? sh->groups : g0 + 1;
      const size_t p0 = fused ? 0 : BMX_TILE_PANELS * (pt % panel_groups);
      const size_t p1 = fused || p0 + BMX_TILE_PANELS > np ? np : p0 + BMX_TILE_PANELS;
      const size_t m0 = rt * blocks_per_tile * plan.mr;
      const size_t count = rows - m0 < blocks_per_tile * plan.mr ? rows - m0
                                                                 : blocks_per_tile * plan.mr;
      const size_t nblocks = (count + plan.mr - 1) / plan.mr;
      /* the tile's columns col0 .. col1-1; c holds them from column col0 on */
      const size_t col0 = g0 * sh->out_per_group + p0 * BMX_PANEL;
      size_t col1 = (g1 - 1) * sh->out_per_group + p1 * BMX_PANEL;
      if (col1 > g1 * sh->out_per_group) col1 = g1 * sh->out_per_group;
      int32_t* c = fused || to_float ? scratch : out->y + m0 * out->ldy + col0;
      for (size_t g = g0; g < g1; ++g) {
        bmx_conv_row_tables(sh, out_h, out_w, x, zeros, offsets, m0, count, plan.mr, g, tables,
                            border);
        for (size_t p = p0; p < p1; ++p) {
          const uint64_t* panel = panels + (g * np + p) * row_words * BMX_PANEL;
          const size_t col = g * sh->out_per_group + p * BMX_PANEL - col0;
          const size_t live = sh->out_per_group - p * BMX_PANEL < BMX_PANEL
                                  ? sh->out_per_group - p * BMX_PANEL
                                  : BMX_PANEL;
          for (size_t j = 0; j < live; j += (size_t)plan.cols) {
            const int ncols = live - j < (size_t)plan.cols ? (int)(live - j) : plan.cols;
            for (size_t b = 0; b < nblocks; ++b) {
              const int mr = count - b * plan.mr < (size_t)plan.mr ? (int)(count - b * plan.mr)
                                                                   : plan.mr;
              plan.kernel(mr, tables + b * table_size, taps, group_words, panel + j,
                          c + b * plan.mr * ldc + col + j, ldc, ncols, k_bits);
            }
          }
        }
      }
      if (corr != NULL) {
        for (size_t b = 0; b < nblocks; ++b) {
          if (!border[b]) continue;
          const int mr = count - b * plan.mr < (size_t)plan.mr ? (int)(count - b * plan.mr)
                                                               : plan.mr;
          bmx_conv_apply_correction(sh, out_h, out_w, corr, m0 + b * plan.mr, mr,
                                    c + b * plan.mr * ldc, ldc, col0, col1);
        }
      }
      if (fused)
        plan.threshold(scratch, count, out_channels, lo, flip, out->bits + m0 * out->ldb,
                       out->ldb);
      if (to_float)
        plan.store(scratch, ldc, m0, count, col1 - col0, out_h * out_w,
                   out->nchw + col0 * out->channel_stride, out->batch_stride,
                   out->channel_stride);
    }
    free(tables);
    free(offsets);
    free(border);
    free(scratch);
  }
  free(zeros);
  free(own_sums);
  free(lo);
  free(flip);
  return failed ? -1 : 0;
}

/*
 * C (m x n int32, row stride ldc) = +/-1 dot products of the rows of A (m x kw
 * words, row stride lda) with the rows of B, given as panels (bmx_xnor_pack_panels
 * with groups 1, n rows, kw words). k_bits (<= 64 * kw) bits are counted; the
 * rest must be 0 in both operands; kw = ceil(k_bits / 64) >= 1. Returns as
 * bmx_xnor_conv, and -2 also when kw does not match k_bits.
 */
static inline int bmx_xnor_gemm(const uint64_t* a, size_t lda, const uint64_t* b_panels, size_t m,
                                size_t n, size_t kw, int32_t k_bits, int32_t* c, size_t ldc,
                                int kernel, int threads) {
  bmx_conv_shape sh;
  memset(&sh, 0, sizeof(sh));
  sh.batch = 1;
  sh.in_h = m;
  sh.in_w = 1;
  sh.pixel_words = lda;
  sh.groups = 1;
  sh.group_bits = (size_t)k_bits;
  sh.out_per_group = n;
  sh.kernel_h = sh.kernel_w = sh.stride_h = sh.stride_w = sh.dilation_h = sh.dilation_w = 1;
  if (bmx_words_for_bits(sh.group_bits) != kw) return -2;
  bmx_conv_output out;
  memset(&out, 0, sizeof(out));
  out.y = c;
  out.ldy = ldc;
  return bmx_xnor_conv(&sh, a, b_panels, NULL, &out, kernel, threads);
}

#ifdef __cplusplus
}
#endif

#endif /* BMX_BITOPS_H_ */
