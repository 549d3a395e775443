// ConvIntegerBinarize: the integer first layer of a binary net (docs/XNORCONV2D.md,
// `xnorpipe::ConvIntegerBinarize`). Input: the decoded image, uint8 NHWC. Two integer sums over
// the taps (i, j) of output pixel p, the same zero point z (uint8 [C]) for both:
//   acc[n, m, p]  = sum: in the image W[m, c, i, j] * (X[n, tap, c] - z[c]) (summed over c),
//                        in the padding pad_value[m, i, j]         (W int8, pad_value int16)
//   fine[n, m, p] = the same with fine_weight (int32) and fine_pad_value (int32)
// and the bit, per filter m:
//   acc >  threshold[m] + margin[m]        -> 1      (int32 threshold, int32 margin)
//   acc <  threshold[m] - margin[m]        -> 0
//   otherwise                              -> fine >= fine_threshold[m]   (int64)
// (margin < 0: acc >= threshold decides everywhere). Bits past M are 0. Both sums are exact
// (acc in int32: (C + 1) * kH * kW <= 32768, checked; fine in int64), so every ISA path is
// bit-identical with the integer reference (xnorpipe/deploy/reference.py). The int8 sum is the
// fast path (VNNI); the fine sum is computed only where acc is within the margin, a fraction of
// a percent of the outputs for the exporter's margins.
//
// The kernels compute R = sum W * Xp over every tap, Xp = X padded with z (u8 x s8, the form
// vpdpbusd takes), so R = acc - corr(p) + K with K[m] = sum W[m] * z (the zero point's share)
// and corr(p) the pad values of p's padded taps. corr depends on which kernel rows and columns
// of p fall outside the image (its padding class), so each class gets its own bounds
// threshold + K - corr -+ margin, computed in 64 bits and clamped to int32: R never reaches
// INT32_MIN or INT32_MAX, so the clamped comparisons decide as the exact ones. The fine sum is
// handled the same way in int64 (saturating: |R_fine| < 2^62).
#pragma once

#include <cstdint>
#include <vector>

#include "core/bconv2d/optimized.h"
#include "core/bconv2d/params.h"
#include "core/bconv2d/select_kernel.h"

namespace xnorpipe::conv_integer_binarize {

using bconv2d::BConv2DParams;

// Kernel families. Each SIMD one keeps a block of filters in lanes and broadcasts a group of
// consecutive input elements of one pixel (4 u8 for vpdpbusd, 2 int16 for vpmaddwd):
//   kAvx512Vnni: zmm vpdpbusd (AVX512-VNNI), 64 filters x 6 pixels per register block;
//   kAvxVnni:    ymm vpdpbusd, VEX-encoded (AVX-VNNI: CPUs with VNNI but no AVX-512);
//   kAvx2:       ymm vpmaddwd on the input widened to int16 and int16 weights, then vpaddd:
//                u8 * s8 products summed in pairs fit int16 x int16 -> int32 without
//                saturation, unlike vpmaddubsw (255 * 127 * 2 > 32767);
//   kPortable:   plain int32 loops.
// The fine sums (rare) are int64 dot products over chunks of the window (kFineChunk): in the SIMD
// families one chunk is 8 elements widened to int64 lanes times 8 weights sign-extended, by
// vpmuldq (exact: |x * w| <= 2^15 * 2^31); the portable family loops.
enum class IntIsa { kPortable, kAvx2, kAvxVnni, kAvx512Vnni };
const char* isa_name(IntIsa isa);
bool cpu_supports(IntIsa isa);
// The fastest family this CPU runs within the popcount path's ISA level (XNORPIPE_POPCOUNT
// picks the level for every op): avx512 -> AVX512-VNNI if present, else as avx2; avx2 ->
// AVX-VNNI if present, else AVX2; portable and reference -> portable.
IntIsa isa_for(bconv2d::PopcountPath path);

// Input elements one multiply-add step of a family reads per pixel (4 for VNNI, 2 for AVX2).
int group_size(IntIsa isa);
// Filters per register block of a family (a multiple of 32: whole output words).
int block_filters(IntIsa isa);

// (C + 1) * kH * kW: C*kH*kW products of at most 255 * 128 and kH*kW pad values of at most
// 2^15 in magnitude sum to less than 2^31 (and the function body's uint8 x uint8 ConvInteger
// planes, products of at most 255 * 255, too).
constexpr int64_t kMaxIntegerTaps = int64_t(1) << 15;

struct PackedIntWeights {
  IntIsa isa = IntIsa::kPortable;
  int blocks = 0;   // ceil(M / block_filters)
  int kgroups = 0;  // multiply-add groups per output pixel
  // Group g reads input elements [col, col + group_size) of window row `row` (0..kH-1), where
  // col is an element offset in the window row (pixel * C + channel, dilated pixels).
  std::vector<int32_t> group_row, group_col;
  std::vector<int8_t> w8;     // VNNI: [block][group][filter][4], zero past a segment and past M
  std::vector<int16_t> w16;   // AVX2: [block][group][filter][2]
  std::vector<int8_t> plain;  // W as given, [M][C][kH][kW] (portable kernel, zero-point sums)
};

// The op's inputs besides the image and W (the layouts of the contract).
struct IntInputs {
  const uint8_t* x_zero_point = nullptr;    // [C]
  const int16_t* pad_value = nullptr;       // [M, kH, kW]
  const int32_t* threshold = nullptr;       // [M]
  const int32_t* margin = nullptr;          // [M]
  const int32_t* fine_weight = nullptr;     // [M, C, kH, kW]
  const int32_t* fine_pad_value = nullptr;  // [M, kH, kW]
  const int64_t* fine_threshold = nullptr;  // [M]
};

// What run() needs for one input size besides the packed weights and the image: the zero
// points, the bounds of every padding class, the fine weights. Built once per input size when
// the inputs are constant.
struct IntThresholds {
  int in_h = 0, in_w = 0;
  std::vector<uint8_t> zero_point;            // [C]
  std::vector<int32_t> row_class, col_class;  // [Ho], [Wo]: padding class of each output row, column
  int64_t n_cols = 0;                         // column classes
  int64_t padded_m = 0;                       // filters, padded to whole register blocks
  // [row class][column class][padded_m]: R >= upper -> 1, R < lower -> 0, else the fine sum
  // decides (pad filters: both INT32_MAX, bit 0).
  std::vector<int32_t> lower, upper;
  std::vector<int64_t> fine;                  // same layout: R_fine >= fine -> 1
  // The fine weights in the window's layout (see kFineChunk): [M][fine_chunks][kFineChunk].
  // Chunk k covers elements [fine_col[k], fine_col[k] + kFineChunk) of window row fine_row[k]
  // (0..kH-1); weights of elements that are no tap (past a kernel row, between dilated taps) are 0.
  std::vector<int32_t> fine_weight;
  std::vector<int32_t> fine_row, fine_col;    // [fine_chunks]
  int fine_chunks = 0;
};

// The fine sum reads a pixel's window in chunks of kFineChunk consecutive row elements: per
// kernel row one run of kW * C elements when undilated (dilated: the run from the first tap to
// the last, gaps included, or each tap's C channels alone, whichever takes fewer chunks). A chunk
// may read up to kFineChunk - 1 elements past a window row; the row buffer's slack covers them.
constexpr int kFineChunk = 8;

class ConvIntegerBinarize {
 public:
  // Validates params (std::invalid_argument "ConvIntegerBinarize: ..."): group 1, and
  // (C + 1) * kH * kW <= kMaxIntegerTaps; checks the CPU runs `isa` (std::runtime_error).
  ConvIntegerBinarize(const BConv2DParams& params, IntIsa isa);
  const BConv2DParams& params() const { return params_; }
  IntIsa isa() const { return isa_; }
  // w: int8 [M, C, kH, kW].
  PackedIntWeights pack_weights(const int8_t* w) const;
  // The bounds for an input size (checks the output size and every buffer's size).
  IntThresholds thresholds(const PackedIntWeights& w, int in_h, int in_w, const IntInputs& in) const;
  // x uint8 [N, H, W, C] -> bits [N, ceil(M/32), Ho, Wo]. n_batch == 0 returns at once.
  void run(const uint8_t* x, int n_batch, const PackedIntWeights& w, const IntThresholds& t, uint32_t* bits,
           const bconv2d::ParallelFor& parallel_for) const;
  // Both steps (the data pointers may be null when n_batch == 0).
  void run(const uint8_t* x, int n_batch, int in_h, int in_w, const PackedIntWeights& w, const IntInputs& in,
           uint32_t* bits, const bconv2d::ParallelFor& parallel_for) const;

