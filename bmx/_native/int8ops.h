/*
 * Int8 kernels of bmx.xnor: symmetric quantization of float32 to int8
 * (bmx_quantize_int8) and the int8 convolution with exact int32 accumulation
 * (bmx_int8_conv; a dense layer is its 1x1 case). Compiled into the Cython
 * extension bmx/_xnor.pyx; runs on OpenMP threads when compiled with -fopenmp.
 *
 * Variants, chosen at run time like the xnor kernels of bitops.h (whose CPU
 * checks, target attributes and OpenMP team size this file uses), all exact,
 * so all give identical int32 results:
 *   BMX_INT8_VNNI     AVX-512 VNNI: vpdpbusd multiplies unsigned by signed
 *                     bytes, so activations are offset by +128 and each output
 *                     channel's 128 * (sum of its weights) is subtracted again.
 *                     Products of 4 terms, int32 sums modulo 2^32: exact.
 *   BMX_INT8_AVX2     int8 sign-extended to int16 and vpmaddwd (no saturating
 *                     vpmaddubsw: 2 * 128 * 128 does not fit int16).
 *   BMX_INT8_PORTABLE plain C over the VNNI variant's data layout and offset
 *                     (so those are exercised on every CPU); on any architecture.
 */
#ifndef BMX_INT8OPS_H_
#define BMX_INT8OPS_H_

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bitops.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { BMX_INT8_PORTABLE = 0, BMX_INT8_AVX2 = 1, BMX_INT8_VNNI = 2 };

/* Whether this CPU (and OS) can run an int8 kernel variant. */
static inline int bmx_int8_kernel_available(int kernel) {
  if (kernel == BMX_INT8_PORTABLE) return 1;
#ifdef BMX_X86
  if (kernel == BMX_INT8_AVX2) return bmx_kernel_available(BMX_KERNEL_AVX2);
  if (kernel == BMX_INT8_VNNI) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
  }
#endif
  return 0;
}

/* The best variant: the enum counts up from the slowest. */
static inline int bmx_int8_kernel_best(void) {
  int kernel = BMX_INT8_VNNI;
  while (!bmx_int8_kernel_available(kernel)) --kernel;
  return kernel;
}

/* Below this much work (values, multiply-adds) a thread team costs more than it saves. */
#define BMX_INT8_GRAIN 262144

/*
 * q[i] = clip(round(x[i] / scale), -127, 127) with the division in float32 and
 * round half to even. Returns 0, or 1 when some x[i] is NaN (q then undefined).
 * Clipping first is the same (the bounds are integers). On x86-64, SSE2 (part
 * of the base ISA) 16 values at a time: cvtps2dq rounds in the default mode,
 * to nearest even. Elsewhere, and for the tail, |v| <= 127 after clipping,
 * where adding and subtracting 1.5 * 2^23 rounds the same way.
 */
static inline int8_t bmx_quantize_one(float x, float scale, int* nan) {
  float v = x / scale;
  *nan |= v != v;
  v = v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
  return (int8_t)(int32_t)((v + 12582912.0f) - 12582912.0f);
}

static inline int bmx_quantize_int8(const float* x, size_t n, float scale, int8_t* q, int threads) {
  int nan = 0;
  const int team = bmx_team_size(threads);
  (void)team;
  const long blocks = (long)(n / 16);
#pragma omp parallel for schedule(static) num_threads(team) reduction(| : nan) \
    if (team > 1 && n > BMX_INT8_GRAIN)
  for (long b = 0; b < blocks; ++b) {
    const float* src = x + 16 * b;
#ifdef BMX_X86
    const __m128 s = _mm_set1_ps(scale), lo = _mm_set1_ps(-127.0f), hi = _mm_set1_ps(127.0f);
    __m128i r[4];
    for (int t = 0; t < 4; ++t) {
      const __m128 v = _mm_div_ps(_mm_loadu_ps(src + 4 * t), s);
      nan |= _mm_movemask_ps(_mm_cmpunord_ps(v, v));
      r[t] = _mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(v, lo), hi));
    }
    _mm_storeu_si128((__m128i*)(q + 16 * b),
                     _mm_packs_epi16(_mm_packs_epi32(r[0], r[1]), _mm_packs_epi32(r[2], r[3])));
