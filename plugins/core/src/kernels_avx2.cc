// AVX2 kernels (compiled with -mavx2; only called after CPUID says so).
// Tile: 8 filters (ymm lanes) x 8 output pixels. Popcount by nibble lookup (vpshufb): byte
// counts accumulate for up to 31 words (31 * 8 = 248 < 256), then widen to 32-bit lanes.
#include <immintrin.h>

#include <algorithm>

#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"

namespace xnorpipe::bconv2d {

void pack_avx2(const PackArgs& a) {
  // 64 pixels (8 ymm of accumulators) per channel pass: long sequential runs per plane.
  constexpr int V = 8, kChunk = 8 * V;
  const int64_t plane = int64_t(a.in_h) * a.in_w;
  alignas(32) uint32_t words[kChunk];
  int64_t dst[kChunk];
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += kChunk) {
    const int npx = std::min(kChunk, a.pix_end - p0);
    __m256i live[V];
    for (int v = 0; v < V; ++v) live[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(npx - 8 * v), lane_index);
    for (int i = 0; i < npx; ++i) dst[i] = packed_pixel_offset(a, p0 + i);
    for (int g = 0; g < a.group; ++g)
      for (int q = 0; q < a.words_per_tap; ++q) {
        const int c0 = g * a.channels_per_group + q * kWordBits;
        const int count = std::min(kWordBits, a.channels_per_group - q * kWordBits);
        __m256i acc[V];
        for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_si256();
        for (int k = 0; k < count; ++k) {
          const float* src = a.x + (c0 + k) * plane + p0;
          const __m256 thr = _mm256_set1_ps(a.threshold[c0 + k]);
          const __m256i bit = _mm256_set1_epi32(int(1u << k));
          if (npx == kChunk) {
#pragma GCC unroll 8
            for (int v = 0; v < V; ++v) {
              const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(src + 8 * v), thr, _CMP_GE_OQ);  // NaN -> 0
              acc[v] = _mm256_or_si256(acc[v], _mm256_and_si256(_mm256_castps_si256(ge), bit));
            }
          } else {
            for (int v = 0; v < V; ++v) {
              const __m256 ge = _mm256_cmp_ps(_mm256_maskload_ps(src + 8 * v, live[v]), thr, _CMP_GE_OQ);
              acc[v] = _mm256_or_si256(acc[v], _mm256_and_si256(_mm256_castps_si256(ge), bit));
            }
          }
        }
        for (int v = 0; v < V; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(words + 8 * v), acc[v]);
        uint32_t* out = a.out + g * a.words_per_tap + q;
        for (int i = 0; i < npx; ++i) out[dst[i]] = words[i];
      }
  }
}

namespace {

inline void transpose8x8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i+k], 128-bit lane j: column 4j+k of rows 4i..4i+3
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
  }
}

}  // namespace

void tile_avx2(const TileArgs& a) {
  constexpr int R = 8;
  constexpr int kFlushWords = 31;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const __m256 scale = _mm256_loadu_ps(a.scale), bias = _mm256_loadu_ps(a.bias);
  const __m256 zero = _mm256_setzero_ps();
  for (int p0 = a.pix_begin; p0 < a.pix_end; p0 += R) {
    const uint32_t* base[R];
    for (int r = 0; r < R; ++r) base[r] = a.input + a.pix_off[p0 + r];
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    const uint32_t* w = a.filters;
    for (int k0 = 0; k0 < a.k_words; k0 += kFlushWords) {
      const int k1 = std::min(a.k_words, k0 + kFlushWords);
      __m256i bytes[R];
      for (int r = 0; r < R; ++r) bytes[r] = _mm256_setzero_si256();
      for (int k = k0; k < k1; ++k, w += 8) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
        const int off = a.k_off[k];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256i v = _mm256_xor_si256(_mm256_set1_epi32(int(base[r][off])), wv);
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low_nibble));
          const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble));
          bytes[r] = _mm256_add_epi8(bytes[r], _mm256_add_epi8(lo, hi));
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(bytes[r], ones8), ones16));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int cls = a.pix_cls[p0 + r];
      const __m256i corr =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.correction + int64_t(cls) * a.correction_stride));
      const __m256i pc = _mm256_sub_epi32(acc[r], corr);
      const __m256i sum = _mm256_sub_epi32(_mm256_set1_epi32(a.valid_bits[cls]), _mm256_add_epi32(pc, pc));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), scale);
      y = _mm256_add_ps(y, bias);  // separate rounding (-ffp-contract=off)
      if (a.relu) y = _mm256_max_ps(zero, y);  // NaN passes through
      acc[r] = _mm256_castps_si256(y);
    }
    transpose8x8(acc);
    const int npx = std::min(R, a.pix_end - p0);
    if (npx == R) {
      for (int l = 0; l < a.lanes_valid; ++l)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.out + l * a.out_plane + (p0 - a.out_pixel_base)), acc[l]);
    } else {
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(npx), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      for (int l = 0; l < a.lanes_valid; ++l)
        _mm256_maskstore_epi32(reinterpret_cast<int*>(a.out + l * a.out_plane + (p0 - a.out_pixel_base)), live, acc[l]);
    }
  }
}

}  // namespace xnorpipe::bconv2d
