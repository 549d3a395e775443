// Correction for zero padding. The kernels popcount over *all* kH*kW taps of the padded
// packed image, whose border words are 0 (= -1 in every channel). The contract wants an
// out-of-image tap to contribute 0, so for output pixel p and filter m:
//   sum = valid_bits(p) - 2 * (popcount_all_taps(p, m) - sum_{tap t invalid at p} popcount(w[m, t]))
// because at an invalid tap xor(0, w) = w. The set of valid taps depends only on the pair
// (range of valid kernel rows, range of valid kernel columns), so a few "classes" cover
// every pixel: interior pixels share one class whose correction is 0.
#pragma once

#include <cstdint>
#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "core/bconv2d/params.h"

namespace xnorpipe::bconv2d {

struct PaddingClasses {
  int num_row_classes = 0, num_col_classes = 0;
  std::vector<int32_t> row_class;     // [Ho] -> row class
  std::vector<int32_t> col_class;     // [Wo] -> col class
  std::vector<int32_t> valid_bits;    // [class] valid taps * Cg; class = rc * num_col_classes + cc
  std::vector<int32_t> correction;    // [class][padded filter index] popcount of w over invalid taps
};

namespace detail {
// Valid kernel index range [lo, hi) per output position along one axis; deduplicated.
inline void axis_classes(int64_t out_size, int in_size, int stride, int pad, int dilation, int kernel,
                         std::vector<int32_t>& class_of, std::vector<std::pair<int, int>>& ranges) {
  std::map<std::pair<int, int>, int> ids;
  class_of.resize(out_size);
  for (int64_t o = 0; o < out_size; ++o) {
    int lo = kernel, hi = 0;
    for (int i = 0; i < kernel; ++i) {
      const int64_t pos = o * stride - pad + int64_t(i) * dilation;
      if (pos >= 0 && pos < in_size) { lo = std::min(lo, i); hi = i + 1; }
    }
    if (hi == 0) lo = 0;  // no valid tap
    auto key = std::make_pair(lo, hi);
    auto it = ids.find(key);
    if (it == ids.end()) {
      it = ids.emplace(key, int(ranges.size())).first;
      ranges.push_back(key);
    }
    class_of[o] = it->second;
  }
}
}  // namespace detail

// tap_popcount: [M][kH*kW] popcount of each filter's (masked) weight words per tap.
// padded_index(m) maps a filter to its slot in the kernels' padded filter order.
template <typename PaddedIndex>
PaddingClasses build_padding_classes(const BConv2DParams& p, int in_h, int in_w, const std::vector<int32_t>& tap_popcount,
                                     int padded_filters, PaddedIndex padded_index) {
  PaddingClasses pc;
  std::vector<std::pair<int, int>> rows, cols;
  detail::axis_classes(p.out_h(in_h), in_h, p.stride_h, p.pad_top, p.dilation_h, p.kernel_h, pc.row_class, rows);
  detail::axis_classes(p.out_w(in_w), in_w, p.stride_w, p.pad_left, p.dilation_w, p.kernel_w, pc.col_class, cols);
  pc.num_row_classes = int(rows.size());
  pc.num_col_classes = int(cols.size());
  const int classes = pc.num_row_classes * pc.num_col_classes, taps = p.taps();
  pc.valid_bits.assign(classes, 0);
  pc.correction.assign(size_t(classes) * padded_filters, 0);
  for (int rc = 0; rc < pc.num_row_classes; ++rc)
    for (int cc = 0; cc < pc.num_col_classes; ++cc) {
      const int cls = rc * pc.num_col_classes + cc;
      const auto [r0, r1] = rows[rc];
      const auto [c0, c1] = cols[cc];
      pc.valid_bits[cls] = (r1 - r0) * (c1 - c0) * p.channels_per_group();
      if (r0 == 0 && r1 == p.kernel_h && c0 == 0 && c1 == p.kernel_w) continue;  // interior: 0
      for (int m = 0; m < p.filters; ++m) {
        int32_t corr = 0;
        for (int i = 0; i < p.kernel_h; ++i)
          for (int j = 0; j < p.kernel_w; ++j)
            if (i < r0 || i >= r1 || j < c0 || j >= c1) corr += tap_popcount[size_t(m) * taps + i * p.kernel_w + j];
        pc.correction[size_t(cls) * padded_filters + padded_index(m)] = corr;
      }
    }
  return pc;
}

}  // namespace xnorpipe::bconv2d
