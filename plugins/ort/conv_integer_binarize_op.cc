#include "conv_integer_binarize_op.h"

#include <string>
#include <vector>

namespace xnorpipe::ort {

namespace {
constexpr const char* kOp = "ConvIntegerBinarize";

// kernel_shape, strides, pads, dilations; checked, ONNX defaults. No group (1) and no relu: the
// exporter folds ReLU into the integer threshold.
bconv2d::BConv2DParams read_attributes(const Ort::ConstKernelInfo& ki) {
  const Window win = read_window(ki, kOp);
  const auto dilations = ints_attr(ki, kOp, "dilations", {1, 1}, false);
  check_entries(kOp, "dilations", dilations, 2, 1);
  bconv2d::BConv2DParams p;
  set_window(p, win);
  p.dilation_h = int(dilations[0]);
  p.dilation_w = int(dilations[1]);
  p.validate_attributes(kOp);
  return p;
}
}  // namespace

ConvIntegerBinarizeKernel::ConvIntegerBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info)
    : api_(api), attrs_(read_attributes(Ort::ConstKernelInfo(info))),
      isa_(conv_integer_binarize::isa_for(bconv2d::select_path())),
      weights_constant_(constant_input(Ort::ConstKernelInfo(info), 1)) {
  thresholds_constant_ = weights_constant_;
  for (size_t i = 2; i < ConvIntegerBinarizeOp::kInputs; ++i)
    thresholds_constant_ = thresholds_constant_ && constant_input(Ort::ConstKernelInfo(info), i);
}

OrtStatusPtr ConvIntegerBinarizeKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, kOp, [&] { Compute(context); });
}

void ConvIntegerBinarizeKernel::Compute(OrtKernelContext* context) {
  const char* op = kOp;
  constexpr size_t kInputs = ConvIntegerBinarizeOp::kInputs;
  const char* names[kInputs] = {"X", "W", "x_zero_point", "pad_value", "threshold", "margin", "fine_weight",
                                "fine_pad_value", "fine_threshold"};
  Ort::KernelContext ctx(context);
  if (ctx.GetInputCount() != kInputs)
    fail(op, "expects 9 inputs (X, W, x_zero_point, pad_value, threshold, margin, fine_weight, fine_pad_value, "
             "fine_threshold), got " + std::to_string(ctx.GetInputCount()));
  std::vector<Ort::ConstValue> in;
  std::vector<std::vector<int64_t>> shape;
  for (size_t i = 0; i < kInputs; ++i) {
    in.push_back(ctx.GetInput(i));
    shape.push_back(tensor_shape(op, in[i], names[i], ConvIntegerBinarizeOp::kInputTypes[i]));
  }
  const auto &xs = shape[0], &ws = shape[1];
  if (xs.size() != 4) fail(op, "X must be [N, H, W, C] (NHWC), got " + shape_str(xs));
  if (ws.size() != 4) fail(op, "W must be [M, C, kH, kW], got " + shape_str(ws));
  bconv2d::BConv2DParams p = attrs_;
  const int n = checked_int(op, xs[0], "batch");
  const int h = checked_int(op, xs[1], "height"), w = checked_int(op, xs[2], "width");
  p.channels = checked_int(op, xs[3], "channels");
  p.filters = checked_int(op, ws[0], "filters");
  if (p.channels < 1 || h < 1 || w < 1) fail(op, "X has an empty dimension: " + shape_str(xs));
  if (p.filters < 1) fail(op, "W has no filters: " + shape_str(ws));
  const std::vector<int64_t> weight_shape = {p.filters, p.channels, p.kernel_h, p.kernel_w};
  const std::vector<int64_t> want[kInputs] = {xs, weight_shape, {p.channels}, {p.filters, p.kernel_h, p.kernel_w},
                                              {p.filters}, {p.filters}, weight_shape,
                                              {p.filters, p.kernel_h, p.kernel_w}, {p.filters}};
  for (size_t i = 1; i < kInputs; ++i)
    if (shape[i] != want[i])
      fail(op, std::string(names[i]) + " must be " + shape_str(want[i]) + " (from X " + shape_str(xs) +
                   ", kernel_shape and W's filters), got " + shape_str(shape[i]));
  const int64_t oh = p.out_h(h), ow = p.out_w(w);
  check_output_size(op, oh, ow, xs);
  const conv_integer_binarize::ConvIntegerBinarize conv(p, isa_);  // checks the attributes with C and M
  auto out = ctx.GetOutput(0, output_dims(op, {n, bconv2d::num_words(p.filters), oh, ow}));
  if (n == 0) return;  // an empty batch: the data pointers may be null
  const int8_t* wd = in[1].GetTensorData<int8_t>();
  const auto packed = weights_.get(weights_constant_, wd, p.channels, [&] { return conv.pack_weights(wd); });
  conv_integer_binarize::IntInputs inputs;
  inputs.x_zero_point = in[2].GetTensorData<uint8_t>();
  inputs.pad_value = in[3].GetTensorData<int16_t>();
  inputs.threshold = in[4].GetTensorData<int32_t>();
  inputs.margin = in[5].GetTensorData<int32_t>();
  inputs.fine_weight = in[6].GetTensorData<int32_t>();
  inputs.fine_pad_value = in[7].GetTensorData<int32_t>();
  inputs.fine_threshold = in[8].GetTensorData<int64_t>();
  auto build = [&] {
    return std::make_shared<const conv_integer_binarize::IntThresholds>(conv.thresholds(*packed, h, w, inputs));
  };
  std::shared_ptr<const conv_integer_binarize::IntThresholds> thresholds;
  if (thresholds_constant_) {  // rebuilt when the input size or the packed weights change
    std::lock_guard<std::mutex> lock(thresholds_mutex_);
    if (!thresholds_ || thresholds_weights_ != packed.get() || thresholds_->in_h != h || thresholds_->in_w != w) {
      thresholds_ = build();
      thresholds_weights_ = packed.get();
    }
    thresholds = thresholds_;
  } else {
    thresholds = build();
  }
  conv.run(in[0].GetTensorData<uint8_t>(), n, *packed, *thresholds,
           reinterpret_cast<uint32_t*>(out.GetTensorMutableData<int32_t>()), session_parallel_for(ctx));
}

}  // namespace xnorpipe::ort
