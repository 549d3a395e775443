#include "xnor_conv2d_op.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace xnorpipe::ort {

namespace {

using bconv2d::BConv2D;
using bconv2d::BConv2DParams;

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("XnorConv2d: " + what); }

// Missing optional attribute -> fallback (ORT has no "has attribute" query).
std::vector<int64_t> ints_attr(const Ort::ConstKernelInfo& info, const char* name, std::vector<int64_t> fallback,
                               bool required) {
  try {
    return info.GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    if (required) fail(std::string("attribute '") + name + "' is required");
    return fallback;
  }
}

int64_t int_attr(const Ort::ConstKernelInfo& info, const char* name, int64_t fallback) {
  try {
    return info.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

int checked_int(int64_t v, const char* what) {
  if (v < 0 || v > (int64_t(1) << 30)) fail(std::string(what) + " out of range: " + std::to_string(v));
  return int(v);
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void trampoline(void* body, size_t i) { (*static_cast<const std::function<void(size_t)>*>(body))(i); }

}  // namespace

XnorConv2dKernel::XnorConv2dKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
  Ort::ConstKernelInfo ki(info);
  const auto kernel_shape = ints_attr(ki, "kernel_shape", {}, true);
  const auto strides = ints_attr(ki, "strides", {1, 1}, false);
  const auto pads = ints_attr(ki, "pads", {0, 0, 0, 0}, false);
  const auto dilations = ints_attr(ki, "dilations", {1, 1}, false);
  const int64_t group = int_attr(ki, "group", 1);
  const int64_t relu = int_attr(ki, "relu", 0);
  if (kernel_shape.size() != 2) fail("kernel_shape must have 2 entries, got " + shape_str(kernel_shape));
  if (strides.size() != 2) fail("strides must have 2 entries, got " + shape_str(strides));
  if (dilations.size() != 2) fail("dilations must have 2 entries, got " + shape_str(dilations));
  if (pads.size() != 4) fail("pads must have 4 entries [top, left, bottom, right], got " + shape_str(pads));
  for (auto v : kernel_shape) if (v < 1) fail("kernel_shape entries must be >= 1, got " + shape_str(kernel_shape));
  for (auto v : strides) if (v < 1) fail("strides must be >= 1, got " + shape_str(strides));
  for (auto v : dilations) if (v < 1) fail("dilations must be >= 1, got " + shape_str(dilations));
  for (auto v : pads) if (v < 0) fail("pads must be >= 0, got " + shape_str(pads));
  if (group < 1) fail("group must be >= 1, got " + std::to_string(group));
  if (relu != 0 && relu != 1) fail("relu must be 0 or 1, got " + std::to_string(relu));
  attrs_.kernel_h = checked_int(kernel_shape[0], "kernel_shape");
  attrs_.kernel_w = checked_int(kernel_shape[1], "kernel_shape");
  attrs_.stride_h = checked_int(strides[0], "strides");
  attrs_.stride_w = checked_int(strides[1], "strides");
  attrs_.dilation_h = checked_int(dilations[0], "dilations");
  attrs_.dilation_w = checked_int(dilations[1], "dilations");
  attrs_.pad_top = checked_int(pads[0], "pads");
  attrs_.pad_left = checked_int(pads[1], "pads");
  attrs_.pad_bottom = checked_int(pads[2], "pads");
  attrs_.pad_right = checked_int(pads[3], "pads");
  attrs_.group = checked_int(group, "group");
  attrs_.relu = relu == 1;
  path_ = bconv2d::select_path();  // throws if $XNORPIPE_POPCOUNT names a path this CPU lacks

  int is_constant = 0;
  try {
    (void)ki.GetTensorConstantInput(1, &is_constant);
  } catch (const Ort::Exception&) {
    is_constant = 0;
  }
  weights_constant_ = is_constant != 0;
}

OrtStatusPtr XnorConv2dKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Compute(context);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::invalid_argument& e) {
    return api_.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api_.CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string("XnorConv2d: ") + e.what()).c_str());
  } catch (...) {
    return api_.CreateStatus(ORT_RUNTIME_EXCEPTION, "XnorConv2d: unknown error");
  }
}