#else
    for (int t = 0; t < 16; ++t) q[16 * b + t] = bmx_quantize_one(src[t], scale, &nan);
#endif
  }
  for (size_t i = 16 * (size_t)blocks; i < n; ++i) q[i] = bmx_quantize_one(x[i], scale, &nan);
  return nan != 0;
}

/* ------------------------------------------------------------------------- */
/* Micro-kernels                                                             */
/* ------------------------------------------------------------------------- */
/*
 * The convolution is a product C[m, p] = sum_k A[m, k] B[k, p]: m an output
 * channel, p an output pixel, k = (c, a, b) an input channel and kernel tap.
 * A tile is NR neighbouring outputs of one output row by up to MR channels.
 * Its B operand is gathered per tile ("tile", built by the driver) in steps of
 * `depth` consecutive k: tile[s][j][t] = B[depth s + t, p0 + j] (j < NR), and
 * its A operand (the weights) is packed in blocks of MR rows, once per call
 * or ahead (bmx_int8_pack_weights): ap[s][m][t] =
 * A[m0 + m, depth s + t] (0 past K and past the last row). A micro-kernel
 * vectorises across the NR outputs, broadcasting `depth` weights at a time, and
 * writes the raw sums of mr rows to c[m * NR + j] (modulo 2^32).
 *
 * Layouts: "quads" (depth 4, B as uint8 = activation + 128, A int8) for
 * portable and VNNI; "pairs" (depth 2, both int16) for AVX2.
 */
#define BMX_I8_NR 16
#define BMX_I8_MR_MAX 16

typedef void (*bmx_i8_kernel)(int mr, const void* tile, const void* ap, size_t steps, uint32_t* c);

/*
 * A micro-kernel: a switch that calls its body with a constant mr (the cases,
 * BMX_I8_CASE(body, r) each, then 1), which keeps the body's loops fixed.
 */
#define BMX_I8_CASE(body, r) \
  case r: body(r, tile, ap, steps, c); break;
#define BMX_I8_KERNEL(target, name, body, cases)                                          \
  static inline target void name(int mr, const void* tile, const void* ap, size_t steps, \
                                 uint32_t* c) {                                         \
    switch (mr) {                                                                       \
      cases default : body(1, tile, ap, steps, c);                                      \
      break;                                                                            \
    }                                                                                   \
  }

