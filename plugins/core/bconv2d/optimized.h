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

// Weights in the layout of one popcount path; built once per weight tensor.
struct PackedFilters {
  PopcountPath path = PopcountPath::kPortable;
  ConvKernel kernel = ConvKernel::kFiltersInLanes;
  int lanes = 1;             // filters per SIMD block (pointwise: filters per register block)
  int blocks_per_group = 0;  // ceil(Mg / lanes)
  int k_words = 0;           // taps * nw
  std::vector<uint32_t> words;         // [G][blocks][k_words][lanes], pad filters/bits 0 (both kernels)
  std::vector<int32_t> tap_popcount;   // [M][taps]
  std::vector<int32_t> masked;         // [M][kH][kW][nw] with pad bits cleared (reference path)
  int padded_filters() const { return int(words.size() / (size_t(k_words) * lanes)) * lanes; }

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
  // Bit output instead of `out`: filter m's bit (y >= out_threshold[r]) is OR-ed into
  // out_bits[(m / 32) * out_bits_stride + pixel], m = first_filter + r; rows hold >= round_up(npx, 16).
  uint32_t* out_bits = nullptr;
  int64_t out_bits_stride = 0;
  const float* out_threshold = nullptr;  // [kPointwiseFilters] (padded)
  int first_filter = 0;
  // Optional, with out_bits: the bit as a popcount interval (PopcountIntervals), no float math;
  // used when the block's filters share one output word.
  const int32_t* out_pc_lo = nullptr;     // [kPointwiseFilters] (padded)
  const uint32_t* out_pc_range = nullptr;
};
void pointwise_avx512(const PointwiseArgs& a);

void tile_portable(const TileArgs& a);
void tile_avx2(const TileArgs& a);
void tile_avx512(const TileArgs& a);

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
