/*
 * The binary convolution and GEMM drivers of bitops.h: packed weight panels, the
 * per-kernel plan, tap tables and padding corrections, bmx_xnor_conv and bmx_xnor_gemm.
 */
#ifndef BMX_BITOPS_CONV_H_
#define BMX_BITOPS_CONV_H_

#ifndef BMX_BITOPS_H_
#error "bitops_conv.h builds on what bitops.h defines before it: include bitops.h"
#endif

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

static inline bmx_conv_plan bmx_plan_of(bmx_microkernel kernel, bmx_threshold_fn threshold,
                                        bmx_store_fn store, int mr, int cols) {
  bmx_conv_plan plan = {kernel, threshold, store, mr, cols};
  return plan;
}

static inline bmx_conv_plan bmx_plan_for(int kernel) {
#ifdef BMX_X86
  if (kernel == BMX_KERNEL_AVX512) /* AVX-512 CPUs have AVX2; the store is a small pass either way */
    return bmx_plan_of(bmx_mk_avx512, bmx_threshold_pack_avx512, bmx_store_nchw_avx2, BMX_MR_AVX512,
                       BMX_COLS_AVX512);
  if (kernel == BMX_KERNEL_AVX2)
    return bmx_plan_of(bmx_mk_avx2, bmx_threshold_pack_avx2, bmx_store_nchw_avx2, BMX_MR_AVX2,
                       BMX_COLS_AVX2);
#endif
#ifdef BMX_NEON
  if (kernel == BMX_KERNEL_NEON)
    return bmx_plan_of(bmx_mk_neon, bmx_threshold_pack_neon, bmx_store_nchw_neon, BMX_MR_NEON,
                       BMX_COLS_NEON);
#endif
  (void)kernel;
  return bmx_plan_of(bmx_mk_portable, bmx_threshold_pack_portable, bmx_store_nchw_portable,
                     BMX_MR_PORTABLE, BMX_COLS_PORTABLE);
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

#endif /* BMX_BITOPS_CONV_H_ */
