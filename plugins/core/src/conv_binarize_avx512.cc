// ConvBinarize row kernel, AVX-512F (compiled with -mavx512f; called after CPUID says so).
#include <immintrin.h>

#include "core/conv_binarize/row_kernel.h"

namespace xnorpipe::conv_binarize {
namespace {
struct Zmm {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg relu(Reg y) { return _mm512_max_ps(_mm512_setzero_ps(), y); }  // NaN stays NaN
  static uint32_t ge_mask(Reg y, Reg t) { return _mm512_cmp_ps_mask(y, t, _CMP_GE_OQ); }
};
}  // namespace

// 8 pixels x 2 zmm = 16 accumulators: enough independent FMA chains to hide the latency, and
// 32-pixel rows split into whole blocks.
void conv_binarize_row_avx512(const RowArgs& a) { row_kernel<Zmm, 8>(a); }

}  // namespace xnorpipe::conv_binarize
