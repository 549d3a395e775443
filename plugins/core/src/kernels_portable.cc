// Portable kernels (any CPU): SWAR popcount, 8 filters x 4 pixels per register tile.
#include <algorithm>

#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"
#include "core/bconv2d/output_transform.h"

namespace xnorpipe::bconv2d {

namespace {
// Bit-slice popcount instead of __builtin_popcount: without -mpopcnt (this TU targets any
// x86-64) the builtin is a libgcc call, while this form vectorizes over the 8 filter lanes.
inline uint32_t popcount32(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0f0f0f0fu;
  v += v >> 8;
  v += v >> 16;
  return v & 0x3fu;
}
}  // namespace

void pack_portable(const PackArgs& a) {
  constexpr int kChunk = 64;  // long sequential runs per channel plane
  const int64_t plane = int64_t(a.in_h) * a.in_w;
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += kChunk) {
    const int npx = std::min(kChunk, a.pix_end - p0);
    int64_t dst[kChunk];
    for (int i = 0; i < npx; ++i) dst[i] = packed_pixel_offset(a, p0 + i);
    for (int g = 0; g < a.group; ++g)
      for (int q = 0; q < a.words_per_tap; ++q) {
        uint32_t words[kChunk] = {};
        const int c0 = g * a.channels_per_group + q * kWordBits;
        const int count = std::min(kWordBits, a.channels_per_group - q * kWordBits);
        for (int k = 0; k < count; ++k) {
          const float* src = a.x + (c0 + k) * plane + p0;
          const float thr = a.threshold[c0 + k];
          for (int i = 0; i < npx; ++i) words[i] |= uint32_t(src[i] >= thr) << k;  // NaN -> 0
        }
        for (int i = 0; i < npx; ++i) a.out[dst[i] + g * a.words_per_tap + q] = words[i];
      }
  }
}

void tile_portable(const TileArgs& a) {
  constexpr int R = 4, L = 8;
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += R) {
    const uint32_t* base[R];
    for (int r = 0; r < R; ++r) base[r] = a.input + a.pix_off[p0 + r];
    uint32_t acc[R][L] = {};
    for (int k = 0; k < a.k_words; ++k) {
      const uint32_t* w = a.filters + k * L;
      const int off = a.k_off[k];
      for (int r = 0; r < R; ++r) {
        const uint32_t xv = base[r][off];
        for (int l = 0; l < L; ++l) acc[r][l] += popcount32(xv ^ w[l]);
      }
    }
    const int npx = std::min(R, a.pix_end - p0);
    for (int r = 0; r < npx; ++r) {
      const int cls = a.pix_cls[p0 + r];
      const int32_t* corr = a.correction + int64_t(cls) * a.correction_stride;
      for (int l = 0; l < a.lanes_valid; ++l)
        a.out[l * a.out_plane + (p0 - a.out_pixel_base) + r] =
            output_transform(xnor_sum(a.valid_bits[cls], int32_t(acc[r][l]) - corr[l]), a.scale[l], a.bias[l], a.relu);
    }
  }
}

}  // namespace xnorpipe::bconv2d
