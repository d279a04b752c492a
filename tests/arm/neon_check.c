/*
 * Checks bitops.h's NEON kernels bit for bit against its portable ones on the
 * same random inputs, and both against a direct reference of the documented
 * math (sign(x) = +1 for x >= 0, +/-1 dot products, padding with -1 or 0).
 * Built for aarch64 and run under qemu-aarch64 by tests/arm/test_neon.py:
 *
 *     neon_check SEED CASES
 *
 * prints one line per kernel family and exits 0 when every output matched, 1
 * at the first mismatch (naming the case), 2 on bad arguments or when NEON is
 * not the kernel this CPU would choose.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "bitops.h"

static uint64_t rng_state;

static uint64_t next_u64(void) {
  /* xorshift64*: enough for test inputs, and the same on every host */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t below(size_t n) { return (size_t)(next_u64() % n); }

static size_t pick(const size_t* choices, size_t n) { return choices[below(n)]; }

/* Floats in [-2, 2) with the values the sign convention is about planted often. */
static float random_float(void) {
  static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f, -1e-45f};
  if (below(8) == 0) return special[below(sizeof(special) / sizeof(special[0]))];
  return (float)(next_u64() >> 40) / (float)(1 << 22) - 2.0f;
}

static void fill_floats(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = random_float();
}

static void* checked_malloc(size_t bytes) {
  void* p = malloc(bytes ? bytes : 1);
  if (p == NULL) {
    fprintf(stderr, "neon_check: out of memory\n");
    exit(2);
  }
  return p;
}

static int failures;

static void expect_same(const void* got, const void* want, size_t bytes, const char* what,
                        const char* against, size_t case_id) {
  if (memcmp(got, want, bytes) == 0) return;
  fprintf(stderr, "neon_check: %s differs from %s in case %zu\n", what, against, case_id);
  failures = 1;
}

/* ------------------------------------------------------------------ packing */

static void check_pack_rows(size_t case_id) {
  static const size_t lengths[] = {1, 3, 31, 63, 64, 65, 127, 128, 129, 200, 333};
  const size_t n = pick(lengths, sizeof(lengths) / sizeof(lengths[0])), rows = 1 + below(5);
  const size_t words = bmx_words_for_bits(n);
  float* x = checked_malloc(rows * n * sizeof(float));
  uint64_t* neon = checked_malloc(rows * words * sizeof(uint64_t));
  uint64_t* portable = checked_malloc(rows * words * sizeof(uint64_t));
  uint64_t* ref = calloc(rows * words, sizeof(uint64_t));
  fill_floats(x, rows * n);
  for (size_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < n; ++j)
      if (x[r * n + j] >= 0.0f) ref[r * words + j / 64] |= (uint64_t)1 << (j % 64);
  bmx_pack_rows(x, rows, n, neon, BMX_KERNEL_NEON, 1 + (int)below(2));
  bmx_pack_rows(x, rows, n, portable, BMX_KERNEL_PORTABLE, 1);
  expect_same(neon, portable, rows * words * sizeof(uint64_t), "pack_rows neon", "portable",
              case_id);
  expect_same(portable, ref, rows * words * sizeof(uint64_t), "pack_rows portable", "reference",
              case_id);
  free(x), free(neon), free(portable), free(ref);
}

