#include "bit_ops.h"

#include <string>
#include <vector>

#include "core/bconv2d/binarize.h"

namespace xnorpipe::ort {

BinarizeKernel::BinarizeKernel(const OrtApi& api, const OrtKernelInfo*) : api_(api), path_(bconv2d::select_path()) {}

OrtStatusPtr BinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "Binarize", [&] {
    const char* op = "Binarize";
    Ort::KernelContext ctx(context);
    if (ctx.GetInputCount() != 2) fail(op, "expects 2 inputs (X, threshold), got " + std::to_string(ctx.GetInputCount()));
    const auto x = ctx.GetInput(0), thr = ctx.GetInput(1);
    const auto xs = tensor_shape(op, x, "X", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    const auto ts = tensor_shape(op, thr, "threshold", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    if (xs.size() != 4) fail(op, "X must be [N, C, H, W], got " + shape_str(xs));
    if (ts.size() != 1 || ts[0] != xs[1]) fail(op, "threshold must be [C] = [" + std::to_string(xs[1]) + "], got " + shape_str(ts));
    const int n = checked_int(op, xs[0], "batch"), c = checked_int(op, xs[1], "channels");
    const int h = checked_int(op, xs[2], "height"), w = checked_int(op, xs[3], "width");
    if (c < 1) fail(op, "X has no channels: " + shape_str(xs));
    auto out = ctx.GetOutput(0, std::vector<int64_t>{n, bconv2d::num_words(c), h, w});
    bconv2d::binarize(x.GetTensorData<float>(), n, c, int64_t(h) * w, thr.GetTensorData<float>(),
                      reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), path_, session_parallel_for(ctx));
  });
}

pool::PoolParams read_pool_attributes(const Ort::ConstKernelInfo& ki, const char* op) {
  const auto kernel_shape = ints_attr(ki, op, "kernel_shape", {}, true);
  const auto strides = ints_attr(ki, op, "strides", {1, 1}, false);
  const auto pads = ints_attr(ki, op, "pads", {0, 0, 0, 0}, false);
  if (kernel_shape.size() != 2) fail(op, "kernel_shape must have 2 entries, got " + shape_str(kernel_shape));
  if (strides.size() != 2) fail(op, "strides must have 2 entries, got " + shape_str(strides));
  if (pads.size() != 4) fail(op, "pads must have 4 entries [top, left, bottom, right], got " + shape_str(pads));
  for (auto v : kernel_shape) if (v < 1) fail(op, "kernel_shape entries must be >= 1, got " + shape_str(kernel_shape));
  for (auto v : strides) if (v < 1) fail(op, "strides must be >= 1, got " + shape_str(strides));
  for (auto v : pads) if (v < 0) fail(op, "pads must be >= 0, got " + shape_str(pads));
  pool::PoolParams p;
  p.kernel_h = checked_int(op, kernel_shape[0], "kernel_shape");
  p.kernel_w = checked_int(op, kernel_shape[1], "kernel_shape");
  p.stride_h = checked_int(op, strides[0], "strides");
  p.stride_w = checked_int(op, strides[1], "strides");
  p.pad_top = checked_int(op, pads[0], "pads");
  p.pad_left = checked_int(op, pads[1], "pads");
  p.pad_bottom = checked_int(op, pads[2], "pads");
  p.pad_right = checked_int(op, pads[3], "pads");
  p.validate(op);
  return p;
}

BitMaxPoolKernel::BitMaxPoolKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), params_(read_pool_attributes(Ort::ConstKernelInfo(info), "BitMaxPool")) {}

AvgPoolBinarizeKernel::AvgPoolBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), params_(read_pool_attributes(Ort::ConstKernelInfo(info), "AvgPoolBinarize")),
      path_(bconv2d::select_path()) {
  // Only the ONNX AveragePool variant the exporter emits: count_include_pad=1, ceil_mode=0.
  Ort::ConstKernelInfo ki(info);
  if (int_attr(ki, "count_include_pad", 1) != 1) fail("AvgPoolBinarize", "only count_include_pad=1 is implemented");
  if (int_attr(ki, "ceil_mode", 0) != 0) fail("AvgPoolBinarize", "only ceil_mode=0 is implemented");
}

