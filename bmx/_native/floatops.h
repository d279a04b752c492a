/*
 * Float kernels of bmx.runtime where numpy (and its BLAS) falls short: max
 * pooling (bmx_max_pool) and direct convolution (bmx_conv_f32). bitops.h holds
 * the bit-level kernels; this file only borrows its run-time kernel choice
 * (BMX_KERNEL_*: the convolution has AVX-512, AVX2 and portable variants, which
 * agree up to float rounding) and its OpenMP team size. Compiled into the Cython
 * extension bmx/_xnor.pyx; runs on OpenMP threads when compiled with -fopenmp.
 */
#ifndef BMX_FLOATOPS_H_
#define BMX_FLOATOPS_H_

#include <float.h>
#include <stddef.h>
#include <stdlib.h>

#include "bitops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Below this much work (input floats pooled, multiply-adds) a thread team costs more than it saves. */
#define BMX_FLOAT_GRAIN 65536

/* MXNet's max step, m = v > m ? v : m (which x86's maxps is, exactly: compilers vectorise it). */
static inline float bmx_pool_max(float v, float m) { return v > m ? v : m; }

/*
 * The row pass: the max of the lowest value and of column q of the input rows
 * r0 .. r0 + kh - 1 that lie inside the plane (r0 "negative", i.e. wrapped around,
 * for rows of padding above it), stored by column phase: phases[f * len + t] for
 * column q = t * sw + f, len = ceil(w / sw), so that every tap of the column pass
 * reads contiguously. Strides 1 and 2 (the common ones) have loops of their own,
 * which compilers vectorise; `first` lets the first row skip reading the buffer.
 */
static inline void bmx_pool_rows(const float* src, size_t h, size_t w, size_t r0, size_t kh,
                                 size_t sw, size_t len, float* phases) {
  int first = 1;
  for (size_t a = 0; a < kh; ++a) {
    const size_t r = r0 + a; /* unsigned wrap-around makes rows above the plane fail r < h */
    if (r >= h) continue;
    const float* line = src + r * w;
    if (sw == 1) {
      for (size_t q = 0; q < w; ++q)
        phases[q] = bmx_pool_max(line[q], first ? -FLT_MAX : phases[q]);
    } else if (sw == 2) {
      float* even = phases;
      float* odd = phases + len;
      for (size_t t = 0; t < w / 2; ++t) {
        even[t] = bmx_pool_max(line[2 * t], first ? -FLT_MAX : even[t]);
        odd[t] = bmx_pool_max(line[2 * t + 1], first ? -FLT_MAX : odd[t]);
      }
      if (w % 2) even[w / 2] = bmx_pool_max(line[w - 1], first ? -FLT_MAX : even[w / 2]);
    } else {
      for (size_t q = 0; q < w; ++q) {
        float* slot = phases + q % sw * len + q / sw;
        *slot = bmx_pool_max(line[q], first ? -FLT_MAX : *slot);
      }
    }
    first = 0;
  }
  if (first)
    for (size_t q = 0; q < w; ++q) phases[q % sw * len + q / sw] = -FLT_MAX;
}

/*
 * Max pooling of NCHW float32, MXNet's semantics:
 *     out[n, c, i, j] = max over taps (a, b) < (kh, kw) of x[n, c, i * sh + a - ph, j * sw + b - pw]
 * over the taps inside the input only, computed as MXNet's loop: start from
 * float32's lowest value and take a tap's value when it is greater. So padding
 * never wins, NaN never wins, and a window without a greater value (padding
 * only, as 'full' windows may be, or NaN / -inf only) gives float32's lowest.
 * The output size (oh, ow) is the caller's ('valid' or 'full' convention).
 *
 * Then, while the row is in cache, what commonly follows the pooling: with scale
 * (and shift), v = v * scale[c] + shift[c] per channel, rounded after the product
 * and after the sum as separate float32 operations; with relu, v = max(v, 0),
 * NaN kept. (No FMA: this file's plain C is compiled without it on x86-64.)
 *
 * Every (h, w) input plane and (oh, ow) output plane is contiguous; plane (n, c)
 * starts at x + n * x_batch + c * x_channel, resp. out + n * o_batch + c * o_channel
 * (strides in floats), so that a channel slice of a larger NCHW tensor fits.
 * threads <= 0 uses the OpenMP default. Returns 0, or -1 when memory ran out.
 *
 * Separable: per output row, the max of its kh input rows over the whole width
 * (contiguous), stored split by column phase (stride sw), then per tap b one
 * contiguous pass over the outputs whose tap b is inside. The max of maxima is
 * the max of the window (up to which of +0 / -0 a tie keeps).
 */
