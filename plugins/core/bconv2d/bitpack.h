// Binarize float activations with a per-channel threshold and pack them along channels.
// Bit k of word q of group g at a pixel = (x[g*Cg + 32q + k] >= threshold[...]); NaN -> 0 (-1).
// Packed image layout: [Hp][Wp][G][nw] uint32, Hp = H + pad_top + pad_bottom (same for W):
// the kernels read taps from it without bounds checks. Bits past Cg are 0, so they never count
// in a xor with weights whose pad bits are 0 too. Border pixels are zeroed by the caller and
// handled by the zero-padding correction (zero_padding_correction.h).
#pragma once

#include <cstdint>

namespace xnorpipe::bconv2d {

struct PackArgs {
  const float* x;          // one image, [C][H][W]
  const float* threshold;  // [C]
  int channels, in_h, in_w, group, channels_per_group, words_per_tap;
  uint32_t* out;           // one packed image [Hp][Wp][G*nw]
  int padded_w, pad_top, pad_left;
  int pix_begin, pix_end;  // range of flattened input pixels h*W+w to pack
};

// Planar packing for the pointwise kernel: word q of group g for pixels [0, npx) of a pixel
// range goes to out[(g*nw + q) * out_stride + i], so 16 consecutive pixels are 16 consecutive
// words. Pixels npx..round_up(npx, 16) are written as 0 (the kernel reads whole vectors).
struct PlanarPackArgs {
  const float* x;          // one image [C][plane], offset to the range's first pixel
  int64_t plane;           // H*W
  const float* threshold;  // [C]
  int group, channels_per_group, words_per_tap;
  int npx;
  uint32_t* out;
  int64_t out_stride;      // >= round_up(npx, 16)
};

void pack_planar_avx512(const PlanarPackArgs& a);

void pack_portable(const PackArgs& a);
void pack_avx2(const PackArgs& a);
void pack_avx512(const PackArgs& a);

// Word offset of input pixel p = h*W + w inside the packed image.
inline int64_t packed_pixel_offset(const PackArgs& a, int p) {
  const int h = p / a.in_w, w = p % a.in_w;
  return (int64_t(h + a.pad_top) * a.padded_w + (w + a.pad_left)) * int64_t(a.group) * a.words_per_tap;
}

}  // namespace xnorpipe::bconv2d
