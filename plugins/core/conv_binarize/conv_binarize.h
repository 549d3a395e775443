// ConvBinarize: a float convolution (BatchNorm folded into W and B), optional ReLU, then the
// next binary layer's binarization: bits[n][m/32][p] bit m%32 = (y[n,m,p] >= threshold[m]).
// It is the float first layer of a binary net writing the bit tensor directly, so its float
// output (the largest tensor of nin_xnornet) never reaches memory. The float sums are not
// bit-identical to ONNX Runtime's Conv (summation order); like any runtime's conv, they agree
// to float rounding.
#pragma once

#include <cstdint>
#include <vector>

#include "core/bconv2d/optimized.h"
#include "core/bconv2d/params.h"
#include "core/bconv2d/select_kernel.h"

namespace xnorpipe::conv_binarize {

using bconv2d::BConv2DParams;  // same shape/attribute set (channels, filters, group, kernel, ...)
using bconv2d::PopcountPath;

// Kernel families: AVX-512F and AVX2+FMA compute 32 filters (one output word) x a row of
// pixels per register block; portable is plain loops.
enum class ConvBinarizeIsa { kPortable, kAvx2Fma, kAvx512 };
ConvBinarizeIsa isa_for(PopcountPath path);

struct PackedConvWeights {
  ConvBinarizeIsa isa = ConvBinarizeIsa::kPortable;
  int taps = 0;                // (C/group) * kH * kW
  std::vector<float> words;    // SIMD: [word block][tap][32], filters past M are 0
  std::vector<float> plain;    // portable: W as given, [M][C/group][kH][kW]
};

class ConvBinarize {
 public:
  // Validates params (std::invalid_argument).
  ConvBinarize(const BConv2DParams& params, PopcountPath path);
  const BConv2DParams& params() const { return params_; }
  // w: float [M, C/group, kH, kW].
  PackedConvWeights pack_weights(const float* w) const;
  // x float [N, C, H, W] -> bits [N, ceil(M/32), Ho, Wo]; caller checks Ho, Wo >= 1.
  void run(const float* x, int n_batch, int in_h, int in_w, const PackedConvWeights& w, const float* bias,
           const float* threshold, uint32_t* bits, const bconv2d::ParallelFor& parallel_for) const;

 private:
  BConv2DParams params_;
  ConvBinarizeIsa isa_;
};

// One register-blocked row segment (SIMD kernels): output row `oh`, pixels [ow0, ow0 + npx),
// all word blocks. `rows` is the zero-padded input of this item: [C][rows_h][padded_w],
// row 0 = padded input row `row0`.
struct RowArgs {
  const BConv2DParams* p;
  const float* rows;
  int rows_h, padded_w, row0;
  const float* weights;   // PackedConvWeights::words
  int taps, words;
  const float* bias;      // [words * 32], padded
  const float* threshold; // [words * 32], padded with +inf (pad filters: bit 0)
  uint32_t* out;          // bits of this image: [words][out_plane]
  int64_t out_plane;
  int out_w, oh, ow0, npx;
};
void conv_binarize_row_avx512(const RowArgs& a);
void conv_binarize_row_avx2(const RowArgs& a);

}  // namespace xnorpipe::conv_binarize
