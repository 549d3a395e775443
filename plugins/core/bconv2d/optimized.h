// Fast binary convolution: binarize + pack the input once per call, then an im2col-free
// ("indirect") xor/popcount GEMM. Filters sit in SIMD lanes (16 per zmm, 8 per ymm), weights
// pre-reordered once as [group][filter block][tap*word][lane]; each input word is broadcast
// and xor-ed against a whole filter block, for a tile of output pixels kept in registers.
// Tiles are transposed in registers before the store, so Y (NCHW) gets contiguous rows.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/bconv2d/params.h"
#include "core/bconv2d/select_kernel.h"
#include "core/bconv2d/zero_padding_correction.h"

namespace xnorpipe::bconv2d {

// parallel_for(count, body): run body(i) for every i in [0, count), possibly concurrently.
// The caller supplies it (ONNX Runtime's intra-op pool in the custom op); core has no pool.
using ParallelFor = std::function<void(std::size_t count, const std::function<void(std::size_t)>& body)>;
// Runs on the calling thread only.
void serial_for(std::size_t count, const std::function<void(std::size_t)>& body);
// Simple std::thread fallback (threads <= 1: serial).
ParallelFor thread_parallel_for(int threads);
// A thread pool's own loop, pool_for(count, item): runs item(i) for every i, on its workers.
using PoolFor = std::function<void(std::size_t count, const std::function<void(std::size_t)>& item)>;
// The only way core's kernels reach a pool: no exception ever crosses it (a pool worker cannot
// unwind one). Each work item runs inside a catch; the first exception is kept, the items not
// yet started are skipped, and it is rethrown on the calling thread once pool_for returns.
// One item runs inline, without the pool.
ParallelFor guarded_parallel_for(PoolFor pool_for);

// How every kernel splits its work (the one policy; kernels call split_for, not parallel_for).
// A kernel states how many items it has and what one costs, in estimated nanoseconds of one
// core from its shape and the rates below. A call too small to repay waking a pool thread runs
// on the calling thread; a larger one runs as consecutive runs of items, each at least
// kMinTaskNs, so no thread is handed work smaller than what handing it over costs. Estimates
// need only be right within a factor of ~2: they decide between one task and a few.
namespace cost {
// Rates of the AVX-512 kernels on the development machine (Zen 4), from per-node profiles of
// nin_xnornet and nin_gc_xnornet (benchmarks/xnor_cpu/profile_model.py); the other paths are
// slower, so for them a call goes parallel a little later than it could.
constexpr double kPopcountWordNs = 0.022;  // one filter x one output pixel x one input word (all taps)
constexpr double kFloatMacNs = 0.0095;      // ConvBinarize: one multiply-add
constexpr double kFloatValueNs = 0.06;      // one float read and compared or summed (packing, pools)
constexpr double kBitWordNs = 0.25;         // one bit word gathered or OR-ed (copies, BitMaxPool)
// Below this a call runs on the calling thread. Measured in ONNX Runtime's pool (2 threads): a
// parallel section costs as much as it saves at ~10 us of work (a Binarize of 2x64x32x32:
// 18.6 us split in two, 17.8 us inline) and halves the time from ~50 us on; and these
// estimates run 1-2x low for the smaller binary layers (per-call set-up they do not count).
constexpr double kSerialBelowNs = 20000;
// Each task (run of items) handed to the pool is at least this much work.
constexpr double kMinTaskNs = 10000;
}  // namespace cost

// The number of tasks split_for makes of `count` items of `item_ns` each: 1 below
// kSerialBelowNs, else as many as keep each >= kMinTaskNs (at least 2, at most count).
std::size_t split_tasks(std::size_t count, double item_ns);
// body(i) for every i in [0, count): inline on the calling thread when split_tasks says 1,
// else as split_tasks runs of consecutive items through parallel_for.
void split_for(const ParallelFor& parallel_for, std::size_t count, double item_ns,
               const std::function<void(std::size_t)>& body);

// Weights in the layout of one popcount path; built once per weight tensor.
struct PackedFilters {
  PopcountPath path = PopcountPath::kPortable;
  ConvKernel kernel = ConvKernel::kFiltersInLanes;
  int lanes = 1;             // filters per SIMD block (pointwise: filters per register block)
  int blocks_per_group = 0;  // ceil(Mg / lanes) (groups in lanes: 0, blocks are not per group)
  int k_words = 0;           // taps * nw
  // [G][blocks][k_words][lanes], pad filters/bits 0 (filters in lanes, pointwise); groups in
  // lanes: [Mg][G / 16][k_words][16], block (j, b) lane l = filter j of group 16 b + l; half-word
  // groups: [M / 32][k_words][32] 16-bit weights, block b lane l = output channel 32 b + l.
  std::vector<uint32_t> words;
  int filter_slots = 0;      // entries of the per-slot tables (>= M: pad filters)
  std::vector<int32_t> tap_popcount;   // [M][taps]
  std::vector<int32_t> masked;         // [M][kH][kW][nw] with pad bits cleared (reference path)
  int padded_filters() const { return filter_slots; }
  // Where filter m sits: block slots[m] / lanes, lane slots[m] % lanes (the scale, bias and
  // correction tables are indexed by slot; groups in lanes: slot = output channel). And the
  // output channel it writes, output_channel(m). Tables: no divisions in per-call loops.
  std::vector<int32_t> slots, channels;

