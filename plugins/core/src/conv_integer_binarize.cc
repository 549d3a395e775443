// ConvIntegerBinarize driver: CPU dispatch, weight packing, the padded input rows of each work
// item (filled with the zero point), thresholds with the zero point's share, the portable
// kernel; the SIMD row kernels are in conv_integer_binarize_avx*.cc.
#include "core/conv_integer_binarize/conv_integer_binarize.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace xnorpipe::conv_integer_binarize {

namespace {
constexpr const char* kOp = "ConvIntegerBinarize";
// Elements past the end of each padded row (zeros here, times zero weights): a group starting in
// a window row's last element reads up to 3 more, a fine sum chunk up to kFineChunk - 1.
constexpr int64_t kRowSlack = kFineChunk;
}  // namespace

const char* isa_name(IntIsa isa) {
  switch (isa) {
    case IntIsa::kAvx512Vnni: return "avx512-vnni";
    case IntIsa::kAvxVnni: return "avx-vnni";
    case IntIsa::kAvx2: return "avx2";
    case IntIsa::kPortable: break;
  }
  return "portable";
}

bool cpu_supports(IntIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the ymm/zmm state.
  switch (isa) {
    case IntIsa::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    case IntIsa::kAvxVnni: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
    case IntIsa::kAvx2: return __builtin_cpu_supports("avx2");
    case IntIsa::kPortable: return true;
  }
#endif
  return isa == IntIsa::kPortable;
}

IntIsa isa_for(bconv2d::PopcountPath path) {
  using bconv2d::PopcountPath;
  if (path == PopcountPath::kAvx512 && cpu_supports(IntIsa::kAvx512Vnni)) return IntIsa::kAvx512Vnni;
  if (path == PopcountPath::kAvx512 || path == PopcountPath::kAvx2) {
    if (cpu_supports(IntIsa::kAvxVnni)) return IntIsa::kAvxVnni;
    if (cpu_supports(IntIsa::kAvx2)) return IntIsa::kAvx2;
  }
  return IntIsa::kPortable;
}

int group_size(IntIsa isa) {
  switch (isa) {
    case IntIsa::kAvx512Vnni:
    case IntIsa::kAvxVnni: return 4;
    case IntIsa::kAvx2: return 2;
    case IntIsa::kPortable: break;
  }
  return 1;
}

int block_filters(IntIsa isa) {
  switch (isa) {
    case IntIsa::kAvx512Vnni: return 64;
    case IntIsa::kAvxVnni:
    case IntIsa::kAvx2: return 32;
    case IntIsa::kPortable: break;
  }
  return 1;
}

ConvIntegerBinarize::ConvIntegerBinarize(const BConv2DParams& params, IntIsa isa) : params_(params), isa_(isa) {
  params_.relu = false;  // no ReLU: the exporter folds it into the threshold
  params_.validate(kOp);
  if (params_.group != 1) bconv2d::size_error(kOp, "group must be 1, got " + std::to_string(params_.group));
  const int64_t taps = bconv2d::sat_mul(params_.taps(), params_.channels + int64_t(1));
  if (taps > kMaxIntegerTaps)
    bconv2d::size_error(kOp, "(C + 1) * kH * kW = " + std::to_string(taps) + " exceeds " +
                                 std::to_string(kMaxIntegerTaps) + " (the int32 sum of uint8 x int8 products and pad values)");
  if (!cpu_supports(isa)) throw std::runtime_error(std::string(kOp) + ": this CPU does not run the " + isa_name(isa) + " kernel");
}

