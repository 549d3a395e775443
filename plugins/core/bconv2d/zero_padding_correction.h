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

#include "core/bconv2d/limits.h"
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
// Valid kernel index range [lo, hi) per output position along one axis; deduplicated. Taps at
// o*stride - pad + i*dilation inside [0, in_size) form one run of i, found in O(1).
inline void axis_classes(int64_t out_size, int in_size, int stride, int pad, int dilation, int kernel,
                         std::vector<int32_t>& class_of, std::vector<std::pair<int, int>>& ranges) {
  std::map<std::pair<int, int>, int> ids;
  class_of.resize(out_size);
  for (int64_t o = 0; o < out_size; ++o) {
    const int64_t base = o * stride - pad;  // position of tap 0
    const int64_t first = base < 0 ? (-base + dilation - 1) / dilation : 0;
    const int64_t last = in_size - 1 - base < 0 ? -1 : (in_size - 1 - base) / dilation;  // last tap inside
    int lo = int(std::min<int64_t>(first, kernel)), hi = int(std::min<int64_t>(last + 1, kernel));
    if (lo >= hi) lo = hi = 0;  // no valid tap
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
// Cost O(Ho + Wo + M * taps + classes * M): a per-filter 2-D prefix sum over the taps gives each
// class's in-window popcount at once. Throws std::invalid_argument "<op>: ..." if the class table
// would exceed limits.h's kMaxElements.
template <typename PaddedIndex>
PaddingClasses build_padding_classes(const BConv2DParams& p, int in_h, int in_w, const std::vector<int32_t>& tap_popcount,
                                     int padded_filters, PaddedIndex padded_index, const char* op = "XnorConv2d") {
  PaddingClasses pc;
  std::vector<std::pair<int, int>> rows, cols;
  detail::axis_classes(p.out_h(in_h), in_h, p.stride_h, p.pad_top, p.dilation_h, p.kernel_h, pc.row_class, rows);
  detail::axis_classes(p.out_w(in_w), in_w, p.stride_w, p.pad_left, p.dilation_w, p.kernel_w, pc.col_class, cols);
  check_elements(op, "the zero-padding correction table", sat_mul(int64_t(rows.size()), int64_t(cols.size()), padded_filters));
  pc.num_row_classes = int(rows.size());
  pc.num_col_classes = int(cols.size());
  const int classes = pc.num_row_classes * pc.num_col_classes, taps = p.taps(), kw = p.kernel_w;
  pc.valid_bits.assign(classes, 0);
  pc.correction.assign(size_t(classes) * padded_filters, 0);
  // prefix[m][i][j]: popcount of filter m over taps [0, i) x [0, j); a class's correction is the
  // filter's total minus its window [r0, r1) x [c0, c1).
  const size_t stride = size_t(p.kernel_h + 1) * (kw + 1);
  std::vector<int32_t> prefix(size_t(p.filters) * stride, 0);
  for (int m = 0; m < p.filters; ++m) {
    int32_t* pm = prefix.data() + size_t(m) * stride;
    for (int i = 0; i < p.kernel_h; ++i)
      for (int j = 0; j < kw; ++j)
        pm[(i + 1) * (kw + 1) + j + 1] = tap_popcount[size_t(m) * taps + i * kw + j] + pm[i * (kw + 1) + j + 1] +
                                         pm[(i + 1) * (kw + 1) + j] - pm[i * (kw + 1) + j];
  }
  for (int rc = 0; rc < pc.num_row_classes; ++rc)
    for (int cc = 0; cc < pc.num_col_classes; ++cc) {
      const int cls = rc * pc.num_col_classes + cc;
      const auto [r0, r1] = rows[rc];
      const auto [c0, c1] = cols[cc];
      pc.valid_bits[cls] = (r1 - r0) * (c1 - c0) * p.channels_per_group();
      if (r0 == 0 && r1 == p.kernel_h && c0 == 0 && c1 == p.kernel_w) continue;  // interior: 0
      for (int m = 0; m < p.filters; ++m) {
        const int32_t* pm = prefix.data() + size_t(m) * stride;
        const int32_t window = pm[r1 * (kw + 1) + c1] - pm[r0 * (kw + 1) + c1] - pm[r1 * (kw + 1) + c0] + pm[r0 * (kw + 1) + c0];
        pc.correction[size_t(cls) * padded_filters + padded_index(m)] = pm[p.kernel_h * (kw + 1) + kw] - window;
      }
    }
  return pc;
}

}  // namespace xnorpipe::bconv2d
