// y = scale * (float)sum + bias, then relu. Two separate float roundings (mul, then add):
// the PyTorch reference does the same, so this must never become an FMA. Every translation
// unit of core/ is compiled with -ffp-contract=off for that reason (also the SIMD ones, where
// GCC would otherwise contract _mm*_mul_ps + _mm*_add_ps).
#pragma once

#include <cstdint>

namespace xnorpipe::bconv2d {

inline float output_transform(int32_t sum, float scale, float bias, bool relu) {
  float y = scale * static_cast<float>(sum);
  y = y + bias;
  // `y < 0` keeps NaN as NaN, like torch.clamp_min.
  if (relu && y < 0.0f) y = 0.0f;
  return y;
}

// Sum over valid taps of the +-1 products from the xor popcount over those taps.
inline int32_t xnor_sum(int32_t valid_bits, int32_t popcount_xor) { return valid_bits - 2 * popcount_xor; }

}  // namespace xnorpipe::bconv2d
