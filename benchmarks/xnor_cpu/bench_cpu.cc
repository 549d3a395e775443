// CPU benchmark of the binary convolution kernels (not a test).
//  1. xor-popcount ceiling: an in-register loop xor + popcount + add over independent
//     accumulators, no memory traffic. 1 bit = 1 binary MAC (one +-1 product).
//  2. Per-layer: every binary layer of nin_xnornet and nin_gc_xnornet, batch 1 and 64, one
//     thread, each popcount path; G binary MAC/s = N*M*Ho*Wo*(Cin/g)*kH*kW / time. I/O
//     "float": XnorConv2d (float in, float out, the packed form); "bits": the layer as the
//     packed-bits form runs it (bit input; bit output where the next layer is binary).
//  3. The first layer (nin_xnornet L0, 3->192 5x5 @32x32): float ConvBinarize vs the integer
//     ConvIntegerBinarize (uint8 image, int8 weights), each family, against the FP32 FMA and the
//     int8 VNNI ceilings (select it with only=nin_xnornet:L0).
// Usage: xnorpipe_bench_cpu [min_seconds_per_measurement=0.3] [paths=avx512,avx2,portable]
//                           [only=net:layer,...] [io=float,bits]
// e.g. xnorpipe_bench_cpu 0.3 avx512 nin_xnornet:L1 float,bits
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/bconv2d/binarize.h"
#include "core/bconv2d/optimized.h"
#include "core/conv_binarize/conv_binarize.h"
#include "core/conv_integer_binarize/conv_integer_binarize.h"

using namespace xnorpipe::bconv2d;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Best time per call of fn over repetitions lasting at least min_s in total.
template <typename Fn>
double best_time(Fn&& fn, double min_s) {
  fn();  // warm-up
  double best = 1e30, total = 0;
  int reps = 0;
  while (total < min_s || reps < 3) {
    const auto t0 = Clock::now();
    fn();
    const double t = seconds_since(t0);
    best = std::min(best, t);
    total += t;
    ++reps;
  }
  return best;
}

constexpr int kAcc = 12;  // independent accumulators: enough to hide popcount latency

__attribute__((target("avx512f,avx512vpopcntdq"), noinline)) double ceiling_avx512(long iters) {
  __m512i acc[kAcc], x[kAcc];
  for (int i = 0; i < kAcc; ++i) { acc[i] = _mm512_setzero_si512(); x[i] = _mm512_set1_epi32(0x9e3779b9 * (i + 1)); }
  __m512i w = _mm512_set1_epi32(0x5bd1e995);
  for (long it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(w));  // w unknown each iteration: nothing can be hoisted
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_add_epi32(acc[i], _mm512_popcnt_epi32(_mm512_xor_si512(x[i], w)));
  }
  __m512i s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_epi32(s, acc[i]);
  return double(_mm512_reduce_add_epi32(s)) + 512.0 * kAcc * iters * 0;  // keep s live
}

// fp32 FMA ceiling (for the float first layer, ConvBinarize): 16 independent chains.
__attribute__((target("avx512f"), noinline)) double ceiling_fma_avx512(long iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-6f);
  for (long it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(b));
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, acc[i]);
  return double(_mm512_reduce_add_ps(s));
}

// int8 ceiling (for the integer first layer, ConvIntegerBinarize): vpdpbusd zmm, 16 chains,
// 64 u8 x s8 multiply-adds each.
__attribute__((target("avx512f,avx512vnni"), noinline)) double ceiling_vnni_avx512(long iters) {
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi32(0x01020304);
  __m512i b = _mm512_set1_epi32(0x05060708);
  for (long it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(b));
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_epi32(s, acc[i]);
  return double(_mm512_reduce_add_epi32(s));
}

__attribute__((target("avx2"), noinline)) double ceiling_avx2(long iters) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i acc[8], x[8];
  for (int i = 0; i < 8; ++i) { acc[i] = _mm256_setzero_si256(); x[i] = _mm256_set1_epi32(0x9e3779b9 * (i + 1)); }
  __m256i w = _mm256_set1_epi32(0x5bd1e995);
  for (long it = 0; it < iters; ++it) {
    asm volatile("" : "+x"(w));
    for (int i = 0; i < 8; ++i) {
      const __m256i v = _mm256_xor_si256(x[i], w);
      const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
      acc[i] = _mm256_add_epi64(acc[i], _mm256_sad_epu8(c, _mm256_setzero_si256()));
    }
  }
  __m256i s = acc[0];
  for (int i = 1; i < 8; ++i) s = _mm256_add_epi64(s, acc[i]);
  return double(_mm256_extract_epi64(s, 0));
}

