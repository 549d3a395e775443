// AVX-512 kernels (compiled with -mavx512f -mavx512vpopcntdq; only called after CPUID says so).
// Tile: 16 filters (zmm lanes) x 16 output pixels; vpopcntd per 32-bit lane.
// Pointwise: 4 filters x 32 pixels (2 zmm of pixels per filter), pixels in lanes.
#include <immintrin.h>

#include <algorithm>

#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"

namespace xnorpipe::bconv2d {

namespace {

// One word per pixel: channels c0 .. c0+count-1 (planes `plane` floats apart, from pixel `src`)
// compared with their thresholds, bit k = channel c0+k, for NV vectors of 16 pixels; live[v]
// masks each vector's pixels. Shared by both packers: the binarization is written once.
template <int NV>
inline void binarize_word(const float* src, int64_t plane, const float* threshold, int count,
                          const __mmask16 live[NV], __m512i acc[NV]) {
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_si512();
  for (int k = 0; k < count; ++k, src += plane) {
    const __m512 thr = _mm512_set1_ps(threshold[k]);
    const __m512i bit = _mm512_set1_epi32(int(1u << k));
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512 x = _mm512_maskz_loadu_ps(live[v], src + 16 * v);
      // _CMP_GE_OQ: ordered compare, NaN -> false -> bit 0 (-1).
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(live[v], x, thr, _CMP_GE_OQ);
      acc[v] = _mm512_mask_or_epi32(acc[v], ge, acc[v], bit);
    }
  }
}

}  // namespace

void pack_avx512(const PackArgs& a) {
  // 128 pixels (8 zmm of accumulators) per channel pass: each channel plane is then read in
  // 512-byte runs, which the prefetcher follows (16-pixel runs over 100s of 4 KiB-strided
  // planes were latency-bound).
  constexpr int V = 8, kChunk = 16 * V;
  const int64_t plane = int64_t(a.in_h) * a.in_w;
  alignas(64) uint32_t words[kChunk];
  int64_t dst[kChunk];
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += kChunk) {
    const int npx = std::min(kChunk, a.pix_end - p0);
    __mmask16 live[V];
    for (int v = 0; v < V; ++v) {
      const int n = std::clamp(npx - 16 * v, 0, 16);
      live[v] = __mmask16((1u << n) - 1u);
    }
    for (int i = 0; i < npx; ++i) dst[i] = packed_pixel_offset(a, p0 + i);
    for (int g = 0; g < a.group; ++g)
      for (int q = 0; q < a.words_per_tap; ++q) {
        const int c0 = g * a.channels_per_group + q * kWordBits;
        const int count = std::min(kWordBits, a.channels_per_group - q * kWordBits);
        __m512i acc[V];
        binarize_word<V>(a.x + c0 * plane + p0, plane, a.threshold + c0, count, live, acc);
        for (int v = 0; v < V; ++v) _mm512_store_si512(words + 16 * v, acc[v]);
        uint32_t* out = a.out + g * a.words_per_tap + q;
        for (int i = 0; i < npx; ++i) out[dst[i]] = words[i];
      }
  }
}

namespace {

// One word (32 channels) for NV vectors of 16 pixels; live masks the last vector's pixels.
template <int NV>
inline void pack_planar_words(const PlanarPackArgs& a, int p0, __mmask16 live_last) {
  __mmask16 live[NV];
  for (int v = 0; v < NV; ++v) live[v] = v == NV - 1 ? live_last : __mmask16(0xffff);
  for (int g = 0; g < a.group; ++g)
    for (int q = 0; q < a.words_per_tap; ++q) {
      const int c0 = g * a.channels_per_group + q * kWordBits;
      const int count = std::min(kWordBits, a.channels_per_group - q * kWordBits);
      __m512i acc[NV];
      binarize_word<NV>(a.x + c0 * a.plane + p0, a.plane, a.threshold + c0, count, live, acc);
      uint32_t* out = a.out + (g * a.words_per_tap + q) * a.out_stride + p0;
      for (int v = 0; v < NV; ++v) _mm512_storeu_si512(out + 16 * v, acc[v]);  // dead pixels: 0
    }
}

}  // namespace

void pack_planar_avx512(const PlanarPackArgs& a) {
  // 128 pixels per channel pass (512-byte runs per plane, as in pack_avx512); stores are
  // contiguous: 16 pixels' words per zmm.
  constexpr int kChunk = 128;
  int p0 = 0;
  for (; p0 + kChunk <= a.npx; p0 += kChunk) pack_planar_words<kChunk / 16>(a, p0, 0xffff);
  for (; p0 < a.npx; p0 += 16) {
    const int n = std::min(16, a.npx - p0);
    pack_planar_words<1>(a, p0, __mmask16((1u << n) - 1u));
  }
}