PackedIntWeights ConvIntegerBinarize::pack_weights(const int8_t* w) const {
  const BConv2DParams& p = params_;
  const int c_in = p.channels, kh = p.kernel_h, kw = p.kernel_w, m_all = p.filters;
  PackedIntWeights out;
  out.isa = isa_;
  out.plain.assign(w, w + size_t(m_all) * c_in * kh * kw);  // <= M * kMaxIntegerTaps: the caller's W
  if (isa_ == IntIsa::kPortable) return out;
  // Segments: runs of consecutive elements in a window row. Undilated, a kernel row's kW pixels
  // are one run of kW * C elements; dilated, each tap's C channels are one.
  struct Segment { int row, col, len, first_tap; };  // first_tap: the tap (j) at col
  std::vector<Segment> segments;
  for (int i = 0; i < kh; ++i) {
    if (p.dilation_w == 1) segments.push_back({i, 0, kw * c_in, 0});
    else
      for (int j = 0; j < kw; ++j) segments.push_back({i, int(int64_t(j) * p.dilation_w * c_in), c_in, j});
  }
  const int g_size = group_size(isa_), bf = block_filters(isa_);
  for (const Segment& s : segments)
    for (int e = 0; e < s.len; e += g_size) {
      out.group_row.push_back(s.row);
      out.group_col.push_back(s.col + e);
    }
  out.kgroups = int(out.group_row.size());
  out.blocks = (m_all + bf - 1) / bf;
  const int64_t packed = bconv2d::sat_mul(out.blocks, out.kgroups, bf, g_size);
  bconv2d::check_elements(kOp, "the packed weights", packed);
  std::vector<int16_t> wide(size_t(packed), 0);
  int g = 0;
  for (const Segment& s : segments)
    for (int e0 = 0; e0 < s.len; e0 += g_size, ++g)
      for (int e = e0; e < std::min(s.len, e0 + g_size); ++e) {
        // element e of the segment: tap j, channel c
        const int j = s.first_tap + e / c_in, c = e % c_in;
        for (int m = 0; m < m_all; ++m)
          wide[((size_t(m / bf) * out.kgroups + g) * bf + m % bf) * g_size + (e - e0)] =
              w[((size_t(m) * c_in + c) * kh + s.row) * kw + j];
      }
  if (isa_ == IntIsa::kAvx2) out.w16 = std::move(wide);
  else out.w8.assign(wide.begin(), wide.end());  // int8 values
  return out;
}

namespace {
// Rows [row0, row0 + rows_h) of the padded image n (NHWC) as [rows_h][row_stride] elements:
// the zero point outside the image, zeros in the slack.
template <typename E>
void fill_rows(E* rows, int rows_h, int64_t row_stride, const uint8_t* image, int in_h, int in_w,
               const BConv2DParams& p, int row0, const uint8_t* z) {
  const int c_in = p.channels;
  const int64_t padded_w = int64_t(in_w) + p.pad_left + p.pad_right;
  auto zero_point_pixels = [&](E* dst, int64_t pixels) {
    for (int64_t x = 0; x < pixels; ++x)
      for (int c = 0; c < c_in; ++c) dst[x * c_in + c] = E(z[c]);
  };
  for (int r = 0; r < rows_h; ++r) {
    E* dst = rows + r * row_stride;
    std::fill(dst + padded_w * c_in, dst + row_stride, E(0));
    const int ih = row0 + r - p.pad_top;
    if (ih < 0 || ih >= in_h) {
      zero_point_pixels(dst, padded_w);
      continue;
    }
    zero_point_pixels(dst, p.pad_left);
    const uint8_t* src = image + int64_t(ih) * in_w * c_in;
    E* body = dst + int64_t(p.pad_left) * c_in;
    if constexpr (sizeof(E) == 1) std::memcpy(body, src, size_t(in_w) * c_in);
    else std::copy(src, src + int64_t(in_w) * c_in, body);  // widened to int16 (AVX2 kernel)
    zero_point_pixels(body + int64_t(in_w) * c_in, p.pad_right);
  }
}

// The kernel taps [lo, hi) along one axis that fall inside [0, extent) for a window starting at
// `start` with dilation d: one axis of an output position's padding class (lo == hi: none).
std::pair<int, int> valid_taps(int64_t start, int64_t extent, int k, int d) {
  const int64_t lo = std::min<int64_t>(k, start >= 0 ? 0 : (-start + d - 1) / d);
  const int64_t hi = std::clamp<int64_t>(start >= extent ? 0 : (extent - start + d - 1) / d, lo, k);
  return {int(lo), int(hi)};
}

// The padding class of every output position along one axis ([out] indices into `ranges`).
std::vector<int32_t> axis_classes(int out, int stride, int pad, int extent, int k, int d,
                                  std::vector<std::pair<int, int>>& ranges) {
  std::map<std::pair<int, int>, int32_t> index;
  std::vector<int32_t> cls(static_cast<size_t>(out));
  for (int o = 0; o < out; ++o) {
    const auto r = valid_taps(int64_t(o) * stride - pad, extent, k, d);
    auto it = index.find(r);
    if (it == index.end()) {
      it = index.emplace(r, int32_t(ranges.size())).first;
      ranges.push_back(r);
    }
    cls[o] = it->second;
  }
  return cls;
}
}  // namespace