static void check_pack_nchw(size_t case_id) {
  static const size_t channels_per_group[] = {1, 5, 31, 32, 33, 63, 64, 65, 100, 130};
  const size_t groups = 1 + below(3), cg = pick(channels_per_group, 10), channels = groups * cg;
  const size_t batch = 1 + below(2), hw = 1 + below(90), gw = bmx_words_for_bits(cg);
  const size_t total = batch * hw * groups * gw;
  const int affine = below(2) == 0;
  float* x = checked_malloc(batch * channels * hw * sizeof(float));
  int32_t* m = checked_malloc(channels * sizeof(int32_t));
  float* u = checked_malloc(channels * sizeof(float));
  uint64_t* neon = checked_malloc(total * sizeof(uint64_t));
  uint64_t* portable = checked_malloc(total * sizeof(uint64_t));
  uint64_t* ref = calloc(total, sizeof(uint64_t));
  fill_floats(x, batch * channels * hw);
  for (size_t c = 0; c < channels; ++c) {
    m[c] = (int32_t)below(3) - 1;
    u[c] = random_float();
  }
  for (size_t b = 0; b < batch; ++b)
    for (size_t c = 0; c < channels; ++c)
      for (size_t p = 0; p < hw; ++p) {
        const float v = x[(b * channels + c) * hw + p];
        const int bit = !affine ? v >= 0.0f : m[c] == 0 ? 0.0f >= u[c] : m[c] * v >= u[c];
        const size_t g = c / cg, k = c % cg;
        if (bit) ref[(b * hw + p) * groups * gw + g * gw + k / 64] |= (uint64_t)1 << (k % 64);
      }
  const int32_t* mp = affine ? m : NULL;
  const float* up = affine ? u : NULL;
  int rc = bmx_pack_nchw(x, batch, channels, hw, groups, mp, up, neon, BMX_KERNEL_NEON,
                         1 + (int)below(2));
  rc |= bmx_pack_nchw(x, batch, channels, hw, groups, mp, up, portable, BMX_KERNEL_PORTABLE, 1);
  if (rc != 0) {
    fprintf(stderr, "neon_check: bmx_pack_nchw failed in case %zu\n", case_id);
    failures = 1;
  }
  expect_same(neon, portable, total * sizeof(uint64_t), "pack_nchw neon", "portable", case_id);
  expect_same(portable, ref, total * sizeof(uint64_t), "pack_nchw portable", "reference", case_id);
  free(x), free(m), free(u), free(neon), free(portable), free(ref);
}

/* -------------------------------------------------------------- convolution */

/* +/-1 value of bit k of a packed row, or the pad value outside the image */
static int bit_value(const uint64_t* row, size_t k) { return (row[k / 64] >> (k % 64)) & 1 ? 1 : -1; }

/* y[m * O + o], the direct sum over taps and channels of the documented op. */
static void reference_conv(const bmx_conv_shape* sh, const uint64_t* x, const uint64_t* w,
                           size_t out_h, size_t out_w, int32_t* y) {
  const size_t gw = bmx_words_for_bits(sh->group_bits), taps = sh->kernel_h * sh->kernel_w;
  const size_t out_channels = sh->groups * sh->out_per_group;
  for (size_t n = 0; n < sh->batch; ++n)
    for (size_t oh = 0; oh < out_h; ++oh)
      for (size_t ow = 0; ow < out_w; ++ow)
        for (size_t o = 0; o < out_channels; ++o) {
          const size_t g = o / sh->out_per_group;
          int64_t sum = 0;
          for (size_t kh = 0; kh < sh->kernel_h; ++kh)
            for (size_t kw = 0; kw < sh->kernel_w; ++kw) {
              const long ih = (long)(oh * sh->stride_h + kh * sh->dilation_h) - (long)sh->pad_h;
              const long iw = (long)(ow * sh->stride_w + kw * sh->dilation_w) - (long)sh->pad_w;
              const int inside = ih >= 0 && iw >= 0 && ih < (long)sh->in_h && iw < (long)sh->in_w;
              const uint64_t* wr = w + (o * taps + kh * sh->kernel_w + kw) * gw;
              const uint64_t* xr =
                  inside ? x + ((n * sh->in_h + ih) * sh->in_w + iw) * sh->pixel_words + g * gw
                         : NULL;
              for (size_t k = 0; k < sh->group_bits; ++k) {
                const int xv = inside ? bit_value(xr, k) : sh->pad_zero ? 0 : -1;
                sum += xv * bit_value(wr, k);
              }
            }
          y[((n * out_h + oh) * out_w + ow) * out_channels + o] = (int32_t)sum;
        }
}