namespace {

// PV vectors of 16 pixels x kPointwiseFilters filters; live_px pixels are stored.
template <int PV>
inline void pointwise_block(const PointwiseArgs& a, int p0, int live_px) {
  constexpr int R = kPointwiseFilters;
  __m512i acc[R][PV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < PV; ++v) acc[r][v] = _mm512_setzero_si512();
  const uint32_t* in = a.input + p0;
  const uint32_t* w = a.filters;
  for (int k = 0; k < a.nw; ++k, in += a.input_stride, w += R) {
    __m512i xv[PV];
    for (int v = 0; v < PV; ++v) xv[v] = _mm512_loadu_si512(in + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_set1_epi32(int(w[r]));
#pragma GCC unroll 4
      for (int v = 0; v < PV; ++v) acc[r][v] = _mm512_add_epi32(acc[r][v], _mm512_popcnt_epi32(_mm512_xor_si512(xv[v], wv)));
    }
  }
  // No padding: sum = Cg - 2 * popcount; then scale*(float)sum + bias per filter (scalar).
  const __m512i valid = _mm512_set1_epi32(a.valid_bits);
  const __m512 zero = _mm512_setzero_ps();
  // Fused binarization as popcount intervals, the block's filters in one output word (always
  // with group 1): their bits are gathered in registers, one read-modify-write per vector. A
  // block straddling two words (some grouped layers) takes the float comparison below.
  const int last_channel = a.first_filter + (a.filters_valid - 1) * a.filter_stride;
  if (a.out_bits && a.out_pc_lo && a.first_filter / kWordBits == last_channel / kWordBits) {
    __m512i bits[PV];
    for (int v = 0; v < PV; ++v) bits[v] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (r >= a.filters_valid) break;
      const __m512i bit = _mm512_set1_epi32(int(1u << ((a.first_filter + r * a.filter_stride) % kWordBits)));
      const __m512i lo = _mm512_set1_epi32(a.out_pc_lo[r]), range = _mm512_set1_epi32(int(a.out_pc_range[r]));
#pragma GCC unroll 4
      for (int v = 0; v < PV; ++v) {
        const __mmask16 in = _mm512_cmp_epu32_mask(_mm512_sub_epi32(acc[r][v], lo), range, _MM_CMPINT_LE);
        bits[v] = _mm512_mask_or_epi32(bits[v], in, bits[v], bit);
      }
    }
    uint32_t* row = a.out_bits + (a.first_filter / kWordBits) * a.out_bits_stride + p0;
    for (int v = 0; v < PV; ++v) {
      const int n = std::clamp(live_px - 16 * v, 0, 16);
      const __m512i words = _mm512_loadu_si512(row + 16 * v);
      _mm512_storeu_si512(row + 16 * v, _mm512_mask_or_epi32(words, __mmask16((1u << n) - 1u), words, bits[v]));
    }
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (r >= a.filters_valid) break;
    const __m512 scale = _mm512_set1_ps(a.scale[r]), bias = _mm512_set1_ps(a.bias[r]);
    if (a.out_bits) {  // the next layer's binarization, fused: Y never leaves the registers
      const int m = a.first_filter + r * a.filter_stride;
      uint32_t* row = a.out_bits + (m / kWordBits) * a.out_bits_stride + p0;
      const __m512i bit = _mm512_set1_epi32(int(1u << (m % kWordBits)));
      const __m512 thr = _mm512_set1_ps(a.out_threshold[r]);
#pragma GCC unroll 4
      for (int v = 0; v < PV; ++v) {
        const __m512i sum = _mm512_sub_epi32(valid, _mm512_add_epi32(acc[r][v], acc[r][v]));
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale);
        y = _mm512_add_ps(y, bias);
        if (a.relu) y = _mm512_max_ps(zero, y);
        const int n = std::clamp(live_px - 16 * v, 0, 16);
        const __mmask16 ge = _mm512_mask_cmp_ps_mask(__mmask16((1u << n) - 1u), y, thr, _CMP_GE_OQ);  // NaN -> 0
        const __m512i words = _mm512_loadu_si512(row + 16 * v);
        _mm512_storeu_si512(row + 16 * v, _mm512_mask_or_epi32(words, ge, words, bit));
      }
      continue;
    }
    float* out = a.out + r * a.out_plane + p0;
#pragma GCC unroll 4
    for (int v = 0; v < PV; ++v) {
      const __m512i sum = _mm512_sub_epi32(valid, _mm512_add_epi32(acc[r][v], acc[r][v]));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale);
      y = _mm512_add_ps(y, bias);  // separate rounding (-ffp-contract=off)
      if (a.relu) y = _mm512_max_ps(zero, y);  // NaN passes through
      const int n = live_px - 16 * v;
      float* dst = out + 16 * v;
      if (n >= 16) {
        _mm512_storeu_ps(dst, y);
      } else if (n > 0) {
        _mm512_mask_storeu_ps(dst, __mmask16((1u << n) - 1u), y);
      }
    }
  }
}

}  // namespace

