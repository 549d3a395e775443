// Small helpers shared by the custom-op kernels: attribute reading, one-line errors, status
// conversion and ORT's intra-op pool as core's ParallelFor.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/bconv2d/optimized.h"

namespace xnorpipe::ort {

// Throws std::invalid_argument "<op>: <what>" (comes back as ORT_INVALID_ARGUMENT).
[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// Missing optional attribute -> fallback (ORT has no "has attribute" query).
inline std::vector<int64_t> ints_attr(const Ort::ConstKernelInfo& info, const char* op, const char* name,
                                      std::vector<int64_t> fallback, bool required) {
  try {
    return info.GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    if (required) fail(op, std::string("attribute '") + name + "' is required");
    return fallback;
  }
}

inline int64_t int_attr(const Ort::ConstKernelInfo& info, const char* name, int64_t fallback) {
  try {
    return info.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

inline int checked_int(const char* op, int64_t v, const char* what) {
  if (v < 0 || v > (int64_t(1) << 30)) fail(op, std::string(what) + " out of range: " + std::to_string(v));
  return int(v);
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Input i as a tensor of `type`, with its shape; one-line error otherwise.
inline std::vector<int64_t> tensor_shape(const char* op, const Ort::ConstValue& v, const char* name,
                                         ONNXTensorElementDataType type) {
  if (!v || !v.IsTensor()) fail(op, std::string("input ") + name + " must be a tensor");
  auto info = v.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != type)
    fail(op, std::string("input ") + name +
                 (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? " must be int32" : " must be float32"));
  return info.GetShape();
}

// Work items run on the session's intra-op thread pool (intra_op_num_threads); with one
// thread ORT runs them inline.
inline bconv2d::ParallelFor session_parallel_for(Ort::KernelContext& ctx) {
  return [&ctx](size_t count, const std::function<void(size_t)>& body) {
    if (count <= 1) {
      if (count == 1) body(0);
      return;
    }
    ctx.ParallelFor(
        [](void* fn, size_t i) { (*static_cast<const std::function<void(size_t)>*>(fn))(i); }, count, 0,
        const_cast<void*>(static_cast<const void*>(&body)));
  };
}

// The exception being handled as an OrtStatus: ORT's own code, ORT_INVALID_ARGUMENT for bad
// attributes/shapes (std::invalid_argument), `other` for anything else. Call inside catch.
inline OrtStatusPtr current_exception_status(const OrtApi& api, const char* op, OrtErrorCode other) {
  try {
    throw;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::invalid_argument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(other, (std::string(op) + ": " + e.what()).c_str());
  } catch (...) {
    return api.CreateStatus(other, (std::string(op) + ": unknown error").c_str());
  }
}

// Runs `compute`, turning every exception into an OrtStatus: a kernel never throws into ORT.
template <typename F>
OrtStatusPtr status_of(const OrtApi& api, const char* op, F&& compute) {
  try {
    compute();
    return nullptr;
  } catch (...) {
    return current_exception_status(api, op, ORT_RUNTIME_EXCEPTION);
  }
}

// Kernel creation: the same conversion, ORT_FAIL for anything but bad attributes.
template <typename Kernel, typename... Args>
OrtStatusPtr create_kernel(const OrtApi& api, const char* op, void** kernel, Args&&... args) {
  try {
    *kernel = new Kernel(std::forward<Args>(args)...);
    return nullptr;
  } catch (...) {
    return current_exception_status(api, op, ORT_FAIL);
  }
}

// The window attributes shared by Conv and pooling: kernel_shape (required), strides, pads
// ([top, left, bottom, right]), checked, ONNX defaults.
struct Window {
  int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right;
};

inline Window read_window(const Ort::ConstKernelInfo& ki, const char* op) {
  const auto kernel_shape = ints_attr(ki, op, "kernel_shape", {}, true);
  const auto strides = ints_attr(ki, op, "strides", {1, 1}, false);
  const auto pads = ints_attr(ki, op, "pads", {0, 0, 0, 0}, false);
  if (kernel_shape.size() != 2) fail(op, "kernel_shape must have 2 entries, got " + shape_str(kernel_shape));
  if (strides.size() != 2) fail(op, "strides must have 2 entries, got " + shape_str(strides));
  if (pads.size() != 4) fail(op, "pads must have 4 entries [top, left, bottom, right], got " + shape_str(pads));
  for (auto v : kernel_shape) if (v < 1) fail(op, "kernel_shape entries must be >= 1, got " + shape_str(kernel_shape));
  for (auto v : strides) if (v < 1) fail(op, "strides must be >= 1, got " + shape_str(strides));
  for (auto v : pads) if (v < 0) fail(op, "pads must be >= 0, got " + shape_str(pads));
  return Window{checked_int(op, kernel_shape[0], "kernel_shape"), checked_int(op, kernel_shape[1], "kernel_shape"),
                checked_int(op, strides[0], "strides"),           checked_int(op, strides[1], "strides"),
                checked_int(op, pads[0], "pads"),                 checked_int(op, pads[1], "pads"),
                checked_int(op, pads[2], "pads"),                 checked_int(op, pads[3], "pads")};
}

// Copies a window into core's parameter structs (BConv2DParams, PoolParams: same field names).
template <typename Params>
void set_window(Params& p, const Window& w) {
  p.kernel_h = w.kernel_h;
  p.kernel_w = w.kernel_w;
  p.stride_h = w.stride_h;
  p.stride_w = w.stride_w;
  p.pad_top = w.pad_top;
  p.pad_left = w.pad_left;
  p.pad_bottom = w.pad_bottom;
  p.pad_right = w.pad_right;
}

// ONNX Conv attributes (the window, dilations, group) plus `relu`, checked; channels and
// filters stay 0 (they come from the inputs).
inline bconv2d::BConv2DParams read_conv_attributes(const Ort::ConstKernelInfo& ki, const char* op) {
  const Window win = read_window(ki, op);
  const auto dilations = ints_attr(ki, op, "dilations", {1, 1}, false);
  const int64_t group = int_attr(ki, "group", 1);
  const int64_t relu = int_attr(ki, "relu", 0);
  if (dilations.size() != 2) fail(op, "dilations must have 2 entries, got " + shape_str(dilations));
  for (auto v : dilations) if (v < 1) fail(op, "dilations must be >= 1, got " + shape_str(dilations));
  if (group < 1) fail(op, "group must be >= 1, got " + std::to_string(group));
  if (relu != 0 && relu != 1) fail(op, "relu must be 0 or 1, got " + std::to_string(relu));
  bconv2d::BConv2DParams p;
  set_window(p, win);
  p.dilation_h = checked_int(op, dilations[0], "dilations");
  p.dilation_w = checked_int(op, dilations[1], "dilations");
  p.group = checked_int(op, group, "group");
  p.relu = relu == 1;
  return p;
}

// Weights prepared once per constant initializer (ORT keeps a constant's buffer for the
// session): rebuilt only when the data pointer or the channel count changes.
template <typename Prepared>
class ConstantCache {
 public:
  template <typename Build>
  std::shared_ptr<const Prepared> get(bool constant, const void* data, int channels, Build&& build) {
    if (!constant) return std::make_shared<const Prepared>(build());
    std::lock_guard<std::mutex> lock(mutex_);
    if (!cached_ || data_ != data || channels_ != channels) {
      cached_ = std::make_shared<const Prepared>(build());
      data_ = data;
      channels_ = channels;
    }
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::shared_ptr<const Prepared> cached_;
  const void* data_ = nullptr;
  int channels_ = 0;
};

// Whether input `index` is a constant initializer (ORT reports it at kernel creation).
inline bool constant_input(const Ort::ConstKernelInfo& ki, size_t index) {
  int is_constant = 0;
  try {
    (void)ki.GetTensorConstantInput(index, &is_constant);
  } catch (const Ort::Exception&) {
    is_constant = 0;
  }
  return is_constant != 0;
}

}  // namespace xnorpipe::ort
