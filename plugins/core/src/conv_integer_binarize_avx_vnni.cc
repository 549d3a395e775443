// ConvIntegerBinarize row kernel, AVX-VNNI: VEX-encoded ymm vpdpbusd, for CPUs with VNNI but no
// AVX-512 (compiled with -mavx2 -mavxvnni; called after CPUID says so).
#include <immintrin.h>

#include "core/conv_integer_binarize/row_kernel.h"

namespace xnorpipe::conv_integer_binarize {
namespace {
struct YmmVnni {
  using Reg = __m256i;
  using Elem = uint8_t;
  using WElem = int8_t;
  static constexpr int kLanes = 8, kGroup = 4;
  static Reg zero() { return _mm256_setzero_si256(); }
  static Reg load_w(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Reg broadcast(const uint8_t* p) { return _mm256_set1_epi32(load_group(p)); }
  // In-place, as the AVX-512 kernel's (GCC 12 copies the accumulators around the intrinsic);
  // {vex} and the "x" registers (ymm0-15): the AVX-VNNI encoding, not AVX512-VNNI's EVEX one.
  static Reg dot(Reg acc, Reg x, Reg w) {
    asm("%{vex%} vpdpbusd %[w], %[x], %[acc]" : [acc] "+x"(acc) : [x] "x"(x), [w] "x"(w));
    return acc;
  }
  static Reg load_t(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  // acc >= t  <=>  !(t > acc)
  static uint32_t ge_mask(Reg acc, Reg t) {
    return ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, acc)))) & 0xffu;
  }
  static int64_t fine_sum(const uint8_t* window, const int32_t* weight, const int32_t* chunk_off, int chunks) {
    return fine_sum_ymm(window, weight, chunk_off, chunks);
  }
};
}  // namespace

// 32 filters (4 ymm) x 2 pixels = 8 accumulators + 4 weights + 1 broadcast of 16 registers.
void row_avx_vnni(const RowArgs& a) { int_row<YmmVnni, 4, 2>(a); }

}  // namespace xnorpipe::conv_integer_binarize
