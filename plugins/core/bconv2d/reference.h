// Scalar reference of XnorConv2d, straight from the contract: binarize each tap, multiply by
// the weight bit's sign, skip taps outside the image (zero padding). Slow and obviously right;
// the optimized kernels are tested bit-exactly against it.
#pragma once

#include <cstdint>

#include "core/bconv2d/output_transform.h"
#include "core/bconv2d/params.h"

namespace xnorpipe::bconv2d {

// x: float [N, C, H, W]; w: int32 [M, kH, kW, nw]; threshold [C]; scale, bias [M];
// y: float [N, M, Ho, Wo].
inline void reference_bconv2d(const BConv2DParams& p, const float* x, int n_batch, int in_h, int in_w,
                              const int32_t* w, const float* threshold, const float* scale,
                              const float* bias, float* y) {
  const int cg = p.channels_per_group(), mg = p.filters_per_group(), nw = p.words_per_tap();
  const int64_t out_h = p.out_h(in_h), out_w = p.out_w(in_w);
  for (int n = 0; n < n_batch; ++n)
    for (int m = 0; m < p.filters; ++m) {
      const int g = m / mg;
      for (int64_t oh = 0; oh < out_h; ++oh)
        for (int64_t ow = 0; ow < out_w; ++ow) {
          int32_t sum = 0;
          for (int i = 0; i < p.kernel_h; ++i)
            for (int j = 0; j < p.kernel_w; ++j) {
              const int64_t ih = oh * p.stride_h - p.pad_top + int64_t(i) * p.dilation_h;
              const int64_t iw = ow * p.stride_w - p.pad_left + int64_t(j) * p.dilation_w;
              if (ih < 0 || ih >= in_h || iw < 0 || iw >= in_w) continue;  // zero padding
              for (int k = 0; k < cg; ++k) {
                const int c = g * cg + k;
                const float v = x[((int64_t(n) * p.channels + c) * in_h + ih) * in_w + iw];
                const int xs = (v >= threshold[c]) ? 1 : -1;  // NaN -> -1
                const uint32_t word =
                    static_cast<uint32_t>(w[((int64_t(m) * p.kernel_h + i) * p.kernel_w + j) * nw + k / kWordBits]);
                const int ws = ((word >> (k % kWordBits)) & 1u) ? 1 : -1;
                sum += xs * ws;
              }
            }
          y[((int64_t(n) * p.filters + m) * out_h + oh) * out_w + ow] =
              output_transform(sum, scale[m], bias[m], p.relu);
        }
    }
}

}  // namespace xnorpipe::bconv2d