/* 4 bytes as one 32-bit lane (a broadcast source); memcpy keeps it free of aliasing rules */
static inline int32_t bmx_i8_lane(const void* p) {
  int32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

#define BMX_I8_MR_PORTABLE 4

static inline __attribute__((always_inline)) void bmx_i8_portable_body(
    const int mr, const void* tile_bytes, const void* ap_bytes, size_t steps, uint32_t* c) {
  const uint8_t* tile = (const uint8_t*)tile_bytes;
  const int8_t* ap = (const int8_t*)ap_bytes;
  uint32_t acc[BMX_I8_MR_PORTABLE][BMX_I8_NR] = {{0}};
  for (size_t s = 0; s < steps; ++s, tile += 4 * BMX_I8_NR, ap += 4 * BMX_I8_MR_PORTABLE) {
    for (int m = 0; m < mr; ++m) {
      const int32_t a0 = ap[4 * m], a1 = ap[4 * m + 1], a2 = ap[4 * m + 2], a3 = ap[4 * m + 3];
      /* four products of at most 255 * 128 fit int32; the running sum wraps, as vpdpbusd's */
      for (int j = 0; j < BMX_I8_NR; ++j)
        acc[m][j] += (uint32_t)(a0 * tile[4 * j] + a1 * tile[4 * j + 1] + a2 * tile[4 * j + 2] +
                                a3 * tile[4 * j + 3]);
    }
  }
  for (int m = 0; m < mr; ++m) memcpy(c + m * BMX_I8_NR, acc[m], sizeof(acc[m]));
}

BMX_I8_KERNEL(, bmx_i8_portable, bmx_i8_portable_body,
              BMX_I8_CASE(bmx_i8_portable_body, 4) BMX_I8_CASE(bmx_i8_portable_body, 3)
              BMX_I8_CASE(bmx_i8_portable_body, 2))

#ifdef BMX_X86
/*
 * AVX2: 6 channels x 16 outputs = 12 ymm accumulators, 2 tile vectors and a
 * broadcast pair of weights. vpmaddwd adds two int16 products (at most 2 * 2^14)
 * into each int32 lane: exact.
 */
#define BMX_I8_MR_AVX2 6

static inline __attribute__((always_inline)) BMX_AVX2_TARGET void bmx_i8_avx2_body(
    const int mr, const void* tile_bytes, const void* ap_bytes, size_t steps, uint32_t* c) {
  const int16_t* tile = (const int16_t*)tile_bytes;
  const int16_t* ap = (const int16_t*)ap_bytes;
  __m256i lo[BMX_I8_MR_AVX2], hi[BMX_I8_MR_AVX2]; /* outputs 0-7 and 8-15 */
#pragma GCC unroll 6
  for (int m = 0; m < mr; ++m) lo[m] = hi[m] = _mm256_setzero_si256();
  for (size_t s = 0; s < steps; ++s, tile += 2 * BMX_I8_NR, ap += 2 * BMX_I8_MR_AVX2) {
    const __m256i b0 = _mm256_loadu_si256((const __m256i*)tile);
    const __m256i b1 = _mm256_loadu_si256((const __m256i*)(tile + 16));
#pragma GCC unroll 6
    for (int m = 0; m < mr; ++m) {
      const __m256i a = _mm256_set1_epi32(bmx_i8_lane(ap + 2 * m));
      lo[m] = _mm256_add_epi32(lo[m], _mm256_madd_epi16(b0, a));
      hi[m] = _mm256_add_epi32(hi[m], _mm256_madd_epi16(b1, a));
    }
  }
#pragma GCC unroll 6
  for (int m = 0; m < mr; ++m) {
    _mm256_storeu_si256((__m256i*)(c + m * BMX_I8_NR), lo[m]);
    _mm256_storeu_si256((__m256i*)(c + m * BMX_I8_NR + 8), hi[m]);
  }
}

BMX_I8_KERNEL(BMX_AVX2_TARGET, bmx_i8_avx2, bmx_i8_avx2_body,
              BMX_I8_CASE(bmx_i8_avx2_body, 6) BMX_I8_CASE(bmx_i8_avx2_body, 5)
              BMX_I8_CASE(bmx_i8_avx2_body, 4) BMX_I8_CASE(bmx_i8_avx2_body, 3)
              BMX_I8_CASE(bmx_i8_avx2_body, 2))

/*
 * The pairs tile: per step the bytes of k = 2s and 2s + 1 interleaved, then
 * widened. A partial tile (ncols < NR) reads only its ncols bytes per term.
 */
static inline BMX_AVX2_TARGET void bmx_i8_tile_pairs_avx2(const uint8_t* base, const size_t* off,
                                                          size_t steps, int ncols, void* tile) {
  int16_t* t = (int16_t*)tile;
  uint8_t part[2][BMX_I8_NR] = {{0}};
  for (size_t s = 0; s < steps; ++s, t += 2 * BMX_I8_NR) {
    const uint8_t* p0 = base + off[2 * s];
    const uint8_t* p1 = base + off[2 * s + 1];
    if (ncols < BMX_I8_NR) {
      memcpy(part[0], p0, (size_t)ncols);
      memcpy(part[1], p1, (size_t)ncols);
      p0 = part[0];
      p1 = part[1];
    }
    const __m128i r0 = _mm_loadu_si128((const __m128i*)p0);
    const __m128i r1 = _mm_loadu_si128((const __m128i*)p1);
    _mm256_storeu_si256((__m256i*)t, _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1)));
    _mm256_storeu_si256((__m256i*)(t + 16), _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1)));
  }
}

/*
 * AVX-512 VNNI: 16 channels x 16 outputs = 16 zmm accumulators, each step one
 * tile load and 16 vpdpbusd with broadcast weights.
 */
#define BMX_I8_MR_VNNI 16
#define BMX_AVX512_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

