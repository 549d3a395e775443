// The SIMD row kernel of ConvIntegerBinarize, written once over a vector type V and included by
// each ISA's own translation unit. V gives: Reg, kLanes (int32 lanes), kGroup (input elements per
// lane and step), Elem (row buffer element), WElem (weight element), zero(), load_w(),
// broadcast() (kGroup elements of one pixel to every lane), dot(acc, x, w) (acc += the lane's
// kGroup products, exact), load_t(), ge_mask(acc, t) (bit per lane: acc >= t), fine_sum() (as
// conv_integer_binarize.h's portable one, vectorised).
// A register block is F vectors of filters (F * kLanes filters, whole output words) x P pixels.
#pragma once

#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/conv_integer_binarize/conv_integer_binarize.h"

namespace xnorpipe::conv_integer_binarize {

// Writes the bits of filter block b at pixels [ow, ow + P) and appends the pixels with filters
// of the block within the margin at unsure_end (refine_row sets their bits).
template <typename V, int F, int P>
inline void int_block(const RowArgs& a, int b, int ow, UnsureFilters*& unsure_end) {
  using E = typename V::Elem;
  using WE = typename V::WElem;
  constexpr int kBlock = F * V::kLanes;
  static_assert(kBlock % 32 == 0 && kBlock <= 64, "a block is one or two output words");
  typename V::Reg acc[P][F];
  for (int p = 0; p < P; ++p)
    for (int f = 0; f < F; ++f) acc[p][f] = V::zero();
  const E* x0 = static_cast<const E*>(a.rows) + a.origin + int64_t(ow) * a.pixel_step;
  const WE* w = static_cast<const WE*>(a.weights) + size_t(b) * a.kgroups * kBlock * V::kGroup;
  for (int k = 0; k < a.kgroups; ++k, w += kBlock * V::kGroup) {
    const E* xk = x0 + a.group_off[k];
    typename V::Reg wv[F];
    for (int f = 0; f < F; ++f) wv[f] = V::load_w(w + f * V::kLanes * V::kGroup);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const typename V::Reg xb = V::broadcast(xk + int64_t(p) * a.pixel_step);
      for (int f = 0; f < F; ++f) acc[p][f] = V::dot(acc[p][f], xb, wv[f]);
    }
  }
  for (int p = 0; p < P; ++p) {
    const int64_t at = a.col_class[ow + p] * a.class_stride + b * kBlock;
    uint64_t bits = 0, unsure = 0;
    for (int f = 0; f < F; ++f) {
      const uint64_t one = V::ge_mask(acc[p][f], V::load_t(a.row_upper + at + f * V::kLanes));
      const uint64_t maybe = V::ge_mask(acc[p][f], V::load_t(a.row_lower + at + f * V::kLanes));
      bits |= one << (f * V::kLanes);
      unsure |= (maybe & ~one) << (f * V::kLanes);
    }
    // Within the margin (rare): noted without a branch, the fine sums come after the row.
    *unsure_end = {ow + p, b * kBlock, unsure};
    unsure_end += unsure != 0;
    for (int q = 0; q < kBlock / 32; ++q) {
      const int word = b * (kBlock / 32) + q;
      if (word < a.words) a.out[word * a.out_plane + ow + p] = uint32_t(bits >> (32 * q));
    }
  }
}

// The remainder of a row (r < P pixels) as one r-pixel block.
template <typename V, int F, int R>
inline void int_tail(const RowArgs& a, int b, int ow, int r, UnsureFilters*& unsure_end) {
  if constexpr (R > 0) {
    if (r == R) return int_block<V, F, R>(a, b, ow, unsure_end);
    int_tail<V, F, R - 1>(a, b, ow, r, unsure_end);
  }
}

