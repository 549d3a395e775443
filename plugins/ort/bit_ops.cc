#include "bit_ops.h"

#include <string>
#include <vector>

#include "core/bconv2d/binarize.h"

namespace xnorpipe::ort {

namespace {
// Inputs of Binarize and AvgPoolBinarize: X float [N, C, H, W] and threshold float [C].
struct FloatInputWithThreshold {
  Ort::ConstValue x, threshold;
  int n, c, h, w;
  std::vector<int64_t> shape;
};

FloatInputWithThreshold read_x_threshold(Ort::KernelContext& ctx, const char* op) {
  if (ctx.GetInputCount() != 2) fail(op, "expects 2 inputs (X, threshold), got " + std::to_string(ctx.GetInputCount()));
  FloatInputWithThreshold in{ctx.GetInput(0), ctx.GetInput(1), 0, 0, 0, 0, {}};
  in.shape = tensor_shape(op, in.x, "X", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  const auto ts = tensor_shape(op, in.threshold, "threshold", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  const auto& xs = in.shape;
  if (xs.size() != 4) fail(op, "X must be [N, C, H, W], got " + shape_str(xs));
  if (ts.size() != 1 || ts[0] != xs[1]) fail(op, "threshold must be [C] = [" + std::to_string(xs[1]) + "], got " + shape_str(ts));
  in.n = checked_int(op, xs[0], "batch");
  in.c = checked_int(op, xs[1], "channels");
  in.h = checked_int(op, xs[2], "height");
  in.w = checked_int(op, xs[3], "width");
  if (in.c < 1) fail(op, "X has no channels: " + shape_str(xs));
  return in;
}
}  // namespace

BinarizeKernel::BinarizeKernel(const OrtApi& api, const OrtKernelInfo*) : api_(api), path_(bconv2d::select_path()) {}

OrtStatusPtr BinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "Binarize", [&] {
    Ort::KernelContext ctx(context);
    const auto in = read_x_threshold(ctx, "Binarize");
    const int n = in.n, c = in.c, h = in.h, w = in.w;
    auto out = ctx.GetOutput(0, output_dims("Binarize", {n, bconv2d::num_words(c), h, w}));
    if (int64_t(n) * h * w == 0) return;  // empty: the data pointers may be null
    bconv2d::binarize(in.x.GetTensorData<float>(), n, c, int64_t(h) * w, in.threshold.GetTensorData<float>(),
                      reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), path_, session_parallel_for(ctx));
  });
}

pool::PoolParams read_pool_attributes(const Ort::ConstKernelInfo& ki, const char* op) {
  pool::PoolParams p;
  set_window(p, read_window(ki, op));
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
  if (int_attr(ki, "AvgPoolBinarize", "count_include_pad", 1) != 1)
    fail("AvgPoolBinarize", "only count_include_pad=1 is implemented");
  if (int_attr(ki, "AvgPoolBinarize", "ceil_mode", 0) != 0) fail("AvgPoolBinarize", "only ceil_mode=0 is implemented");
}

OrtStatusPtr AvgPoolBinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, "AvgPoolBinarize", [&] {
    const char* op = "AvgPoolBinarize";
    Ort::KernelContext ctx(context);
    const auto in = read_x_threshold(ctx, op);
    const int n = in.n, c = in.c, h = in.h, w = in.w;
    const auto& xs = in.shape;
    const int64_t oh = params_.out_h(h), ow = params_.out_w(w);
    check_output_size(op, oh, ow, xs);
    auto out = ctx.GetOutput(0, output_dims(op, {n, bconv2d::num_words(c), oh, ow}));
    if (n == 0) return;
    pool::avg_pool_binarize(params_, in.x.GetTensorData<float>(), n, c, h, w, in.threshold.GetTensorData<float>(),
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
    check_output_size(op, oh, ow, xs);
    auto out = ctx.GetOutput(0, output_dims(op, {n, words, oh, ow}));
    if (n == 0 || words == 0) return;
    pool::bit_max_pool(params_, reinterpret_cast<const uint32_t*>(x.GetTensorData<int32_t>()), n, words, h, w,
                       reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), session_parallel_for(ctx));
  });
}

ConvBinarizeKernel::ConvBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), attrs_(read_conv_attributes(Ort::ConstKernelInfo(info), "ConvBinarize")),
      path_(bconv2d::select_path()), weights_constant_(constant_input(Ort::ConstKernelInfo(info), 1)) {}

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
  check_output_size(op, oh, ow, xs);
  const conv_binarize::ConvBinarize conv(p, path_);  // checks the attributes with C and M
  auto out = ctx.GetOutput(0, output_dims(op, {n, bconv2d::num_words(p.filters), oh, ow}));
  if (n == 0) return;  // an empty batch: the data pointers may be null
  const float* wd = in[1].GetTensorData<float>();
  const auto packed = weights_.get(weights_constant_, wd, p.channels, [&] { return conv.pack_weights(wd); });
  conv.run(in[0].GetTensorData<float>(), n, h, w, *packed, in[2].GetTensorData<float>(), in[3].GetTensorData<float>(),
           reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), session_parallel_for(ctx));
}

}  // namespace xnorpipe::ort