static inline __attribute__((always_inline)) BMX_AVX512_VNNI_TARGET void bmx_i8_vnni_body(
    const int mr, const void* tile_bytes, const void* ap_bytes, size_t steps, uint32_t* c) {
  const uint8_t* tile = (const uint8_t*)tile_bytes;
  const int8_t* ap = (const int8_t*)ap_bytes;
  __m512i acc[BMX_I8_MR_VNNI];
#pragma GCC unroll 16
  for (int m = 0; m < mr; ++m) acc[m] = _mm512_setzero_si512();
  for (size_t s = 0; s < steps; ++s, tile += 4 * BMX_I8_NR, ap += 4 * BMX_I8_MR_VNNI) {
    const __m512i b = _mm512_loadu_si512((const void*)tile);
#pragma GCC unroll 16
    for (int m = 0; m < mr; ++m)
      acc[m] = _mm512_dpbusd_epi32(acc[m], b, _mm512_set1_epi32(bmx_i8_lane(ap + 4 * m)));
  }
#pragma GCC unroll 16
  for (int m = 0; m < mr; ++m) _mm512_storeu_si512((void*)(c + m * BMX_I8_NR), acc[m]);
}

BMX_I8_KERNEL(BMX_AVX512_VNNI_TARGET, bmx_i8_vnni, bmx_i8_vnni_body,
              BMX_I8_CASE(bmx_i8_vnni_body, 16) BMX_I8_CASE(bmx_i8_vnni_body, 15)
              BMX_I8_CASE(bmx_i8_vnni_body, 14) BMX_I8_CASE(bmx_i8_vnni_body, 13)
              BMX_I8_CASE(bmx_i8_vnni_body, 12) BMX_I8_CASE(bmx_i8_vnni_body, 11)
              BMX_I8_CASE(bmx_i8_vnni_body, 10) BMX_I8_CASE(bmx_i8_vnni_body, 9)
              BMX_I8_CASE(bmx_i8_vnni_body, 8) BMX_I8_CASE(bmx_i8_vnni_body, 7)
              BMX_I8_CASE(bmx_i8_vnni_body, 6) BMX_I8_CASE(bmx_i8_vnni_body, 5)
              BMX_I8_CASE(bmx_i8_vnni_body, 4) BMX_I8_CASE(bmx_i8_vnni_body, 3)
              BMX_I8_CASE(bmx_i8_vnni_body, 2))
#endif /* BMX_X86 */

#undef BMX_I8_KERNEL
#undef BMX_I8_CASE

/*
 * The quads tile: tile[s][j][t] = base[off[4 s + t] + j] + 128 (XOR 0x80 turns
 * int8 into the offset uint8); columns past ncols are 0.
 */
static inline void bmx_i8_tile_quads(const uint8_t* base, const size_t* off, size_t steps,
                                     int ncols, void* tile) {
  uint8_t* out = (uint8_t*)tile;
  if (ncols < BMX_I8_NR) memset(out, 0, steps * 4 * BMX_I8_NR);
  for (size_t s = 0; s < steps; ++s, out += 4 * BMX_I8_NR)
    for (int t = 0; t < 4; ++t) {
      const uint8_t* src = base + off[4 * s + t];
      if (ncols == BMX_I8_NR) {
        for (int j = 0; j < BMX_I8_NR; ++j) out[4 * j + t] = src[j] ^ 0x80;
      } else {
        for (int j = 0; j < ncols; ++j) out[4 * j + t] = src[j] ^ 0x80;
      }
    }
}

typedef void (*bmx_i8_tile_fn)(const uint8_t* base, const size_t* off, size_t steps, int ncols,
                               void* tile);

/* What a variant needs: its micro-kernel and tile builder and its layout. */
typedef struct bmx_i8_variant {
  bmx_i8_kernel kernel;
  bmx_i8_tile_fn tile;
  int mr, depth, wide; /* wide: int16 elements (pairs), else bytes (quads, offset by 128) */
} bmx_i8_variant;

static inline bmx_i8_variant bmx_i8_variant_of(int kernel) {
  bmx_i8_variant v = {bmx_i8_portable, bmx_i8_tile_quads, BMX_I8_MR_PORTABLE, 4, 0};
#ifdef BMX_X86
  if (kernel == BMX_INT8_AVX2) {
    v.kernel = bmx_i8_avx2;
    v.tile = bmx_i8_tile_pairs_avx2;
    v.mr = BMX_I8_MR_AVX2;
    v.depth = 2;
    v.wide = 1;
  } else if (kernel == BMX_INT8_VNNI) {
    v.kernel = bmx_i8_vnni;
    v.mr = BMX_I8_MR_VNNI;
  }
#else
  (void)kernel;
#endif
  return v;
}

