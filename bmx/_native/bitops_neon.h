/*
 * The AArch64 NEON (Advanced SIMD) variants of bitops.h's kernels: the xnor
 * micro-kernel, sign + pack of rows and of NCHW pixels, threshold packing and
 * the float NCHW store. Included by bitops.h (on aarch64 only) after the
 * portable kernels, which these fall back to for ragged edges; selected at run
 * time as BMX_KERNEL_NEON. Every kernel gives exactly the bits of the portable
 * one: tests/arm/neon_check.c checks that under qemu-aarch64.
 *
 * NEON is part of the AArch64 base ISA that compilers target by default, so no
 * target attributes are needed; bmx_kernel_available still asks the kernel
 * (HWCAP_ASIMD) before the variant is chosen.
 */
#ifndef BMX_BITOPS_NEON_H_
#define BMX_BITOPS_NEON_H_

#ifdef BMX_NEON

/* ------------------------------------------------------------------------- */
/* Compare masks -> packed bits                                               */
/* ------------------------------------------------------------------------- */
/*
 * NEON has no movemask. 16 vectors of 4 all-ones/all-zeros lanes (values 4q ..
 * 4q+3 in m[q]) are narrowed to 64 mask bytes, each ANDed with its bit's weight
 * within its byte (1, 2, ..., 128), and three rounds of pairwise byte adds sum
 * each run of 8 bytes into one: byte k of the result is bits 8k .. 8k+7.
 */
static inline __attribute__((always_inline)) uint64_t bmx_neon_movemask64(const uint32x4_t* m) {
  static const uint8_t weights[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t weight = vld1q_u8(weights);
  uint8x16_t bytes[4];
  for (int i = 0; i < 4; ++i) {
    /* uzp1 keeps the low half of each lane: 0xffffffff -> 0xffff -> 0xff */
    uint16x8_t lo = vuzp1q_u16(vreinterpretq_u16_u32(m[4 * i]), vreinterpretq_u16_u32(m[4 * i + 1]));
    uint16x8_t hi =
        vuzp1q_u16(vreinterpretq_u16_u32(m[4 * i + 2]), vreinterpretq_u16_u32(m[4 * i + 3]));
    bytes[i] = vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(lo), vreinterpretq_u8_u16(hi)), weight);
  }
  uint8x16_t sum = vpaddq_u8(vpaddq_u8(bytes[0], bytes[1]), vpaddq_u8(bytes[2], bytes[3]));
  sum = vpaddq_u8(sum, sum);
  return vgetq_lane_u64(vreinterpretq_u64_u8(sum), 0);
}

/* ------------------------------------------------------------------------- */
/* xnor-popcount micro-kernel                                                */
/* ------------------------------------------------------------------------- */
/*
 * 4 rows x 8 columns: a q register holds 2 panel columns (one word each), so a
 * word of the panel is 4 loads and a row's word one load-and-broadcast. CNT
 * counts bytes; UADALP adds neighbouring byte counts into 16-bit lanes, 4 per
 * column. Each accumulator update is EOR, CNT, UADALP: 16 independent chains.
 * (6 rows would need 24 accumulators + 4 panel vectors + temporaries, and GCC
 * then spills accumulators inside the loop.) A 16-bit lane gains at most 16 per
 * word, so one body call counts at most BMX_NEON_MAX_WORDS words; longer rows
 * (262,080 bits and more, rare) are split into calls that add to c.
 */
#define BMX_MR_NEON 4
#define BMX_COLS_NEON 8
#define BMX_NEON_MAX_WORDS 4095

