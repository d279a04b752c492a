/*
 * The xnor-popcount micro-kernels of bitops.h (portable, AVX2, AVX-512): the weight
 * panel layout and the inner loops that bmx_xnor_conv and bmx_xnor_gemm tile over.
 */
#ifndef BMX_BITOPS_GEMM_H_
#define BMX_BITOPS_GEMM_H_

#ifndef BMX_BITOPS_H_
#error "bitops_gemm.h builds on what bitops.h defines before it: include bitops.h"
#endif

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
    const uint64_t* const* a = rows + s * BMX_TABLE_MR;
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
  for (size_t s = 0; s < nseg; ++s) {
    const uint64_t* const* a = rows + s * BMX_TABLE_MR;
    for (size_t w = 0; w < seglen; ++w, bp += BMX_PANEL) {
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
    }
  }
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
    const uint64_t* const* a = rows + s * BMX_TABLE_MR;
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

#endif /* BMX_BITOPS_GEMM_H_ */