/* The bits of word k of a packed row of `bits` values that hold values (tail bits are 0). */
static uint64_t live_bits(size_t k, size_t bits) {
  return k + 1 < bmx_words_for_bits(bits) || bits % 64 == 0 ? ~(uint64_t)0
                                                             : ((uint64_t)1 << (bits % 64)) - 1;
}

static void random_words(uint64_t* words, size_t rows, size_t row_words, size_t bits) {
  for (size_t r = 0; r < rows; ++r)
    for (size_t k = 0; k < row_words; ++k) words[r * row_words + k] = next_u64() & live_bits(k, bits);
}

typedef struct conv_case {
  bmx_conv_shape sh;
  size_t out_h, out_w, rows, out_channels;
  uint64_t *x, *w, *panels;
  int32_t* ref;
} conv_case;

/* Runs one output form on a kernel: int32 NHWC (form 0), float NCHW slice (1), fused bits (2). */
static void run_form(const conv_case* cc, int form, int kernel, int threads, const int32_t* sgn,
                     const int32_t* thr, void* result, size_t channel_offset, size_t channel_total) {
  bmx_conv_output out;
  memset(&out, 0, sizeof(out));
  const size_t pixels = cc->out_h * cc->out_w;
  if (form == 0) {
    out.y = result;
    out.ldy = cc->out_channels;
  } else if (form == 1) {
    out.nchw = (float*)result + channel_offset * pixels;
    out.batch_stride = channel_total * pixels;
    out.channel_stride = pixels;
  } else {
    out.sgn = sgn;
    out.thr = thr;
    out.bits = result;
    out.ldb = bmx_words_for_bits(cc->out_channels);
  }
  /* half the time the tap sums come from the caller, as bmx.xnor passes them */
  int32_t* sums = NULL;
  if (below(2)) {
    sums = checked_malloc(cc->sh.kernel_h * cc->sh.kernel_w * cc->out_channels * sizeof(int32_t));
    bmx_conv_tap_sums(cc->sh.groups, cc->sh.group_bits, cc->sh.out_per_group,
                      cc->sh.kernel_h * cc->sh.kernel_w, cc->panels, sums);
  }
  if (bmx_xnor_conv(&cc->sh, cc->x, cc->panels, sums, &out, kernel, threads) != 0) {
    fprintf(stderr, "neon_check: bmx_xnor_conv failed\n");
    failures = 1;
  }
  free(sums);
}

static void random_shape(bmx_conv_shape* sh) {
  static const size_t bits_choices[] = {1, 3, 17, 63, 64, 65, 100, 130, 200};
  static const size_t out_choices[] = {1, 3, 7, 8, 9, 31, 32, 33, 47, 70};
  sh->batch = 1 + below(2);
  sh->in_h = 1 + below(9);
  sh->in_w = 1 + below(9);
  sh->groups = 1 + below(3);
  sh->group_bits = pick(bits_choices, 9);
  sh->out_per_group = pick(out_choices, 10);
  sh->kernel_h = 1 + below(3);
  sh->kernel_w = 1 + below(3);
  sh->stride_h = 1 + below(2);
  sh->stride_w = 1 + below(3);
  sh->pad_h = below(3);
  sh->pad_w = below(2);
  sh->dilation_h = 1 + below(2);
  sh->dilation_w = 1 + below(2);
  sh->pad_zero = (int)below(2);
}

