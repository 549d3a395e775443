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
};
ConvKernel select_conv_kernel(const BConv2DParams& p, PopcountPath path);

}  // namespace xnorpipe::bconv2d
