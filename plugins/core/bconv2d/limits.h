// Size limits of every kernel in core/ and the 64-bit arithmetic that checks them. Attributes
// come from an untrusted model file: each one is bounded when a kernel is created, and each
// derived size (padded image, scratch buffer, output) is computed here in 64 bits, saturating,
// and checked before anything is allocated. Errors are std::invalid_argument "<op>: ...".
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace xnorpipe::bconv2d {

// Each kernel_shape, strides, pads and dilations entry, group, and a dilated kernel's extent
// (kernel - 1) * dilation + 1. Real layers use a few units (global pooling: the image size).
constexpr int64_t kMaxWindow = int64_t(1) << 16;
// Elements of any one tensor or scratch buffer a kernel allocates or writes (8 GiB of floats;
// int offsets hold).
constexpr int64_t kMaxElements = (int64_t(1) << 31) - 1;
// Bits one output value sums, kH * kW * C/group (int32 popcount sums).
constexpr int64_t kMaxValidBits = int64_t(1) << 30;

// a * b, saturating at INT64_MAX (operands >= 0): a product that overflows fails every check.
inline int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}
template <typename... Rest>
int64_t sat_mul(int64_t a, int64_t b, Rest... rest) {
  return sat_mul(sat_mul(a, b), int64_t(rest)...);
}
inline int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

[[noreturn]] inline void size_error(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// `what` (a count of elements) must be <= kMaxElements.
inline void check_elements(const char* op, const char* what, int64_t count) {
  if (count > kMaxElements)
    size_error(op, std::string(what) + " would hold " +
                       (count == std::numeric_limits<int64_t>::max() ? std::string("more than 2^63")
                                                                     : std::to_string(count)) +
                       " elements, more than the limit " + std::to_string(kMaxElements));
}

// The window of a convolution or pooling (BConv2DParams, PoolParams: same field names), with
// the dilations where the op has them.
template <typename Window>
void check_window(const char* op, const Window& p, int64_t dilation_h = 1, int64_t dilation_w = 1) {
  auto in_range = [op](const char* name, int64_t v, int64_t lo) {
    if (v < lo || v > kMaxWindow)
      size_error(op, std::string(name) + " entries must be in [" + std::to_string(lo) + ", " +
                         std::to_string(kMaxWindow) + "], got " + std::to_string(v));
  };
  for (int64_t v : {int64_t(p.kernel_h), int64_t(p.kernel_w)}) in_range("kernel_shape", v, 1);
  for (int64_t v : {int64_t(p.stride_h), int64_t(p.stride_w)}) in_range("strides", v, 1);
  for (int64_t v : {int64_t(p.pad_top), int64_t(p.pad_left), int64_t(p.pad_bottom), int64_t(p.pad_right)})
    in_range("pads", v, 0);
  for (int64_t v : {dilation_h, dilation_w}) in_range("dilations", v, 1);
  const int64_t extent_h = (p.kernel_h - 1) * dilation_h + 1, extent_w = (p.kernel_w - 1) * dilation_w + 1;
  if (extent_h > kMaxWindow || extent_w > kMaxWindow)
    size_error(op, "dilated kernel extent " + std::to_string(extent_h) + "x" + std::to_string(extent_w) +
                       " exceeds " + std::to_string(kMaxWindow));
}

}  // namespace xnorpipe::bconv2d