/*
 * Packed weights of a variant, one buffer: first the offset corrections, then
 * the panels. Output channel o of group g is row m = o % Og of the group, in
 * block b = m / MR; corr[g * blocks + b][m % MR] = 128 * (sum of its weights)
 * modulo 2^32 for quads, else 0; block (g, b) is [s][m][t] (see above),
 * zeros past k and past the group's last channel.
 */
static inline size_t bmx_i8_blocks(const bmx_i8_variant* v, size_t out_channels, size_t groups) {
  return (out_channels / groups + (size_t)v->mr - 1) / (size_t)v->mr;
}

static inline size_t bmx_i8_block_bytes(const bmx_i8_variant* v, size_t k) {
  const size_t depth = (size_t)v->depth, steps = (k + depth - 1) / depth;
  return steps * (size_t)v->mr * depth * (v->wide ? 2 : 1);
}

static inline size_t bmx_i8_corr_bytes(const bmx_i8_variant* v, size_t out_channels, size_t groups) {
  return groups * bmx_i8_blocks(v, out_channels, groups) * (size_t)v->mr * sizeof(uint32_t);
}

/* Bytes of the packed form of (out_channels, k) weights in `groups` groups for `kernel`. */
static inline size_t bmx_int8_packed_bytes(int kernel, size_t out_channels, size_t groups,
                                           size_t k) {
  const bmx_i8_variant v = bmx_i8_variant_of(kernel);
  return bmx_i8_corr_bytes(&v, out_channels, groups) +
         groups * bmx_i8_blocks(&v, out_channels, groups) * bmx_i8_block_bytes(&v, k);
}

/* Packs w (out_channels contiguous rows of k int8; k = Cg * kh * kw) for `kernel`. */
static inline void bmx_int8_pack_weights(int kernel, const int8_t* w, size_t out_channels,
                                         size_t groups, size_t k, void* packed) {
  const bmx_i8_variant v = bmx_i8_variant_of(kernel);
  const size_t mr = (size_t)v.mr, og = out_channels / groups;
  const size_t blocks = bmx_i8_blocks(&v, out_channels, groups), block = bmx_i8_block_bytes(&v, k);
  memset(packed, 0, bmx_int8_packed_bytes(kernel, out_channels, groups, k));
  uint32_t* corr = (uint32_t*)packed;
  char* panels = (char*)packed + bmx_i8_corr_bytes(&v, out_channels, groups);
  for (size_t o = 0; o < out_channels; ++o) {
    const size_t g = o / og, m = o % og, at = (g * blocks + m / mr) * mr + m % mr;
    const int8_t* row = w + o * k;
    char* dst = panels + (g * blocks + m / mr) * block;
    uint32_t sum = 0;
    for (size_t kk = 0; kk < k; ++kk) sum += (uint32_t)(int32_t)row[kk];
    if (v.wide) {
      int16_t* d = (int16_t*)dst + 2 * (m % mr);
      for (size_t kk = 0; kk < k; ++kk) d[(kk >> 1) * 2 * mr + (kk & 1)] = row[kk];
    } else {
      int8_t* d = (int8_t*)dst + 4 * (m % mr);
      for (size_t kk = 0; kk < k; ++kk) d[(kk >> 2) * 4 * mr + (kk & 3)] = row[kk];
      corr[at] = sum * 128u;
    }
  }
}

/* ------------------------------------------------------------------------- */
/* The convolution driver                                                    */
/* ------------------------------------------------------------------------- */

/*
 * Where results go. acc != NULL: int32 results. Else y gets float32
 * y = (float)acc * scale[i] + bias[i] (bias may be NULL: 0), rounded after the
 * product and after the sum, with i the output channel, or with per_column the
 * output pixel index p = oh_index * out_w + ow_index (a dense layer computed
 * with the roles of its operands swapped, see bmx.xnor.int8_dense).
 */
typedef struct bmx_int8_output {
  int32_t* acc;
  float* y;
  const float* scale;
  const float* bias;
  int per_column;
} bmx_int8_output;

