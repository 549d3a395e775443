#include "core/pool/pool.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace xnorpipe::pool {

void PoolParams::validate(const char* op) const {
  bconv2d::check_window(op, *this);
  if (pad_top >= kernel_h || pad_bottom >= kernel_h || pad_left >= kernel_w || pad_right >= kernel_w)
    bconv2d::size_error(op, "pads must be smaller than the kernel");
}

namespace {
// Output size and element count of one call, checked before anything is allocated.
void check_call(const char* op, const PoolParams& p, int64_t n_batch, int64_t words, int in_h, int in_w) {
  const int64_t out_h = p.out_h(in_h), out_w = p.out_w(in_w);
  if (out_h < 1 || out_w < 1)
    bconv2d::size_error(op, "output size " + std::to_string(out_h) + "x" + std::to_string(out_w) + " <= 0");
  bconv2d::check_elements(op, "the output", bconv2d::sat_mul(n_batch, words, out_h, out_w));
}
}  // namespace

void bit_max_pool(const PoolParams& p, const uint32_t* bits, int n_batch, int words, int in_h, int in_w,
                  uint32_t* out, const bconv2d::ParallelFor& parallel_for) {
  check_call("BitMaxPool", p, n_batch, words, in_h, in_w);
  const int64_t out_h = p.out_h(in_h), out_w = p.out_w(in_w);
  const int64_t in_plane = int64_t(in_h) * in_w, out_plane = out_h * out_w;
  // One item per (image, word plane): planes are small (a few KiB) and independent.
  const double item_ns = double(out_plane) * p.kernel_h * p.kernel_w * bconv2d::cost::kBitWordNs;
  bconv2d::split_for(parallel_for, size_t(n_batch) * words, item_ns, [&](size_t item) {
    const uint32_t* src = bits + int64_t(item) * in_plane;
    uint32_t* dst = out + int64_t(item) * out_plane;
    for (int64_t oh = 0; oh < out_h; ++oh) {
      const int64_t h0 = std::max<int64_t>(0, oh * p.stride_h - p.pad_top);
      const int64_t h1 = std::min<int64_t>(in_h, oh * p.stride_h - p.pad_top + p.kernel_h);
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t w0 = std::max<int64_t>(0, ow * p.stride_w - p.pad_left);
        const int64_t w1 = std::min<int64_t>(in_w, ow * p.stride_w - p.pad_left + p.kernel_w);
        uint32_t acc = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) acc |= src[h * in_w + w];
        dst[oh * out_w + ow] = acc;
      }
    }
  });
}

namespace {

// One channel plane: vertical window sums per output row into a zero-padded row buffer, then
// the horizontal window sums at the output columns, compared with the threshold. target_clones
// builds it for AVX-512, AVX2 and baseline x86-64 and picks one when the library loads.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void avg_plane_bits(const float* plane, int in_h, int in_w, const PoolParams& p, int out_h, int out_w, float* prow,
                    float count, float thr, uint32_t bit, uint32_t* out) {
  float* row = prow + p.pad_left;  // prow: [pad_left zeros][W sums][pad_right zeros]
  for (int oh = 0; oh < out_h; ++oh, out += out_w) {
    const int h0 = std::max(0, oh * p.stride_h - p.pad_top);
    const int h1 = std::min(in_h, oh * p.stride_h - p.pad_top + p.kernel_h);
    const float* src = plane + int64_t(h0) * in_w;
    for (int w = 0; w < in_w; ++w) row[w] = src[w];
    for (int h = h0 + 1; h < h1; ++h) {
      src = plane + int64_t(h) * in_w;
      for (int w = 0; w < in_w; ++w) row[w] += src[w];
    }
    for (int ow = 0; ow < out_w; ++ow) {
      const float* win = prow + ow * p.stride_w;
      float sum = win[0];
      for (int j = 1; j < p.kernel_w; ++j) sum += win[j];
      out[ow] |= (sum / count >= thr) ? bit : 0u;  // NaN -> 0
    }
  }
}

}  // namespace

AvgRowTaps::AvgRowTaps(const PoolParams& p, int in_w, int out_w) : index{}, live{} {
  for (int j = 0; j < p.kernel_w && j < 8; ++j)
    for (int ow = 0; ow < std::min(out_w, 16); ++ow) {
      const int col = ow * p.stride_w + j - p.pad_left;
      if (col < 0 || col >= in_w) continue;
      index[j][ow] = col;
      live[j] = uint16_t(live[j] | (1u << ow));
    }
}

void avg_pool_binarize(const PoolParams& p, const float* x, int n_batch, int channels, int in_h, int in_w,
                       const float* threshold, uint32_t* bits, bconv2d::PopcountPath path,
                       const bconv2d::ParallelFor& parallel_for) {
  const int words = bconv2d::num_words(channels);
  check_call("AvgPoolBinarize", p, n_batch, words, in_h, in_w);
  const int out_h = int(p.out_h(in_h)), out_w = int(p.out_w(in_w));  // each <= in + pads < 2^31
  const int64_t in_plane = int64_t(in_h) * in_w, out_plane = int64_t(out_h) * out_w;
  const float count = float(int64_t(p.kernel_h) * p.kernel_w);  // count_include_pad: zero padding counts
  const int64_t padded_w64 = int64_t(in_w) + p.pad_left + p.pad_right;
  bconv2d::check_elements("AvgPoolBinarize", "a zero-padded input row", padded_w64);
  const int padded_w = int(padded_w64);
  // Rows of up to 32 floats (CIFAR sizes) held in registers on AVX-512.
  const bool simd = path == bconv2d::PopcountPath::kAvx512 && AvgRowTaps::fits(p, in_w, out_w);
  const AvgRowTaps taps(p, in_w, out_w);
  // Items: (image, output word); each builds its 32 channels' bits in a small buffer.
  const double item_ns = double(std::min(channels, 32)) * in_plane * 2 * bconv2d::cost::kFloatValueNs;
  bconv2d::split_for(parallel_for, size_t(n_batch) * words, item_ns, [&](size_t item) {
    const int n = int(item / words), q = int(item % words);
    thread_local std::vector<float> prow;
    thread_local std::vector<uint32_t> word;
    prow.assign(padded_w, 0.f);
    word.assign(out_plane, 0u);
    for (int c = q * 32; c < std::min(channels, q * 32 + 32); ++c)
      if (simd)
        avg_plane_bits_avx512(x + (int64_t(n) * channels + c) * in_plane, in_h, in_w, p, out_h, out_w, taps, count,
                              threshold[c], 1u << (c % 32), word.data());
      else
        avg_plane_bits(x + (int64_t(n) * channels + c) * in_plane, in_h, in_w, p, out_h, out_w, prow.data(), count,
                     threshold[c], 1u << (c % 32), word.data());
    std::memcpy(bits + (int64_t(n) * words + q) * out_plane, word.data(), size_t(out_plane) * sizeof(uint32_t));
  });
}

}  // namespace xnorpipe::pool
