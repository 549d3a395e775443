// ConvIntegerBinarize row kernel, AVX2 (compiled with -mavx2; called after CPUID says so).
// The row buffer holds the input widened to int16 and the weights are int16, so vpmaddwd sums
// two products u8 * s8 per lane exactly: |255 * 128| * 2 < 2^31. (vpmaddubsw would add the
// pair in int16 and saturate: 255 * 127 * 2 > 32767.)
#include <immintrin.h>

#include "core/conv_integer_binarize/row_kernel.h"

namespace xnorpipe::conv_integer_binarize {
namespace {
struct YmmMadd : YmmCommon<int16_t> {
  using WElem = int16_t;
  static constexpr int kGroup = 2;
  static Reg load_w(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Reg broadcast(const int16_t* p) { return _mm256_set1_epi32(load_group(p)); }
  static Reg dot(Reg acc, Reg x, Reg w) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)); }
};
}  // namespace

// 32 filters (4 ymm) x 2 pixels = 8 accumulators + 4 weights + broadcast + product.
void row_avx2(const RowArgs& a) { int_row<YmmMadd, 4, 2>(a); }

}  // namespace xnorpipe::conv_integer_binarize