/* Writes a tile's results: rows m < mr (channels o0 + m, plane stride ldo) from dst on. */
static inline void bmx_i8_store(const uint32_t* c, int mr, int ncols, const uint32_t* corr,
                                const bmx_int8_output* out, size_t o0, size_t col0, size_t dst,
                                size_t ldo) {
  for (int m = 0; m < mr; ++m) {
    const uint32_t* row = c + m * BMX_I8_NR;
    const size_t at = dst + (size_t)m * ldo;
    if (out->acc != NULL) {
      for (int j = 0; j < ncols; ++j) out->acc[at + j] = (int32_t)(row[j] - corr[m]);
    } else if (out->per_column) {
      const float* s = out->scale + col0;
      const float* b = out->bias != NULL ? out->bias + col0 : NULL;
      for (int j = 0; j < ncols; ++j) {
        const float product = (float)(int32_t)(row[j] - corr[m]) * s[j];
        out->y[at + j] = b != NULL ? product + b[j] : product;
      }
    } else {
      const float s = out->scale[o0 + m], b = out->bias != NULL ? out->bias[o0 + m] : 0.0f;
      for (int j = 0; j < ncols; ++j) {
        const float product = (float)(int32_t)(row[j] - corr[m]) * s;
        out->y[at + j] = out->bias != NULL ? product + b : product;
      }
    }
  }
}

/*
 * Int8 2-D convolution, NCHW, as MXNet's Convolution (cross-correlation) with
 * zero padding (the zero point of symmetric quantization):
 *     acc[n, o, i, j] = sum over c < Cg, a < kh, b < kw of
 *                       W[o, c, a, b] * x[n, g Cg + c, i sh + a dh - ph, j sw + b dw - pw]
 * in int32, exact when Cg * kh * kw <= 131071 (the caller checks), with G =
 * groups, Cg = channels / G, Og = out_channels / G and g = o / Og. x is
 * contiguous (batch, channels, h, w), w contiguous (out_channels, Cg, kh, kw);
 * results go to a contiguous (batch, out_channels, oh, ow) array (see
 * bmx_int8_output), (oh, ow) as MXNet's ('valid') output size. `packed` is
 * the weights packed for this kernel by bmx_int8_pack_weights, or NULL to pack
 * wt here (wt is not read otherwise). threads <= 0
 * uses the OpenMP default. Returns 0, -1 when memory ran out, -2 for an empty
 * kernel or output.
 *
 * As floatops.h's bmx_conv_f32, the padded input is first copied split by
 * column phase, xp[n, c, r, f, t] = padded x[n, c, r, t sw + f], so that tap
 * (a, b) of the NR outputs j0 .. j0 + NR - 1 of row i reads NR contiguous bytes
 * (tiles of quads then hold x + 128: XOR 0x80). A 1x1 stride-1 unpadded
 * convolution is computed as one row of h * w pixels (no short rows), read in
 * place.
 */