// The fine sums of a row's filters within the margin, each setting its output bit. Kept out of
// the block loop (a few per 1000 outputs, at unforeseeable pixels: each cost mispredicted
// branches there) and not inlined (in the row kernel's body GCC starves this loop of registers).
template <typename V>
__attribute__((noinline)) void refine_row(const RowArgs& a, const UnsureFilters* u, const UnsureFilters* end) {
  using E = typename V::Elem;
  const E* x0 = static_cast<const E*>(a.rows) + a.origin;
  const int64_t fine_stride = int64_t(a.fine_chunks) * kFineChunk;
  for (; u < end; ++u) {
    const E* window = x0 + int64_t(u->pixel) * a.pixel_step;
    const int64_t at = a.col_class[u->pixel] * a.class_stride;
    for (uint64_t mask = u->mask; mask; mask &= mask - 1) {
      // a filter < M: pad filters' bounds (INT32_MAX) make them 0, never unsure
      const unsigned m = unsigned(u->first_filter + __builtin_ctzll(mask));
      // without a branch on the sum: the next sums start before this one is known
      const int64_t fine = V::fine_sum(window, a.fine_weight + m * fine_stride, a.fine_off, a.fine_chunks);
      a.out[(m / 32) * a.out_plane + u->pixel] |= uint32_t(fine >= a.row_fine[at + m]) << (m % 32);
    }
  }
}

template <typename V, int F, int P>
inline void int_row(const RowArgs& a) {
  // A short remainder r < P/2 joins the last full block, and the P + r pixels run as two
  // blocks of about half (32 = 6 * 4 + 4 + 4 rather than 6 * 5 + 2): a 2-pixel block keeps too
  // few multiply-adds in flight per weight load.
  int full = a.out_w / P, rest = a.out_w % P;
  if (rest > 0 && rest < P / 2 && full > 0) {
    --full;
    rest += P;
  }
  UnsureFilters* unsure_end = a.unsure;
  for (int b = 0; b < a.blocks; ++b) {
    int ow = 0;
    for (int i = 0; i < full; ++i, ow += P) int_block<V, F, P>(a, b, ow, unsure_end);
    if (rest >= P) {  // two blocks, each < P
      int_tail<V, F, P - 1>(a, b, ow, rest / 2, unsure_end);
      int_tail<V, F, P - 1>(a, b, ow + rest / 2, rest - rest / 2, unsure_end);
    } else if (rest > 0) {
      int_tail<V, F, P - 1>(a, b, ow, rest, unsure_end);
    }
  }
  refine_row<V>(a, a.unsure, unsure_end);
}

// kGroup consecutive elements (4 bytes) of one pixel as a 32-bit lane value.
template <typename E>
inline int32_t load_group(const E* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

#if defined(__AVX2__)
// In an unnamed namespace: each ISA's translation unit gets its own copy, compiled with its own
// flags (an inline function shared by the AVX2 and AVX-512 units could be linked as either).
namespace {
// The fine sum in ymm int64 lanes (AVX2 and AVX-VNNI kernels): 4 window elements widened to
// int64 times 4 weights sign-extended, by vpmuldq, which multiplies the lanes' low 32 bits as
// signed int32: x * w exactly (x holds 0..255, or any int16 value). A chunk is two of these.
inline __m256i widen4(const uint8_t* p) { return _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(load_group(p))); }
inline __m256i widen4(const int16_t* p) {
  return _mm256_cvtepi16_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline __m256i weights4(const int32_t* w) {
  return _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}

// What the two ymm kernels (AVX2 on int16 rows, AVX-VNNI on uint8 rows) share: everything but
// the weight load, the broadcast and the multiply-add.
template <typename E>
struct YmmCommon {
  using Reg = __m256i;
  using Elem = E;
  static constexpr int kLanes = 8;
  static Reg zero() { return _mm256_setzero_si256(); }
  static Reg load_t(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  // acc >= t  <=>  !(t > acc)
  static uint32_t ge_mask(Reg acc, Reg t) {
    return ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, acc)))) & 0xffu;
  }
  static int64_t fine_sum(const E* window, const int32_t* weight, const int32_t* chunk_off, int chunks) {
    static_assert(kFineChunk == 8, "a chunk is two ymm of int64 lanes");
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (int k = 0; k < chunks; ++k, weight += kFineChunk) {
      const E* x = window + chunk_off[k];
      s0 = _mm256_add_epi64(s0, _mm256_mul_epi32(widen4(x), weights4(weight)));
      s1 = _mm256_add_epi64(s1, _mm256_mul_epi32(widen4(x + 4), weights4(weight + 4)));
    }
    const __m256i s = _mm256_add_epi64(s0, s1);
    const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1);
  }
};
}  // namespace
#endif

}  // namespace xnorpipe::conv_integer_binarize