/* A random shape, or `given` (whose pixel_words is filled in here). */
static void check_conv(size_t case_id, const bmx_conv_shape* given) {
  conv_case cc;
  bmx_conv_shape* sh = &cc.sh;
  memset(sh, 0, sizeof(*sh));
  do {
    if (given != NULL)
      *sh = *given;
    else
      random_shape(sh);
    cc.out_h = bmx_conv_out_extent(sh->in_h, sh->pad_h, sh->kernel_h, sh->stride_h, sh->dilation_h);
    cc.out_w = bmx_conv_out_extent(sh->in_w, sh->pad_w, sh->kernel_w, sh->stride_w, sh->dilation_w);
  } while (cc.out_h == 0 || cc.out_w == 0);
  const size_t gw = bmx_words_for_bits(sh->group_bits), taps = sh->kernel_h * sh->kernel_w;
  sh->pixel_words = sh->groups * gw;
  cc.out_channels = sh->groups * sh->out_per_group;
  cc.rows = sh->batch * cc.out_h * cc.out_w;
  const size_t pixels_in = sh->batch * sh->in_h * sh->in_w, ow_words = bmx_words_for_bits(cc.out_channels);

  cc.x = checked_malloc(pixels_in * sh->pixel_words * sizeof(uint64_t));
  for (size_t p = 0; p < pixels_in; ++p)
    for (size_t g = 0; g < sh->groups; ++g)
      random_words(cc.x + p * sh->pixel_words + g * gw, 1, gw, sh->group_bits);
  cc.w = checked_malloc(cc.out_channels * taps * gw * sizeof(uint64_t));
  random_words(cc.w, cc.out_channels * taps, gw, sh->group_bits);
  /* the extreme -k_bits at output (0, 0, 0), channel 0: its taps inside the image see ~x */
  for (size_t kh = 0; kh < sh->kernel_h; ++kh)
    for (size_t kw = 0; kw < sh->kernel_w; ++kw) {
      const size_t ih = kh * sh->dilation_h - sh->pad_h, iw = kw * sh->dilation_w - sh->pad_w;
      if (ih >= sh->in_h || iw >= sh->in_w) continue; /* wrapped around: padding */
      for (size_t k = 0; k < gw; ++k)
        cc.w[(kh * sh->kernel_w + kw) * gw + k] =
            ~cc.x[(ih * sh->in_w + iw) * sh->pixel_words + k] & live_bits(k, sh->group_bits);
    }
  cc.panels = checked_malloc(bmx_xnor_panel_words(sh->groups, sh->out_per_group, taps * gw) *
                             sizeof(uint64_t));
  bmx_xnor_pack_panels(cc.w, taps * gw, sh->groups, sh->out_per_group, taps * gw, cc.panels);
  cc.ref = checked_malloc(cc.rows * cc.out_channels * sizeof(int32_t));
  reference_conv(sh, cc.x, cc.w, cc.out_h, cc.out_w, cc.ref);

  /* thresholds around the outputs' range, constant channels (sgn 0) included */
  const int32_t k_bits = (int32_t)(taps * sh->group_bits);
  int32_t* sgn = checked_malloc(cc.out_channels * sizeof(int32_t));
  int32_t* thr = checked_malloc(cc.out_channels * sizeof(int32_t));
  for (size_t o = 0; o < cc.out_channels; ++o) {
    sgn[o] = (int32_t)below(3) - 1;
    thr[o] = below(10) == 0 ? (below(2) ? INT32_MAX : INT32_MIN)
                            : (int32_t)below(2 * (size_t)k_bits + 3) - k_bits - 1;
  }

  /* int32 NHWC */
  const size_t ybytes = cc.rows * cc.out_channels * sizeof(int32_t);
  int32_t* y_neon = checked_malloc(ybytes);
  int32_t* y_portable = checked_malloc(ybytes);
  run_form(&cc, 0, BMX_KERNEL_NEON, 1 + (int)below(2), NULL, NULL, y_neon, 0, 0);
  run_form(&cc, 0, BMX_KERNEL_PORTABLE, 1, NULL, NULL, y_portable, 0, 0);
  expect_same(y_neon, y_portable, ybytes, "conv int32 neon", "portable", case_id);
  expect_same(y_portable, cc.ref, ybytes, "conv int32 portable", "reference", case_id);

  /* float NCHW into a channel slice of a wider tensor; the rest must stay untouched */
  const size_t offset = below(3), total = offset + cc.out_channels + below(3);
  const size_t fcount = sh->batch * total * cc.out_h * cc.out_w;
  float* f_neon = checked_malloc(fcount * sizeof(float));
  float* f_portable = checked_malloc(fcount * sizeof(float));
  float* f_ref = checked_malloc(fcount * sizeof(float));
  for (size_t i = 0; i < fcount; ++i) f_neon[i] = f_portable[i] = f_ref[i] = -12345.5f;
  for (size_t m = 0; m < cc.rows; ++m)
    for (size_t o = 0; o < cc.out_channels; ++o) {
      const size_t n = m / (cc.out_h * cc.out_w), p = m % (cc.out_h * cc.out_w);
      f_ref[(n * total + offset + o) * cc.out_h * cc.out_w + p] = (float)cc.ref[m * cc.out_channels + o];
    }
  run_form(&cc, 1, BMX_KERNEL_NEON, 1 + (int)below(2), NULL, NULL, f_neon, offset, total);
  run_form(&cc, 1, BMX_KERNEL_PORTABLE, 1, NULL, NULL, f_portable, offset, total);
  expect_same(f_neon, f_portable, fcount * sizeof(float), "conv float neon", "portable", case_id);
  expect_same(f_portable, f_ref, fcount * sizeof(float), "conv float portable", "reference",
              case_id);

  /* fused BatchNorm + sign: packed bits */
  const size_t bbytes = cc.rows * ow_words * sizeof(uint64_t);
  uint64_t* b_neon = checked_malloc(bbytes);
  uint64_t* b_portable = checked_malloc(bbytes);
  uint64_t* b_ref = calloc(cc.rows * ow_words, sizeof(uint64_t));
  for (size_t m = 0; m < cc.rows; ++m)
    for (size_t o = 0; o < cc.out_channels; ++o)
      if ((int64_t)sgn[o] * cc.ref[m * cc.out_channels + o] >= thr[o])
        b_ref[m * ow_words + o / 64] |= (uint64_t)1 << (o % 64);
  run_form(&cc, 2, BMX_KERNEL_NEON, 1 + (int)below(2), sgn, thr, b_neon, 0, 0);
  run_form(&cc, 2, BMX_KERNEL_PORTABLE, 1, sgn, thr, b_portable, 0, 0);
  expect_same(b_neon, b_portable, bbytes, "conv bits neon", "portable", case_id);
  expect_same(b_portable, b_ref, bbytes, "conv bits portable", "reference", case_id);

  free(cc.x), free(cc.w), free(cc.panels), free(cc.ref), free(sgn), free(thr);
  free(y_neon), free(y_portable), free(f_neon), free(f_portable), free(f_ref);
  free(b_neon), free(b_portable), free(b_ref);
}