/* c[r * ldc + j] = base - 2 * popcount, base = k_bits, or c itself when add is set */
static inline __attribute__((always_inline)) void bmx_mk_neon_body(
    const int mr, const uint64_t* const* rows, size_t nseg, size_t seglen, const uint64_t* bp,
    int32_t* c, size_t ldc, int ncols, int32_t k_bits, int add) {
  uint16x8_t acc[BMX_MR_NEON][4];
  for (int r = 0; r < mr; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = vdupq_n_u16(0);
  size_t s = 0;
  do {
    const uint64_t* const* a = rows + s * BMX_TABLE_MR;
    size_t w = 0;
    do {
      const uint8x16_t b0 = vld1q_u8((const uint8_t*)bp);
      const uint8x16_t b1 = vld1q_u8((const uint8_t*)(bp + 2));
      const uint8x16_t b2 = vld1q_u8((const uint8_t*)(bp + 4));
      const uint8x16_t b3 = vld1q_u8((const uint8_t*)(bp + 6));
      for (int r = 0; r < mr; ++r) {
        const uint8x16_t x = vreinterpretq_u8_u64(vld1q_dup_u64(a[r] + w));
        acc[r][0] = vpadalq_u8(acc[r][0], vcntq_u8(veorq_u8(x, b0)));
        acc[r][1] = vpadalq_u8(acc[r][1], vcntq_u8(veorq_u8(x, b1)));
        acc[r][2] = vpadalq_u8(acc[r][2], vcntq_u8(veorq_u8(x, b2)));
        acc[r][3] = vpadalq_u8(acc[r][3], vcntq_u8(veorq_u8(x, b3)));
      }
      bp += BMX_PANEL;
    } while (++w < seglen);
  } while (++s < nseg);
  for (int r = 0; r < mr; ++r) {
    /* 16-bit lanes -> 32-bit pairs -> one count per column, columns 0-3 and 4-7 */
    const uint32x4_t lo = vpaddq_u32(vpaddlq_u16(acc[r][0]), vpaddlq_u16(acc[r][1]));
    const uint32x4_t hi = vpaddq_u32(vpaddlq_u16(acc[r][2]), vpaddlq_u16(acc[r][3]));
    int32_t* row = c + r * ldc;
    if (ncols == BMX_COLS_NEON) {
      const int32x4_t base_lo = add ? vld1q_s32(row) : vdupq_n_s32(k_bits);
      const int32x4_t base_hi = add ? vld1q_s32(row + 4) : vdupq_n_s32(k_bits);
      vst1q_s32(row, vsubq_s32(base_lo, vreinterpretq_s32_u32(vshlq_n_u32(lo, 1))));
      vst1q_s32(row + 4, vsubq_s32(base_hi, vreinterpretq_s32_u32(vshlq_n_u32(hi, 1))));
    } else {
      uint32_t counts[BMX_COLS_NEON];
      vst1q_u32(counts, lo);
      vst1q_u32(counts + 4, hi);
      for (int j = 0; j < ncols; ++j) row[j] = (add ? row[j] : k_bits) - 2 * (int32_t)counts[j];
    }
  }
}

static inline void bmx_mk_neon_rows(int mr, const uint64_t* const* rows, size_t nseg,
                                    size_t seglen, const uint64_t* bp, int32_t* c, size_t ldc,
                                    int ncols, int32_t k_bits, int add) {
  switch (mr) {
    case 4: bmx_mk_neon_body(4, rows, nseg, seglen, bp, c, ldc, ncols, k_bits, add); break;
    case 3: bmx_mk_neon_body(3, rows, nseg, seglen, bp, c, ldc, ncols, k_bits, add); break;
    case 2: bmx_mk_neon_body(2, rows, nseg, seglen, bp, c, ldc, ncols, k_bits, add); break;
    default: bmx_mk_neon_body(1, rows, nseg, seglen, bp, c, ldc, ncols, k_bits, add); break;
  }
}

static inline void bmx_mk_neon(int mr, const uint64_t* const* rows, size_t nseg, size_t seglen,
                               const uint64_t* bp, int32_t* c, size_t ldc, int ncols,
                               int32_t k_bits) {
  if (nseg * seglen <= BMX_NEON_MAX_WORDS) {
    bmx_mk_neon_rows(mr, rows, nseg, seglen, bp, c, ldc, ncols, k_bits, 0);
  } else if (seglen <= BMX_NEON_MAX_WORDS) {
    /* whole segments per call: rows + s0 * BMX_TABLE_MR is the table from segment s0 on */
    const size_t per_call = BMX_NEON_MAX_WORDS / seglen;
    for (size_t s0 = 0; s0 < nseg; s0 += per_call)
      bmx_mk_neon_rows(mr, rows + s0 * BMX_TABLE_MR, nseg - s0 < per_call ? nseg - s0 : per_call,
                       seglen, bp + s0 * seglen * BMX_PANEL, c, ldc, ncols, k_bits, s0 > 0);
  } else {
    for (size_t s = 0; s < nseg; ++s)
      for (size_t w0 = 0; w0 < seglen; w0 += BMX_NEON_MAX_WORDS) {
        const uint64_t* part[BMX_TABLE_MR];
        for (int r = 0; r < mr; ++r) part[r] = rows[s * BMX_TABLE_MR + r] + w0;
        bmx_mk_neon_rows(mr, part, 1,
                         seglen - w0 < BMX_NEON_MAX_WORDS ? seglen - w0 : BMX_NEON_MAX_WORDS,
                         bp + (s * seglen + w0) * BMX_PANEL, c, ldc, ncols, k_bits, s + w0 > 0);
      }
  }
}

/* ------------------------------------------------------------------------- */
/* Threshold packing, sign + pack                                             */
/* ------------------------------------------------------------------------- */

static inline void bmx_threshold_pack_neon(const int32_t* y, size_t rows, size_t n,
                                           const int32_t* lo, const uint64_t* flip, uint64_t* out,
                                           size_t ldo) {
  const size_t full = n / 64;
  for (size_t r = 0; r < rows; ++r, y += n, out += ldo) {
    for (size_t w = 0; w < full; ++w) {
      uint32x4_t ge[16];
      for (int q = 0; q < 16; ++q)
        ge[q] = vcgeq_s32(vld1q_s32(y + 64 * w + 4 * q), vld1q_s32(lo + 64 * w + 4 * q));
      out[w] = bmx_neon_movemask64(ge) ^ flip[w];
    }
    if (n > 64 * full)
      bmx_threshold_pack_portable(y + 64 * full, 1, n - 64 * full, lo + 64 * full, flip + full,
                                  out + full, 0);
  }
}

/* FCMGE is an ordered compare: -0.0 >= 0 holds, NaN >= 0 does not, as the sign convention says. */
static inline void bmx_pack_row_neon(const float* src, size_t n, uint64_t* dst) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  const size_t full = n / 64;
  for (size_t w = 0; w < full; ++w) {
    uint32x4_t ge[16];
    for (int q = 0; q < 16; ++q) ge[q] = vcgeq_f32(vld1q_f32(src + 64 * w + 4 * q), zero);
    dst[w] = bmx_neon_movemask64(ge);
  }
  if (n > 64 * full) bmx_pack_row_f32(src + 64 * full, n - 64 * full, dst + full);
}