// 2 vectors (32 pixels) per block: measured faster than 3 or 4 on Zen 4 (these layers are
// bound by the pack and the output stream, not the popcounts) and 256-pixel chunks split
// into whole blocks with no 16-pixel tail.
constexpr int kPV = 2;
void pointwise_avx512(const PointwiseArgs& a) {
  int p0 = 0;
  for (; p0 + 16 * kPV <= a.npx; p0 += 16 * kPV) pointwise_block<kPV>(a, p0, 16 * kPV);
  for (; p0 < a.npx; p0 += 16) pointwise_block<1>(a, p0, std::min(16, a.npx - p0));
}

namespace {

// In-register transpose of a 16x16 matrix of 32-bit values (rows r[0..15]).
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];  // u[4i+k], 128-bit lane j: column 4j+k of rows 4i..4i+3
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i c0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x44);
    const __m512i c1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xEE);
    const __m512i c2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x44);
    const __m512i c3 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xEE);
    r[k] = _mm512_shuffle_i32x4(c0, c2, 0x88);
    r[4 + k] = _mm512_shuffle_i32x4(c0, c2, 0xDD);
    r[8 + k] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    r[12 + k] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
  }
}

}  // namespace

namespace {

// kOwnWord: groups in lanes, each lane xors its own group's word (16 consecutive words, one
// load); else filters in lanes, one input word broadcast to all.
template <bool kOwnWord>
void tile_avx512_impl(const TileArgs& a) {
  constexpr int R = 16;
  const __m512 scale = _mm512_loadu_ps(a.scale), bias = _mm512_loadu_ps(a.bias);
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 valid_lanes = __mmask16((1u << a.lanes_valid) - 1u);
  const __m512 out_thr = a.out_bits16 ? _mm512_maskz_loadu_ps(valid_lanes, a.out_threshold) : zero;
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += R) {
    const uint32_t* base[R];
    for (int r = 0; r < R; ++r) base[r] = a.input + a.pix_off[p0 + r];
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const uint32_t* w = a.filters;
    for (int k = 0; k < a.k_words; ++k, w += 16) {
      const __m512i wv = _mm512_loadu_si512(w);
      const int off = a.k_off[k];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512i xv = kOwnWord ? _mm512_loadu_si512(base[r] + off) : _mm512_set1_epi32(int(base[r][off]));
        acc[r] = _mm512_add_epi32(acc[r], _mm512_popcnt_epi32(_mm512_xor_si512(xv, wv)));
      }
    }
    // Output transform with filters in lanes: scale*(float)(valid - 2*(acc - corr)) + bias.
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int cls = a.pix_cls[p0 + r];
      const __m512i corr = _mm512_loadu_si512(a.correction + int64_t(cls) * a.correction_stride);
      const __m512i pc = _mm512_sub_epi32(acc[r], corr);
      const __m512i sum = _mm512_sub_epi32(_mm512_set1_epi32(a.valid_bits[cls]), _mm512_add_epi32(pc, pc));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale);
      y = _mm512_add_ps(y, bias);  // separate rounding: -ffp-contract=off keeps this from becoming an FMA
      if (a.relu) y = _mm512_max_ps(zero, y);  // (0, y): NaN passes through like torch.clamp_min
      if (a.out_bits16) {  // 16 filters' bits of one pixel: half of its output word
        if (p0 + r < a.pix_end)
          a.out_bits16[2 * (p0 + r - a.out_pixel_base)] =
              uint16_t(_mm512_mask_cmp_ps_mask(valid_lanes, y, out_thr, _CMP_GE_OQ));  // NaN -> 0
        continue;
      }
      acc[r] = _mm512_castps_si512(y);
    }
    if (a.out_bits16) continue;
    transpose16x16(acc);  // now acc[l] = 16 consecutive pixels of filter l
    const int npx = std::min(R, a.pix_end - p0);
    const __mmask16 live = __mmask16((1u << npx) - 1u);
    for (int l = 0; l < a.lanes_valid; ++l)
      _mm512_mask_storeu_epi32(a.out + l * a.out_plane + (p0 - a.out_pixel_base), live, acc[l]);
  }
}

}  // namespace