  // Padding classes per input size (H, W), built on first use: they depend on the weights
  // and cost O(classes * M * taps), too much to redo on every call.
  struct ClassCache {
    std::mutex mutex;
    std::map<std::pair<int, int>, std::shared_ptr<const PaddingClasses>> by_size;
  };
  std::shared_ptr<ClassCache> class_cache = std::make_shared<ClassCache>();
};

// Arguments of one tile kernel call: one image, one group, one filter block, a pixel range.
struct TileArgs {
  const uint32_t* input;     // packed image, already offset to this group's first word
  const int32_t* pix_off;    // [>= pix_end rounded up to the tile] word offset of each output pixel's tap (0,0)
  const int32_t* pix_cls;    // padding class of each output pixel
  const int32_t* k_off;      // [k_words] word offset of (tap, word) relative to pix_off
  int k_words;
  const uint32_t* filters;   // [k_words][lanes] of this block
  const int32_t* correction; // [class * correction_stride + lane], at this block
  int correction_stride;
  const int32_t* valid_bits; // [class]
  const float* scale;        // [lanes] at this block (padded)
  const float* bias;
  bool relu;
  float* out;                // Y[n][first filter of block], plane of Ho*Wo floats per filter
  int64_t out_plane;
  int out_pixel_base = 0;    // pixel p goes to out[filter * out_plane + p - out_pixel_base]
  bool lanes_read_own_word = false;  // groups in lanes: lane l reads word l from the tap's offset
  // Half-word groups (tile_half_words_avx512): 32 16-bit lanes; the 16 words from the tap's
  // offset, or (16 groups) its 8 words in both halves. Bit output: one whole word per pixel,
  // out_bits32[p - out_pixel_base].
  bool broadcast_half = false;
  uint32_t* out_bits32 = nullptr;
  // Bit output (tile_avx512 only, blocks starting at a multiple of 16 filters): instead of
  // `out`, the 16 bits (y >= out_threshold) of pixel p go to out_bits16[2 * (p - out_pixel_base)],
  // one half of that pixel's output word.
  uint16_t* out_bits16 = nullptr;
  const float* out_threshold = nullptr;  // [lanes] at this block (padded)
  int lanes_valid;           // real filters in this block
  int pix_begin, pix_end;    // flattened output pixels, pix_begin multiple of the tile size
};

// Pointwise kernel (ConvKernel::kPointwise): one image, one group, one block of
// kPointwiseFilters filters, a range of pixels whose words are planar ([nw][stride]).
constexpr int kPointwiseFilters = 4;
struct PointwiseArgs {
  const uint32_t* input;     // planar words of this group at the range's first pixel: [nw][input_stride]
  int64_t input_stride;
  int nw;
  const uint32_t* filters;   // [nw][kPointwiseFilters] of this block
  const float* scale;        // [kPointwiseFilters] (padded)
  const float* bias;
  int32_t valid_bits;        // Cg: every tap is valid
  bool relu;
  float* out;                // Y[n][first filter of block][first pixel of the range]
  int64_t out_plane;
  int filters_valid;
  int npx;
  // Bit output instead of `out`: filter r's bit (y >= out_threshold[r]) is OR-ed into
  // out_bits[(m / 32) * out_bits_stride + pixel], m = first_filter + r * filter_stride (its
  // output channel); rows hold >= round_up(npx, 16).
  uint32_t* out_bits = nullptr;
  int64_t out_bits_stride = 0;
  const float* out_threshold = nullptr;  // [kPointwiseFilters] (padded)
  int first_filter = 0;
  int filter_stride = 1;
  // Optional, with out_bits: the bit as a popcount interval (PopcountIntervals), no float math;
  // used when the block's filters share one output word.
  const int32_t* out_pc_lo = nullptr;     // [kPointwiseFilters] (padded)
  const uint32_t* out_pc_range = nullptr;
};
void pointwise_avx512(const PointwiseArgs& a);

void tile_portable(const TileArgs& a);
void tile_avx2(const TileArgs& a);
void tile_avx512(const TileArgs& a);
void tile_half_words_avx512(const TileArgs& a);  // needs AVX-512 BW + BITALG (cpu_supports_half_words)

// Pixels per register tile (the pixel arrays are padded to a multiple of this).
constexpr int kMaxTilePixels = 16;

// What one call reads: float activations binarized with `threshold` (XnorConv2d), or the
// contract's bit tensor [N][ceil(C/32)][H*W] (XnorConv2dBits*, packed-bits form).
struct ConvInput {
  const float* x = nullptr;
  const float* threshold = nullptr;  // [C], with x
  const uint32_t* bits = nullptr;
};
// The fused binarization of a layer without padding as integer intervals: every tap is valid,
// so Y is a function of the xor popcount p in [0, valid] alone, and (y(p) >= threshold) holds on
// an interval of p (y is monotone in p, float rounding included): bit = (p - lo) <= range,
// unsigned. Built once per (scale, bias, threshold) by evaluating the float formula at every p;
// `exact` is false if some filter's bits are not an interval (e.g. an infinite scale), and then
// the float path is used.
struct PopcountIntervals {
  std::vector<int32_t> lo;     // [M]
  std::vector<uint32_t> range;  // [M]
  bool exact = true;
};

// What it writes: float Y [N][M][Ho*Wo], or Y binarized with `threshold` into bits
// [N][ceil(M/32)][Ho*Wo] (XnorConv2dBitsBinarize: the next layer's binarization, fused).
struct ConvOutput {
  float* y = nullptr;
  uint32_t* bits = nullptr;
  const float* threshold = nullptr;  // [M], with bits
  const PopcountIntervals* intervals = nullptr;  // optional, with bits (pointwise kernel)
};

class BConv2D {
 public:
  // Validates params (std::invalid_argument) and checks the CPU runs `path` (std::runtime_error).
  // `op` names the op in error messages (XnorConv2d, XnorConv2dBits, XnorConv2dBitsBinarize).
  BConv2D(const BConv2DParams& params, PopcountPath path, const char* op = "XnorConv2d");

