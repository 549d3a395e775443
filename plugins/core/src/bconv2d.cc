// Driver of the optimized binary convolution: weight reordering, input packing, padding
// classes, work split; the per-ISA tile kernels live in kernels_*.cc.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "core/bconv2d/binarize.h"
#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"
#include "core/bconv2d/output_transform.h"
#include "core/bconv2d/reference.h"
#include "core/bconv2d/zero_padding_correction.h"

namespace xnorpipe::bconv2d {

void serial_for(std::size_t count, const std::function<void(std::size_t)>& body) {
  for (std::size_t i = 0; i < count; ++i) body(i);
}

ParallelFor guarded_parallel_for(PoolFor pool_for) {
  return [pool_for = std::move(pool_for)](std::size_t count, const std::function<void(std::size_t)>& body) {
    if (count <= 1) {
      if (count == 1) body(0);
      return;
    }
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::exception_ptr first;
    pool_for(count, [&](std::size_t i) {
      if (failed.load(std::memory_order_relaxed)) return;
      try {
        body(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!first) first = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    });
    if (first) std::rethrow_exception(first);
  };
}

std::size_t split_tasks(std::size_t count, double item_ns) {
  if (count == 0) return 0;
  const double total = double(count) * std::max(item_ns, 0.0);
  if (count == 1 || !(total >= cost::kSerialBelowNs)) return 1;  // NaN: 1
  // Runs of at least ceil(kMinTaskNs / item_ns) whole items each.
  const double per_task = std::max(1.0, std::ceil(cost::kMinTaskNs / item_ns));
  const double tasks = std::floor(double(count) / per_task);
  return tasks < 2 ? 1 : std::size_t(tasks);
}

void split_for(const ParallelFor& parallel_for, std::size_t count, double item_ns,
               const std::function<void(std::size_t)>& body) {
  const std::size_t tasks = split_tasks(count, item_ns);
  if (tasks <= 1) {  // on this thread, no pool: exceptions unwind to the caller as usual
    for (std::size_t i = 0; i < count; ++i) body(i);
    return;
  }
  parallel_for(tasks, [&](std::size_t task) {
    const std::size_t end = count * (task + 1) / tasks;
    for (std::size_t i = count * task / tasks; i < end; ++i) body(i);
  });
}

ParallelFor thread_parallel_for(int threads) {
  if (threads <= 1) return serial_for;
  return guarded_parallel_for([threads](std::size_t count, const std::function<void(std::size_t)>& item) {
    // Items handed out by a shared counter: if a thread cannot be started, the others
    // (at least the calling one) still run every item.
    std::atomic<std::size_t> next{0};
    auto drain = [&] {
      for (std::size_t i; (i = next.fetch_add(1)) < count;) item(i);
    };
    std::vector<std::thread> pool;
    try {
      for (std::size_t t = 1; t < std::min<std::size_t>(threads, count); ++t) pool.emplace_back(drain);
    } catch (const std::system_error&) {
    }
    drain();
    for (auto& th : pool) th.join();
  });
}

namespace {

int lanes_of(PopcountPath path) {
  switch (path) {
    case PopcountPath::kAvx512: return 16;
    case PopcountPath::kAvx2: return 8;
    default: return 8;
  }
}

uint32_t channel_mask(int channels_in_word) {
  return channels_in_word >= 32 ? 0xffffffffu : ((1u << channels_in_word) - 1u);
}

int popcount32(uint32_t v) { return __builtin_popcount(v); }

}  // namespace

BConv2D::BConv2D(const BConv2DParams& params, PopcountPath path, const char* op)
    : params_(params), path_(path), op_(op) {
  params_.validate(op_);
  if (!cpu_supports(path))
    throw std::runtime_error(std::string(op_) + ": this CPU does not support the " + path_name(path) +
                             " popcount path");
}

PackedFilters BConv2D::pack_filters(const int32_t* w) const {
  const BConv2DParams& p = params_;
  const int G = p.group, mg = p.filters_per_group(), cg = p.channels_per_group(), nw = p.words_per_tap();
  const int taps = p.taps();
  PackedFilters f;
  f.path = path_;
  f.kernel = select_conv_kernel(p, path_);
  const bool by_channel = f.kernel == ConvKernel::kGroupsInLanes || f.kernel == ConvKernel::kHalfWordGroups;
  f.lanes = f.kernel == ConvKernel::kPointwise ? kPointwiseFilters : f.kernel == ConvKernel::kHalfWordGroups ? 32 : lanes_of(path_);
  f.blocks_per_group = by_channel ? 0 : (mg + f.lanes - 1) / f.lanes;
  f.k_words = taps * nw;
  f.filter_slots = by_channel ? p.filters : G * f.blocks_per_group * f.lanes;
  f.slots.resize(p.filters);
  f.channels.resize(p.filters);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < mg; ++j) {
      const int m = g * mg + j;
      f.channels[m] = p.shuffle_output ? j * G + g : m;
      f.slots[m] = by_channel ? f.channels[m] : g * f.blocks_per_group * f.lanes + j;
    }
  // Contract: bits past Cg "are 0 and are ignored": clear them rather than trust them.
  f.masked.resize(size_t(p.filters) * f.k_words);
  f.tap_popcount.assign(size_t(p.filters) * taps, 0);
  for (int m = 0; m < p.filters; ++m)
    for (int t = 0; t < taps; ++t)
      for (int q = 0; q < nw; ++q) {
        const size_t idx = (size_t(m) * taps + t) * nw + q;
        const uint32_t v = static_cast<uint32_t>(w[idx]) & channel_mask(cg - q * kWordBits);
        f.masked[idx] = static_cast<int32_t>(v);
        f.tap_popcount[size_t(m) * taps + t] += popcount32(v);
      }
  if (path_ == PopcountPath::kReference) return f;
  if (f.kernel == ConvKernel::kHalfWordGroups) {  // 16-bit weights: block slot / 32, lane slot % 32
    f.words.assign(size_t(p.filters) * f.k_words / 2, 0u);
    uint16_t* halves = reinterpret_cast<uint16_t*>(f.words.data());
    for (int m = 0; m < p.filters; ++m) {
      const int slot = f.slots[m];
      uint16_t* block = halves + size_t(slot / 32) * f.k_words * 32;
      for (int k = 0; k < f.k_words; ++k)
        block[size_t(k) * 32 + slot % 32] = uint16_t(f.masked[size_t(m) * f.k_words + k]);  // 16 channels
    }
    return f;
  }
  if (f.kernel == ConvKernel::kGroupsInLanes) {  // block slot / 16, lane slot % 16 (no pad filters)
    f.words.assign(size_t(p.filters) * f.k_words, 0u);
    for (int m = 0; m < p.filters; ++m) {
      const int slot = f.slots[m];
      uint32_t* block = f.words.data() + size_t(slot / f.lanes) * f.k_words * f.lanes;
      for (int k = 0; k < f.k_words; ++k)
        block[size_t(k) * f.lanes + slot % f.lanes] = static_cast<uint32_t>(f.masked[size_t(m) * f.k_words + k]);
    }
    return f;
  }
  f.words.assign(size_t(G) * f.blocks_per_group * f.k_words * f.lanes, 0u);
  for (int m = 0; m < p.filters; ++m) {
    const int g = m / mg, local = m % mg, b = local / f.lanes, lane = local % f.lanes;
    uint32_t* block = f.words.data() + (size_t(g) * f.blocks_per_group + b) * f.k_words * f.lanes;
    for (int k = 0; k < f.k_words; ++k)
      block[size_t(k) * f.lanes + lane] = static_cast<uint32_t>(f.masked[size_t(m) * f.k_words + k]);
  }
  return f;
}

void binarize_rows(const float* x, int64_t x_stride, const float* threshold, int channels, int npx, uint32_t* out,
                   int64_t out_stride, PopcountPath path) {
  const int words = num_words(channels);
  if (path == PopcountPath::kAvx512 && npx > 0) {
    // The planar packer writes whole 16-pixel vectors: pack into a scratch row block, copy npx.
    const int64_t stride = (npx + 15) / 16 * 16;
    thread_local std::vector<uint32_t> tmp;
    if (tmp.size() < size_t(words) * stride) tmp.resize(size_t(words) * stride);
    pack_planar_avx512({x, x_stride, threshold, 1, channels, words, npx, tmp.data(), stride});
    for (int q = 0; q < words; ++q) std::memcpy(out + q * out_stride, tmp.data() + q * stride, size_t(npx) * 4);
    return;
  }
  for (int q = 0; q < words; ++q) {
    uint32_t* o = out + q * out_stride;
    std::memset(o, 0, size_t(npx) * 4);
    const int count = std::min(kWordBits, channels - q * kWordBits);
    for (int k = 0; k < count; ++k) {
      const int c = q * kWordBits + k;
      const float* src = x + c * x_stride;
      const float thr = threshold[c];
      for (int i = 0; i < npx; ++i) o[i] |= uint32_t(src[i] >= thr) << k;  // NaN -> 0
    }
  }
}

void binarize(const float* x, int n_batch, int channels, int64_t plane, const float* threshold, uint32_t* bits,
              PopcountPath path, const ParallelFor& parallel_for) {
  constexpr int kChunk = 512;
  const int words = num_words(channels);
  const int64_t chunks = (plane + kChunk - 1) / kChunk;
  split_for(parallel_for, size_t(n_batch * chunks), double(std::min<int64_t>(kChunk, plane)) * channels * cost::kFloatValueNs,
            [&](size_t item) {
    const int64_t n = int64_t(item) / chunks, p0 = int64_t(item) % chunks * kChunk;
    const int npx = int(std::min<int64_t>(kChunk, plane - p0));
    binarize_rows(x + n * channels * plane + p0, plane, threshold, channels, npx, bits + n * words * plane + p0,
                  plane, path);
  });
}

PopcountIntervals BConv2D::popcount_intervals(const float* scale, const float* bias,
                                              const float* out_threshold) const {
  const BConv2DParams& p = params_;
  PopcountIntervals iv;
  if (p.pad_top || p.pad_left || p.pad_bottom || p.pad_right) {
    iv.exact = false;
    return iv;
  }
  const int valid = p.channels_per_group() * p.taps();
  iv.lo.resize(p.filters);
  iv.range.resize(p.filters);
  for (int m = 0; m < p.filters && iv.exact; ++m) {
    // The kernel's own arithmetic at every popcount; the set bits must be one interval.
    // Filter m's bit is output channel output_channel(m): that channel's threshold.
    const float threshold = out_threshold[p.output_channel(m)];
    int first = -1, last = -2;
    for (int pc = 0; pc <= valid; ++pc) {
      const float y = output_transform(xnor_sum(valid, pc), scale[m], bias[m], p.relu);
      if (!(y >= threshold)) continue;  // NaN -> 0
      if (first < 0) first = pc;
      else if (last != pc - 1) iv.exact = false;
      last = pc;
    }
    if (first < 0) {  // never set: an empty interval
      iv.lo[m] = valid + 1;
      iv.range[m] = 0;
    } else {
      iv.lo[m] = first;
      iv.range[m] = uint32_t(last - first);
    }
  }
  return iv;
}

void BConv2D::run(const ConvInput& in, int n_batch, int in_h, int in_w, const PackedFilters& filters,
                  const float* scale, const float* bias, const ConvOutput& out,
                  const ParallelFor& parallel_for) const {
  const BConv2DParams& p = params_;
  auto fail = [this](const std::string& what) { size_error(op_, what); };
  if (n_batch < 0 || in_h < 1 || in_w < 1) fail("empty input image");
  const int64_t out_h64 = p.out_h(in_h), out_w64 = p.out_w(in_w);
  if (out_h64 < 1 || out_w64 < 1)
    fail("output size " + std::to_string(out_h64) + "x" + std::to_string(out_w64) +
         " <= 0 (input too small for kernel, dilation and pads)");
  if (filters.path != path_ || (path_ != PopcountPath::kReference && filters.words.empty()))
    fail("filters were packed for another popcount path");
  if (n_batch == 0) return;  // an empty batch: ORT may hand null data pointers
  if ((in.bits != nullptr) == (in.x != nullptr) || (in.x && !in.threshold))
    fail("give either float input with thresholds or bits");
  if ((out.bits != nullptr) == (out.y != nullptr) || (out.bits && !out.threshold))
    fail("give either a float output or bits with thresholds");
  // Sizes in 64 bits (saturating), checked before anything is allocated: the output (float Y
  // or its float block), the pixel tables and the packed image use 32-bit offsets.
  const int64_t in_plane = int64_t(in_h) * in_w;
  const int64_t in_image = sat_mul(p.channels, in_plane);
  const int64_t out_plane = sat_mul(out_h64, out_w64);
  check_elements(op_, "the output", sat_mul(n_batch, out.bits ? num_words(p.filters) : p.filters, out_plane));
  const int out_w = int(out_w64);  // <= in_w + pads < 2^31
  const int in_words = num_words(p.channels), out_words = num_words(p.filters);
  // Bit input: word j of pixel i, with the bits past C cleared (the contract ignores them).
  const uint32_t last_word_mask = channel_mask(p.channels - (in_words - 1) * kWordBits);
  auto in_word = [&](int n, int j, int64_t pixel) {
    const uint32_t v = in.bits[(int64_t(n) * in_words + j) * in_plane + pixel];
    return j == in_words - 1 ? v & last_word_mask : v;
  };
  // Bit input as the kernels read it: word q of group g (j = g * nw + q) holds the group's
  // channels 32q.. from bit 0. Cg need not be a multiple of 32, so such a word may start inside
  // a tensor word and spill into the next: where each comes from, once per call.
  struct GroupWord {
    int64_t offset;  // of its first tensor word, in words from the image's first
    int shift;
    bool spill;      // also the next tensor word's low bits
    uint32_t mask;   // the group's channels (bits past the group or C cleared)
  };
  std::vector<GroupWord> group_words_from;
  if (in.bits) {
    const int cg = p.channels_per_group(), nw = p.words_per_tap();
    for (int g = 0; g < p.group; ++g)
      for (int q = 0; q < nw; ++q) {
        const int first = g * cg + q * kWordBits, count = std::min(kWordBits, cg - q * kWordBits);
        group_words_from.push_back({int64_t(first / kWordBits) * in_plane, first % kWordBits,
                                    first % kWordBits + count > kWordBits, channel_mask(count)});
      }
  }
  // Group word j of image n at `pixel` (in.bits).
  auto group_word = [&](int n, int j, int64_t pixel) -> uint32_t {
    const GroupWord& from = group_words_from[j];
    const uint32_t* at = in.bits + int64_t(n) * in_words * in_plane + from.offset + pixel;
    const uint64_t v = from.spill ? uint64_t(at[0]) | uint64_t(at[in_plane]) << kWordBits : uint64_t(at[0]);
    return uint32_t(v >> from.shift) & from.mask;
  };

  if (path_ == PopcountPath::kReference) {
    // The contract, literally: bits become +-1 floats binarized at 0; bit output binarizes Y.
    std::vector<float> x_pm1, zero_thr, y_tmp;
    const float* x = in.x;
    const float* thr = in.threshold;
    if (in.bits) {
      check_elements(op_, "the reference path's float input", sat_mul(n_batch, in_image));
      x_pm1.resize(size_t(n_batch) * in_image);
      zero_thr.assign(p.channels, 0.f);
      for (int n = 0; n < n_batch; ++n)
        for (int c = 0; c < p.channels; ++c)
          for (int64_t i = 0; i < in_plane; ++i)
            x_pm1[(int64_t(n) * p.channels + c) * in_plane + i] = (in_word(n, c / kWordBits, i) >> (c % kWordBits)) & 1u ? 1.f : -1.f;
      x = x_pm1.data();
      thr = zero_thr.data();
    }
    float* y = out.y;
    if (out.bits) {
      check_elements(op_, "the reference path's float output", sat_mul(n_batch, p.filters, out_plane));
      y_tmp.resize(size_t(n_batch) * p.filters * out_plane);
      y = y_tmp.data();
    }
    // The reference computes the filters in W's order; a shuffled output is permuted after.
    const bool permute = p.shuffle_output && p.group > 1;
    if (permute && !out.bits) {
      check_elements(op_, "the reference path's float output", sat_mul(n_batch, p.filters, out_plane));
      y_tmp.resize(size_t(n_batch) * p.filters * out_plane);
      y = y_tmp.data();
    }
    const double image_ns = double(p.filters) * out_plane * filters.k_words * 32 * cost::kPopcountWordNs;
    split_for(parallel_for, size_t(n_batch), image_ns, [&](size_t n) {
      reference_bconv2d(p, x + n * in_image, 1, in_h, in_w, filters.masked.data(), thr, scale, bias,
                        y + n * p.filters * out_plane);
    });
    if (permute) {
      std::vector<float> shuffled(out.bits ? size_t(n_batch) * p.filters * out_plane : 0);
      float* dst = out.bits ? shuffled.data() : out.y;
      for (int n = 0; n < n_batch; ++n)
        for (int m = 0; m < p.filters; ++m)
          std::memcpy(dst + (int64_t(n) * p.filters + p.output_channel(m)) * out_plane,
                      y + (int64_t(n) * p.filters + m) * out_plane, size_t(out_plane) * sizeof(float));
      if (out.bits) y_tmp.swap(shuffled);
      y = y_tmp.data();
    }
    if (out.bits) binarize(y, n_batch, p.filters, out_plane, out.threshold, out.bits, PopcountPath::kPortable, parallel_for);
    return;
  }

  const int G = p.group, cg = p.channels_per_group(), mg = p.filters_per_group(), nw = p.words_per_tap();
  const int lanes = filters.lanes, blocks = filters.blocks_per_group;
  const int padded_filters = filters.padded_filters();
  if (filters.kernel != select_conv_kernel(p, path_) || padded_filters < p.filters)
    fail("filters were packed for another layer");
  const bool groups_in_lanes = filters.kernel == ConvKernel::kGroupsInLanes;
  if (filters.slots.size() != size_t(p.filters) || filters.channels.size() != size_t(p.filters))
    fail("filters were packed for another layer");
  auto slot_of = [&](int m) { return filters.slots[m]; };
  std::vector<float> scale_padded(padded_filters, 0.f), bias_padded(padded_filters, 0.f);
  for (int m = 0; m < p.filters; ++m) {
    scale_padded[slot_of(m)] = scale[m];
    bias_padded[slot_of(m)] = bias[m];
  }
  std::vector<float> out_thr_padded;
  std::vector<int32_t> pc_lo_padded;
  std::vector<uint32_t> pc_range_padded;
  if (out.bits) {
    out_thr_padded.assign(padded_filters, 0.f);
    for (int m = 0; m < p.filters; ++m)
      out_thr_padded[slot_of(m)] = out.threshold[filters.channels[m]];
    if (out.intervals && out.intervals->exact && int(out.intervals->lo.size()) == p.filters) {
      pc_lo_padded.assign(padded_filters, 0);
      pc_range_padded.assign(padded_filters, 0u);
      for (int m = 0; m < p.filters; ++m) {
        pc_lo_padded[slot_of(m)] = out.intervals->lo[m];
        pc_range_padded[slot_of(m)] = out.intervals->range[m];
      }
    }
  }
  // Bit output: a work item covers every filter of its pixels and builds their output words
  // in a small buffer [ceil(M/32)][chunk]; Y itself never reaches memory.
  thread_local std::vector<uint32_t> word_block;
  auto begin_words = [&](int64_t stride) {
    if (word_block.size() < size_t(out_words) * stride) word_block.resize(size_t(out_words) * stride);
    std::fill(word_block.begin(), word_block.begin() + size_t(out_words) * stride, 0u);
  };
  auto store_words = [&](int n, int p0, int npx, int64_t stride) {
    for (int q = 0; q < out_words; ++q)
      std::memcpy(out.bits + (int64_t(n) * out_words + q) * out_plane + p0, word_block.data() + q * stride,
                  size_t(npx) * sizeof(uint32_t));
  };

  if (filters.kernel == ConvKernel::kPointwise) {
    // Pack and compute per (image, pixel chunk): the chunk's packed words (<= G*nw KiB) stay in
    // L1 between the two, with no whole-batch packed buffer to allocate or stream through.
    constexpr int kChunk = 256;
    const int64_t plane = in_plane;  // == out_plane
    const int64_t chunks = (plane + kChunk - 1) / kChunk;
    // Bit input read in place when no word needs masking or shifting and no vector crosses the
    // plane end.
    const bool bits_in_place = in.bits && p.channels % kWordBits == 0 && cg % kWordBits == 0 && plane % 16 == 0;
    const double chunk_px = double(std::min<int64_t>(kChunk, plane));
    const double item_ns = chunk_px * (double(p.filters) * nw * cost::kPopcountWordNs +
                                       (in.x ? p.channels * cost::kFloatValueNs : 0.0));
    split_for(parallel_for, size_t(n_batch * chunks), item_ns, [&](size_t item) {
      const int n = int(item / chunks);
      const int p0 = int(item % chunks) * kChunk;
      const int npx = int(std::min<int64_t>(kChunk, plane - p0));
      int64_t stride = (npx + 15) / 16 * 16;
      thread_local std::vector<uint32_t> buf;
      if (buf.size() < size_t(G) * nw * stride) buf.resize(size_t(G) * nw * stride);
      const uint32_t* input = buf.data();
      if (in.x) {
        pack_planar_avx512({in.x + n * in_image + p0, plane, in.threshold, G, cg, nw, npx, buf.data(), stride});
      } else if (bits_in_place) {
        input = in.bits + int64_t(n) * in_words * plane + p0;
        stride = plane;
      } else {  // group g's words at g*nw.., each group's channels from bit 0; zero the 16-pixel tail
        for (int j = 0; j < G * nw; ++j) {
          uint32_t* row = buf.data() + j * stride;
          for (int i = 0; i < npx; ++i) row[i] = group_word(n, j, p0 + i);
          std::fill(row + npx, row + stride, 0u);
        }
      }
      if (out.bits) begin_words(kChunk);
      for (int g = 0; g < G; ++g)
        for (int b = 0; b < blocks; ++b) {
          const int slot0 = (g * blocks + b) * lanes;
          const int first_filter = g * mg + b * lanes;
          PointwiseArgs a;
          a.input = input + size_t(g) * nw * stride;
          a.input_stride = stride;
          a.nw = nw;
          a.filters = filters.words.data() + size_t(g * blocks + b) * nw * lanes;
          a.scale = scale_padded.data() + slot0;
          a.bias = bias_padded.data() + slot0;
          a.valid_bits = cg;
          a.relu = p.relu;
          a.out = out.y ? out.y + (int64_t(n) * p.filters + filters.channels[first_filter]) * plane + p0 : nullptr;
          a.out_plane = plane * p.output_channel_stride();
          a.filters_valid = std::min(lanes, mg - b * lanes);
          a.npx = npx;
          if (out.bits) {
            a.out_bits = word_block.data();
            a.out_bits_stride = kChunk;
            a.out_threshold = out_thr_padded.data() + slot0;
            a.first_filter = filters.channels[first_filter];
            a.filter_stride = p.output_channel_stride();
            if (!pc_lo_padded.empty()) {
              a.out_pc_lo = pc_lo_padded.data() + slot0;
              a.out_pc_range = pc_range_padded.data() + slot0;
            }
          }
          pointwise_avx512(a);
        }
      if (out.bits) store_words(n, p0, npx, kChunk);
    });
    return;
  }

  // Words per pixel of the packed image: each group's words (whole words from bit 0), or, for
  // half-word groups, the bit tensor's own words (two 16-channel groups to a word).
  const bool half_words = filters.kernel == ConvKernel::kHalfWordGroups;
  const int group_words = half_words ? in_words : G * nw;
  const int64_t padded_h64 = int64_t(in_h) + p.pad_top + p.pad_bottom, padded_w64 = int64_t(in_w) + p.pad_left + p.pad_right;
  const int64_t image_words = sat_mul(padded_h64, padded_w64, group_words);
  check_elements(op_, "the zero-padded packed input", sat_mul(image_words, n_batch));
  check_elements(op_, "the output plane in whole tiles", sat_add(out_plane, kMaxTilePixels));
  const int padded_h = int(padded_h64), padded_w = int(padded_w64);

  // 1. Binarize + pack (or copy the bits) once per call. Border pixels of the padded image
  //    are zero bits.
  std::unique_ptr<uint32_t[]> packed(new uint32_t[size_t(image_words) * n_batch]);
  const size_t row_words = size_t(padded_w) * group_words;
  for (int n = 0; n < n_batch; ++n) {
    uint32_t* img = packed.get() + n * image_words;
    for (int h = 0; h < padded_h; ++h) {
      uint32_t* row = img + h * row_words;
      if (h < p.pad_top || h >= p.pad_top + in_h) {
        std::memset(row, 0, row_words * sizeof(uint32_t));
      } else {
        std::memset(row, 0, size_t(p.pad_left) * group_words * sizeof(uint32_t));
        std::memset(row + size_t(p.pad_left + in_w) * group_words, 0, size_t(p.pad_right) * group_words * sizeof(uint32_t));
      }
    }
  }
  if (in.bits) {
    // Planar words -> pixel-major: 1/32 of the float pack's traffic.
    split_for(parallel_for, size_t(n_batch) * in_h, double(in_w) * group_words * cost::kBitWordNs, [&](size_t item) {
      const int n = int(item / in_h), h = int(item % in_h);
      uint32_t* row = packed.get() + n * image_words + (size_t(h + p.pad_top) * padded_w + p.pad_left) * group_words;
      for (int j = 0; j < group_words; ++j)
        for (int w = 0; w < in_w; ++w)
          row[size_t(w) * group_words + j] = half_words ? in_word(n, j, int64_t(h) * in_w + w)
                                                        : group_word(n, j, int64_t(h) * in_w + w);
    });
  } else {
    void (*pack_fn)(const PackArgs&) = path_ == PopcountPath::kAvx512 ? pack_avx512
                                       : path_ == PopcountPath::kAvx2 ? pack_avx2
                                                                      : pack_portable;
    const int64_t in_pixels = in_plane;  // < image_words: fits int
    constexpr int kPackChunk = 256;
    const int64_t pack_chunks = (in_pixels + kPackChunk - 1) / kPackChunk;
    const double chunk_ns = double(std::min<int64_t>(kPackChunk, in_pixels)) * p.channels * cost::kFloatValueNs;
    split_for(parallel_for, size_t(n_batch) * pack_chunks, chunk_ns, [&](size_t item) {
      const int n = int(item / pack_chunks);
      const int64_t begin = int64_t(item % pack_chunks) * kPackChunk;
      PackArgs a{in.x + n * in_image, in.threshold, p.channels, in_h, in_w, half_words ? 1 : G,
                 half_words ? p.channels : cg, half_words ? in_words : nw, packed.get() + n * image_words,
                 padded_w, p.pad_top, p.pad_left,
                 int(begin), int(std::min<int64_t>(in_pixels, begin + kPackChunk))};
      pack_fn(a);
    });
  }

  // 2. Padding classes, pixel and tap offsets.
  std::shared_ptr<const PaddingClasses> classes_ptr;
  {
    std::lock_guard<std::mutex> lock(filters.class_cache->mutex);
    auto& slot = filters.class_cache->by_size[{in_h, in_w}];
    if (!slot)
      slot = std::make_shared<const PaddingClasses>(build_padding_classes(
          p, in_h, in_w, filters.tap_popcount, padded_filters, slot_of,
          op_));
    classes_ptr = slot;
  }
  const PaddingClasses& classes = *classes_ptr;
  const int padded_pixels = int((out_plane + kMaxTilePixels - 1) / kMaxTilePixels * kMaxTilePixels);
  std::vector<int32_t> pix_off(padded_pixels), pix_cls(padded_pixels);
  for (int pix = 0; pix < padded_pixels; ++pix) {
    const int q = int(std::min<int64_t>(pix, out_plane - 1));  // tail tiles repeat the last pixel
    const int oh = q / out_w, ow = q % out_w;
    pix_off[pix] = int32_t((int64_t(oh) * p.stride_h * padded_w + int64_t(ow) * p.stride_w) * group_words);
    pix_cls[pix] = classes.row_class[oh] * classes.num_col_classes + classes.col_class[ow];
  }
  std::vector<int32_t> k_off(filters.k_words);
  for (int i = 0; i < p.kernel_h; ++i)
    for (int j = 0; j < p.kernel_w; ++j)
      for (int q = 0; q < nw; ++q)
        k_off[(i * p.kernel_w + j) * nw + q] =
            int32_t((int64_t(i) * p.dilation_h * padded_w + int64_t(j) * p.dilation_w) * group_words + q);
  // 3. Tiles: (image, filter block, pixel chunk); with bit output (image, pixel chunk) covering
  //    every block, so the chunk's Y is complete before it is binarized. Block `block` holds
  //    slots block * lanes ..: filters in lanes, group block / blocks; groups in lanes, filter
  //    block / (G / 16) of groups 16 * (block % (G / 16)) .., output channels slot0 ..; half-word
  //    groups, output channels slot0 .. slot0 + 31 (slot0 = 32 * block).
  void (*tile_fn)(const TileArgs&) = half_words ? tile_half_words_avx512
                                     : path_ == PopcountPath::kAvx512 ? tile_avx512
                                     : path_ == PopcountPath::kAvx2 ? tile_avx2
                                                                    : tile_portable;
  const bool by_channel = groups_in_lanes || half_words;  // slot = output channel
  const int total_blocks = padded_filters / lanes;
  // Output channel of the block's first lane and the channels between its lanes.
  auto block_channel = [&](int block) {
    return by_channel ? block * lanes : filters.channels[(block / blocks) * mg + (block % blocks) * lanes];
  };
  const int lane_channels = by_channel ? 1 : p.output_channel_stride();
  // The block's first input word in a pixel: its group's; groups in lanes, its 16 groups';
  // half-word groups, its 32 groups' (16 words), or with 16 groups the pixel's 8 words.
  auto block_input = [&](int block) {
    if (half_words) return G == 16 ? 0 : (block % (G / 32)) * 16;
    return groups_in_lanes ? (block % (G / lanes)) * lanes * nw : (block / blocks) * nw;
  };
  auto tile_args = [&](int n, int block, int pix_begin, int pix_end) {
    const int slot0 = block * lanes;
    TileArgs a;
    a.input = packed.get() + n * image_words + block_input(block);
    a.lanes_read_own_word = groups_in_lanes;
    a.broadcast_half = half_words && G == 16;
    a.pix_off = pix_off.data();
    a.pix_cls = pix_cls.data();
    a.k_off = k_off.data();
    a.k_words = filters.k_words;
    a.filters = filters.words.data() + size_t(block) * filters.k_words * (half_words ? lanes / 2 : lanes);  // 16-bit
    a.correction = classes.correction.data() + slot0;
    a.correction_stride = padded_filters;
    a.valid_bits = classes.valid_bits.data();
    a.scale = scale_padded.data() + slot0;
    a.bias = bias_padded.data() + slot0;
    a.relu = p.relu;
    a.out = out.y ? out.y + (int64_t(n) * p.filters + block_channel(block)) * out_plane : nullptr;
    a.out_plane = out_plane * lane_channels;
    a.lanes_valid = by_channel ? lanes : std::min(lanes, mg - (block % blocks) * lanes);
    a.pix_begin = pix_begin;
    a.pix_end = pix_end;
    return a;
  };
  if (out.bits) {
    // Small chunks when there is little work, so that two threads still get items.
    const int kChunk = n_batch * out_plane >= 1024 ? 128 : 32;  // multiples of every tile size
    const int chunks = int((out_plane + kChunk - 1) / kChunk);
    // AVX-512 writes 16 lanes' bits as one half-word when they are 16 consecutive output
    // channels from a multiple of 16; otherwise Y goes through a float block.
    const bool halves = half_words || (path_ == PopcountPath::kAvx512 && lanes == 16 &&
                                       (groups_in_lanes || G == 1 || (mg % 16 == 0 && !p.shuffle_output)));
    thread_local std::vector<float> y_block;
    const double chunk_ns = double(std::min<int64_t>(kChunk, out_plane)) * p.filters * filters.k_words * cost::kPopcountWordNs;
    split_for(parallel_for, size_t(n_batch) * chunks, chunk_ns, [&](size_t item) {
      const int n = int(item / chunks), p0 = int(item % chunks) * kChunk;
      const int p1 = int(std::min<int64_t>(out_plane, int64_t(p0) + kChunk));
      begin_words(kChunk);
      if (!halves && y_block.size() < size_t(p.filters) * kChunk) y_block.resize(size_t(p.filters) * kChunk);
      for (int block = 0; block < total_blocks; ++block) {
        const int channel = block_channel(block);
        TileArgs a = tile_args(n, block, p0, p1);
        a.out_pixel_base = p0;
        if (half_words) {  // the block's 32 channels are one whole output word
          a.out_bits32 = word_block.data() + (channel / kWordBits) * kChunk;
          a.out_threshold = out_thr_padded.data() + block * lanes;
        } else if (halves) {
          a.out_bits16 = reinterpret_cast<uint16_t*>(word_block.data() + (channel / kWordBits) * kChunk) +
                         (channel / 16) % 2;  // little-endian: bits 0-15 are the low half
          a.out_threshold = out_thr_padded.data() + block * lanes;
        } else {
          a.out = y_block.data() + int64_t(channel) * kChunk;
          a.out_plane = int64_t(kChunk) * lane_channels;
        }
        tile_fn(a);
      }
      if (!halves)
        binarize_rows(y_block.data(), kChunk, out.threshold, p.filters, p1 - p0, word_block.data(), kChunk, path_);
      store_words(n, p0, p1 - p0, kChunk);
    });
    return;
  }
  constexpr int kPixelChunk = 128;  // multiple of every tile size
  const int chunks = int((out_plane + kPixelChunk - 1) / kPixelChunk);
  const size_t items = size_t(n_batch) * total_blocks * chunks;
  const double item_ns = double(std::min<int64_t>(kPixelChunk, out_plane)) * lanes * filters.k_words * cost::kPopcountWordNs;
  split_for(parallel_for, items, item_ns, [&](size_t item) {
    const int chunk = int(item % chunks);
    const int block = int(item / chunks % total_blocks);
    const int n = int(item / chunks / total_blocks);
    tile_fn(tile_args(n, block, chunk * kPixelChunk, int(std::min<int64_t>(out_plane, int64_t(chunk + 1) * kPixelChunk))));
  });
}

}  // namespace xnorpipe::bconv2d