void tile_avx512(const TileArgs& a) {
  if (a.lanes_read_own_word) tile_avx512_impl<true>(a);
  else tile_avx512_impl<false>(a);
}

namespace {

// Half-word groups: 32 16-bit lanes (vpopcntw: AVX-512 BITALG) of 16 pixels; lane l is output
// channel slot0 + l. kBroadcast: 16 groups, the tap's 8 words in both 256-bit halves.
template <bool kBroadcast>
__attribute__((target("avx512f,avx512bw,avx512bitalg"))) void tile_half_words_impl(const TileArgs& a) {
  constexpr int R = 16;
  const __m512 scale_lo = _mm512_loadu_ps(a.scale), scale_hi = _mm512_loadu_ps(a.scale + 16);
  const __m512 bias_lo = _mm512_loadu_ps(a.bias), bias_hi = _mm512_loadu_ps(a.bias + 16);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 thr_lo = a.out_bits32 ? _mm512_loadu_ps(a.out_threshold) : zero;
  const __m512 thr_hi = a.out_bits32 ? _mm512_loadu_ps(a.out_threshold + 16) : zero;
  const uint16_t* filters = reinterpret_cast<const uint16_t*>(a.filters);
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += R) {
    const uint32_t* base[R];
    for (int r = 0; r < R; ++r) base[r] = a.input + a.pix_off[p0 + r];
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const uint16_t* w = filters;
    for (int k = 0; k < a.k_words; ++k, w += 32) {  // sums <= taps * 16: no 16-bit overflow
      const __m512i wv = _mm512_loadu_si512(w);
      const int off = a.k_off[k];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512i xv = kBroadcast ? _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base[r] + off)))
                                      : _mm512_loadu_si512(base[r] + off);
        acc[r] = _mm512_add_epi16(acc[r], _mm512_popcnt_epi16(_mm512_xor_si512(xv, wv)));
      }
    }
    __m512i lo_rows[R], hi_rows[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const int cls = a.pix_cls[p0 + r];
      const int32_t* corr = a.correction + int64_t(cls) * a.correction_stride;
      const __m512i valid = _mm512_set1_epi32(a.valid_bits[cls]);
      const __m512i pc_lo = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc[r])), _mm512_loadu_si512(corr));
      const __m512i pc_hi = _mm512_sub_epi32(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc[r], 1)),
                                             _mm512_loadu_si512(corr + 16));
      __m512 y_lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(valid, _mm512_add_epi32(pc_lo, pc_lo))), scale_lo);
      __m512 y_hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(valid, _mm512_add_epi32(pc_hi, pc_hi))), scale_hi);
      y_lo = _mm512_add_ps(y_lo, bias_lo);  // separate roundings (-ffp-contract=off)
      y_hi = _mm512_add_ps(y_hi, bias_hi);
      if (a.relu) {
        y_lo = _mm512_max_ps(zero, y_lo);
        y_hi = _mm512_max_ps(zero, y_hi);
      }
      if (a.out_bits32) {  // the 32 channels' bits: the pixel's whole output word
        if (p0 + r < a.pix_end)
          a.out_bits32[p0 + r - a.out_pixel_base] = uint32_t(_mm512_cmp_ps_mask(y_lo, thr_lo, _CMP_GE_OQ)) |
                                                    uint32_t(_mm512_cmp_ps_mask(y_hi, thr_hi, _CMP_GE_OQ)) << 16;
        continue;
      }
      lo_rows[r] = _mm512_castps_si512(y_lo);
      hi_rows[r] = _mm512_castps_si512(y_hi);
    }
    if (a.out_bits32) continue;
    transpose16x16(lo_rows);  // lo_rows[l] = 16 consecutive pixels of lane l
    transpose16x16(hi_rows);
    const __mmask16 live = __mmask16((1u << std::min(R, a.pix_end - p0)) - 1u);
    for (int l = 0; l < 16; ++l) {
      _mm512_mask_storeu_epi32(a.out + l * a.out_plane + (p0 - a.out_pixel_base), live, lo_rows[l]);
      _mm512_mask_storeu_epi32(a.out + (16 + l) * a.out_plane + (p0 - a.out_pixel_base), live, hi_rows[l]);
    }
  }
}

}  // namespace

void tile_half_words_avx512(const TileArgs& a) {
  if (a.broadcast_half) tile_half_words_impl<true>(a);
  else tile_half_words_impl<false>(a);
}

}  // namespace xnorpipe::bconv2d
