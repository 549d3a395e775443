#include "core/bconv2d/select_kernel.h"

#include <cstdlib>
#include <stdexcept>

namespace xnorpipe::bconv2d {

const char* path_name(PopcountPath path) {
  switch (path) {
    case PopcountPath::kReference: return "reference";
    case PopcountPath::kPortable: return "portable";
    case PopcountPath::kAvx2: return "avx2";
    case PopcountPath::kAvx512: return "avx512";
  }
  return "?";
}

PopcountPath parse_path(const std::string& name) {
  for (PopcountPath p : {PopcountPath::kReference, PopcountPath::kPortable, PopcountPath::kAvx2, PopcountPath::kAvx512})
    if (name == path_name(p)) return p;
  throw std::invalid_argument("XNORPIPE_POPCOUNT=" + name + " is not one of avx512, avx2, portable, reference");
}

bool cpu_supports(PopcountPath path) {
  switch (path) {
    case PopcountPath::kReference:
    case PopcountPath::kPortable: return true;
#if defined(__x86_64__) || defined(__i386__)
    // __builtin_cpu_supports also checks that the OS saves the ymm/zmm state.
    case PopcountPath::kAvx2: return __builtin_cpu_supports("avx2");
    case PopcountPath::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#else
    default: return false;
#endif
  }
  return false;
}

bool cpu_supports_half_words() {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_supports(PopcountPath::kAvx512) && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bitalg");
#else
  return false;
#endif
}

PopcountPath best_path() {
  for (PopcountPath p : {PopcountPath::kAvx512, PopcountPath::kAvx2})
    if (cpu_supports(p)) return p;
  return PopcountPath::kPortable;
}

std::vector<PopcountPath> available_paths() {
  std::vector<PopcountPath> out;
  for (PopcountPath p : {PopcountPath::kReference, PopcountPath::kPortable, PopcountPath::kAvx2, PopcountPath::kAvx512})
    if (cpu_supports(p)) out.push_back(p);
  return out;
}

PopcountPath select_path() {
  const char* env = std::getenv("XNORPIPE_POPCOUNT");
  if (!env || !*env) return best_path();
  const PopcountPath p = parse_path(env);
  if (!cpu_supports(p))
    throw std::runtime_error(std::string("XNORPIPE_POPCOUNT=") + env + ": this CPU does not support the " + env +
                             " popcount path");
  return p;
}

ConvKernel select_conv_kernel(const BConv2DParams& p, PopcountPath path) {
  // Pixels in lanes needs 16 consecutive output pixels to read 16 consecutive input words: a
  // 1x1 stride-1 unpadded conv (dilation is moot at 1x1). It then needs no transpose, no
  // padding correction and no pack scatter, which is most of the time of these layers.
  const bool pointwise = p.kernel_h == 1 && p.kernel_w == 1 && p.stride_h == 1 && p.stride_w == 1 &&
                         p.pad_top == 0 && p.pad_left == 0 && p.pad_bottom == 0 && p.pad_right == 0;
  if (pointwise && path == PopcountPath::kAvx512) return ConvKernel::kPointwise;
  if (path == PopcountPath::kAvx512 && p.shuffle_output && p.group % 16 == 0 && p.words_per_tap() == 1) {
    // 32 lanes: 2 filters of 16 groups, or 1 filter of 32 groups
    const bool pairs = p.group == 16 ? p.filters_per_group() % 2 == 0 : p.group % 32 == 0;
    if (p.channels_per_group() == 16 && pairs && cpu_supports_half_words()) return ConvKernel::kHalfWordGroups;
    return ConvKernel::kGroupsInLanes;
  }
  return ConvKernel::kFiltersInLanes;
}

}  // namespace xnorpipe::bconv2d