static inline int bmx_max_pool(const float* x, size_t batch, size_t channels, size_t h, size_t w,
                               size_t x_batch, size_t x_channel, float* out, size_t oh,
                               size_t ow, size_t o_batch, size_t o_channel, size_t kh, size_t kw,
                               size_t sh, size_t sw, size_t ph, size_t pw, const float* scale,
                               const float* shift, int relu, int threads) {
  const long planes = (long)(batch * channels);
  const size_t len = (w + sw - 1) / sw; /* columns per phase (the first phase's) */
  /*
   * Tap b of output j is column j * sw + b - pw = (j + d) * sw + f: phase f, index
   * j + d there. taps[3 b .. 3 b + 2] = the outputs j0 .. j1-1 whose tap b is inside
   * the plane, and the tap's first index f * len + j0 + d in the phases.
   */
  size_t* taps = (size_t*)malloc((3 * kw + 1) * sizeof(size_t));
  if (taps == NULL) return -1;
  for (size_t b = 0; b < kw; ++b) {
    const long c0 = (long)b - (long)pw, f = ((c0 % (long)sw) + (long)sw) % (long)sw;
    const long d = (c0 - f) / (long)sw;
    const long count = f < (long)w ? ((long)w - f + (long)sw - 1) / (long)sw : 0;
    const long j0 = d < 0 ? -d : 0, j1 = count - d < (long)ow ? count - d : (long)ow;
    taps[3 * b] = (size_t)j0;
    taps[3 * b + 1] = (size_t)(j1 > j0 ? j1 : j0);
    taps[3 * b + 2] = (size_t)(f * (long)len + j0 + d);
  }
  int failed = 0;
  const int team = bmx_team_size(threads);
  (void)team;
#pragma omp parallel num_threads(team) if (team > 1 && batch * channels * h * w > BMX_FLOAT_GRAIN)
  {
    float* phases = (float*)malloc((sw * len + 1) * sizeof(float));
    if (phases == NULL) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (long p = 0; p < planes; ++p) {
      if (phases == NULL) continue;
      const size_t n = (size_t)p / channels, c = (size_t)p % channels;
      const float* src = x + n * x_batch + c * x_channel;
      float* dst = out + n * o_batch + c * o_channel;
      for (size_t i = 0; i < oh; ++i, dst += ow) {
        bmx_pool_rows(src, h, w, i * sh - ph, kh, sw, len, phases);
        /* row maxima are never NaN and >= the lowest value: the first tap is copied */
        for (size_t b = 0; b < kw; ++b) {
          const size_t j0 = taps[3 * b], j1 = taps[3 * b + 1];
          const float* tap = phases + taps[3 * b + 2];
          if (b == 0) {
            for (size_t j = 0; j < j0; ++j) dst[j] = -FLT_MAX;
            for (size_t j = j0; j < j1; ++j) dst[j] = tap[j - j0];
            for (size_t j = j1; j < ow; ++j) dst[j] = -FLT_MAX;
          } else {
            for (size_t j = j0; j < j1; ++j) dst[j] = bmx_pool_max(tap[j - j0], dst[j]);
          }
        }
        if (kw == 0)
          for (size_t j = 0; j < ow; ++j) dst[j] = -FLT_MAX;
        if (scale != NULL) {
          const float a = scale[c], b = shift != NULL ? shift[c] : 0.0f;
          for (size_t j = 0; j < ow; ++j) {
            const float product = dst[j] * a;
            dst[j] = shift != NULL ? product + b : product;
          }
        }
        if (relu)
          for (size_t j = 0; j < ow; ++j) dst[j] = dst[j] > 0.0f || dst[j] != dst[j] ? dst[j] : 0.0f;
      }
    }
    free(phases);
  }
  free(taps);
  return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------- */
/* Direct convolution                                                        */
/* ------------------------------------------------------------------------- */
/*
 * A tile is NR neighbouring outputs of one output row (vectorised: the NCHW
 * output stores them contiguously) by up to mr output channels. Its k-th term,
 * k = (c, a, b) over the group's channels and the kernel taps, multiplies the
 * weights wt[k * ldw + m] (broadcast) with the inputs of tap (a, b) under the
 * NR outputs. With stride sw those inputs are every sw-th column; so the padded
 * input is first copied split by column phase (see bmx_conv_f32), which makes
 * them NR contiguous floats at base + offsets[k]: no im2col matrix, and every
 * load a plain vector load. The micro-kernels write out[m * ldo + j] for m < mr,
 * j < ncols (<= NR): bias[m] (0 without bias) + the sum over k, in k order.
 */
#define BMX_FCONV_NR 16

static const float bmx_zero_f32 = 0.0f;

typedef void (*bmx_fconv_kernel)(int mr, const float* base, const size_t* offsets, size_t terms,
                                 const float* wt, size_t ldw, const float* bias, float* out,
                                 size_t ldo, int ncols);

#define BMX_FCONV_MR_PORTABLE 2

static inline __attribute__((always_inline)) void bmx_fconv_portable_body(
    const int mr, const float* base, const size_t* offsets, size_t terms, const float* wt,
    size_t ldw, const float* bias, float* out, size_t ldo, int ncols) {
  float acc[BMX_FCONV_MR_PORTABLE][BMX_FCONV_NR];
  for (int m = 0; m < mr; ++m)
    for (int j = 0; j < BMX_FCONV_NR; ++j) acc[m][j] = bias != NULL ? bias[m] : 0.0f;
  for (size_t k = 0; k < terms; ++k) {
    const float* in = base + offsets[k];
    for (int m = 0; m < mr; ++m) {
      const float v = wt[k * ldw + m];
      for (int j = 0; j < BMX_FCONV_NR; ++j) acc[m][j] += v * in[j];
    }
  }
  for (int m = 0; m < mr; ++m)
    for (int j = 0; j < ncols; ++j) out[m * ldo + j] = acc[m][j];
}

static inline void bmx_fconv_portable(int mr, const float* base, const size_t* offsets,
                                      size_t terms, const float* wt, size_t ldw,
                                      const float* bias, float* out, size_t ldo, int ncols) {
  /* constant mr per case keeps the accumulators' loops fixed */
  switch (mr) {
    case 2: bmx_fconv_portable_body(2, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    default: bmx_fconv_portable_body(1, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
  }
}

#ifdef BMX_X86
/*
 * AVX2: 6 channels x 16 outputs = 12 ymm accumulators, 2 input vectors, a
 * broadcast and a product: all 16 registers. GCC keeps the accumulators in them
 * only if every loop over the channels is unrolled (else it stores them to the
 * stack on every term). Multiply then add, not FMA: AVX2 does not imply FMA, and
 * on CPUs with separate add and multiply pipes the pair costs the same.
 */
#define BMX_FCONV_MR_AVX2 6

static inline __attribute__((always_inline)) BMX_AVX2_TARGET void bmx_fconv_avx2_body(
    const int mr, const float* base, const size_t* offsets, size_t terms, const float* wt,
    size_t ldw, const float* bias, float* out, size_t ldo, int ncols) {
  __m256 lo[BMX_FCONV_MR_AVX2], hi[BMX_FCONV_MR_AVX2]; /* outputs 0-7 and 8-15 */
#pragma GCC unroll 6
  for (int m = 0; m < mr; ++m) lo[m] = hi[m] = _mm256_broadcast_ss(bias != NULL ? bias + m : &bmx_zero_f32);
  for (size_t k = 0; k < terms; ++k) {
    const float* in = base + offsets[k];
    const __m256 b0 = _mm256_loadu_ps(in), b1 = _mm256_loadu_ps(in + 8);
#pragma GCC unroll 6
    for (int m = 0; m < mr; ++m) {
      const __m256 v = _mm256_broadcast_ss(wt + k * ldw + m);
      lo[m] = _mm256_add_ps(lo[m], _mm256_mul_ps(v, b0));
      hi[m] = _mm256_add_ps(hi[m], _mm256_mul_ps(v, b1));
    }
  }
  /* masked stores keep every accumulator index constant (a loop over a copy spills them all) */
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), live = _mm256_set1_epi32(ncols);
  const __m256i keep0 = _mm256_cmpgt_epi32(live, lane);
  const __m256i keep1 = _mm256_cmpgt_epi32(live, _mm256_add_epi32(lane, _mm256_set1_epi32(8)));
#pragma GCC unroll 6
  for (int m = 0; m < mr; ++m) {
    _mm256_maskstore_ps(out + m * ldo, keep0, lo[m]);
    _mm256_maskstore_ps(out + m * ldo + 8, keep1, hi[m]);
  }
}

static inline BMX_AVX2_TARGET void bmx_fconv_avx2(int mr, const float* base,
                                                  const size_t* offsets, size_t terms,
                                                  const float* wt, size_t ldw, const float* bias,
                                                  float* out, size_t ldo, int ncols) {
  switch (mr) {
    case 6: bmx_fconv_avx2_body(6, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    case 5: bmx_fconv_avx2_body(5, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    case 4: bmx_fconv_avx2_body(4, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    case 3: bmx_fconv_avx2_body(3, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    case 2: bmx_fconv_avx2_body(2, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    default: bmx_fconv_avx2_body(1, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
  }
}

/*
 * AVX-512: 16 channels x 16 outputs = 16 zmm accumulators, each term one input
 * load and 16 FMAs with broadcast weights: the FMA pipes, not the loads, bound it.
 */
#define BMX_FCONV_MR_AVX512 16

static inline __attribute__((always_inline)) BMX_AVX512_TARGET void bmx_fconv_avx512_body(
    const int mr, const float* base, const size_t* offsets, size_t terms, const float* wt,
    size_t ldw, const float* bias, float* out, size_t ldo, int ncols) {
  __m512 acc[BMX_FCONV_MR_AVX512];
  for (int m = 0; m < mr; ++m) acc[m] = bias != NULL ? _mm512_set1_ps(bias[m]) : _mm512_setzero_ps();
  for (size_t k = 0; k < terms; ++k) {
    const __m512 in = _mm512_loadu_ps(base + offsets[k]);
    const float* w = wt + k * ldw;
    for (int m = 0; m < mr; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(w[m]), in, acc[m]);
  }
  const __mmask16 keep = ncols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncols) - 1);
  for (int m = 0; m < mr; ++m) _mm512_mask_storeu_ps(out + m * ldo, keep, acc[m]);
}

static inline BMX_AVX512_TARGET void bmx_fconv_avx512(int mr, const float* base,
                                                      const size_t* offsets, size_t terms,
                                                      const float* wt, size_t ldw,
                                                      const float* bias, float* out, size_t ldo,
                                                      int ncols) {
  switch (mr) {
#define BMX_FCONV_CASE(r) \
  case r: bmx_fconv_avx512_body(r, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
    BMX_FCONV_CASE(16) BMX_FCONV_CASE(15) BMX_FCONV_CASE(14) BMX_FCONV_CASE(13)
    BMX_FCONV_CASE(12) BMX_FCONV_CASE(11) BMX_FCONV_CASE(10) BMX_FCONV_CASE(9)
    BMX_FCONV_CASE(8) BMX_FCONV_CASE(7) BMX_FCONV_CASE(6) BMX_FCONV_CASE(5)
    BMX_FCONV_CASE(4) BMX_FCONV_CASE(3) BMX_FCONV_CASE(2)
#undef BMX_FCONV_CASE
    default: bmx_fconv_avx512_body(1, base, offsets, terms, wt, ldw, bias, out, ldo, ncols); break;
  }
}
#endif

/*
 * The 1x1, stride 1, unpadded case of bmx_conv_f32: per image and group a matrix
 * product, out[n, g Og + m, p] = bias + sum over c < Cg of W[g Og + m, c] x[n, g Cg
 * + c, p], the h w pixels p of a plane taken as one row. Both operands are first
 * laid out for the micro-kernel to read them in order: the weights once per call,
 * in blocks of mr output channels (wp[g, block, c, m], zero past Og), and each tile
 * of NR pixels by the thread that takes it (zero past the plane), which keeps it
 * in L1 while the blocks of output channels pass. With a single block a full tile
 * is read only once: in place. The tasks, (image, group, tile, block), give every
 * thread work at batch 1 down to a 7 x 7 plane; a thread's consecutive tasks share
 * a tile. Sums in the same order as bmx_conv_f32's.
 */
static inline int bmx_conv1x1_f32(bmx_fconv_kernel mk, int mr, const float* x, size_t batch,
                                  size_t channels, size_t hw, const float* wt, const float* bias,
                                  size_t groups, size_t out_channels, float* out, size_t o_batch,
                                  size_t o_channel, int threads) {
  const size_t cg = channels / groups, og = out_channels / groups, r = (size_t)mr;
  const size_t tiles = (hw + BMX_FCONV_NR - 1) / BMX_FCONV_NR, blocks = (og + r - 1) / r;
  float* wp = (float*)malloc(groups * blocks * cg * r * sizeof(float));
  size_t* offsets = (size_t*)malloc(2 * cg * sizeof(size_t)); /* in a tile, then in x */
  if (wp == NULL || offsets == NULL) {
    free(wp);
    free(offsets);
    return -1;
  }
  for (size_t c = 0; c < cg; ++c) {
    offsets[c] = c * BMX_FCONV_NR;
    offsets[cg + c] = c * hw;
  }
  const int team = bmx_team_size(threads);
  (void)team;
  const long panels = (long)(groups * blocks), tasks = (long)(batch * groups * tiles * blocks);
  int failed = 0;
#pragma omp parallel num_threads(team) if (team > 1 && batch * out_channels * hw * cg > BMX_FLOAT_GRAIN)
  {
#pragma omp for schedule(static)
    for (long q = 0; q < panels; ++q) {
      const size_t g = (size_t)q / blocks, m0 = (size_t)q % blocks * r;
      float* dst = wp + (size_t)q * cg * r;
      for (size_t c = 0; c < cg; ++c)
        for (size_t m = 0; m < r; ++m)
          dst[c * r + m] = m0 + m < og ? wt[(g * cg + c) * og + m0 + m] : 0.0f;
    }
    float* tile = (float*)malloc(cg * BMX_FCONV_NR * sizeof(float));
    if (tile == NULL) {
#pragma omp atomic write
      failed = 1;
    }
    size_t tile_of = (size_t)-1; /* the (image, group, tile) that `tile` holds */
#pragma omp for schedule(static)
    for (long t = 0; t < tasks; ++t) {
      if (tile == NULL) continue;
      const size_t block = (size_t)t % blocks, here = (size_t)t / blocks;
      const size_t ng = here / tiles, n = ng / groups, g = ng % groups;
      const size_t j0 = here % tiles * BMX_FCONV_NR;
      const int ncols = hw - j0 < BMX_FCONV_NR ? (int)(hw - j0) : BMX_FCONV_NR;
      const float* src = x + (n * channels + g * cg) * hw + j0;
      const int in_place = blocks == 1 && ncols == BMX_FCONV_NR;
      if (!in_place && tile_of != here) {
        for (size_t c = 0; c < cg; ++c)
          for (int j = 0; j < BMX_FCONV_NR; ++j)
            tile[c * BMX_FCONV_NR + j] = j < ncols ? src[c * hw + j] : 0.0f;
        tile_of = here;
      }
      const size_t m0 = block * r, o = g * og + m0;
      mk(og - m0 < r ? (int)(og - m0) : mr, in_place ? src : tile, offsets + (in_place ? cg : 0), cg,
         wp + (g * blocks + block) * cg * r,
         r, bias != NULL ? bias + o : NULL, out + n * o_batch + o * o_channel + j0, o_channel,
         ncols);
    }
    free(tile);
  }
  free(wp);
  free(offsets);
  return failed ? -1 : 0;
}

/*
 * Float 2-D convolution, NCHW, as MXNet's Convolution (cross-correlation):
 *     out[n, o, i, j] = bias[o] + sum over c < Cg, a < kh, b < kw of
 *                       W[o, c, a, b] * x[n, g Cg + c, i sh + a dh - ph, j sw + b dw - pw]
 * with x read as 0 outside the input, G = groups, Cg = channels / G, Og =
 * out_channels / G and g = o / Og; bias may be NULL (0). The sums are float32,
 * in the order of k = (c, a, b), with FMA in the AVX-512 variant: they agree
 * with other implementations up to float rounding.
 *
 * x is contiguous (batch, channels, h, w). wt is the weight transposed per group,
 * wt[(g * K + k) * Og + m] = W[g * Og + m, c, a, b] with K = Cg * kh * kw and
 * k = (c * kh + a) * kw + b. Each (oh, ow) output plane is contiguous; plane
 * (n, o) starts at out + n * o_batch + o * o_channel (strides in floats), so
 * that a channel slice of a larger NCHW tensor fits. (oh, ow) as MXNet's
 * ('valid') output size; threads <= 0 uses the OpenMP default. Returns 0, -1
 * when memory ran out, -2 for an empty kernel or output.
 *
 * The padded input is first copied split by column phase: xp[n, c, r, f, t] =
 * the padded x[n, c, r, t * sw + f] (0 in the padding and past it), so that tap
 * (a, b) of outputs j0 .. j0+NR-1 in row i reads xp[n, c, i sh + a dh, f, j0 + d
 * .. + NR - 1] with b dw = d sw + f: contiguous. Rows of phases run to len =
 * (whole tiles of output columns) + max d, so a tile never reads past its row.
 * A 1x1 kernel of stride 1 without padding needs no copy (bmx_conv1x1_f32).
 */
static inline int bmx_conv_f32(const float* x, size_t batch, size_t channels, size_t h, size_t w,
                               const float* wt, const float* bias, size_t groups,
                               size_t out_channels, size_t kh, size_t kw, size_t sh, size_t sw,
                               size_t ph, size_t pw, size_t dh, size_t dw, float* out,
                               size_t o_batch, size_t o_channel, int kernel, int threads) {
  bmx_fconv_kernel mk = bmx_fconv_portable;
  int mr = BMX_FCONV_MR_PORTABLE;
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) {
    mk = bmx_fconv_avx512;
    mr = BMX_FCONV_MR_AVX512;
  } else if (kernel == BMX_KERNEL_AVX2) {
    mk = bmx_fconv_avx2;
    mr = BMX_FCONV_MR_AVX2;
  }
#else
  (void)kernel;
#endif
  const size_t oh = bmx_conv_out_extent(h, ph, kh, sh, dh);
  const size_t ow = bmx_conv_out_extent(w, pw, kw, sw, dw);
  const size_t cg = channels / groups, og = out_channels / groups, terms = cg * kh * kw;
  if (terms == 0 || oh == 0 || ow == 0 || og == 0) return -2;
  if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0)
    return bmx_conv1x1_f32(mk, mr, x, batch, channels, h * w, wt, bias, groups, out_channels, out,
                           o_batch, o_channel, threads);
  const size_t tiles_w = (ow + BMX_FCONV_NR - 1) / BMX_FCONV_NR;
  const size_t hp = h + 2 * ph, len = tiles_w * BMX_FCONV_NR + (kw - 1) * dw / sw;
  const size_t plane = hp * sw * len;
  float* xp = (float*)malloc(batch * channels * plane * sizeof(float));
  size_t* offsets = (size_t*)malloc(terms * sizeof(size_t));
  if (xp == NULL || offsets == NULL) {
    free(xp);
    free(offsets);
    return -1;
  }
  for (size_t c = 0; c < cg; ++c)
    for (size_t a = 0; a < kh; ++a)
      for (size_t b = 0; b < kw; ++b)
        offsets[(c * kh + a) * kw + b] =
            c * plane + (a * dh * sw + b * dw % sw) * len + b * dw / sw;
  const int team = bmx_team_size(threads);
  (void)team;
  const int parallel = team > 1 && batch * out_channels * oh * ow * terms > BMX_FLOAT_GRAIN;
  (void)parallel;
  const long rows = (long)(batch * channels * hp);
#pragma omp parallel for schedule(static) num_threads(team) if (parallel)
  for (long t = 0; t < rows; ++t) {
    const size_t nc = (size_t)t / hp, r = (size_t)t % hp;
    float* dst = xp + nc * plane + r * sw * len;
    const size_t row = r - ph; /* unsigned wrap-around: padding rows fail row < h */
    const float* src = row < h ? x + (nc * h + row) * w : NULL;
    for (size_t f = 0; f < sw; ++f)
      for (size_t q = 0; q < len; ++q) {
        const size_t col = q * sw + f - pw;
        dst[f * len + q] = src != NULL && col < w ? src[col] : 0.0f;
      }
  }
  const long tasks = (long)(batch * groups * oh * tiles_w);
#pragma omp parallel for schedule(static) num_threads(team) if (parallel)
  for (long t = 0; t < tasks; ++t) {
    const size_t j0 = (size_t)t % tiles_w * BMX_FCONV_NR, i = (size_t)t / tiles_w % oh;
    const size_t g = (size_t)t / (tiles_w * oh) % groups, n = (size_t)t / (tiles_w * oh * groups);
    const float* base = xp + (n * channels + g * cg) * plane + i * sh * sw * len + j0;
    const int ncols = ow - j0 < BMX_FCONV_NR ? (int)(ow - j0) : BMX_FCONV_NR;
    for (size_t m0 = 0; m0 < og; m0 += (size_t)mr) {
      const int rows_here = og - m0 < (size_t)mr ? (int)(og - m0) : mr;
      const size_t o = g * og + m0;
      mk(rows_here, base, offsets, terms, wt + g * terms * og + m0, og,
         bias != NULL ? bias + o : NULL, out + n * o_batch + o * o_channel + i * ow + j0,
         o_channel, ncols);
    }
  }
  free(xp);
  free(offsets);
  return 0;
}

#ifdef __cplusplus
}
#endif

#endif /* BMX_FLOATOPS_H_ */
