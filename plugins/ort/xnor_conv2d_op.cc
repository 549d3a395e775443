#include "xnor_conv2d_op.h"

#include <string>
#include <vector>

namespace xnorpipe::ort {

namespace {
using bconv2d::BConv2D;
using bconv2d::BConv2DParams;
constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kInt32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
}  // namespace

const char* XnorConv2dKernel::op_name() const {
  return io_ == ConvIo::kFloatToFloat ? "XnorConv2d" : io_ == ConvIo::kBitsToFloat ? "XnorConv2dBits"
                                                                                    : "XnorConv2dBitsBinarize";
}

XnorConv2dKernel::XnorConv2dKernel(const OrtApi& api, const OrtKernelInfo* info, ConvIo io) : api_(api), io_(io) {
  const char* op = op_name();
  Ort::ConstKernelInfo ki(info);
  attrs_ = read_conv_attributes(ki, op);
  if (io_ != ConvIo::kFloatToFloat) {
    // Bits do not tell C (the last word may be partly used): the node says it.
    const int64_t channels = int_attr(ki, op, "channels", -1);
    if (channels < 1) fail(op, "attribute 'channels' (>= 1) is required, got " + std::to_string(channels));
    attrs_.channels = checked_int(op, channels, "channels");
    if (attrs_.channels % attrs_.group)
      fail(op, "channels " + std::to_string(attrs_.channels) + " not divisible by group " + std::to_string(attrs_.group));
    // The output's channel shuffle (docs/XNORCONV2D.md, packed-bits): a bit op's attribute only.
    const int64_t shuffle = int_attr(ki, op, "shuffle_output", 0);
    if (shuffle != 0 && shuffle != 1) fail(op, "shuffle_output must be 0 or 1, got " + std::to_string(shuffle));
    attrs_.shuffle_output = shuffle == 1;
  }
  path_ = bconv2d::select_path();  // throws if $XNORPIPE_POPCOUNT names a path this CPU lacks

  weights_constant_ = constant_input(ki, 1);
  if (io_ == ConvIo::kBitsToBits)
    output_constant_ = constant_input(ki, 2) && constant_input(ki, 3) && constant_input(ki, 4);
}

OrtStatusPtr XnorConv2dKernel::ComputeV2(OrtKernelContext* context) {
  return status_of(api_, op_name(), [&] { Compute(context); });
}

void XnorConv2dKernel::Compute(OrtKernelContext* context) {
  const char* op = op_name();
  const bool bits_in = io_ != ConvIo::kFloatToFloat, bits_out = io_ == ConvIo::kBitsToBits;
  Ort::KernelContext ctx(context);
  // Inputs by role; -1 = absent for this op.
  const int kX = 0, kW = 1, kThr = bits_in ? -1 : 2, kScale = bits_in ? 2 : 3, kBias = bits_in ? 3 : 4,
            kOutThr = bits_out ? 4 : -1;
  const size_t count = bits_in && !bits_out ? 4 : 5;
  if (ctx.GetInputCount() != count)
    fail(op, "expects " + std::to_string(count) + " inputs, got " + std::to_string(ctx.GetInputCount()));
  std::vector<Ort::ConstValue> in;
  std::vector<std::vector<int64_t>> shape;
  const char* names[5] = {"X", "W", bits_in ? "scale" : "threshold", bits_in ? "bias" : "scale",
                          bits_out ? "output_threshold" : "bias"};
  for (size_t i = 0; i < count; ++i) {
    in.push_back(ctx.GetInput(i));
    const bool int32 = i == 1 || (i == 0 && bits_in);
    shape.push_back(tensor_shape(op, in.back(), names[i], int32 ? kInt32 : kFloat));
  }
  const auto &xs = shape[kX], &ws = shape[kW];
  if (xs.size() != 4) fail(op, std::string("X must be ") + (bits_in ? "[N, words, H, W]" : "[N, C, H, W]") + ", got " + shape_str(xs));
  if (ws.size() != 4) fail(op, "W must be [M, kH, kW, words], got " + shape_str(ws));
  for (size_t i = 2; i < count; ++i)
    if (shape[i].size() != 1) fail(op, std::string(names[i]) + " must be 1-D, got " + shape_str(shape[i]));
  BConv2DParams p = attrs_;
  const int n_batch = checked_int(op, xs[0], "batch");
  const int in_h = checked_int(op, xs[2], "height"), in_w = checked_int(op, xs[3], "width");
  if (bits_in) {
    if (xs[1] != bconv2d::num_words(p.channels))
      fail(op, "X has " + std::to_string(xs[1]) + " words per pixel, channels = " + std::to_string(p.channels) +
                   " needs " + std::to_string(bconv2d::num_words(p.channels)));
  } else {
    p.channels = checked_int(op, xs[1], "channels");
    if (p.channels < 1) fail(op, "X has an empty dimension: " + shape_str(xs));
    if (p.channels % p.group)
      fail(op, "channels " + std::to_string(p.channels) + " not divisible by group " + std::to_string(p.group));
  }
  if (in_h < 1 || in_w < 1) fail(op, "X has an empty dimension: " + shape_str(xs));
  p.filters = checked_int(op, ws[0], "filters");
  if (p.filters < 1 || p.filters % p.group)
    fail(op, "filters (W dim 0) " + std::to_string(p.filters) + " must be a positive multiple of group " + std::to_string(p.group));
  if (ws[1] != p.kernel_h || ws[2] != p.kernel_w || ws[3] != p.words_per_tap())
    fail(op, "W shape " + shape_str(ws) + " does not match [M, " + std::to_string(p.kernel_h) + ", " +
                 std::to_string(p.kernel_w) + ", " + std::to_string(p.words_per_tap()) + "] for C/group = " +
                 std::to_string(p.channels_per_group()));
  if (kThr >= 0 && shape[kThr][0] != p.channels)
    fail(op, "threshold has " + std::to_string(shape[kThr][0]) + " entries, X has " + std::to_string(p.channels) + " channels");
  for (int i : {kScale, kBias, kOutThr})
    if (i >= 0 && shape[i][0] != p.filters)
      fail(op, std::string(names[i]) + " has " + std::to_string(shape[i][0]) + " entries, W has " +
                   std::to_string(p.filters) + " filters");
  const int64_t out_h = p.out_h(in_h), out_w = p.out_w(in_w);
  check_output_size(op, out_h, out_w, xs);
  const auto y_dims = output_dims(op, {n_batch, bits_out ? bconv2d::num_words(p.filters) : p.filters, out_h, out_w});

  const BConv2D conv(p, path_, op);  // checks the attributes with C and M (tap sums in int32)
  if (n_batch == 0) {  // an empty batch gives an empty output; its data pointers may be null
    ctx.GetOutput(0, y_dims);
    return;
  }
  const int32_t* w = in[kW].GetTensorData<int32_t>();
  const auto filters = filters_.get(weights_constant_, w, p.channels, [&] { return conv.pack_filters(w); });

  bconv2d::ConvInput input;
  if (bits_in) {
    input.bits = reinterpret_cast<const uint32_t*>(in[kX].GetTensorData<int32_t>());
  } else {
    input.x = in[kX].GetTensorData<float>();
    input.threshold = in[kThr].GetTensorData<float>();
  }
  bconv2d::ConvOutput output;
  std::shared_ptr<const bconv2d::PopcountIntervals> intervals;  // keeps the cached ones alive
  if (bits_out) {
    auto y = ctx.GetOutput(0, y_dims);
    output.bits = reinterpret_cast<uint32_t*>(y.GetTensorMutableData<int32_t>());
    output.threshold = in[kOutThr].GetTensorData<float>();
    if (output_constant_ && filters->kernel == bconv2d::ConvKernel::kPointwise) {
      // Keyed by the threshold's buffer: scale, bias and threshold are initializers of one node.
      intervals = intervals_.get(true, output.threshold, p.filters, [&] {
        return conv.popcount_intervals(in[kScale].GetTensorData<float>(), in[kBias].GetTensorData<float>(),
                                       output.threshold);
      });
      output.intervals = intervals.get();
    }
  } else {
    auto y = ctx.GetOutput(0, y_dims);
    output.y = y.GetTensorMutableData<float>();
  }
  conv.run(input, n_batch, in_h, in_w, *filters, in[kScale].GetTensorData<float>(), in[kBias].GetTensorData<float>(),
           output, session_parallel_for(ctx));
}

}  // namespace xnorpipe::ort
