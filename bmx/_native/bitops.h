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
 */
#ifndef BMX_BITOPS_H_
#define BMX_BITOPS_H_

#include <stddef.h>
#include <stdint.h>

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

/*
 * Packs a strided row: element j is src[j * stride]. Used to pack NCHW tensors
 * along C, where consecutive channels are H*W floats apart.
 */
static inline void bmx_pack_strided_f32(const float* src, size_t n, size_t stride,
                                        uint64_t* dst) {
  size_t words = bmx_words_for_bits(n);
  for (size_t w = 0; w < words; ++w) {
    size_t lo = 64 * w;
    size_t hi = lo + 64 < n ? lo + 64 : n;
    uint64_t word = 0;
    for (size_t j = lo; j < hi; ++j) word |= bmx_sign_bit_f32(src[j * stride]) << (j - lo);
    dst[w] = word;
  }
}

#ifdef __cplusplus
}
#endif

#endif /* BMX_BITOPS_H_ */