OrtStatusPtr AvgPoolBinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "AvgPoolBinarize", [&] {
    const char* op = "AvgPoolBinarize";
    Ort::KernelContext ctx(context);
    if (ctx.GetInputCount() != 2) fail(op, "expects 2 inputs (X, threshold), got " + std::to_string(ctx.GetInputCount()));
    const auto x = ctx.GetInput(0), thr = ctx.GetInput(1);
    const auto xs = tensor_shape(op, x, "X", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    const auto ts = tensor_shape(op, thr, "threshold", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    if (xs.size() != 4) fail(op, "X must be [N, C, H, W], got " + shape_str(xs));
    if (ts.size() != 1 || ts[0] != xs[1]) fail(op, "threshold must be [C] = [" + std::to_string(xs[1]) + "], got " + shape_str(ts));
    const int n = checked_int(op, xs[0], "batch"), c = checked_int(op, xs[1], "channels");
    const int h = checked_int(op, xs[2], "height"), w = checked_int(op, xs[3], "width");
    if (c < 1) fail(op, "X has no channels: " + shape_str(xs));
    const int64_t oh = params_.out_h(h), ow = params_.out_w(w);
    if (oh < 1 || ow < 1) fail(op, "output size " + std::to_string(oh) + "x" + std::to_string(ow) + " <= 0 for input " + shape_str(xs));
    auto out = ctx.GetOutput(0, std::vector<int64_t>{n, bconv2d::num_words(c), oh, ow});
    if (n == 0) return;
    pool::avg_pool_binarize(params_, x.GetTensorData<float>(), n, c, h, w, thr.GetTensorData<float>(),
                            reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), path_,
                            session_parallel_for(ctx));
  });
}

OrtStatusPtr BitMaxPoolKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "BitMaxPool", [&] {
    const char* op = "BitMaxPool";
    Ort::KernelContext ctx(context);
    if (ctx.GetInputCount() != 1) fail(op, "expects 1 input, got " + std::to_string(ctx.GetInputCount()));
    const auto x = ctx.GetInput(0);
    const auto xs = tensor_shape(op, x, "X", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
    if (xs.size() != 4) fail(op, "X must be [N, words, H, W], got " + shape_str(xs));
    const int n = checked_int(op, xs[0], "batch"), words = checked_int(op, xs[1], "words");
    const int h = checked_int(op, xs[2], "height"), w = checked_int(op, xs[3], "width");
    const int64_t oh = params_.out_h(h), ow = params_.out_w(w);
    if (oh < 1 || ow < 1) fail(op, "output size " + std::to_string(oh) + "x" + std::to_string(ow) + " <= 0 for input " + shape_str(xs));
    auto out = ctx.GetOutput(0, std::vector<int64_t>{n, words, oh, ow});
    if (n == 0 || words == 0) return;
    pool::bit_max_pool(params_, reinterpret_cast<const uint32_t*>(x.GetTensorData<int32_t>()), n, words, h, w,
                       reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), session_parallel_for(ctx));
  });
}

ConvBinarizeKernel::ConvBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
  const char* op = "ConvBinarize";
  Ort::ConstKernelInfo ki(info);
  const auto kernel_shape = ints_attr(ki, op, "kernel_shape", {}, true);
  const auto strides = ints_attr(ki, op, "strides", {1, 1}, false);
  const auto pads = ints_attr(ki, op, "pads", {0, 0, 0, 0}, false);
  const auto dilations = ints_attr(ki, op, "dilations", {1, 1}, false);
  const int64_t group = int_attr(ki, "group", 1);
  const int64_t relu = int_attr(ki, "relu", 0);
  if (kernel_shape.size() != 2) fail(op, "kernel_shape must have 2 entries, got " + shape_str(kernel_shape));
  if (strides.size() != 2) fail(op, "strides must have 2 entries, got " + shape_str(strides));
  if (dilations.size() != 2) fail(op, "dilations must have 2 entries, got " + shape_str(dilations));
  if (pads.size() != 4) fail(op, "pads must have 4 entries [top, left, bottom, right], got " + shape_str(pads));
  for (auto v : kernel_shape) if (v < 1) fail(op, "kernel_shape entries must be >= 1, got " + shape_str(kernel_shape));
  for (auto v : strides) if (v < 1) fail(op, "strides must be >= 1, got " + shape_str(strides));
  for (auto v : dilations) if (v < 1) fail(op, "dilations must be >= 1, got " + shape_str(dilations));
  for (auto v : pads) if (v < 0) fail(op, "pads must be >= 0, got " + shape_str(pads));
  if (group < 1) fail(op, "group must be >= 1, got " + std::to_string(group));
  if (relu != 0 && relu != 1) fail(op, "relu must be 0 or 1, got " + std::to_string(relu));
  attrs_.kernel_h = checked_int(op, kernel_shape[0], "kernel_shape");
  attrs_.kernel_w = checked_int(op, kernel_shape[1], "kernel_shape");
  attrs_.stride_h = checked_int(op, strides[0], "strides");
  attrs_.stride_w = checked_int(op, strides[1], "strides");
  attrs_.dilation_h = checked_int(op, dilations[0], "dilations");
  attrs_.dilation_w = checked_int(op, dilations[1], "dilations");
  attrs_.pad_top = checked_int(op, pads[0], "pads");
  attrs_.pad_left = checked_int(op, pads[1], "pads");
  attrs_.pad_bottom = checked_int(op, pads[2], "pads");
  attrs_.pad_right = checked_int(op, pads[3], "pads");
  attrs_.group = checked_int(op, group, "group");
  attrs_.relu = relu == 1;
  path_ = bconv2d::select_path();
  int is_constant = 0;
  try {
    (void)ki.GetTensorConstantInput(1, &is_constant);
  } catch (const Ort::Exception&) {
    is_constant = 0;
  }
  weights_constant_ = is_constant != 0;
}