__attribute__((target("popcnt"), noinline)) double ceiling_scalar(long iters) {
  uint64_t acc[8] = {}, x[8];
  for (int i = 0; i < 8; ++i) x[i] = 0x9e3779b97f4a7c15ull * (i + 1);
  uint64_t w = 0x5bd1e995;
  for (long it = 0; it < iters; ++it) {
    asm volatile("" : "+r"(w));
    for (int i = 0; i < 8; ++i) acc[i] += uint64_t(__builtin_popcountll(x[i] ^ w));
  }
  uint64_t s = 0;
  for (auto a : acc) s += a;
  return double(s);
}

struct Layer { const char* net; const char* name; int cin, cout, k, pad, group, hw; bool bits_out = false; };

}  // namespace

int main(int argc, char** argv) {
  const double min_s = argc > 1 ? std::atof(argv[1]) : 0.3;
  std::vector<PopcountPath> paths;
  const std::string want = argc > 2 ? argv[2] : "avx512,avx2,portable";
  for (PopcountPath p : {PopcountPath::kAvx512, PopcountPath::kAvx2, PopcountPath::kPortable})
    if (cpu_supports(p) && want.find(path_name(p)) != std::string::npos) paths.push_back(p);

  std::printf("## xor-popcount ceiling (one core, in-register loop; 1 bit = 1 binary MAC)\n\n");
  std::printf("| loop | G binary MAC/s |\n|---|---|\n");
  double ceiling = 0;  // the fastest popcount loop this CPU runs: the per-layer reference
  // Rate in G ops/s of `loop(iters)`, `ops` operations per iteration.
  auto rate = [&](double (*loop)(long), long iters, double ops) {
    volatile double sink = 0;
    const double t = best_time([&] { sink = sink + loop(iters); }, min_s);
    return ops * iters / t / 1e9;
  };
  auto row = [&](const char* name, double g, bool popcount) {
    if (popcount && ceiling == 0) ceiling = g;
    std::printf("| %s | %.0f |\n", name, g);
  };
  if (cpu_supports(PopcountPath::kAvx512)) {
    row("avx512: vpxord + vpopcntd + vpaddd, zmm", rate(ceiling_avx512, 20'000'000, 512.0 * kAcc), true);
    // context: the float layers' ceiling (ConvBinarize)
    row("(float, for context) avx512: vfmadd231ps zmm, fp32 FMA/s", rate(ceiling_fma_avx512, 20'000'000, 16.0 * 16),
        false);
  }
  namespace cib = xnorpipe::conv_integer_binarize;
  if (cib::cpu_supports(cib::IntIsa::kAvx512Vnni))  // context: the integer first layer's ceiling
    row("(int8, for context) avx512-vnni: vpdpbusd zmm, u8 x s8 MAC/s", rate(ceiling_vnni_avx512, 20'000'000, 64.0 * 16),
        false);
  if (cpu_supports(PopcountPath::kAvx2))
    row("avx2: vpxor + nibble-LUT vpshufb + vpsadbw, ymm", rate(ceiling_avx2, 20'000'000, 256.0 * 8), true);
  row("scalar: xor + popcnt r64 + add", rate(ceiling_scalar, 50'000'000, 64.0 * 8), true);

  const std::vector<Layer> layers = {
      {"nin_xnornet", "L1", 192, 160, 1, 0, 1, 32, true}, {"nin_xnornet", "L2", 160, 96, 1, 0, 1, 32, true},
      {"nin_xnornet", "L3", 96, 192, 3, 1, 1, 16, true},  {"nin_xnornet", "L4", 192, 192, 1, 0, 1, 16, true},
      {"nin_xnornet", "L5", 192, 192, 1, 0, 1, 16}, {"nin_xnornet", "L6", 192, 192, 3, 1, 1, 8, true},
      {"nin_xnornet", "L7", 192, 192, 1, 0, 1, 8},
      {"nin_gc_xnornet", "L1", 256, 256, 1, 0, 2, 32},   {"nin_gc_xnornet", "L2", 256, 256, 1, 0, 2, 32},
      {"nin_gc_xnornet", "L3", 256, 512, 3, 1, 16, 16},  {"nin_gc_xnornet", "L4", 512, 512, 1, 0, 4, 16},
      {"nin_gc_xnornet", "L5", 512, 512, 1, 0, 4, 16},   {"nin_gc_xnornet", "L6", 512, 1024, 3, 1, 32, 8},
      {"nin_gc_xnornet", "L7", 1024, 1024, 1, 0, 8, 8},
  };
  const std::string only = argc > 3 ? argv[3] : "";
  if (only.empty() || only.find("nin_xnornet:L0") != std::string::npos) {
    // The first layer: 3 -> 192, 5x5, pad 2, 32x32, ReLU + the next layer's binarization.
    std::printf("\n## First layer, one thread (nin_xnornet L0 3->192 5x5 p2 @32x32, bits out)\n\n");
    std::printf("| op | family | batch | time | G MAC/s | %% of its ceiling |\n|---|---|---|---|---|---|\n");
    BConv2DParams p;
    p.channels = 3; p.filters = 192; p.kernel_h = p.kernel_w = 5;
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 2;
    std::mt19937 frng(11);
    std::vector<float> wf(192 * 75), bias(192, 0.1f), thr(192, 0.5f);
    std::normal_distribution<float> fnormal(0.f, 0.2f);
    for (auto& v : wf) v = fnormal(frng);
    std::vector<int8_t> wi(192 * 75);
    for (auto& v : wi) v = int8_t(int(frng() % 255) - 127);
    const std::vector<uint8_t> zp = {125, 123, 114};
    const std::vector<int16_t> pad_value(192 * 25, 7);
    const std::vector<int32_t> thr_i(192, 1000), margin(192, 40), fine_w(192 * 75, 1000), fine_pv(192 * 25, 0);
    const std::vector<int64_t> fine_thr(192, 0);
    const cib::IntInputs int_inputs{zp.data(), pad_value.data(), thr_i.data(), margin.data(), fine_w.data(),
                                    fine_pv.data(), fine_thr.data()};
    for (int batch : {1, 64}) {
      const double macs = double(batch) * 192 * 1024 * 75;
      std::vector<float> xf(size_t(batch) * 3 * 1024);
      for (auto& v : xf) v = fnormal(frng) * 5;
      std::vector<uint8_t> xu(xf.size());
      for (auto& v : xu) v = uint8_t(frng());
      std::vector<uint32_t> out(size_t(batch) * 6 * 1024);
      // The ceiling is measured right before each kernel: this VM's speed drifts with its load.
      auto report = [&](const char* op, const char* family, double t, double (*ceiling_loop)(long), double per_iter) {
        const double peak = ceiling_loop ? rate(ceiling_loop, 20'000'000, per_iter) : 0;
        const double g = macs / t / 1e9;
        std::printf("| %s | %s | %d | %.1f us | %.0f | %s |\n", op, family, batch, t * 1e6, g,
                    peak > 0 ? (std::to_string(int(100 * g / peak + 0.5)) + " %").c_str() : "-");
        std::fflush(stdout);
      };
      const double min_t = batch == 1 ? min_s : min_s * 2;
      for (PopcountPath path : paths) {
        if (batch > 1 && path == PopcountPath::kPortable) continue;  // minutes; batch 1 says enough
        xnorpipe::conv_binarize::ConvBinarize conv(p, path);
        const auto packed = conv.pack_weights(wf.data());
        const double t = best_time([&] {
          conv.run(xf.data(), batch, 32, 32, packed, bias.data(), thr.data(), out.data(), serial_for);
        }, min_t);
        report("ConvBinarize (float)", path_name(path), t, path == PopcountPath::kAvx512 ? ceiling_fma_avx512 : nullptr,
               16.0 * 16);
      }
      for (auto isa : {cib::IntIsa::kAvx512Vnni, cib::IntIsa::kAvxVnni, cib::IntIsa::kAvx2, cib::IntIsa::kPortable}) {
        if (!cib::cpu_supports(isa) || (batch > 1 && isa == cib::IntIsa::kPortable)) continue;
        cib::ConvIntegerBinarize conv(p, isa);
        const auto packed = conv.pack_weights(wi.data());
        const double t = best_time([&] {
          conv.run(xu.data(), batch, 32, 32, packed, int_inputs, out.data(), serial_for);
        }, min_t);
        report("ConvIntegerBinarize (int8)", cib::isa_name(isa), t,
               isa == cib::IntIsa::kAvx512Vnni ? ceiling_vnni_avx512 : nullptr, 64.0 * 16);
      }
    }
  }

  std::printf("\n## Per layer, one thread (G binary MAC/s; %% of the ceiling %.0f)\n\n", ceiling);
  std::printf("| net | layer | Cin->Cout k g @HxW | batch | I/O | path | time | G binary MAC/s | %% ceiling |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  const std::string io_modes = argc > 4 ? argv[4] : "float";
  for (const Layer& l : layers)
    for (int batch : {1, 64}) {
      if (!only.empty() && only.find(std::string(l.net) + ":" + l.name) == std::string::npos) continue;
      BConv2DParams p;
      p.channels = l.cin; p.filters = l.cout; p.group = l.group;
      p.kernel_h = p.kernel_w = l.k;
      p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = l.pad;
      p.relu = true;
      std::vector<float> x(size_t(batch) * l.cin * l.hw * l.hw), thr(l.cin, 0.f), scale(l.cout, 0.5f), bias(l.cout, 0.1f);
      for (auto& v : x) v = normal(rng);
      std::vector<int32_t> w(size_t(l.cout) * p.taps() * p.words_per_tap());
      for (auto& v : w) v = int32_t(rng());
      const int64_t out_hw = p.out_h(l.hw) * p.out_w(l.hw);
      std::vector<float> y(size_t(batch) * l.cout * out_hw);
      const double macs = double(batch) * l.cout * out_hw * (l.cin / l.group) * l.k * l.k;
      // Bit tensors for the packed-bits I/O (contents do not change the speed).
      const bool bits_in_ok = l.group == 1 || (l.cin / l.group) % 32 == 0;
      std::vector<uint32_t> x_bits(size_t(batch) * num_words(l.cin) * l.hw * l.hw);
      binarize(x.data(), batch, l.cin, int64_t(l.hw) * l.hw, thr.data(), x_bits.data(), PopcountPath::kPortable, serial_for);
      std::vector<uint32_t> y_bits(size_t(batch) * num_words(l.cout) * out_hw);
      std::vector<float> out_thr(l.cout, 0.3f);
      for (PopcountPath path : paths)
        for (const char* io : {"float", "bits"}) {
          if (io_modes.find(io) == std::string::npos) continue;
          const bool bits = io[0] == 'b';
          if (bits && !bits_in_ok) continue;
          BConv2D conv(p, path);
          const PackedFilters f = conv.pack_filters(w.data());
          ConvInput in{x.data(), thr.data(), nullptr};
          ConvOutput out{y.data(), nullptr, nullptr};
          // As the ORT op runs it: bit output of a pointwise layer as popcount intervals.
          const PopcountIntervals intervals = conv.popcount_intervals(scale.data(), bias.data(), out_thr.data());
          if (bits) {
            in = ConvInput{nullptr, nullptr, x_bits.data()};
            if (l.bits_out) out = ConvOutput{nullptr, y_bits.data(), out_thr.data(), &intervals};
          }
          const double t = best_time([&] {
            conv.run(in, batch, l.hw, l.hw, f, scale.data(), bias.data(), out, serial_for);
          }, batch == 1 ? min_s : min_s * 2);
          const double g = macs / t / 1e9;
          std::printf("| %s | %s | %d->%d k%d g%d @%dx%d | %d | %s | %s | %.1f us | %.0f | %.0f %% |\n", l.net, l.name,
                      l.cin, l.cout, l.k, l.group, l.hw, l.hw, batch,
                      bits ? (l.bits_out ? "bits->bits" : "bits->float") : "float->float", path_name(path), t * 1e6, g,
                      100 * g / ceiling);
          std::fflush(stdout);
        }
    }
  return 0;
}