namespace {
// The fine sum's chunks (IntThresholds::fine_row, fine_col) and, for each chunk element, the
// index of its tap in a filter's (c, i, j) fine weights, or -1 (weight 0).
struct FineLayout {
  std::vector<int32_t> row, col, tap;
};
FineLayout fine_layout(const BConv2DParams& p) {
  const int c_in = p.channels, kh = p.kernel_h, kw = p.kernel_w;
  const int64_t d = p.dilation_w;
  auto chunks_of = [](int64_t len) { return (len + kFineChunk - 1) / kFineChunk; };
  // A kernel row as one run from its first tap to its last (undilated: kW * C elements), or,
  // where that takes more chunks (wide dilation gaps), each tap's C channels as a run of its own.
  const int64_t span = int64_t(kw - 1) * d * c_in + c_in;
  const bool one_run = chunks_of(span) <= kw * chunks_of(c_in);
  FineLayout f;
  auto add_run = [&](int i, int64_t col0, int64_t len) {
    for (int64_t q = 0; q < chunks_of(len); ++q) {
      f.row.push_back(i);
      f.col.push_back(int32_t(col0 + q * kFineChunk));  // < span: the window row's width
      for (int64_t el = col0 + q * kFineChunk; el < col0 + (q + 1) * kFineChunk; ++el) {
        // element el of the window row: channel el % C of the pixel el / C, tap j if a multiple of d
        const int64_t pixel = el / c_in;
        const bool is_tap = el < col0 + len && pixel % d == 0;
        f.tap.push_back(is_tap ? int32_t((int64_t(el % c_in) * kh + i) * kw + pixel / d) : -1);
      }
    }
  };
  for (int i = 0; i < kh; ++i) {
    if (one_run) add_run(i, 0, span);
    else
      for (int j = 0; j < kw; ++j) add_run(i, int64_t(j) * d * c_in, c_in);
  }
  return f;
}

int32_t clamp32(int64_t v) {
  return int32_t(std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
}
// a + b, saturating at the int64 extremes (the fine sums stay far inside them).
int64_t sat_add64(int64_t a, int64_t b) {
  int64_t r;
  if (!__builtin_add_overflow(a, b, &r)) return r;
  return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
}
// Sums of pad values over rectangles of kernel taps: 2-D prefix sums of one filter's [kH][kW].
template <typename T>
class TapSums {
 public:
  TapSums(int kh, int kw) : kw_(kw), prefix_(size_t(kh + 1) * (kw + 1), 0) {}
  void load(const T* pv, int kh) {
    for (int i = 1; i <= kh; ++i)
      for (int j = 1; j <= kw_; ++j) at(i, j) = pv[(i - 1) * kw_ + (j - 1)] + at(i - 1, j) + at(i, j - 1) - at(i - 1, j - 1);
  }
  // the pad values of the taps outside rows [i0, i1) x columns [j0, j1) of the kh x kw kernel
  int64_t outside(int kh, std::pair<int, int> rows, std::pair<int, int> cols) const {
    const auto [i0, i1] = rows;
    const auto [j0, j1] = cols;
    return get(kh, kw_) - (get(i1, j1) - get(i0, j1) - get(i1, j0) + get(i0, j0));
  }

 private:
  int64_t& at(int i, int j) { return prefix_[size_t(i) * (kw_ + 1) + j]; }
  int64_t get(int i, int j) const { return prefix_[size_t(i) * (kw_ + 1) + j]; }
  int kw_;
  std::vector<int64_t> prefix_;
};
}  // namespace

IntThresholds ConvIntegerBinarize::thresholds(const PackedIntWeights& w, int in_h, int in_w, const IntInputs& in) const {
  const BConv2DParams& p = params_;
  const int64_t out_h64 = p.out_h(in_h), out_w64 = p.out_w(in_w);
  if (out_h64 < 1 || out_w64 < 1)
    bconv2d::size_error(kOp, "output size " + std::to_string(out_h64) + "x" + std::to_string(out_w64) +
                                 " <= 0 (input too small for kernel, dilation and pads)");
  if (w.isa != isa_) bconv2d::size_error(kOp, "weights were packed for another kernel");
  bconv2d::check_elements(kOp, "the output plane", bconv2d::sat_mul(out_h64, out_w64));
  // Bounds per padding class (vertical class v, horizontal class h), from U = threshold + K -
  // corr, K = sum W * z, corr = the pad values of the class's padded taps (TapSums):
  // upper = U + margin + 1, lower = U - margin, clamped to int32 (R = sum W * Xp never reaches
  // the int32 extremes: |R| <= kMaxIntegerTaps * 255 * 128 < 2^31 - 1). The fine sum's bound
  // likewise in int64. Pad filters: INT32_MAX, bit 0.
  const int c_in = p.channels, m_all = p.filters, kh = p.kernel_h, kw = p.kernel_w, taps = kh * kw;
  const int64_t all_taps = int64_t(c_in) * taps;
  IntThresholds t;
  t.in_h = in_h;
  t.in_w = in_w;
  t.zero_point.assign(in.x_zero_point, in.x_zero_point + c_in);
  std::vector<std::pair<int, int>> row_ranges, col_ranges;
  t.row_class = axis_classes(int(out_h64), p.stride_h, p.pad_top, in_h, kh, p.dilation_h, row_ranges);
  t.col_class = axis_classes(int(out_w64), p.stride_w, p.pad_left, in_w, kw, p.dilation_w, col_ranges);
  t.padded_m = isa_ == IntIsa::kPortable ? m_all : int64_t(w.blocks) * block_filters(isa_);
  const int64_t n_rows = int64_t(row_ranges.size());
  t.n_cols = int64_t(col_ranges.size());
  const int64_t table = bconv2d::sat_mul(n_rows, t.n_cols, t.padded_m);
  bconv2d::check_elements(kOp, "the bounds of the padding classes", table);
  FineLayout layout = fine_layout(p);  // at most 8 * C * kH * kW slots: the taps (checked) bound it
  const int64_t slots = int64_t(layout.tap.size());
  bconv2d::check_elements(kOp, "the fine weights", bconv2d::sat_mul(m_all, slots));
  t.lower.assign(size_t(table), std::numeric_limits<int32_t>::max());
  t.upper.assign(size_t(table), std::numeric_limits<int32_t>::max());
  t.fine.assign(size_t(table), std::numeric_limits<int64_t>::max());
  t.fine_chunks = int(layout.row.size());
  t.fine_row = std::move(layout.row);
  t.fine_col = std::move(layout.col);
  t.fine_weight.assign(size_t(m_all * slots), 0);
  for (int m = 0; m < m_all; ++m)
    for (int64_t k = 0; k < slots; ++k)
      if (layout.tap[k] >= 0) t.fine_weight[size_t(m * slots + k)] = in.fine_weight[size_t(m * all_taps + layout.tap[k])];
  TapSums<int64_t> coarse_pad(kh, kw), fine_pad(kh, kw);
  std::vector<int64_t> pv(static_cast<size_t>(taps));
  for (int m = 0; m < m_all; ++m) {
    int64_t coarse_base = in.threshold[m], fine_base = in.fine_threshold[m];
    const int8_t* wm = w.plain.data() + size_t(m) * all_taps;
    const int32_t* fm = in.fine_weight + size_t(m) * all_taps;
    for (int c = 0; c < c_in; ++c)
      for (int k = 0; k < taps; ++k) {
        coarse_base += int64_t(wm[c * taps + k]) * in.x_zero_point[c];
        fine_base = sat_add64(fine_base, int64_t(fm[c * taps + k]) * in.x_zero_point[c]);
      }
    std::copy(in.pad_value + size_t(m) * taps, in.pad_value + size_t(m + 1) * taps, pv.begin());
    coarse_pad.load(pv.data(), kh);
    std::copy(in.fine_pad_value + size_t(m) * taps, in.fine_pad_value + size_t(m + 1) * taps, pv.begin());
    fine_pad.load(pv.data(), kh);
    const int64_t margin = in.margin[m];
    for (int64_t v = 0; v < n_rows; ++v)
      for (int64_t hc = 0; hc < t.n_cols; ++hc) {
        const size_t at = size_t((v * t.n_cols + hc) * t.padded_m + m);
        const int64_t u = coarse_base - coarse_pad.outside(kh, row_ranges[v], col_ranges[hc]);
        t.upper[at] = clamp32(u + margin + 1);
        t.lower[at] = clamp32(u - margin);
        t.fine[at] = sat_add64(fine_base, -fine_pad.outside(kh, row_ranges[v], col_ranges[hc]));
      }
  }
  return t;
}

void ConvIntegerBinarize::run(const uint8_t* x, int n_batch, int in_h, int in_w, const PackedIntWeights& w,
                              const IntInputs& in, uint32_t* bits, const bconv2d::ParallelFor& parallel_for) const {
  const int64_t out_h = params_.out_h(in_h), out_w = params_.out_w(in_w);
  if (n_batch == 0 && out_h >= 1 && out_w >= 1 && w.isa == isa_) return;  // the data pointers may be null
  run(x, n_batch, w, thresholds(w, in_h, in_w, in), bits, parallel_for);
}

void ConvIntegerBinarize::run(const uint8_t* x, int n_batch, const PackedIntWeights& w, const IntThresholds& t,
                              uint32_t* bits, const bconv2d::ParallelFor& parallel_for) const {
  const BConv2DParams& p = params_;
  const int in_h = t.in_h, in_w = t.in_w;
  if (w.isa != isa_) bconv2d::size_error(kOp, "weights were packed for another kernel");
  if (n_batch == 0) return;
  const int c_in = p.channels, m_all = p.filters, words = bconv2d::num_words(m_all), taps = p.kernel_h * p.kernel_w;
  const int out_h = int(t.row_class.size()), out_w = int(t.col_class.size());
  const int64_t out_plane = int64_t(out_h) * out_w;
  bconv2d::check_elements(kOp, "the output", bconv2d::sat_mul(n_batch, words, out_plane));
  const int rows_per_item = std::max(1, std::min(4, out_h));
  const int64_t padded_w = int64_t(in_w) + p.pad_left + p.pad_right;
  const int64_t row_stride = bconv2d::sat_add(bconv2d::sat_mul(padded_w, c_in), kRowSlack);
  const int64_t max_rows_h = int64_t(rows_per_item - 1) * p.stride_h + int64_t(p.kernel_h - 1) * p.dilation_h + 1;
  bconv2d::check_elements(kOp, "the padded input rows of one work item", bconv2d::sat_mul(max_rows_h, row_stride));
  const uint8_t* x_zero_point = t.zero_point.data();
  const int64_t padded_m = t.padded_m;
  // Each fine sum chunk's element offset from a pixel's window origin (< the item's buffer size).
  std::vector<int32_t> fine_off(size_t(t.fine_chunks));
  for (int k = 0; k < t.fine_chunks; ++k)
    fine_off[k] = int32_t(int64_t(t.fine_row[k]) * p.dilation_h * row_stride + t.fine_col[k]);
  const int64_t fine_stride = int64_t(t.fine_chunks) * kFineChunk;  // a filter's fine weights
  // Each group's offset from a pixel's window origin (< the item's buffer size: int32).
  std::vector<int32_t> group_off(size_t(w.kgroups));
  for (int g = 0; g < w.kgroups; ++g)
    group_off[g] = int32_t(int64_t(w.group_row[g]) * p.dilation_h * row_stride + w.group_col[g]);
  const int64_t pixel_step = int64_t(p.stride_w) * c_in;
  const int64_t image_elements = int64_t(in_h) * in_w * c_in;

  const int item_rows = (out_h + rows_per_item - 1) / rows_per_item;
  parallel_for(size_t(n_batch) * item_rows, [&](size_t item) {
    const int n = int(item / item_rows), oh0 = int(item % item_rows) * rows_per_item;
    const int oh1 = std::min(out_h, oh0 + rows_per_item);
    const int row0 = int(int64_t(oh0) * p.stride_h);  // <= in_h + pads (the output size says so)
    const int rows_h = int(int64_t(oh1 - 1 - oh0) * p.stride_h + int64_t(p.kernel_h - 1) * p.dilation_h + 1);
    const uint8_t* image = x + n * image_elements;
    uint32_t* out = bits + int64_t(n) * words * out_plane;
    thread_local std::vector<uint8_t> rows8;
    thread_local std::vector<int16_t> rows16;
    const void* rows = nullptr;
    if (isa_ == IntIsa::kAvx2) {
      rows16.resize(size_t(rows_h * row_stride));
      fill_rows(rows16.data(), rows_h, row_stride, image, in_h, in_w, p, row0, x_zero_point);
      rows = rows16.data();
    } else {
      rows8.resize(size_t(rows_h * row_stride));
      fill_rows(rows8.data(), rows_h, row_stride, image, in_h, in_w, p, row0, x_zero_point);
      rows = rows8.data();
    }
    const int64_t row_class_stride = t.n_cols * padded_m;
    if (isa_ != IntIsa::kPortable) {
      RowArgs a{};
      a.rows = rows;
      a.group_off = group_off.data();
      a.kgroups = w.kgroups;
      a.pixel_step = pixel_step;
      a.weights = isa_ == IntIsa::kAvx2 ? static_cast<const void*>(w.w16.data()) : static_cast<const void*>(w.w8.data());
      a.blocks = w.blocks;
      a.col_class = t.col_class.data();
      a.class_stride = padded_m;
      a.fine_weight = t.fine_weight.data();
      a.fine_off = fine_off.data();
      a.fine_chunks = t.fine_chunks;
      thread_local std::vector<UnsureFilters> unsure;
      unsure.resize(size_t(out_w) * w.blocks + 1);  // blocks <= words: below the output's size
      a.unsure = unsure.data();
      a.out_plane = out_plane;
      a.words = words;
      a.out_w = out_w;
      for (int oh = oh0; oh < oh1; ++oh) {
        const int64_t row_at = t.row_class[oh] * row_class_stride;
        a.row_lower = t.lower.data() + row_at;
        a.row_upper = t.upper.data() + row_at;
        a.row_fine = t.fine.data() + row_at;
        a.origin = (int64_t(oh) * p.stride_h - row0) * row_stride;
        a.out = out + int64_t(oh) * out_w;
        if (isa_ == IntIsa::kAvx512Vnni) row_avx512_vnni(a);
        else if (isa_ == IntIsa::kAvxVnni) row_avx_vnni(a);
        else row_avx2(a);
      }
      return;
    }
    const uint8_t* buf = rows8.data();
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = 0; ow < out_w; ++ow) {
        const uint8_t* win = buf + (int64_t(oh) * p.stride_h - row0) * row_stride + ow * pixel_step;
        const int64_t at = t.row_class[oh] * row_class_stride + t.col_class[ow] * padded_m;
        for (int q = 0; q < words; ++q) {
          uint32_t word = 0;
          for (int m = q * 32; m < std::min(m_all, q * 32 + 32); ++m) {
            const int8_t* wm = w.plain.data() + size_t(m) * c_in * taps;
            int32_t acc = 0;  // exact: |acc| < 2^31 (kMaxIntegerTaps)
            for (int c = 0; c < c_in; ++c)
              for (int i = 0; i < p.kernel_h; ++i)
                for (int j = 0; j < p.kernel_w; ++j)
                  acc += int32_t(wm[(c * p.kernel_h + i) * p.kernel_w + j]) *
                         win[int64_t(i) * p.dilation_h * row_stride + int64_t(j) * p.dilation_w * c_in + c];
            const bool bit = acc >= t.upper[at + m] ||
                             (acc >= t.lower[at + m] &&
                              fine_sum(win, t.fine_weight.data() + m * fine_stride, fine_off.data(), t.fine_chunks) >=
                                  t.fine[at + m]);
            if (bit) word |= 1u << (m % 32);
          }
          out[q * out_plane + int64_t(oh) * out_w + ow] = word;
        }
      }
  });
}

#if !(defined(__x86_64__) || defined(__i386__))
// Non-x86 builds: cpu_supports() reports the SIMD families absent, so these never run.
void row_avx512_vnni(const RowArgs&) { throw std::logic_error("row_avx512_vnni: x86 kernel on a non-x86 build"); }
void row_avx_vnni(const RowArgs&) { throw std::logic_error("row_avx_vnni: x86 kernel on a non-x86 build"); }
void row_avx2(const RowArgs&) { throw std::logic_error("row_avx2: x86 kernel on a non-x86 build"); }
#endif

}  // namespace xnorpipe::conv_integer_binarize
