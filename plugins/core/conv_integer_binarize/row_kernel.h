// The SIMD row kernel of ConvIntegerBinarize, written once over a vector type V and included by
// each ISA's own translation unit. V gives: Reg, kLanes (int32 lanes), kGroup (input elements per
// lane and step), Elem (row buffer element), WElem (weight element), zero(), load_w(),
// broadcast() (kGroup elements of one pixel to every lane), dot(acc, x, w) (acc += the lane's
// kGroup products, exact), load_t(), ge_mask(acc, t) (bit per lane: acc >= t).
// A register block is F vectors of filters (F * kLanes filters, whole output words) x P pixels.
#pragma once

#include <cstring>

#include "core/conv_integer_binarize/conv_integer_binarize.h"

namespace xnorpipe::conv_integer_binarize {

template <typename V, int F, int P>
inline void int_block(const RowArgs& a, int b, int ow) {
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
    // Within the margin (rare): the fine sum decides.
    for (; unsure; unsure &= unsure - 1) {
      const int lane = __builtin_ctzll(unsure), m = b * kBlock + lane;
      const int32_t* weight = a.fine_weight + int64_t(m) * a.taps;
      if (fine_sum(x0 + int64_t(p) * a.pixel_step, weight, a.tap_off, a.taps) >= a.row_fine[at + lane])
        bits |= uint64_t(1) << lane;
    }
    for (int q = 0; q < kBlock / 32; ++q) {
      const int word = b * (kBlock / 32) + q;
      if (word < a.words) a.out[word * a.out_plane + ow + p] = uint32_t(bits >> (32 * q));
    }
  }
}

// The remainder of a row (r < P pixels) as one r-pixel block.
template <typename V, int F, int R>
inline void int_tail(const RowArgs& a, int b, int ow, int r) {
  if constexpr (R > 0) {
    if (r == R) return int_block<V, F, R>(a, b, ow);
    int_tail<V, F, R - 1>(a, b, ow, r);
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
  for (int b = 0; b < a.blocks; ++b) {
    int ow = 0;
    for (int i = 0; i < full; ++i, ow += P) int_block<V, F, P>(a, b, ow);
    if (rest >= P) {  // two blocks, each < P
      int_tail<V, F, P - 1>(a, b, ow, rest / 2);
      int_tail<V, F, P - 1>(a, b, ow + rest / 2, rest - rest / 2);
    } else if (rest > 0) {
      int_tail<V, F, P - 1>(a, b, ow, rest);
    }
  }
}

// kGroup consecutive elements (4 bytes) of one pixel as a 32-bit lane value.
template <typename E>
inline int32_t load_group(const E* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace xnorpipe::conv_integer_binarize
