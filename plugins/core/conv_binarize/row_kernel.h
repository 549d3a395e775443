// The SIMD row kernel of ConvBinarize, written once over a vector type V (AVX-512: 16 floats,
// AVX2: 8) and included by the ISA's own translation unit: 32 filters (one output word) x P
// pixels of one output row in registers, one FMA chain per accumulator over the taps.
#pragma once

#include "core/conv_binarize/conv_binarize.h"

namespace xnorpipe::conv_binarize {

template <typename V, int P>
inline void row_block(const RowArgs& a, int q, int ow) {
  constexpr int kVecs = 32 / V::kLanes;
  const BConv2DParams& p = *a.p;
  typename V::Reg acc[P][kVecs];
  for (int i = 0; i < P; ++i)
    for (int k = 0; k < kVecs; ++k) acc[i][k] = V::zero();
  const float* w = a.weights + size_t(q) * a.taps * 32;
  const int cg = p.channels_per_group();
  for (int c = 0; c < cg; ++c)
    for (int i = 0; i < p.kernel_h; ++i) {
      const float* xr = a.rows + (size_t(c) * a.rows_h + (a.oh * p.stride_h + i * p.dilation_h - a.row0)) * a.padded_w +
                        size_t(ow) * p.stride_w;
      for (int j = 0; j < p.kernel_w; ++j, w += 32) {
        const float* xp = xr + j * p.dilation_w;
        typename V::Reg wv[kVecs];
        for (int k = 0; k < kVecs; ++k) wv[k] = V::load(w + k * V::kLanes);
#pragma GCC unroll 16
        for (int i2 = 0; i2 < P; ++i2) {
          const typename V::Reg xb = V::broadcast(xp + i2 * p.stride_w);
          for (int k = 0; k < kVecs; ++k) acc[i2][k] = V::fmadd(xb, wv[k], acc[i2][k]);
        }
      }
    }
  typename V::Reg bias[kVecs], thr[kVecs];
  for (int k = 0; k < kVecs; ++k) {
    bias[k] = V::load(a.bias + q * 32 + k * V::kLanes);
    thr[k] = V::load(a.threshold + q * 32 + k * V::kLanes);
  }
  uint32_t* out = a.out + q * a.out_plane + int64_t(a.oh) * a.out_w + ow;
  for (int i2 = 0; i2 < P; ++i2) {
    uint32_t word = 0;
    for (int k = 0; k < kVecs; ++k) {
      typename V::Reg y = V::add(acc[i2][k], bias[k]);
      if (p.relu) y = V::relu(y);
      word |= V::ge_mask(y, thr[k]) << (k * V::kLanes);  // NaN -> 0
    }
    out[i2] = word;
  }
}

// Remainder of a row (r < P pixels) with an r-pixel block: single pixels would leave only
// 32/kLanes FMA chains in flight, a fraction of the FMA units' throughput.
template <typename V, int R>
inline void row_tail(const RowArgs& a, int q, int ow, int r) {
  if constexpr (R > 0) {
    if (r == R) return row_block<V, R>(a, q, ow);
    row_tail<V, R - 1>(a, q, ow, r);
  }
}

template <typename V, int P>
inline void row_kernel(const RowArgs& a) {
  for (int q = 0; q < a.words; ++q) {
    int ow = a.ow0;
    const int end = a.ow0 + a.npx;
    for (; ow + P <= end; ow += P) row_block<V, P>(a, q, ow);
    if (ow < end) row_tail<V, P - 1>(a, q, ow, end - ow);
  }
}

}  // namespace xnorpipe::conv_binarize
