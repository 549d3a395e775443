// ConvBinarize row kernel, AVX2 + FMA (compiled with -mavx2 -mfma; called after CPUID says so).
#include <immintrin.h>

#include "core/conv_binarize/row_kernel.h"

namespace xnorpipe::conv_binarize {
namespace {
struct Ymm {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg relu(Reg y) { return _mm256_max_ps(_mm256_setzero_ps(), y); }
  static uint32_t ge_mask(Reg y, Reg t) { return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(y, t, _CMP_GE_OQ))); }
};
}  // namespace

// 3 pixels x 4 ymm = 12 accumulators + 4 weight registers: the 16 ymm registers.
void conv_binarize_row_avx2(const RowArgs& a) { row_kernel<Ymm, 3>(a); }

}  // namespace xnorpipe::conv_binarize
