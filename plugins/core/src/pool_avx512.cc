// AvgPoolBinarize plane kernel for AVX-512F (compiled with -mavx512f; called after CPUID says
// so): a row of up to 32 floats sits in two zmm registers, and each window tap is one
// two-register permute (zero-masked in the padding), so a whole output row (<= 16 pixels) is
// computed at once.
#include <immintrin.h>

#include <algorithm>

#include "core/pool/pool.h"

namespace xnorpipe::pool {

void avg_plane_bits_avx512(const float* plane, int in_h, int in_w, const PoolParams& p, int out_h, int out_w,
                           const AvgRowTaps& taps, float count, float thr, uint32_t bit, uint32_t* out) {
  __m512i tap_index[8];
  for (int j = 0; j < p.kernel_w; ++j) tap_index[j] = _mm512_load_si512(taps.index[j]);
  const __mmask16 in_lo = __mmask16(((1u << std::min(16, in_w)) - 1u));
  const __mmask16 in_hi = __mmask16(in_w > 16 ? (1u << (in_w - 16)) - 1u : 0u);
  const __mmask16 live = __mmask16((1u << out_w) - 1u);
  const __m512 vcount = _mm512_set1_ps(count), vthr = _mm512_set1_ps(thr);
  const __m512i vbit = _mm512_set1_epi32(int(bit));
  for (int oh = 0; oh < out_h; ++oh, out += out_w) {
    const int h0 = std::max(0, oh * p.stride_h - p.pad_top);
    const int h1 = std::min(in_h, oh * p.stride_h - p.pad_top + p.kernel_h);
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    for (int h = h0; h < h1; ++h) {  // vertical sums, in row order
      const float* src = plane + int64_t(h) * in_w;
      lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(in_lo, src));
      if (in_hi) hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(in_hi, src + 16));
    }
    __m512 sum = _mm512_maskz_permutex2var_ps(taps.live[0], lo, tap_index[0], hi);
    for (int j = 1; j < p.kernel_w; ++j)
      sum = _mm512_add_ps(sum, _mm512_maskz_permutex2var_ps(taps.live[j], lo, tap_index[j], hi));
    const __mmask16 ge = _mm512_mask_cmp_ps_mask(live, _mm512_div_ps(sum, vcount), vthr, _CMP_GE_OQ);  // NaN -> 0
    const __m512i words = _mm512_maskz_loadu_epi32(live, out);
    _mm512_mask_storeu_epi32(out, live, _mm512_mask_or_epi32(words, ge, words, vbit));
  }
}

}  // namespace xnorpipe::pool
