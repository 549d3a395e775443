// Run-time choice of the popcount path from CPUID, overridable with
// XNORPIPE_POPCOUNT=avx512|avx2|portable|reference (read each time a kernel is created, so
// tests can switch paths within one process).
#pragma once

#include <string>
#include <vector>

#include "core/bconv2d/params.h"

namespace xnorpipe::bconv2d {

enum class PopcountPath {
  kReference,  // reference.h on the float input: slow, for cross-checks
  kPortable,   // scalar popcount, any CPU
  kAvx2,       // nibble-LUT vpshufb popcount, 8 filters per ymm
  kAvx512,     // vpopcntd (AVX-512 VPOPCNTDQ), 16 filters per zmm
};

const char* path_name(PopcountPath path);
// Throws std::invalid_argument for an unknown name.
PopcountPath parse_path(const std::string& name);
bool cpu_supports(PopcountPath path);
// Fastest path this CPU runs.
PopcountPath best_path();
// All paths this CPU runs, reference first.
std::vector<PopcountPath> available_paths();
// $XNORPIPE_POPCOUNT if set (throws std::runtime_error if this CPU lacks it), else best_path().
PopcountPath select_path();

// Loop structure of the optimized kernels, fixed per layer (the filters are packed for it).
enum class ConvKernel {
  kFiltersInLanes,  // any shape: filters in SIMD lanes, channel-packed image, 16x16 tile transpose
  kPointwise,       // 1x1, stride 1, no padding (AVX-512): pixels in lanes, planar packed words
  // Groups of <= 32 channels with a shuffled output, group % 16 == 0 (AVX-512): the 16 lanes are
  // one filter of 16 consecutive groups, i.e. 16 consecutive output channels; each lane reads
  // its own group's word (one vector load, no broadcast). nin_gc_xnornet's L3 and L6.
  kGroupsInLanes,
  // Groups of exactly 16 channels with a shuffled output (AVX-512 BW + BITALG): two groups per
  // bit-tensor word, 32 16-bit lanes (vpopcntw) = 32 consecutive output channels, one output
  // word per pixel; the image keeps the bit tensor's own word layout. Twice the lanes of
  // kGroupsInLanes for such groups (half of whose words' bits it would leave unused).
  kHalfWordGroups,
};
ConvKernel select_conv_kernel(const BConv2DParams& p, PopcountPath path);
// AVX-512 BW + BITALG (vpopcntw), which kHalfWordGroups needs.
bool cpu_supports_half_words();

}  // namespace xnorpipe::bconv2d
