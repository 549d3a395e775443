// Every popcount path this CPU runs vs reference.h, bit-exact, on random shapes and edge values.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/bconv2d/binarize.h"
#include "core/bconv2d/optimized.h"
#include "core/pool/pool.h"
#include "core/conv_binarize/conv_binarize.h"
#include "core/conv_integer_binarize/conv_integer_binarize.h"
#include "core/bconv2d/reference.h"

using namespace xnorpipe::bconv2d;

namespace {

// Runs `f`, which must throw std::invalid_argument whose message starts with `prefix` and
// contains `needle`.
template <typename F>
bool throws(const char* what, F&& f, const std::string& prefix, const std::string& needle) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    if (msg.rfind(prefix, 0) == 0 && msg.find(needle) != std::string::npos && msg.find('\n') == std::string::npos)
      return true;
    std::printf("FAIL %s: unexpected message: %s\n", what, e.what());
    return false;
  } catch (const std::exception& e) {
    std::printf("FAIL %s: unexpected exception: %s\n", what, e.what());
    return false;
  }
  std::printf("FAIL %s: no exception\n", what);
  return false;
}

// Hostile attributes and sizes: checked in 64 bits before any allocation, one-line errors
// naming the op; an exception in a work item reaches the caller, never a pool thread's top;
// an empty batch needs no data.
int hardening_checks(int& cases) {
  int failures = 0;
  auto check = [&](bool ok) { ++cases; failures += !ok; };
  BConv2DParams base;
  base.channels = 64;
  base.filters = 32;
  base.kernel_h = base.kernel_w = 3;
  auto conv_with = [&](auto edit) {
    BConv2DParams p = base;
    edit(p);
    return [p] { BConv2D conv(p, PopcountPath::kPortable, "XnorConv2dBits"); };
  };
  check(throws("kernel", conv_with([](BConv2DParams& p) { p.kernel_w = (1 << 16) + 1; }), "XnorConv2dBits: ", "kernel_shape"));
  check(throws("stride", conv_with([](BConv2DParams& p) { p.stride_h = 1 << 30; }), "XnorConv2dBits: ", "strides"));
  check(throws("pads", conv_with([](BConv2DParams& p) { p.pad_left = 1 << 30; }), "XnorConv2dBits: ", "pads"));
  check(throws("negative pad", conv_with([](BConv2DParams& p) { p.pad_right = -1; }), "XnorConv2dBits: ", "pads"));
  check(throws("dilation extent", conv_with([](BConv2DParams& p) { p.dilation_h = 1 << 15; }), "XnorConv2dBits: ",
               "extent"));
  check(throws("group", conv_with([](BConv2DParams& p) { p.group = (1 << 16) + 1; }), "XnorConv2dBits: ", "group"));
  check(throws("tap sum", conv_with([](BConv2DParams& p) {
                 p.kernel_h = p.kernel_w = 1 << 12;
                 p.channels = 1 << 8;
               }), "XnorConv2dBits: ", "taps"));
  xnorpipe::pool::PoolParams pool;
  pool.kernel_w = 1 << 30;
  check(throws("pool kernel", [&] { pool.validate("AvgPoolBinarize"); }, "AvgPoolBinarize: ", "kernel_shape"));
  pool.kernel_w = 2;
  pool.pad_left = 2;
  check(throws("pool pads", [&] { pool.validate("BitMaxPool"); }, "BitMaxPool: ", "smaller than the kernel"));

  // An output of more than 2^31 elements: refused before anything is allocated or read.
  const float dummy[1] = {0.f};
  uint32_t dummy_bits[1] = {0};
  {
    BConv2DParams p = base;
    p.kernel_h = p.kernel_w = 1;
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 1 << 16;
    BConv2D conv(p, PopcountPath::kPortable);
    const std::vector<int32_t> w(size_t(p.filters) * p.words_per_tap(), 0);
    const PackedFilters f = conv.pack_filters(w.data());
    std::vector<float> y(1);
    check(throws("huge output", [&] {
      conv.run(ConvInput{dummy, dummy, nullptr}, 1, 1 << 15, 1 << 15, f, dummy, dummy, ConvOutput{y.data(), nullptr, nullptr},
               thread_parallel_for(2));
    }, "XnorConv2d: ", "the output"));
  }
  {  // ConvBinarize: a work item's padded rows (16 x 196609 x 2^20 floats) would exceed the limit.
    BConv2DParams p;
    p.channels = 16;
    p.filters = 1;
    p.stride_h = 1 << 16;
    xnorpipe::conv_binarize::ConvBinarize conv(p, PopcountPath::kPortable);
    std::vector<float> w(16, 1.f);
    const auto packed = conv.pack_weights(w.data());
    check(throws("conv_binarize rows", [&] {
      conv.run(dummy, 1, 4 << 16, 1 << 20, packed, dummy, dummy, dummy_bits, thread_parallel_for(2));
    }, "ConvBinarize: ", "padded input rows"));
  }
  {  // An empty batch: no data pointers needed, nothing written.
    BConv2D conv(base, PopcountPath::kPortable);
    std::vector<int32_t> w(size_t(32) * 9 * 2, 0);
    const PackedFilters f = conv.pack_filters(w.data());
    bool ok = true;
    try {
      conv.run(ConvInput{}, 0, 8, 8, f, nullptr, nullptr, ConvOutput{}, thread_parallel_for(2));
    } catch (const std::exception& e) {
      std::printf("FAIL batch 0: %s\n", e.what());
      ok = false;
    }
    check(ok);
  }
  {  // AvgPool over a 65536 x 65536 window (2^32 taps, zero padding counts): x / 2^32.
    xnorpipe::pool::PoolParams p;
    p.kernel_h = p.kernel_w = 1 << 16;
    p.pad_top = p.pad_left = (1 << 16) - 1;
    p.validate("AvgPoolBinarize");
    const float x = -2147483648.f, thr = -1.f;  // average -0.5 >= -1: bit set
    uint32_t bits = 0;
    xnorpipe::pool::avg_pool_binarize(p, &x, 1, 1, 1, 1, &thr, &bits, PopcountPath::kPortable, serial_for);
    ++cases;
    if (bits != 1u) {
      std::printf("FAIL avg pool 2^32 taps: bits %u\n", bits);
      ++failures;
    }
  }
  // An exception in a work item: rethrown on the calling thread after the pool joined.
  for (int threads : {1, 2, 4}) {
    bool ok = false;
    try {
      thread_parallel_for(threads)(64, [](size_t i) {
        if (i == 5) throw std::invalid_argument("XnorConv2d: item 5 failed");
      });
    } catch (const std::invalid_argument& e) {
      ok = std::string(e.what()) == "XnorConv2d: item 5 failed";
    }
    check(ok);
  }
  {
    std::atomic<int> ran{0};
    bool ok = false;
    try {
      guarded_parallel_for([](size_t count, const std::function<void(size_t)>& item) {
        for (size_t i = 0; i < count; ++i) item(i);  // a serial "pool"
      })(1000, [&](size_t i) {
        ++ran;
        if (i == 10) throw std::runtime_error("stop");
      });
    } catch (const std::runtime_error& e) {
      ok = std::string(e.what()) == "stop";
    }
    check(ok && ran == 11);  // the items after the failure are skipped
  }
  // split_for: small calls stay on the calling thread (the pool is never called); large ones
  // become runs of consecutive items, each >= kMinTaskNs, every item exactly once.
  {
    namespace cost = xnorpipe::bconv2d::cost;
    check(split_tasks(0, 1e9) == 0 && split_tasks(1, 1e9) == 1 && split_tasks(1000, 1.0) == 1);
    check(split_tasks(2, cost::kSerialBelowNs / 2) == 2 && split_tasks(10, cost::kSerialBelowNs / 20) == 1);
    check(split_tasks(1000, cost::kMinTaskNs / 10) == 100 && split_tasks(7, 1e9) == 7);
    size_t pool_calls = 0, tasks_seen = 0;
    const ParallelFor counting = [&](size_t count, const std::function<void(size_t)>& item) {
      ++pool_calls;
      tasks_seen += count;
      for (size_t i = count; i-- > 0;) item(i);  // any order
    };
    for (const auto& [count, item_ns] : std::vector<std::pair<size_t, double>>{{100, 10.0}, {1000, 100.0}, {37, 3e3}}) {
      std::vector<int> hits(count, 0);
      pool_calls = tasks_seen = 0;
      split_for(counting, count, item_ns, [&](size_t i) { ++hits[i]; });
      const size_t tasks = split_tasks(count, item_ns);
      check(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      check(tasks == 1 ? pool_calls == 0 : pool_calls == 1 && tasks_seen == tasks);
      check(tasks == 1 || double(count / tasks) * item_ns >= cost::kMinTaskNs);  // the smallest run
    }
  }
  return failures;
}


// ConvIntegerBinarize: every integer family this CPU runs vs direct int64 sums of W * (X - z)
// over the in-image taps plus pad_value over the padded ones (the int8 sum and the fine sum)
// and the margin rule, bit-exact; shapes, strides, dilations and pads at random (pads past the
// kernel: taps all padded), and the extremes: all-255 images, weights at -128 and +127 (fine:
// +-2^31), zero points 0 and 255, pad values at +-2^15, thresholds at a sum's exact value and
// at the integer extremes, margins -1, 0, small and INT32_MAX (the fine sum decides everything),
// fine weights at and next to the int32 extremes on random images.
int conv_integer_binarize_checks(std::mt19937& rng, int& cases) {
  namespace cib = xnorpipe::conv_integer_binarize;
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<cib::IntIsa> isas;
  for (auto isa : {cib::IntIsa::kPortable, cib::IntIsa::kAvx2, cib::IntIsa::kAvxVnni, cib::IntIsa::kAvx512Vnni})
    if (cib::cpu_supports(isa)) isas.push_back(isa);
  std::printf("conv_integer_binarize families:");
  for (auto isa : isas) std::printf(" %s", cib::isa_name(isa));
  std::printf("\n");
  int failures = 0;
  for (int iter = 0; iter < 160; ++iter) {
    BConv2DParams p;
    p.channels = iter % 10 == 3 ? uni(20, 70) : uni(1, 5);
    p.filters = uni(1, iter % 4 == 0 ? 200 : 70);
    p.kernel_h = std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.kernel_w = uni(0, 3) ? p.kernel_h : std::vector<int>{1, 2, 3, 5}[uni(0, 3)];
    p.stride_h = uni(1, 2); p.stride_w = uni(1, 3);
    p.dilation_h = uni(0, 3) ? 1 : 2; p.dilation_w = uni(0, 3) ? 1 : 2;
    if (iter % 20 == 13) {  // C >= 20, dilated columns: each tap's channels are a fine-sum run of their own
      p.dilation_w = 2;
      p.kernel_w = 3;
    }
    p.pad_top = uni(0, 3); p.pad_left = uni(0, 3); p.pad_bottom = uni(0, 3); p.pad_right = uni(0, 3);
    if (iter % 9 == 5) {
      p.pad_top = uni(0, 7); p.pad_left = uni(0, 7); p.pad_bottom = uni(0, 7); p.pad_right = uni(0, 7);
    }
    const int n = uni(1, 3), h = uni(1, 20), w = uni(1, iter % 8 == 0 ? 40 : 17);
    const int64_t oh = p.out_h(h), ow = p.out_w(w);
    if (oh < 1 || ow < 1) continue;
    const int c_in = p.channels, taps = p.kernel_h * p.kernel_w, words = num_words(p.filters);
    // extremes: 0 random, 1 saturating (all-255 image, weights -128/+127), 2 all-zero image
    const int kind = iter % 3;
    std::vector<uint8_t> x(size_t(n) * h * w * c_in), z(c_in);
    std::vector<int8_t> wts(size_t(p.filters) * c_in * taps);
    std::vector<int16_t> pad_value(size_t(p.filters) * taps);
    std::vector<int32_t> fine_w(wts.size()), fine_pv(pad_value.size());
    for (auto& v : x) v = uint8_t(kind == 1 ? 255 : kind == 2 ? 0 : uni(0, 255));
    for (auto& v : wts) v = int8_t(kind == 1 ? (uni(0, 1) ? 127 : -128) : uni(-128, 127));
    for (auto& v : z) v = uint8_t(kind == 1 ? uni(0, 1) * 255 : uni(0, 255));
    for (auto& v : pad_value) v = int16_t(kind == 1 ? (uni(0, 1) ? 32767 : -32768) : uni(-300, 300));
    // a random image with fine weights at and near the int32 extremes (iter % 5 == 4, kind 0)
    const int32_t fine_extremes[] = {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::min() + 1,
                                     std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::max() - 1, -1, 0, 1};
    for (auto& v : fine_w) v = kind == 1 ? (uni(0, 1) ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int32_t>::min())
                               : kind == 0 && iter % 5 == 4 ? fine_extremes[uni(0, 6)]
                                                            : int32_t(rng()) >> uni(0, 24);
    for (auto& v : fine_pv) v = kind == 1 ? std::numeric_limits<int32_t>::min() : int32_t(rng()) >> uni(0, 24);
    std::vector<int64_t> acc(size_t(n) * p.filters * oh * ow, 0), fine(acc.size(), 0);
    for (int b = 0; b < n; ++b)
      for (int m = 0; m < p.filters; ++m)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            int64_t s = 0, f = 0;
            for (int c = 0; c < c_in; ++c)
              for (int u = 0; u < p.kernel_h; ++u)
                for (int v = 0; v < p.kernel_w; ++v) {
                  const int64_t y = i * p.stride_h - p.pad_top + u * p.dilation_h, q = j * p.stride_w - p.pad_left + v * p.dilation_w;
                  if (y < 0 || y >= h || q < 0 || q >= w) {
                    if (c == 0) s += pad_value[size_t(m) * taps + u * p.kernel_w + v];
                    if (c == 0) f += fine_pv[size_t(m) * taps + u * p.kernel_w + v];
                    continue;
                  }
                  const int64_t centred = int64_t(x[((int64_t(b) * h + y) * w + q) * c_in + c]) - z[c];
                  s += wts[(size_t(m) * c_in + c) * taps + u * p.kernel_w + v] * centred;
                  f += fine_w[(size_t(m) * c_in + c) * taps + u * p.kernel_w + v] * centred;
                }
            acc[((size_t(b) * p.filters + m) * oh + i) * ow + j] = s;
            fine[((size_t(b) * p.filters + m) * oh + i) * ow + j] = f;
          }
    // Thresholds: a sum that occurs (so acc == t is hit), +-1 of it, or the int32 extremes.
    std::vector<int32_t> thr(p.filters), margin(p.filters);
    std::vector<int64_t> fine_thr(p.filters);
    for (int m = 0; m < p.filters; ++m) {
      const size_t seen = ((size_t(uni(0, n - 1)) * p.filters + m) * oh + uni(0, int(oh) - 1)) * ow + uni(0, int(ow) - 1);
      const int r = uni(0, 9);
      thr[m] = r == 0 ? std::numeric_limits<int32_t>::min() : r == 1 ? std::numeric_limits<int32_t>::max()
                                                                     : int32_t(acc[seen] + uni(-1, 1));
      fine_thr[m] = r == 2 ? std::numeric_limits<int64_t>::min() : r == 3 ? std::numeric_limits<int64_t>::max()
                                                                          : fine[seen] + uni(-1, 1);
      const int g = uni(0, 4);
      margin[m] = g == 0 ? -1 : g == 1 ? 0 : g == 2 ? std::numeric_limits<int32_t>::max() : uni(1, 5000);
    }
    std::vector<uint32_t> want(size_t(n) * words * oh * ow, 0u);
    for (int b = 0; b < n; ++b)
      for (int m = 0; m < p.filters; ++m)
        for (int64_t i = 0; i < oh * ow; ++i) {
          const size_t at = (size_t(b) * p.filters + m) * oh * ow + i;
          const int64_t d = acc[at] - thr[m];
          const bool bit = d > margin[m] || (d >= -int64_t(margin[m]) && fine[at] >= fine_thr[m]);
          if (bit) want[(size_t(b) * words + m / 32) * oh * ow + i] |= 1u << (m % 32);
        }
    for (auto isa : isas) {
      cib::ConvIntegerBinarize conv(p, isa);
      const auto packed = conv.pack_weights(wts.data());
      std::vector<uint32_t> got(want.size(), 0xdeadbeefu);
      cib::IntInputs in;
      in.x_zero_point = z.data();
      in.pad_value = pad_value.data();
      in.threshold = thr.data();
      in.margin = margin.data();
      in.fine_weight = fine_w.data();
      in.fine_pad_value = fine_pv.data();
      in.fine_threshold = fine_thr.data();
      conv.run(x.data(), n, h, w, packed, in, got.data(), thread_parallel_for(1 + iter % 2));
      ++cases;
      if (got != want) {
        std::printf("MISMATCH conv_integer_binarize isa=%s C=%d M=%d k=%dx%d s=%dx%d d=%dx%d pads=%d,%d,%d,%d n=%d %dx%d kind=%d\n",
                    cib::isa_name(isa), c_in, p.filters, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.dilation_h,
                    p.dilation_w, p.pad_top, p.pad_left, p.pad_bottom, p.pad_right, n, h, w, kind);
        if (++failures > 10) return failures;
      }
    }
  }
  // Hostile attributes and sizes: one-line errors before anything is allocated.
  auto check = [&](bool ok) { ++cases; failures += !ok; };
  BConv2DParams base;
  base.channels = 3;
  base.filters = 8;
  base.kernel_h = base.kernel_w = 3;
  auto make = [](BConv2DParams p) { return [p] { cib::ConvIntegerBinarize conv(p, cib::IntIsa::kPortable); }; };
  BConv2DParams p = base;
  p.group = 3;
  p.filters = 9;
  check(throws("cib group", make(p), "ConvIntegerBinarize: ", "group must be 1"));
  p = base;
  p.channels = 3641;  // (3641 + 1) * 9 taps = 32778 > 32768
  check(throws("cib taps", make(p), "ConvIntegerBinarize: ", "exceeds 32768"));
  p = base;
  p.kernel_w = (1 << 16) + 1;
  check(throws("cib kernel", make(p), "ConvIntegerBinarize: ", "kernel_shape"));
  p = base;
  p.stride_h = 1 << 16;
  {  // a work item's padded rows (65536 x 2^24 * 3 bytes) would exceed the limit
    cib::ConvIntegerBinarize conv(p, cib::IntIsa::kPortable);
    std::vector<int8_t> w(size_t(8) * 27, 1);
    const auto packed = conv.pack_weights(w.data());
    const uint8_t dummy[3] = {0, 0, 0};
    const int16_t pv_dummy[72] = {};
    const int32_t i32_dummy[216] = {};
    const int64_t i64_dummy[8] = {};
    const cib::IntInputs in{dummy, pv_dummy, i32_dummy, i32_dummy, i32_dummy, i32_dummy, i64_dummy};
    uint32_t out[1];
    check(throws("cib rows", [&] { conv.run(dummy, 1, 4 << 16, 1 << 24, packed, in, out, thread_parallel_for(2)); },
                 "ConvIntegerBinarize: ", "padded input rows"));
    check(throws("cib output", [&] { conv.run(dummy, 1, 2, 2, packed, in, out, thread_parallel_for(2)); },
                 "ConvIntegerBinarize: ", "output size"));
    bool ok = true;  // an empty batch: no data needed
    try {
      conv.run(nullptr, 0, 8, 8, packed, cib::IntInputs{}, nullptr, thread_parallel_for(2));
    } catch (const std::exception& e) {
      std::printf("FAIL cib batch 0: %s\n", e.what());
      ok = false;
    }
    check(ok);
  }
  return failures;
}

}  // namespace

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
    p.group = std::vector<int>{1, 1, 1, 2, 3, 4, 8, 16}[uni(0, 7)];
    p.channels = p.group * uni(1, iter % 5 == 0 ? 100 : 40);
    if (iter % 11 == 0) p.channels = p.group * 32 * uni(1, 2);  // groups of whole words
    p.filters = p.group * uni(1, iter % 7 == 0 ? 70 : 24);
    p.kernel_h = std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.kernel_w = uni(0, 3) ? p.kernel_h : std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.stride_h = uni(1, 2); p.stride_w = uni(0, 3) ? p.stride_h : uni(1, 2);
    p.dilation_h = uni(1, 2); p.dilation_w = uni(1, 2);
    p.pad_top = uni(0, 2); p.pad_left = uni(0, 2); p.pad_bottom = uni(0, 2); p.pad_right = uni(0, 2);
    if (iter % 9 == 4) {  // pads past the kernel: outputs with no in-image tap (padding classes)
      p.pad_top = uni(0, 7); p.pad_left = uni(0, 7); p.pad_bottom = uni(0, 7); p.pad_right = uni(0, 7);
    }
    p.relu = uni(0, 1);
    p.shuffle_output = p.group > 1 && uni(0, 1);  // the output's channel shuffle (bit ops)
    if (iter % 10 == 3 && !pointwise) {  // 16 channels a group, shuffled: nin_gc_xnornet's L3 and L6
      p.group = uni(0, 1) ? 16 : 32;
      p.channels = p.group * 16;
      p.filters = p.group * 2 * uni(1, 2);
      p.shuffle_output = true;
    }
    int n = uni(1, 3), h = uni(1, 13), w = uni(1, 13);
    if (pointwise) {
      p.channels = p.group * (iter % 4 == 0 ? 32 * uni(1, 3) : uni(1, iter % 3 == 0 ? 150 : 70));
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
    if (iter % 13 == 0) scale[0] = INFINITY;  // y = inf, NaN (0 * inf), -inf: not a popcount interval
    if (iter % 17 == 0) bias[p.filters - 1] = std::numeric_limits<float>::quiet_NaN();  // bit never set
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
    if (p.shuffle_output) {  // the reference writes W's order: filter m goes to channel output_channel(m)
      const std::vector<float> grouped = want;
      const int64_t plane_out = p.out_h(h) * p.out_w(w);
      for (int b = 0; b < n; ++b)
        for (int m = 0; m < p.filters; ++m)
          std::memcpy(&want[(int64_t(b) * p.filters + p.output_channel(m)) * plane_out],
                      &grouped[(int64_t(b) * p.filters + m) * plane_out], size_t(plane_out) * sizeof(float));
    }
    // Bit tensors (packed-bits form), computed here from the contract's definition.
    const int64_t plane = int64_t(h) * w, out_plane = p.out_h(h) * p.out_w(w);
    const int in_words = num_words(p.channels), out_words = num_words(p.filters);
    std::vector<uint32_t> x_bits(size_t(n) * in_words * plane, 0u), want_bits(size_t(n) * out_words * out_plane, 0u);
    for (int b = 0; b < n; ++b)
      for (int c = 0; c < p.channels; ++c)
        for (int64_t i = 0; i < plane; ++i)
          if (x[(int64_t(b) * p.channels + c) * plane + i] >= thr[c])
            x_bits[(int64_t(b) * in_words + c / 32) * plane + i] |= 1u << (c % 32);
    // Junk in the bits past C: the contract says readers ignore them.
    if (p.channels % 32)
      for (int b = 0; b < n; ++b)
        for (int64_t i = 0; i < plane; ++i)
          x_bits[(int64_t(b) * in_words + in_words - 1) * plane + i] |= ~((1u << (p.channels % 32)) - 1u) & rng();
    std::vector<float> out_thr(p.filters);
    for (auto& v : out_thr) v = uni(0, 9) == 0 ? (uni(0, 1) ? INFINITY : -INFINITY) : normal(rng);
    for (int b = 0; b < n; ++b)
      for (int m = 0; m < p.filters; ++m) {
        if (uni(0, 4) == 0) out_thr[m] = want[(int64_t(b) * p.filters + m) * out_plane];  // equality
        for (int64_t i = 0; i < out_plane; ++i)
          if (want[(int64_t(b) * p.filters + m) * out_plane + i] >= out_thr[m])
            want_bits[(int64_t(b) * out_words + m / 32) * out_plane + i] |= 1u << (m % 32);
      }
    for (int b = 0; b < n; ++b)  // recompute: out_thr may have changed after earlier images
      for (int m = 0; m < p.filters; ++m)
        for (int64_t i = 0; i < out_plane; ++i) {
          uint32_t& word = want_bits[(int64_t(b) * out_words + m / 32) * out_plane + i];
          word &= ~(1u << (m % 32));
          if (want[(int64_t(b) * p.filters + m) * out_plane + i] >= out_thr[m]) word |= 1u << (m % 32);
        }
    for (PopcountPath path : paths) {
      // Bit input -> float, float -> bits, bits -> bits.
      for (int variant = 0; variant < 3; ++variant) {
        const int threads = 1 + (iter + variant) % 2;
        BConv2D conv(p, path);
        const PackedFilters f = conv.pack_filters(wts.data());
        std::vector<float> got(out_size, -12345.f);
        std::vector<uint32_t> got_bits(want_bits.size(), 0xdeadbeefu);
        ConvInput in;
        if (variant == 1) in = ConvInput{x.data(), thr.data(), nullptr};
        else in = ConvInput{nullptr, nullptr, x_bits.data()};
        ConvOutput out;
        if (variant == 0) out = ConvOutput{got.data(), nullptr, nullptr};
        else out = ConvOutput{nullptr, got_bits.data(), out_thr.data()};
        // Unpadded layers: every other case with the bits as popcount intervals.
        const PopcountIntervals intervals = conv.popcount_intervals(scale.data(), bias.data(), out_thr.data());
        if (variant > 0 && intervals.exact && iter % 2) out.intervals = &intervals;
        conv.run(in, n, h, w, f, scale.data(), bias.data(), out, thread_parallel_for(threads));
        ++cases;
        const bool ok = variant == 0 ? std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0
                                     : got_bits == want_bits;
        if (!ok) {
          std::printf("MISMATCH (bits variant %d) path=%s C=%d M=%d g=%d shuffle=%d k=%dx%d s=%dx%d pads=%d,%d,%d,%d n=%d %dx%d\n",
                      variant, path_name(path), p.channels, p.filters, p.group, int(p.shuffle_output), p.kernel_h,
                      p.kernel_w, p.stride_h, p.stride_w, p.pad_top, p.pad_left, p.pad_bottom, p.pad_right, n, h, w);
          if (++failures > 10) return 1;
        }
      }
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
  // Binarize op and BitMaxPool vs their definitions.
  for (int iter = 0; iter < 60; ++iter) {
    const int n = uni(1, 3), c = uni(1, 100), h = uni(1, 20), w = uni(1, 20);
    const int64_t plane = int64_t(h) * w;
    const int words = num_words(c);
    std::vector<float> x(size_t(n) * c * plane), thr(c);
    for (auto& v : thr) v = normal(rng);
    for (size_t i = 0; i < x.size(); ++i) x[i] = uni(0, 15) == 0 ? std::numeric_limits<float>::quiet_NaN() : normal(rng);
    std::vector<uint32_t> want(size_t(n) * words * plane, 0u);
    for (int b = 0; b < n; ++b)
      for (int k = 0; k < c; ++k)
        for (int64_t i = 0; i < plane; ++i)
          if (x[(int64_t(b) * c + k) * plane + i] >= thr[k]) want[(int64_t(b) * words + k / 32) * plane + i] |= 1u << (k % 32);
    for (PopcountPath path : paths) {
      std::vector<uint32_t> got(want.size(), 0xdeadbeefu);
      binarize(x.data(), n, c, plane, thr.data(), got.data(), path, thread_parallel_for(1 + iter % 2));
      ++cases;
      if (got != want) {
        std::printf("MISMATCH binarize path=%s C=%d n=%d %dx%d\n", path_name(path), c, n, h, w);
        if (++failures > 10) return 1;
      }
    }
    xnorpipe::pool::PoolParams mp;
    mp.kernel_h = uni(1, 3); mp.kernel_w = uni(1, 3); mp.stride_h = uni(1, 2); mp.stride_w = uni(1, 2);
    mp.pad_top = uni(0, mp.kernel_h - 1); mp.pad_bottom = uni(0, mp.kernel_h - 1);
    mp.pad_left = uni(0, mp.kernel_w - 1); mp.pad_right = uni(0, mp.kernel_w - 1);
    mp.validate("BitMaxPool");
    const int64_t oh = mp.out_h(h), ow = mp.out_w(w);
    if (oh < 1 || ow < 1) continue;
    std::vector<uint32_t> pooled(size_t(n) * words * oh * ow), expect(pooled.size(), 0u);
    for (int b = 0; b < n * words; ++b)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j)
          for (int u = 0; u < mp.kernel_h; ++u)
            for (int v = 0; v < mp.kernel_w; ++v) {
              const int64_t y = i * mp.stride_h - mp.pad_top + u, z = j * mp.stride_w - mp.pad_left + v;
              if (y >= 0 && y < h && z >= 0 && z < w) expect[(b * oh + i) * ow + j] |= want[b * plane + y * w + z];
            }
    xnorpipe::pool::bit_max_pool(mp, want.data(), n, words, h, w, pooled.data(), thread_parallel_for(2));
    ++cases;
    if (pooled != expect) {
      std::printf("MISMATCH bmaxpool k=%dx%d s=%dx%d %dx%d\n", mp.kernel_h, mp.kernel_w, mp.stride_h, mp.stride_w, h, w);
      if (++failures > 10) return 1;
    }
  }
  // AvgPoolBinarize vs a float64 average, away from rounding margins.
  for (int iter = 0; iter < 60; ++iter) {
    xnorpipe::pool::PoolParams mp;
    mp.kernel_h = uni(1, 3); mp.kernel_w = uni(1, 3); mp.stride_h = uni(1, 2); mp.stride_w = uni(1, 2);
    mp.pad_top = uni(0, mp.kernel_h - 1); mp.pad_bottom = uni(0, mp.kernel_h - 1);
    mp.pad_left = uni(0, mp.kernel_w - 1); mp.pad_right = uni(0, mp.kernel_w - 1);
    const int n = uni(1, 2), c = uni(1, 70), h = uni(1, 17), w = uni(1, iter % 3 ? 30 : 40);
    const int64_t oh = mp.out_h(h), ow = mp.out_w(w);
    if (oh < 1 || ow < 1) continue;
    const int words = num_words(c);
    std::vector<float> x(size_t(n) * c * h * w), thr(c);
    for (auto& v : x) v = normal(rng);
    for (auto& v : thr) v = uni(0, 9) == 0 ? -INFINITY : normal(rng) * 0.3f;
    std::vector<uint32_t> want(size_t(n) * words * oh * ow, 0u), sure(want.size(), 0u);
    for (int b = 0; b < n; ++b)
      for (int k = 0; k < c; ++k)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            double sum = 0, mag = 0;
            for (int u = 0; u < mp.kernel_h; ++u)
              for (int v = 0; v < mp.kernel_w; ++v) {
                const int64_t y = i * mp.stride_h - mp.pad_top + u, z = j * mp.stride_w - mp.pad_left + v;
                if (y < 0 || y >= h || z < 0 || z >= w) continue;
                sum += x[((int64_t(b) * c + k) * h + y) * w + z];
                mag += std::fabs(x[((int64_t(b) * c + k) * h + y) * w + z]);
              }
            const double avg = sum / (mp.kernel_h * mp.kernel_w);
            const size_t idx = (size_t(b) * words + k / 32) * oh * ow + i * ow + j;
            if (avg >= thr[k]) want[idx] |= 1u << (k % 32);
            if (std::fabs(avg - thr[k]) > 1e-5 * (mag + 1)) sure[idx] |= 1u << (k % 32);
          }
    for (PopcountPath path : paths) {
    std::vector<uint32_t> got(want.size(), 0xdeadbeefu);
    xnorpipe::pool::avg_pool_binarize(mp, x.data(), n, c, h, w, thr.data(), got.data(), path, thread_parallel_for(1 + iter % 2));
    ++cases;
    bool ok = true;
    for (size_t i = 0; i < got.size(); ++i) ok &= ((got[i] ^ want[i]) & sure[i]) == 0;
    if (c % 32)
      for (int b = 0; b < n; ++b)
        for (int64_t i = 0; i < oh * ow; ++i) ok &= (got[(size_t(b) * words + words - 1) * oh * ow + i] >> (c % 32)) == 0;
    if (!ok) {
      std::printf("MISMATCH avg_pool_binarize path=%s k=%dx%d s=%dx%d C=%d %dx%d\n", path_name(path), mp.kernel_h,
                  mp.kernel_w, mp.stride_h, mp.stride_w, c, h, w);
      if (++failures > 10) return 1;
    }
    }
  }
  // ConvBinarize: float sums differ from a float64 reference by rounding only, so bits are
  // checked wherever the reference is not within a rounding margin of the threshold.
  for (int iter = 0; iter < 80; ++iter) {
    BConv2DParams p;
    p.group = iter % 5 == 4 ? 2 : 1;
    p.channels = p.group * uni(1, 8);
    p.filters = p.group * uni(1, 70);
    p.kernel_h = std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.kernel_w = uni(0, 3) ? p.kernel_h : std::vector<int>{1, 3, 5}[uni(0, 2)];
    p.stride_h = uni(1, 2); p.stride_w = uni(1, 2);
    p.dilation_h = uni(1, 2); p.dilation_w = uni(1, 2);
    p.pad_top = uni(0, 2); p.pad_left = uni(0, 2); p.pad_bottom = uni(0, 2); p.pad_right = uni(0, 2);
    p.relu = uni(0, 1);
    const int n = uni(1, 3), h = uni(1, 20), w = uni(1, 33);
    const int64_t oh = p.out_h(h), ow = p.out_w(w);
    if (oh < 1 || ow < 1) continue;
    const int cg = p.channels_per_group(), taps = cg * p.kernel_h * p.kernel_w, words = num_words(p.filters);
    std::vector<float> x(size_t(n) * p.channels * h * w), wts(size_t(p.filters) * taps), bias(p.filters), thr(p.filters);
    for (auto& v : x) v = normal(rng);
    for (auto& v : wts) v = normal(rng);
    for (auto& v : bias) v = normal(rng);
    for (auto& v : thr) v = uni(0, 9) == 0 ? -INFINITY : normal(rng);
    std::vector<uint32_t> want(size_t(n) * words * oh * ow, 0u), sure(want.size(), 0u);  // sure: bits far from thr
    for (int b = 0; b < n; ++b)
      for (int m = 0; m < p.filters; ++m)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            double sum = 0, mag = std::fabs(bias[m]);
            const int g = m / p.filters_per_group();
            for (int c = 0; c < cg; ++c)
              for (int u = 0; u < p.kernel_h; ++u)
                for (int v = 0; v < p.kernel_w; ++v) {
                  const int64_t y = i * p.stride_h - p.pad_top + u * p.dilation_h, z = j * p.stride_w - p.pad_left + v * p.dilation_w;
                  if (y < 0 || y >= h || z < 0 || z >= w) continue;
                  const double t = double(x[((int64_t(b) * p.channels + g * cg + c) * h + y) * w + z]) *
                                   wts[(size_t(m) * cg + c) * p.kernel_h * p.kernel_w + u * p.kernel_w + v];
                  sum += t;
                  mag += std::fabs(t);
                }
            double yv = sum + bias[m];
            if (p.relu && yv < 0) yv = 0;
            const size_t idx = (size_t(b) * words + m / 32) * oh * ow + i * ow + j;
            if (yv >= thr[m]) want[idx] |= 1u << (m % 32);
            if (std::fabs(yv - thr[m]) > 1e-5 * (mag + 1)) sure[idx] |= 1u << (m % 32);
          }
    for (PopcountPath path : paths) {
      if (path == PopcountPath::kReference) continue;
      xnorpipe::conv_binarize::ConvBinarize conv(p, path);
      const auto packed = conv.pack_weights(wts.data());
      std::vector<uint32_t> got(want.size(), 0xdeadbeefu);
      conv.run(x.data(), n, h, w, packed, bias.data(), thr.data(), got.data(), thread_parallel_for(1 + iter % 2));
      ++cases;
      bool ok = true;
      for (size_t i = 0; i < got.size(); ++i) ok &= ((got[i] ^ want[i]) & sure[i]) == 0;
      // Pad filters (past M) must be 0 bits.
      if (p.filters % 32)
        for (int b = 0; b < n; ++b)
          for (int64_t i = 0; i < oh * ow; ++i) ok &= (got[(size_t(b) * words + words - 1) * oh * ow + i] >> (p.filters % 32)) == 0;
      if (!ok) {
        std::printf("MISMATCH conv_binarize path=%s C=%d M=%d g=%d k=%dx%d s=%dx%d d=%dx%d n=%d %dx%d\n", path_name(path),
                    p.channels, p.filters, p.group, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.dilation_h,
                    p.dilation_w, n, h, w);
        if (++failures > 10) return 1;
      }
    }
  }
  failures += hardening_checks(cases);
  failures += conv_integer_binarize_checks(rng, cases);
  std::printf("%d cases, %d failures; paths:", cases, failures);
  for (auto p : paths) std::printf(" %s", path_name(p));
  std::printf("\n");
  return failures ? 1 : 0;
}
