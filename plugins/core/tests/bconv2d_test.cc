// Every popcount path this CPU runs vs reference.h, bit-exact, on random shapes and edge values.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/bconv2d/optimized.h"
#include "core/bconv2d/reference.h"

using namespace xnorpipe::bconv2d;

int main() {
  std::mt19937 rng(1234);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::normal_distribution<float> normal(0.f, 1.f);
  int failures = 0, cases = 0;
  const auto paths = available_paths();
  for (int iter = 0; iter < 420; ++iter) {
    // Iterations >= 300: 1x1 stride-1 unpadded shapes (the pointwise kernel), with images
    // larger than its 256-pixel chunk and widths that are not multiples of 16.
    const bool pointwise = iter >= 300;
    BConv2DParams p;
    p.group = std::vector<int>{1, 1, 1, 2, 3, 4}[uni(0, 5)];
    p.channels = p.group * uni(1, iter % 5 == 0 ? 100 : 40);
    p.filters = p.group * uni(1, iter % 7 == 0 ? 70 : 24);
    p.kernel_h = std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.kernel_w = uni(0, 3) ? p.kernel_h : std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.stride_h = uni(1, 2); p.stride_w = uni(0, 3) ? p.stride_h : uni(1, 2);
    p.dilation_h = uni(1, 2); p.dilation_w = uni(1, 2);
    p.pad_top = uni(0, 2); p.pad_left = uni(0, 2); p.pad_bottom = uni(0, 2); p.pad_right = uni(0, 2);
    p.relu = uni(0, 1);
    int n = uni(1, 3), h = uni(1, 13), w = uni(1, 13);
    if (pointwise) {
      p.channels = p.group * uni(1, iter % 3 == 0 ? 150 : 70);
      p.kernel_h = p.kernel_w = 1;
      p.stride_h = p.stride_w = 1;
      p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 0;
      n = uni(1, 2);
      h = uni(1, 24);
      w = uni(1, 24);
    }
    if (p.out_h(h) < 1 || p.out_w(w) < 1) continue;
    const int nw = p.words_per_tap();
    std::vector<float> x(size_t(n) * p.channels * h * w), thr(p.channels), scale(p.filters), bias(p.filters);
    std::vector<int32_t> wts(size_t(p.filters) * p.taps() * nw);
    for (auto& v : thr) v = uni(0, 9) == 0 ? (uni(0, 1) ? INFINITY : -INFINITY) : normal(rng) * 0.5f;
    for (size_t i = 0; i < x.size(); ++i) {
      const int c = int(i / (size_t(h) * w)) % p.channels;
      const int kind = uni(0, 19);
      x[i] = kind == 0 ? std::numeric_limits<float>::quiet_NaN() : kind == 1 ? thr[c] : normal(rng);
    }
    for (auto& v : scale) v = normal(rng);
    for (auto& v : bias) v = normal(rng);
    // Pad bits random too: the contract says they are ignored.
    for (auto& v : wts) v = int32_t(rng());
    const int64_t out_size = int64_t(n) * p.filters * p.out_h(h) * p.out_w(w);
    std::vector<float> want(out_size);
    reference_bconv2d(p, x.data(), n, h, w, [&] {
      static std::vector<int32_t> masked;
      masked = wts;
      const int cg = p.channels_per_group();
      for (size_t i = 0; i < masked.size(); ++i) {
        const int q = int(i % nw), bits = cg - q * 32;
        if (bits < 32) masked[i] &= int32_t((1u << bits) - 1u);
      }
      return masked.data();
    }(), thr.data(), scale.data(), bias.data(), want.data());
    for (PopcountPath path : paths) {
      for (int threads : {1, 2}) {
        BConv2D conv(p, path);
        const PackedFilters f = conv.pack_filters(wts.data());
        std::vector<float> got(out_size, -12345.f);
        conv.run(x.data(), n, h, w, f, thr.data(), scale.data(), bias.data(), got.data(), thread_parallel_for(threads));
        ++cases;
        if (std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) != 0) {
          size_t bad = 0;
          while (bad < got.size() && std::memcmp(&got[bad], &want[bad], sizeof(float)) == 0) ++bad;
          std::printf("MISMATCH path=%s threads=%d C=%d M=%d g=%d k=%dx%d s=%dx%d d=%dx%d pads=%d,%d,%d,%d relu=%d n=%d %dx%d"
                      " first at %zu: got %g want %g\n",
                      path_name(path), threads, p.channels, p.filters, p.group, p.kernel_h, p.kernel_w, p.stride_h,
                      p.stride_w, p.dilation_h, p.dilation_w, p.pad_top, p.pad_left, p.pad_bottom, p.pad_right, p.relu,
                      n, h, w, bad, got[bad], want[bad]);
          if (++failures > 10) return 1;
        }
      }
    }
  }
  std::printf("%d cases, %d failures; paths:", cases, failures);
  for (auto p : paths) std::printf(" %s", path_name(p));
  std::printf("\n");
  return failures ? 1 : 0;
}