/* ----------------------------------------------------------------- GEMM */

/* A long K (over BMX_NEON_MAX_WORDS words) makes the NEON kernel split a row into calls. */
static void check_gemm(size_t case_id, size_t k_bits) {
  const size_t m = 1 + below(13), n = 1 + below(40), kw = bmx_words_for_bits(k_bits);
  uint64_t* a = checked_malloc(m * kw * sizeof(uint64_t));
  uint64_t* b = checked_malloc(n * kw * sizeof(uint64_t));
  uint64_t* panels = checked_malloc(bmx_xnor_panel_words(1, n, kw) * sizeof(uint64_t));
  int32_t* c_neon = checked_malloc(m * n * sizeof(int32_t));
  int32_t* c_portable = checked_malloc(m * n * sizeof(int32_t));
  int32_t* c_ref = checked_malloc(m * n * sizeof(int32_t));
  random_words(a, m, kw, k_bits);
  random_words(b, n, kw, k_bits);
  /* the extremes -k and +k: rows of b that are a row of a, and its complement (all bits differ) */
  for (size_t k = 0; k < kw; ++k) {
    b[k] = ~a[k] & live_bits(k, k_bits);
    if (n > 1) b[kw + k] = a[(m - 1) * kw + k];
  }
  bmx_xnor_pack_panels(b, kw, 1, n, kw, panels);
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < n; ++j) {
      int64_t different = 0;
      for (size_t k = 0; k < kw; ++k) different += __builtin_popcountll(a[i * kw + k] ^ b[j * kw + k]);
      c_ref[i * n + j] = (int32_t)((int64_t)k_bits - 2 * different);
    }
  int rc = bmx_xnor_gemm(a, kw, panels, m, n, kw, (int32_t)k_bits, c_neon, n, BMX_KERNEL_NEON,
                         1 + (int)below(2));
  rc |= bmx_xnor_gemm(a, kw, panels, m, n, kw, (int32_t)k_bits, c_portable, n,
                      BMX_KERNEL_PORTABLE, 1);
  if (rc != 0) {
    fprintf(stderr, "neon_check: bmx_xnor_gemm failed in case %zu\n", case_id);
    failures = 1;
  }
  expect_same(c_neon, c_portable, m * n * sizeof(int32_t), "gemm neon", "portable", case_id);
  expect_same(c_portable, c_ref, m * n * sizeof(int32_t), "gemm portable", "reference", case_id);
  free(a), free(b), free(panels), free(c_neon), free(c_portable), free(c_ref);
}