/*
 * NCHW along C: 16 neighbouring pixels (one 64-byte line of each channel row)
 * at a time, channel c's compare mask ANDed with bit c % 32 and ORed into a
 * 32-bit lane per pixel; channels 64w .. 64w+31 and 64w+32 .. 64w+63 fill the
 * two halves of word w. The body takes `affine` as a constant so that the plain
 * sign keeps its plain loop; ragged pixels go to the portable kernel.
 */
static inline __attribute__((always_inline)) void bmx_pack_pixels_neon_body(
    const int affine, const float* src, size_t channels, size_t hw, size_t p0, size_t count,
    const bmx_affine* a, uint64_t* dst, size_t dst_stride) {
  const size_t words = bmx_words_for_bits(channels);
  size_t p = p0;
  for (; p + 16 <= p0 + count; p += 16) {
    for (size_t w = 0; w < words; ++w) {
      uint32x4_t half[2][4];
      for (int h = 0; h < 2; ++h) {
        uint32x4_t bit = vdupq_n_u32(1);
        for (int q = 0; q < 4; ++q) half[h][q] = vdupq_n_u32(0);
        const size_t c0 = 64 * w + 32 * h, c1 = c0 + 32 < channels ? c0 + 32 : channels;
        for (size_t c = c0; c < c1; ++c) {
          uint32x4_t negate = vdupq_n_u32(0);
          float32x4_t bound = vdupq_n_f32(0.0f);
          if (affine) {
            negate = vdupq_n_u32(a->negate[c]);
            bound = vdupq_n_f32(a->bound[c]);
          }
          for (int q = 0; q < 4; ++q) {
            float32x4_t v = vld1q_f32(src + c * hw + p + 4 * q);
            if (affine) v = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(v), negate));
            half[h][q] = vorrq_u32(half[h][q], vandq_u32(vcgeq_f32(v, bound), bit));
          }
          bit = vshlq_n_u32(bit, 1);
        }
      }
      const uint64x2_t ones = vdupq_n_u64(affine ? a->ones[w] : 0);
      for (int q = 0; q < 4; ++q) {
        /* zip puts pixel i's high half above its low half: one 64-bit word per lane */
        const uint64x2_t first = vorrq_u64(vreinterpretq_u64_u32(vzip1q_u32(half[0][q], half[1][q])), ones);
        const uint64x2_t second = vorrq_u64(vreinterpretq_u64_u32(vzip2q_u32(half[0][q], half[1][q])), ones);
        uint64_t* d = dst + (p + 4 * q) * dst_stride + w;
        vst1q_lane_u64(d, first, 0);
        vst1q_lane_u64(d + dst_stride, first, 1);
        vst1q_lane_u64(d + 2 * dst_stride, second, 0);
        vst1q_lane_u64(d + 3 * dst_stride, second, 1);
      }
    }
  }
  bmx_pack_pixels_portable(src, channels, hw, p, p0 + count - p, a, dst, dst_stride);
}