static inline int bmx_int8_conv(const int8_t* x, size_t batch, size_t channels, size_t h,
                                size_t w, const int8_t* wt, const void* packed,
                                size_t out_channels, size_t groups, size_t kh, size_t kw,
                                size_t sh, size_t sw, size_t ph, size_t pw, size_t dh, size_t dw,
                                const bmx_int8_output* out, int kernel, int threads) {
  const bmx_i8_variant v = bmx_i8_variant_of(kernel);
  const int flat = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  if (flat) {
    w *= h;
    h = 1;
  }
  const size_t oh = bmx_conv_out_extent(h, ph, kh, sh, dh);
  const size_t ow = bmx_conv_out_extent(w, pw, kw, sw, dw);
  const size_t cg = channels / groups, og = out_channels / groups, k = cg * kh * kw;
  if (k == 0 || oh == 0 || ow == 0 || og == 0 || batch == 0) return -2;
  const size_t depth = (size_t)v.depth, steps = (k + depth - 1) / depth, elem = v.wide ? 2 : 1;
  const size_t mr = (size_t)v.mr, blocks = bmx_i8_blocks(&v, out_channels, groups);
  const size_t block = bmx_i8_block_bytes(&v, k);
  const size_t tiles_w = (ow + BMX_I8_NR - 1) / BMX_I8_NR;
  /* the flat case reads x in place: a row of h * w pixels per channel, partial last tile */
  const size_t hp = h + 2 * ph, len = flat ? w : tiles_w * BMX_I8_NR + (kw - 1) * dw / sw;
  const size_t plane = hp * sw * len;
  uint8_t* xp = flat ? NULL : (uint8_t*)malloc(batch * channels * plane);
  size_t* offsets = (size_t*)malloc(steps * depth * sizeof(size_t));
  void* own = packed == NULL ? malloc(bmx_int8_packed_bytes(kernel, out_channels, groups, k)) : NULL;
  if ((!flat && xp == NULL) || offsets == NULL || (packed == NULL && own == NULL)) {
    free(xp);
    free(offsets);
    free(own);
    return -1;
  }
  if (own != NULL) {
    bmx_int8_pack_weights(kernel, wt, out_channels, groups, k, own);
    packed = own;
  }
  const uint32_t* corr = (const uint32_t*)packed;
  const char* panels = (const char*)packed + bmx_i8_corr_bytes(&v, out_channels, groups);
  for (size_t c = 0; c < cg; ++c)
    for (size_t a = 0; a < kh; ++a)
      for (size_t b = 0; b < kw; ++b)
        offsets[(c * kh + a) * kw + b] =
            c * plane + (a * dh * sw + b * dw % sw) * len + b * dw / sw;
  /* k past the last term: any readable bytes, the weights there are 0 */
  for (size_t t = k; t < steps * depth; ++t) offsets[t] = 0;
  const int team = bmx_team_size(threads);
  const size_t work = batch * out_channels * oh * ow * k;
  const int parallel = team > 1 && work > BMX_INT8_GRAIN;
  (void)parallel;
  const long rows = flat ? 0 : (long)(batch * channels * hp);
#pragma omp parallel for schedule(static) num_threads(team) if (parallel)
  for (long t = 0; t < rows; ++t) {
    const size_t nc = (size_t)t / hp, r = (size_t)t % hp;
    uint8_t* dst = xp + nc * plane + r * sw * len;
    const size_t row = r - ph; /* unsigned wrap-around: padding rows fail row < h */
    if (row >= h) {
      memset(dst, 0, sw * len);
      continue;
    }
    const uint8_t* src = (const uint8_t*)x + (nc * h + row) * w;
    for (size_t f = 0; f < sw; ++f)
      for (size_t q = 0; q < len; ++q) {
        const size_t col = q * sw + f - pw;
        dst[f * len + q] = col < w ? src[col] : 0;
      }
  }
  const uint8_t* source = flat ? (const uint8_t*)x : xp;
  /* few tiles (a small image, a batch-1 dense layer): split each over its channel blocks too */
  const size_t tiles = batch * groups * oh * tiles_w;
  size_t splits = parallel ? (4 * (size_t)team + tiles - 1) / tiles : 1;
  if (splits > blocks) splits = blocks;
  const size_t per_split = (blocks + splits - 1) / splits;
  int failed = 0;
#pragma omp parallel num_threads(team) if (parallel)
  {
    void* tile = malloc(steps * depth * BMX_I8_NR * elem);
    uint32_t c[BMX_I8_MR_MAX * BMX_I8_NR];
    if (tile == NULL) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (long task = 0; task < (long)(tiles * splits); ++task) {
      if (tile == NULL) continue;
      const size_t u = (size_t)task / splits, part = (size_t)task % splits;
      const size_t j0 = u % tiles_w * BMX_I8_NR, i = u / tiles_w % oh;
      const size_t g = u / (tiles_w * oh) % groups, n = u / (tiles_w * oh * groups);
      const int ncols = ow - j0 < BMX_I8_NR ? (int)(ow - j0) : BMX_I8_NR;
      v.tile(source + (n * channels + g * cg) * plane + i * sh * sw * len + j0, offsets, steps,
             ncols, tile);
      const size_t b1 = (part + 1) * per_split < blocks ? (part + 1) * per_split : blocks;
      for (size_t b = part * per_split; b < b1; ++b) {
        const size_t m0 = b * mr, o = g * og + m0;
        const int rows_here = og - m0 < mr ? (int)(og - m0) : (int)mr;
        v.kernel(rows_here, tile, panels + (g * blocks + b) * block, steps, c);
        bmx_i8_store(c, rows_here, ncols, corr + (g * blocks + b) * mr, out, o, i * ow + j0,
                     ((n * out_channels + o) * oh + i) * ow + j0, oh * ow);
      }
    }
    free(tile);
  }
  free(xp);
  free(offsets);
  free(own);
  return failed ? -1 : 0;
}

#ifdef __cplusplus
}
#endif

#endif /* BMX_INT8OPS_H_ */
