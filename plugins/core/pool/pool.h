// Pooling on the packed-bits form's tensors.
// - bit_max_pool: max(window) >= t iff some tap >= t, and MaxPool pads with -inf, so max
//   pooling the bit tensor is a word-wise OR over each window's in-image taps.
// - avg_pool_binarize: AveragePool (count_include_pad=1: zero padding counts in the divisor)
//   of a float tensor, then the next binary layer's binarization; the pooled floats never
//   reach memory.
#pragma once

#include <cstdint>

#include "core/bconv2d/optimized.h"
#include "core/bconv2d/select_kernel.h"

namespace xnorpipe::pool {

struct PoolParams {
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;

  // ONNX pooling output size (ceil_mode 0); <= 0 means the input is too small.
  int64_t out_h(int64_t in_h) const { return out_size(in_h + pad_top + pad_bottom - kernel_h, stride_h); }
  int64_t out_w(int64_t in_w) const { return out_size(in_w + pad_left + pad_right - kernel_w, stride_w); }
  static int64_t out_size(int64_t span, int stride) { return span < 0 ? 0 : span / stride + 1; }
  // Throws std::invalid_argument "<op>: ..." naming the first bad attribute; pads must be
  // smaller than the kernel so that every window holds an in-image tap (as ONNX requires).
  void validate(const char* op) const;
};

// bits [N][words][H][W] -> [N][words][Ho][Wo]; caller checks Ho, Wo >= 1.
void bit_max_pool(const PoolParams& p, const uint32_t* bits, int n_batch, int words, int in_h, int in_w,
                  uint32_t* out, const bconv2d::ParallelFor& parallel_for);

// x float [N][C][H][W] -> bits [N][ceil(C/32)][Ho][Wo], bit = (sum(window) / (kH*kW) >= threshold[c]).
void avg_pool_binarize(const PoolParams& p, const float* x, int n_batch, int channels, int in_h, int in_w,
                       const float* threshold, uint32_t* bits, bconv2d::PopcountPath path,
                       const bconv2d::ParallelFor& parallel_for);

// AVX-512 plane kernel (pool_avx512.cc) for rows of <= 32 floats, <= 16 output columns and
// kernel width <= 8: the window taps as permute indices into a row held in two registers.
struct AvgRowTaps {
  alignas(64) int32_t index[8][16];  // tap j, output column ow: input column (0 where padding)
  uint16_t live[8];                  // output columns whose tap j is inside the row
  static bool fits(const PoolParams& p, int in_w, int out_w) { return in_w <= 32 && out_w <= 16 && p.kernel_w <= 8; }
  AvgRowTaps(const PoolParams& p, int in_w, int out_w);
};
void avg_plane_bits_avx512(const float* plane, int in_h, int in_w, const PoolParams& p, int out_h, int out_w,
                           const AvgRowTaps& taps, float count, float thr, uint32_t bit, uint32_t* out);

}  // namespace xnorpipe::pool