BMX_PACK_PIXELS_VARIANT(bmx_pack_pixels_neon, bmx_pack_pixels_neon_body, )

/* ------------------------------------------------------------------------- */
/* Float NCHW output                                                          */
/* ------------------------------------------------------------------------- */

/* 4 x 4 blocks: convert 4 rows of 4 columns (SCVTF rounds to nearest, as the C cast), transpose. */
static inline void bmx_store_image_neon(const int32_t* c, size_t ldc, size_t rows, size_t ncols,
                                        float* dst, size_t ldo) {
  const size_t rows4 = rows / 4 * 4, cols4 = ncols / 4 * 4;
  for (size_t r = 0; r < rows4; r += 4) {
    for (size_t j = 0; j < cols4; j += 4) {
      float32x4_t v[4];
      for (int k = 0; k < 4; ++k) v[k] = vcvtq_f32_s32(vld1q_s32(c + (r + k) * ldc + j));
      const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(v[0], v[1]));
      const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(v[0], v[1]));
      const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(v[2], v[3]));
      const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(v[2], v[3]));
      vst1q_f32(dst + j * ldo + r, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
      vst1q_f32(dst + (j + 1) * ldo + r, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
      vst1q_f32(dst + (j + 2) * ldo + r, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
      vst1q_f32(dst + (j + 3) * ldo + r, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
    }
    for (size_t j = cols4; j < ncols; ++j)
      for (size_t k = r; k < r + 4; ++k) dst[j * ldo + k] = (float)c[k * ldc + j];
  }
  bmx_store_image_portable(c + rows4 * ldc, ldc, rows - rows4, ncols, dst + rows4, ldo);
}

static inline void bmx_store_nchw_neon(const int32_t* c, size_t ldc, size_t m0, size_t count,
                                       size_t ncols, size_t pixels, float* out, size_t ldn,
                                       size_t ldo) {
  BMX_STORE_BY_IMAGE(bmx_store_image_neon)
}

#endif /* BMX_NEON */

#endif /* BMX_BITOPS_NEON_H_ */
