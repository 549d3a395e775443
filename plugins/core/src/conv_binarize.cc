// ConvBinarize driver: weight packing, zero-padded input rows per work item, the portable
// kernel; the SIMD row kernels are in conv_binarize_avx*.cc.
#include "core/conv_binarize/conv_binarize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace xnorpipe::conv_binarize {

ConvBinarizeIsa isa_for(PopcountPath path) {
#if defined(__x86_64__) || defined(__i386__)
  if (path == PopcountPath::kAvx512) return ConvBinarizeIsa::kAvx512;  // VPOPCNTDQ implies AVX-512F
  if (path == PopcountPath::kAvx2 && __builtin_cpu_supports("fma")) return ConvBinarizeIsa::kAvx2Fma;
#endif
  (void)path;
  return ConvBinarizeIsa::kPortable;
}

ConvBinarize::ConvBinarize(const BConv2DParams& params, PopcountPath path) : params_(params) {
  params_.validate("ConvBinarize");
  isa_ = params_.group == 1 ? isa_for(path) : ConvBinarizeIsa::kPortable;  // SIMD rows: group 1
}

PackedConvWeights ConvBinarize::pack_weights(const float* w) const {
  const BConv2DParams& p = params_;
  PackedConvWeights out;
  out.isa = isa_;
  out.taps = p.channels_per_group() * p.kernel_h * p.kernel_w;
  if (isa_ == ConvBinarizeIsa::kPortable) {
    out.plain.assign(w, w + size_t(p.filters) * out.taps);
    return out;
  }
  const int words = bconv2d::num_words(p.filters);
  out.words.assign(size_t(words) * out.taps * 32, 0.f);
  for (int m = 0; m < p.filters; ++m)
    for (int t = 0; t < out.taps; ++t)
      out.words[(size_t(m / 32) * out.taps + t) * 32 + m % 32] = w[size_t(m) * out.taps + t];
  return out;
}

void ConvBinarize::run(const float* x, int n_batch, int in_h, int in_w, const PackedConvWeights& w,
                       const float* bias, const float* threshold, uint32_t* bits,
                       const bconv2d::ParallelFor& parallel_for) const {
  const BConv2DParams& p = params_;
  const char* op = "ConvBinarize";
  const int64_t out_h64 = p.out_h(in_h), out_w64 = p.out_w(in_w);
  if (out_h64 < 1 || out_w64 < 1)
    bconv2d::size_error(op, "output size " + std::to_string(out_h64) + "x" + std::to_string(out_w64) +
                                " <= 0 (input too small for kernel, dilation and pads)");
  if (w.isa != isa_) bconv2d::size_error(op, "weights were packed for another kernel");
  if (n_batch == 0) return;
  const int words = bconv2d::num_words(p.filters);
  const int64_t in_plane = int64_t(in_h) * in_w, out_plane = bconv2d::sat_mul(out_h64, out_w64);
  bconv2d::check_elements(op, "the output", bconv2d::sat_mul(n_batch, words, out_plane));
  const int out_h = int(out_h64), out_w = int(out_w64);  // each <= in + pads < 2^31
  // Items: (image, block of output rows); 4-row blocks give two threads work at batch 1. An
  // item copies the zero-padded input rows it reads, all channels: [C][rows_h][padded_w].
  const int rows_per_item = std::max(1, std::min(4, out_h));
  const int64_t padded_w = int64_t(in_w) + p.pad_left + p.pad_right;
  const int64_t max_rows_h = int64_t(rows_per_item - 1) * p.stride_h + int64_t(p.kernel_h - 1) * p.dilation_h + 1;
  bconv2d::check_elements(op, "the padded input rows of one work item", bconv2d::sat_mul(p.channels, max_rows_h, padded_w));
  // Bias and threshold padded to whole words; pad filters compare 0 >= +inf: bit 0.
  std::vector<float> bias_padded(size_t(words) * 32, 0.f),
      thr_padded(size_t(words) * 32, std::numeric_limits<float>::infinity());
  std::copy(bias, bias + p.filters, bias_padded.begin());
  std::copy(threshold, threshold + p.filters, thr_padded.begin());

  const int blocks = (out_h + rows_per_item - 1) / rows_per_item;
  const double item_ns = double(rows_per_item) * out_w * p.filters * p.channels_per_group() * p.taps() *
                         bconv2d::cost::kFloatMacNs;
  bconv2d::split_for(parallel_for, size_t(n_batch) * blocks, item_ns, [&](size_t item) {
    const int n = int(item / blocks), oh0 = int(item % blocks) * rows_per_item;
    const int oh1 = std::min(out_h, oh0 + rows_per_item);
    // Rows [row0, row1) of the padded input: row1 <= in_h + pads (the output size says so).
    const int row0 = int(int64_t(oh0) * p.stride_h);
    const int rows_h = int(int64_t(oh1 - 1 - oh0) * p.stride_h + int64_t(p.kernel_h - 1) * p.dilation_h + 1);
    thread_local std::vector<float> rows;
    rows.assign(size_t(p.channels) * rows_h * padded_w, 0.f);
    for (int c = 0; c < p.channels; ++c)
      for (int r = 0; r < rows_h; ++r) {
        const int ih = row0 + r - p.pad_top;
        if (ih < 0 || ih >= in_h) continue;
        std::memcpy(rows.data() + (size_t(c) * rows_h + r) * padded_w + p.pad_left,
                    x + (int64_t(n) * p.channels + c) * in_plane + int64_t(ih) * in_w, size_t(in_w) * sizeof(float));
      }
    uint32_t* out = bits + int64_t(n) * words * out_plane;
    if (isa_ != ConvBinarizeIsa::kPortable) {
      RowArgs a{&p, rows.data(), rows_h, int(padded_w), row0, w.words.data(), w.taps, words, bias_padded.data(),
                thr_padded.data(), out, out_plane, out_w, 0, 0, out_w};
      for (int oh = oh0; oh < oh1; ++oh) {
        a.oh = oh;
        if (isa_ == ConvBinarizeIsa::kAvx512) conv_binarize_row_avx512(a);
        else conv_binarize_row_avx2(a);
      }
      return;
    }
    const int cg = p.channels_per_group(), mg = p.filters_per_group();
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = 0; ow < out_w; ++ow)
        for (int q = 0; q < words; ++q) {
          uint32_t word = 0;
          for (int m = q * 32; m < std::min(p.filters, q * 32 + 32); ++m) {
            const int g = m / mg;
            const float* wm = w.plain.data() + size_t(m) * w.taps;
            float sum = 0.f;
            for (int c = 0; c < cg; ++c)
              for (int i = 0; i < p.kernel_h; ++i) {
                const float* xr = rows.data() + (size_t(g * cg + c) * rows_h + (oh * p.stride_h + i * p.dilation_h - row0)) *
                                                     padded_w + size_t(ow) * p.stride_w;
                for (int j = 0; j < p.kernel_w; ++j) sum += xr[j * p.dilation_w] * wm[(c * p.kernel_h + i) * p.kernel_w + j];
              }
            float y = sum + bias[m];
            if (p.relu && y < 0.f) y = 0.f;
            if (y >= threshold[m]) word |= 1u << (m % 32);  // NaN -> 0
          }
          out[q * out_plane + int64_t(oh) * out_w + ow] = word;
        }
  });
}

}  // namespace xnorpipe::conv_binarize