  const BConv2DParams& params() const { return params_; }
  PopcountPath path() const { return path_; }

  // w: int32 [M, kH, kW, nw] in the contract's layout.
  PackedFilters pack_filters(const int32_t* w) const;

  // x [N,C,H,W] -> y [N,M,Ho,Wo]. Caller checks that Ho, Wo >= 1 (std::invalid_argument otherwise).
  void run(const float* x, int n_batch, int in_h, int in_w, const PackedFilters& filters, const float* threshold,
           const float* scale, const float* bias, float* y, const ParallelFor& parallel_for) const {
    run(ConvInput{x, threshold, nullptr}, n_batch, in_h, in_w, filters, scale, bias, ConvOutput{y, nullptr, nullptr},
        parallel_for);
  }
  // With bit output and no padding (pointwise layers): the intervals for this layer's
  // scale, bias and output threshold; empty if the layer has padding (valid counts vary).
  PopcountIntervals popcount_intervals(const float* scale, const float* bias, const float* out_threshold) const;
  // Any input and output kind. Bit input needs group == 1 or (C/group) % 32 == 0, so that
  // group g's channels are whole words (std::invalid_argument otherwise). n_batch == 0 returns
  // at once (the data pointers may then be null). Every buffer size is checked against
  // limits.h before it is allocated.
  void run(const ConvInput& in, int n_batch, int in_h, int in_w, const PackedFilters& filters, const float* scale,
           const float* bias, const ConvOutput& out, const ParallelFor& parallel_for) const;

 private:
  BConv2DParams params_;
  PopcountPath path_;
  const char* op_;
};

}  // namespace xnorpipe::bconv2d
