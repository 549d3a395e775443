// Shape and attributes of one binary convolution (xnorpipe::XnorConv2d v1, see
// shared/docs/XNORCONV2D.md). Plain data: no ONNX Runtime types here.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/bconv2d/limits.h"

namespace xnorpipe::bconv2d {

constexpr int kWordBits = 32;

inline int num_words(int channels) { return (channels + kWordBits - 1) / kWordBits; }

struct BConv2DParams {
  int channels = 0;  // C (all groups)
  int filters = 0;   // M (all groups)
  int group = 1;
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int dilation_h = 1, dilation_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  bool relu = false;
  // Output channels shuffled as ChannelShuffle(group) (XnorConv2dBits* attribute
  // shuffle_output): filter m, the (m % Mg)-th of group m / Mg, writes channel output_channel(m).
  bool shuffle_output = false;

  int channels_per_group() const { return channels / group; }
  int filters_per_group() const { return filters / group; }
  int output_channel(int m) const {
    return shuffle_output ? (m % filters_per_group()) * group + m / filters_per_group() : m;
  }
  // Output channels between consecutive filters of one group.
  int output_channel_stride() const { return shuffle_output ? group : 1; }
  int words_per_tap() const { return num_words(channels_per_group()); }  // nw
  int taps() const { return kernel_h * kernel_w; }

  // ONNX Conv output size; <= 0 means the input is too small.
  int64_t out_h(int64_t in_h) const {
    return out_size(in_h + pad_top + pad_bottom - int64_t(dilation_h) * (kernel_h - 1) - 1, stride_h);
  }
  int64_t out_w(int64_t in_w) const {
    return out_size(in_w + pad_left + pad_right - int64_t(dilation_w) * (kernel_w - 1) - 1, stride_w);
  }
  // floor(span / stride) + 1; C++ division truncates toward zero, so negative spans need care.
  static int64_t out_size(int64_t span, int stride) { return span < 0 ? 0 : span / stride + 1; }

  // The attributes alone (kernel creation, before C and M are known): window and dilations
  // within limits.h's bounds, 1 <= group <= kMaxWindow. Throws std::invalid_argument "<op>: ...".
  void validate_attributes(const char* op = "XnorConv2d") const {
    check_window(op, *this, dilation_h, dilation_w);
    if (group < 1 || group > kMaxWindow)
      size_error(op, "group must be in [1, " + std::to_string(kMaxWindow) + "], got " + std::to_string(group));
    if (sat_mul(kernel_h, kernel_w) > kMaxValidBits)
      size_error(op, "kernel_shape " + std::to_string(kernel_h) + "x" + std::to_string(kernel_w) + " has more than " +
                         std::to_string(kMaxValidBits) + " taps");
  }
  // Attributes plus channels and filters (per call).
  void validate(const char* op = "XnorConv2d") const {
    validate_attributes(op);
    auto fail = [op](const std::string& what) { size_error(op, what); };
    if (channels < 1) fail("input channels must be >= 1");
    if (filters < 1) fail("filters (W dim 0) must be >= 1");
    if (channels % group) fail("channels " + std::to_string(channels) + " not divisible by group " + std::to_string(group));
    if (filters % group) fail("filters " + std::to_string(filters) + " not divisible by group " + std::to_string(group));
    // One output sums kH*kW*C/group +-1 products in int32.
    if (sat_mul(taps(), channels_per_group()) > kMaxValidBits)
      fail("kernel taps x channels per group = " + std::to_string(sat_mul(taps(), channels_per_group())) +
           " exceeds " + std::to_string(kMaxValidBits));
  }
};

}  // namespace xnorpipe::bconv2d
