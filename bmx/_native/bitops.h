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
 *
 * This header holds the conventions and the run-time dispatch; the kernel
 * families are in the headers it includes at its end: bitops_gemm.h (the
 * micro-kernels), bitops_pack.h (packing, with bitops_neon.h) and
 * bitops_conv.h (the convolution and GEMM drivers). Include bitops.h only.
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

/* The kernel families, each over what the ones before it define. */
#include "bitops_gemm.h"
#include "bitops_pack.h"
#include "bitops_conv.h"

#ifdef __cplusplus
}
#endif

#endif /* BMX_BITOPS_H_ */
