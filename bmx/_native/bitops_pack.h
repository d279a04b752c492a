/*
 * The packing kernels of bitops.h: threshold packing (BatchNorm + sign after a binary
 * layer), the float NCHW store, sign + pack of float tensors (portable, AVX2, AVX-512,
 * and NEON from bitops_neon.h) and their threaded drivers bmx_pack_rows / bmx_pack_nchw.
 */
#ifndef BMX_BITOPS_PACK_H_
#define BMX_BITOPS_PACK_H_

#ifndef BMX_BITOPS_H_
#error "bitops_pack.h builds on what bitops.h defines before it: include bitops.h"
#endif

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

/* The lanes of a 16-lane masked load at `start` that lie below `n`. */
static inline __mmask16 bmx_live_lanes16(size_t start, size_t n) {
  const size_t live = start >= n ? 0 : n - start >= 16 ? 16 : n - start;
  return (__mmask16)((1u << live) - 1);
}

static inline BMX_AVX512_TARGET void bmx_threshold_pack_avx512(const int32_t* y, size_t rows,
                                                               size_t n, const int32_t* lo,
                                                               const uint64_t* flip,
                                                               uint64_t* out, size_t ldo) {
  for (size_t r = 0; r < rows; ++r, y += n, out += ldo) {
    for (size_t w = 0, o = 0; o < n; ++w, o += 64) {
      uint64_t word = 0;
      for (int q = 0; q < 4; ++q) {
        const __mmask16 keep = bmx_live_lanes16(o + 16 * q, n);
        __m512i v = _mm512_maskz_loadu_epi32(keep, y + o + 16 * q);
        __m512i t = _mm512_maskz_loadu_epi32(keep, lo + o + 16 * q);
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

/*
 * A pixel packer of one instruction set: `body` (always inlined) with `affine` a constant 1 or 0,
 * so that the plain sign keeps its plain loop.
 */
#define BMX_PACK_PIXELS_VARIANT(name, body, target)                                          \
  static inline target void name(const float* src, size_t channels, size_t hw, size_t p0,    \
                                 size_t count, const bmx_affine* a, uint64_t* dst,            \
                                 size_t dst_stride) {                                         \
    if (a != NULL)                                                                            \
      body(1, src, channels, hw, p0, count, a, dst, dst_stride);                              \
    else                                                                                      \
      body(0, src, channels, hw, p0, count, a, dst, dst_stride);                              \
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
      const size_t lo = 64 * w + 16 * q;
      /* masked-off lanes neither fault nor set bits, so the tail word needs no scalar code */
      const __mmask16 keep = bmx_live_lanes16(lo, n);
      __m512 v = _mm512_maskz_loadu_ps(keep, src + lo);
      word |= (uint64_t)_mm512_mask_cmp_ps_mask(keep, v, zero, _CMP_GE_OQ) << (16 * q);
    }
    dst[w] = word;
  }
}

/*
 * NCHW packs along C with channel stride hw: walk 8 (AVX2) or 16 (AVX-512)
 * neighbouring pixels together so that every load is contiguous, and OR each
 * channel's compare result into the pixels' words as bit c.
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

BMX_PACK_PIXELS_VARIANT(bmx_pack_pixels_avx2, bmx_pack_pixels_avx2_body, BMX_AVX2_TARGET)

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
    for (int q = 0; q < 4; ++q) keep[q] = bmx_live_lanes16(16 * (size_t)q, live);
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

BMX_PACK_PIXELS_VARIANT(bmx_pack_pixels_avx512, bmx_pack_pixels_avx512_body, BMX_AVX512_TARGET)
#endif

#include "bitops_neon.h"

#undef BMX_STORE_BY_IMAGE
#undef BMX_PACK_PIXELS_VARIANT

typedef void (*bmx_pack_row_fn)(const float* src, size_t n, uint64_t* dst);
typedef void (*bmx_pack_pixels_fn)(const float* src, size_t channels, size_t hw, size_t p0,
                                   size_t count, const bmx_affine* a, uint64_t* dst,
                                   size_t dst_stride);

/* The sign + pack variants of a kernel id (portable for ids this build has no variant of). */
typedef struct bmx_packers {
  bmx_pack_row_fn row;
  bmx_pack_pixels_fn pixels;
} bmx_packers;

static inline bmx_packers bmx_packers_for(int kernel) {
  bmx_packers p = {bmx_pack_row_f32, bmx_pack_pixels_portable};
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) {
    p.row = bmx_pack_row_avx512;
    p.pixels = bmx_pack_pixels_avx512;
  }
  if (kernel == BMX_KERNEL_AVX2) {
    p.row = bmx_pack_row_avx2;
    p.pixels = bmx_pack_pixels_avx2;
  }
#endif
#ifdef BMX_NEON
  if (kernel == BMX_KERNEL_NEON) {
    p.row = bmx_pack_row_neon;
    p.pixels = bmx_pack_pixels_neon;
  }
#endif
  (void)kernel;
  return p;
}

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
  const bmx_pack_row_fn pack = bmx_packers_for(kernel).row;
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
  const bmx_pack_pixels_fn pack = bmx_packers_for(kernel).pixels;
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

#endif /* BMX_BITOPS_PACK_H_ */