int main(int argc, char** argv) {
  char* end = NULL;
  const unsigned long long seed = argc == 3 ? strtoull(argv[1], &end, 10) : 0;
  if (argc != 3 || *end != '\0' || seed == 0) {
    fprintf(stderr, "usage: neon_check SEED CASES (SEED a positive integer)\n");
    return 2;
  }
  const long cases = strtol(argv[2], &end, 10);
  if (*end != '\0' || cases < 1) {
    fprintf(stderr, "neon_check: CASES must be a positive integer, got %s\n", argv[2]);
    return 2;
  }
  if (!bmx_kernel_available(BMX_KERNEL_NEON) || bmx_kernel_best() != BMX_KERNEL_NEON) {
    fprintf(stderr, "neon_check: NEON is not this CPU's best kernel (best: %d)\n", bmx_kernel_best());
    return 2;
  }
  rng_state = seed;
  for (long i = 0; i < cases && !failures; ++i) check_pack_rows((size_t)i);
  if (!failures) printf("pack_rows: %ld cases identical\n", cases);
  for (long i = 0; i < cases && !failures; ++i) check_pack_nchw((size_t)i);
  if (!failures) printf("pack_nchw: %ld cases identical\n", cases);
  for (long i = 0; i < cases && !failures; ++i) check_conv((size_t)i, NULL);
  /* over BMX_NEON_MAX_WORDS words per row: whole taps per NEON call, and taps split across calls */
  bmx_conv_shape long_rows = {1, 2, 2, 0, 1, 64 * 2100 - 5, 9, 2, 2, 1, 1, 1, 0, 1, 1, 1};
  if (!failures) check_conv((size_t)cases, &long_rows);
  long_rows.group_bits = 64 * BMX_NEON_MAX_WORDS + 70;
  long_rows.kernel_h = 1;
  long_rows.pad_zero = 0;
  if (!failures) check_conv((size_t)cases + 1, &long_rows);
  if (!failures) printf("conv (int32, float, bits): %ld + 2 long-row cases identical\n", cases);
  for (long i = 0; i < cases && !failures; ++i) check_gemm((size_t)i, 1 + below(700));
  for (long i = 0; i < 2 && !failures; ++i) check_gemm((size_t)i, 64 * BMX_NEON_MAX_WORDS + 1 + below(20000));
  if (!failures) printf("gemm: %ld + 2 long-K cases identical\n", cases);
  return failures;
}