void XnorConv2dKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  if (ctx.GetInputCount() != 5) fail("expects 5 inputs (X, W, threshold, scale, bias), got " + std::to_string(ctx.GetInputCount()));
  const char* names[5] = {"X", "W", "threshold", "scale", "bias"};
  Ort::ConstValue in[5] = {ctx.GetInput(0), ctx.GetInput(1), ctx.GetInput(2), ctx.GetInput(3), ctx.GetInput(4)};
  std::vector<int64_t> shape[5];
  for (int i = 0; i < 5; ++i) {
    if (!in[i] || !in[i].IsTensor()) fail(std::string("input ") + names[i] + " must be a tensor");
    auto info = in[i].GetTensorTypeAndShapeInfo();
    const auto want = i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (info.GetElementType() != want) fail(std::string("input ") + names[i] + (i == 1 ? " must be int32" : " must be float32"));
    shape[i] = info.GetShape();
  }
  const auto &xs = shape[0], &ws = shape[1];
  if (xs.size() != 4) fail("X must be [N, C, H, W], got " + shape_str(xs));
  if (ws.size() != 4) fail("W must be [M, kH, kW, words], got " + shape_str(ws));
  for (int i = 2; i < 5; ++i)
    if (shape[i].size() != 1) fail(std::string(names[i]) + " must be 1-D, got " + shape_str(shape[i]));
  BConv2DParams p = attrs_;
  const int n_batch = checked_int(xs[0], "batch");
  p.channels = checked_int(xs[1], "channels");
  const int in_h = checked_int(xs[2], "height"), in_w = checked_int(xs[3], "width");
  p.filters = checked_int(ws[0], "filters");
  if (p.channels < 1 || in_h < 1 || in_w < 1) fail("X has an empty dimension: " + shape_str(xs));
  if (p.channels % p.group) fail("channels " + std::to_string(p.channels) + " not divisible by group " + std::to_string(p.group));
  if (p.filters < 1 || p.filters % p.group)
    fail("filters (W dim 0) " + std::to_string(p.filters) + " must be a positive multiple of group " + std::to_string(p.group));
  if (ws[1] != p.kernel_h || ws[2] != p.kernel_w || ws[3] != p.words_per_tap())
    fail("W shape " + shape_str(ws) + " does not match [M, " + std::to_string(p.kernel_h) + ", " +
         std::to_string(p.kernel_w) + ", " + std::to_string(p.words_per_tap()) + "] for C/group = " +
         std::to_string(p.channels_per_group()));
  if (shape[2][0] != p.channels) fail("threshold has " + std::to_string(shape[2][0]) + " entries, X has " + std::to_string(p.channels) + " channels");
  if (shape[3][0] != p.filters) fail("scale has " + std::to_string(shape[3][0]) + " entries, W has " + std::to_string(p.filters) + " filters");
  if (shape[4][0] != p.filters) fail("bias has " + std::to_string(shape[4][0]) + " entries, W has " + std::to_string(p.filters) + " filters");
  const int64_t out_h = p.out_h(in_h), out_w = p.out_w(in_w);
  if (out_h < 1 || out_w < 1)
    fail("output size " + std::to_string(out_h) + "x" + std::to_string(out_w) + " <= 0 for input " + shape_str(xs));

  const BConv2D conv(p, path_);
  const int32_t* w = in[1].GetTensorData<int32_t>();
  std::shared_ptr<const bconv2d::PackedFilters> filters;
  if (weights_constant_) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (!cached_filters_ || cached_w_data_ != w || cached_channels_ != p.channels) {
      cached_filters_ = std::make_shared<const bconv2d::PackedFilters>(conv.pack_filters(w));
      cached_w_data_ = w;
      cached_channels_ = p.channels;
    }
    filters = cached_filters_;
  } else {
    filters = std::make_shared<const bconv2d::PackedFilters>(conv.pack_filters(w));
  }

  auto out = ctx.GetOutput(0, std::vector<int64_t>{n_batch, p.filters, out_h, out_w});
  float* y = out.GetTensorMutableData<float>();
  // Work items run on the session's intra-op thread pool (intra_op_num_threads); with one
  // thread ORT runs them inline.
  bconv2d::ParallelFor parallel_for = [&ctx](size_t count, const std::function<void(size_t)>& body) {
    if (count <= 1) {
      if (count == 1) body(0);
      return;
    }
    ctx.ParallelFor(&trampoline, count, 0, const_cast<void*>(static_cast<const void*>(&body)));
  };
  conv.run(in[0].GetTensorData<float>(), n_batch, in_h, in_w, *filters, in[2].GetTensorData<float>(),
           in[3].GetTensorData<float>(), in[4].GetTensorData<float>(), y, parallel_for);
}

OrtStatusPtr XnorConv2dOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  try {
    *kernel = new XnorConv2dKernel(api, info);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::invalid_argument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, (std::string("XnorConv2d: ") + e.what()).c_str());
  } catch (...) {
    return api.CreateStatus(ORT_FAIL, "XnorConv2d: unknown error creating the kernel");
  }
}

}  // namespace xnorpipe::ort