OrtStatusPtr ConvBinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "ConvBinarize", [&] { Compute(context); });
}

void ConvBinarizeKernel::Compute(OrtKernelContext* context) {
  const char* op = "ConvBinarize";
  Ort::KernelContext ctx(context);
  if (ctx.GetInputCount() != 4) fail(op, "expects 4 inputs (X, W, B, threshold), got " + std::to_string(ctx.GetInputCount()));
  const char* names[4] = {"X", "W", "B", "threshold"};
  Ort::ConstValue in[4] = {ctx.GetInput(0), ctx.GetInput(1), ctx.GetInput(2), ctx.GetInput(3)};
  std::vector<int64_t> shape[4];
  for (int i = 0; i < 4; ++i) shape[i] = tensor_shape(op, in[i], names[i], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  const auto &xs = shape[0], &ws = shape[1];
  if (xs.size() != 4) fail(op, "X must be [N, C, H, W], got " + shape_str(xs));
  if (ws.size() != 4) fail(op, "W must be [M, C/group, kH, kW], got " + shape_str(ws));
  bconv2d::BConv2DParams p = attrs_;
  const int n = checked_int(op, xs[0], "batch");
  p.channels = checked_int(op, xs[1], "channels");
  const int h = checked_int(op, xs[2], "height"), w = checked_int(op, xs[3], "width");
  p.filters = checked_int(op, ws[0], "filters");
  if (p.channels < 1 || h < 1 || w < 1) fail(op, "X has an empty dimension: " + shape_str(xs));
  if (p.channels % p.group) fail(op, "channels " + std::to_string(p.channels) + " not divisible by group " + std::to_string(p.group));
  if (p.filters < 1 || p.filters % p.group)
    fail(op, "filters (W dim 0) " + std::to_string(p.filters) + " must be a positive multiple of group " + std::to_string(p.group));
  if (ws[1] != p.channels_per_group() || ws[2] != p.kernel_h || ws[3] != p.kernel_w)
    fail(op, "W shape " + shape_str(ws) + " does not match [M, " + std::to_string(p.channels_per_group()) + ", " +
                 std::to_string(p.kernel_h) + ", " + std::to_string(p.kernel_w) + "]");
  for (int i : {2, 3})
    if (shape[i].size() != 1 || shape[i][0] != p.filters)
      fail(op, std::string(names[i]) + " must be [" + std::to_string(p.filters) + "], got " + shape_str(shape[i]));
  const int64_t oh = p.out_h(h), ow = p.out_w(w);
  if (oh < 1 || ow < 1) fail(op, "output size " + std::to_string(oh) + "x" + std::to_string(ow) + " <= 0 for input " + shape_str(xs));
  const conv_binarize::ConvBinarize conv(p, path_);
  const float* wd = in[1].GetTensorData<float>();
  std::shared_ptr<const conv_binarize::PackedConvWeights> packed;
  if (weights_constant_) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (!cached_ || cached_w_data_ != wd || cached_channels_ != p.channels) {
      cached_ = std::make_shared<const conv_binarize::PackedConvWeights>(conv.pack_weights(wd));
      cached_w_data_ = wd;
      cached_channels_ = p.channels;
    }
    packed = cached_;
  } else {
    packed = std::make_shared<const conv_binarize::PackedConvWeights>(conv.pack_weights(wd));
  }
  auto out = ctx.GetOutput(0, std::vector<int64_t>{n, bconv2d::num_words(p.filters), oh, ow});
  conv.run(in[0].GetTensorData<float>(), n, h, w, *packed, in[2].GetTensorData<float>(), in[3].GetTensorData<float>(),
           reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), session_parallel_for(ctx));
}

}  // namespace xnorpipe::ort