 private:
  BConv2DParams params_;
  IntIsa isa_;
};

// The filters of one pixel whose int8 sum is within the margin (bit k: filter first_filter + k).
struct UnsureFilters {
  int32_t pixel;
  int32_t first_filter;
  uint64_t mask;
};

// One output row of one work item (SIMD kernels), every filter block and pixel.
struct RowArgs {
  const void* rows;            // the item's padded rows: uint8 (VNNI) or int16 (AVX2) elements
  const int32_t* group_off;    // [kgroups] element offset of each group from a pixel's window origin
  int kgroups;
  int64_t origin;              // element offset of pixel 0's window origin in this output row
  int64_t pixel_step;          // elements between neighbouring output pixels: stride_w * C
  const void* weights;         // PackedIntWeights::w8 or w16
  int blocks;
  // The bounds of this output row's vertical class, [column class][class_stride]: pixel ow
  // uses those at col_class[ow] * class_stride.
  const int32_t* row_lower;
  const int32_t* row_upper;
  const int64_t* row_fine;
  const int32_t* col_class;    // [out_w]
  int64_t class_stride;        // blocks * block_filters
  // The fine sum of filter m at a pixel: fine_sum(window, fine_weight + m * fine_chunks *
  // kFineChunk, fine_off, fine_chunks).
  const int32_t* fine_weight;
  const int32_t* fine_off;     // [fine_chunks] element offset of each chunk from the window origin
  int fine_chunks;
  UnsureFilters* unsure;       // scratch: room for out_w * blocks + 1
  uint32_t* out;               // output row oh of this image's word plane 0
  int64_t out_plane;
  int words;                   // ceil(M / 32)
  int out_w;
};
void row_avx512_vnni(const RowArgs& a);
void row_avx_vnni(const RowArgs& a);
void row_avx2(const RowArgs& a);

// The fine sum at one pixel window (portable): sum over chunks k and elements e of
// weight[k * kFineChunk + e] * window[chunk_off[k] + e], in int64: exact, as every product is
// below 2^47 in magnitude and at most kMaxIntegerTaps of them are not 0.
template <typename E>
inline int64_t fine_sum(const E* window, const int32_t* weight, const int32_t* chunk_off, int chunks) {
  int64_t s = 0;
  for (int k = 0; k < chunks; ++k, weight += kFineChunk)
    for (int e = 0; e < kFineChunk; ++e) s += int64_t(weight[e]) * window[chunk_off[k] + e];
  return s;
}

}  // namespace xnorpipe::conv_integer_binarize
