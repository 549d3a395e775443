// ConvIntegerBinarize row kernel, AVX512-VNNI (compiled with -mavx512f -mavx512bw -mavx512vnni;
// called after CPUID says so).
#include <immintrin.h>

#include "core/conv_integer_binarize/row_kernel.h"

namespace xnorpipe::conv_integer_binarize {
namespace {
struct ZmmVnni {
  using Reg = __m512i;
  using Elem = uint8_t;
  using WElem = int8_t;
  static constexpr int kLanes = 16, kGroup = 4;
  static Reg zero() { return _mm512_setzero_si512(); }
  static Reg load_w(const int8_t* p) { return _mm512_loadu_si512(p); }
  static Reg broadcast(const uint8_t* p) { return _mm512_set1_epi32(load_group(p)); }
  // acc += sum of 4 u8 (x) * s8 (w) products per lane: exact (no saturation, int32 sum). As
  // inline asm: with the intrinsic, GCC 12 copies each of the 24 accumulators through another
  // register and the stack on every step (measured: a third of the VNNI ceiling).
  static Reg dot(Reg acc, Reg x, Reg w) {
    asm("vpdpbusd %[w], %[x], %[acc]" : [acc] "+v"(acc) : [x] "v"(x), [w] "v"(w));
    return acc;
  }
  static Reg load_t(const int32_t* p) { return _mm512_loadu_si512(p); }
  static uint32_t ge_mask(Reg acc, Reg t) { return _mm512_cmpge_epi32_mask(acc, t); }
  // A chunk of 8 window elements widened to int64 lanes times 8 weights sign-extended; vpmuldq
  // multiplies the lanes' low 32 bits as signed int32: x * w exactly.
  static int64_t fine_sum(const uint8_t* window, const int32_t* weight, const int32_t* chunk_off, int chunks) {
    static_assert(kFineChunk == 8, "a chunk is one zmm of int64 lanes");
    __m512i s = _mm512_setzero_si512();
    for (int k = 0; k < chunks; ++k, weight += kFineChunk) {
      const __m512i x = _mm512_cvtepu8_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(window + chunk_off[k])));
      const __m512i w = _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(weight)));
      s = _mm512_add_epi64(s, _mm512_mul_epi32(x, w));
    }
    return _mm512_reduce_add_epi64(s);
  }
};
}  // namespace

// 64 filters (4 zmm) x 6 pixels = 24 accumulators + 4 weight registers + 1 broadcast: per
// multiply-add step 10 loads feed 24 vpdpbusd.
void row_avx512_vnni(const RowArgs& a) { int_row<ZmmVnni, 4, 6>(a); }

}  // namespace xnorpipe::conv_integer_binarize
