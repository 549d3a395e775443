// ConvIntegerBinarize row kernel, AVX-VNNI: VEX-encoded ymm vpdpbusd, for CPUs with VNNI but no
// AVX-512 (compiled with -mavx2 -mavxvnni; called after CPUID says so).
#include <immintrin.h>

#include "core/conv_integer_binarize/row_kernel.h"

namespace xnorpipe::conv_integer_binarize {
namespace {
struct YmmVnni : YmmCommon<uint8_t> {
  using WElem = int8_t;
  static constexpr int kGroup = 4;
  static Reg load_w(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Reg broadcast(const uint8_t* p) { return _mm256_set1_epi32(load_group(p)); }
  // In-place, as the AVX-512 kernel's (GCC 12 copies the accumulators around the intrinsic);
  // {vex} and the "x" registers (ymm0-15): the AVX-VNNI encoding, not AVX512-VNNI's EVEX one.
  static Reg dot(Reg acc, Reg x, Reg w) {
    asm("%{vex%} vpdpbusd %[w], %[x], %[acc]" : [acc] "+x"(acc) : [x] "x"(x), [w] "x"(w));
    return acc;
  }
};
}  // namespace

// 32 filters (4 ymm) x 2 pixels = 8 accumulators + 4 weights + 1 broadcast of 16 registers.
void row_avx_vnni(const RowArgs& a) { int_row<YmmVnni, 4, 2>(a); }

}  // namespace xnorpipe::conv_integer_binarize
