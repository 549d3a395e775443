// Small helpers shared by the custom-op kernels: attribute reading, one-line errors, status
// conversion and ORT's intra-op pool as core's ParallelFor.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/bconv2d/limits.h"
#include "core/bconv2d/optimized.h"

namespace xnorpipe::ort {

// Throws std::invalid_argument "<op>: <what>" (comes back as ORT_INVALID_ARGUMENT).
[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// Attributes. ORT's C API (1.21 headers, any later runtime) tells an absent attribute from one
// of another type this way: the array getters read the attribute's list field whatever its
// type (empty for a scalar) and fail only when the node has no attribute of that name; the
// scalar getters fail unless the type matches. Only an absent attribute takes its default; a
// present one of the wrong type is an error (tests/test_native_hostile.py checks both).
inline bool api_ok(OrtStatus* status) {
  if (!status) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

inline bool has_attr(const Ort::ConstKernelInfo& ki, const char* name) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  int64_t i = 0;
  float f = 0;
  // The first call decides with every runtime so far; the typed ones keep a present int, float
  // or string attribute present should a runtime ever type-check the array getters.
  return api_ok(api.KernelInfoGetAttributeArray_int64(ki, name, nullptr, &size)) ||
         api_ok(api.KernelInfoGetAttribute_int64(ki, name, &i)) || api_ok(api.KernelInfoGetAttribute_float(ki, name, &f)) ||
         api_ok(api.KernelInfoGetAttribute_string(ki, name, nullptr, &size)) ||
         api_ok(api.KernelInfoGetAttributeArray_float(ki, name, nullptr, &size));
}

// What a present attribute holds, for error messages: "a float (1.5)", "a string", ...
inline std::string attr_kind(const Ort::ConstKernelInfo& ki, const char* name) {
  const OrtApi& api = Ort::GetApi();
  int64_t i = 0;
  float f = 0;
  size_t size = 0;
  if (api_ok(api.KernelInfoGetAttribute_int64(ki, name, &i))) return "an int (" + std::to_string(i) + ")";
  if (api_ok(api.KernelInfoGetAttribute_float(ki, name, &f))) {
    char text[32];
    std::snprintf(text, sizeof text, "a float (%g)", f);
    return text;
  }
  if (api_ok(api.KernelInfoGetAttribute_string(ki, name, nullptr, &size))) return "a string";
  if (api_ok(api.KernelInfoGetAttributeArray_float(ki, name, nullptr, &size)) && size > 0) return "floats";
  if (api_ok(api.KernelInfoGetAttributeArray_int64(ki, name, nullptr, &size)) && size > 0) return "ints";
  return "an empty list or a tensor/graph attribute";
}

// An ints attribute: absent -> fallback (or an error if required); present -> a non-empty list
// of ints, else an error naming what it holds.
inline std::vector<int64_t> ints_attr(const Ort::ConstKernelInfo& ki, const char* op, const char* name,
                                      std::vector<int64_t> fallback, bool required) {
  if (!has_attr(ki, name)) {
    if (required) fail(op, std::string("attribute '") + name + "' is required");
    return fallback;
  }
  auto values = ki.GetAttributes<int64_t>(name);
  if (values.empty()) fail(op, std::string("attribute '") + name + "' must be ints, got " + attr_kind(ki, name));
  return values;
}

// An int attribute: absent -> fallback; present -> an int, else an error naming what it holds.
inline int64_t int_attr(const Ort::ConstKernelInfo& ki, const char* op, const char* name, int64_t fallback) {
  if (!has_attr(ki, name)) return fallback;
  int64_t value = 0;
  if (!api_ok(Ort::GetApi().KernelInfoGetAttribute_int64(ki, name, &value)))
    fail(op, std::string("attribute '") + name + "' must be an int, got " + attr_kind(ki, name));
  return value;
}

// ONNX's auto_pad: only NOTSET (explicit pads) is implemented; SAME_* or VALID would silently
// compute another function.
inline void check_no_auto_pad(const Ort::ConstKernelInfo& ki, const char* op) {
  if (!has_attr(ki, "auto_pad")) return;
  std::string value;
  try {
    value = ki.GetAttribute<std::string>("auto_pad");
  } catch (const Ort::Exception&) {
    fail(op, "attribute 'auto_pad' must be a string, got " + attr_kind(ki, "auto_pad"));
  }
  if (value != "NOTSET") fail(op, "auto_pad=" + value + " is not implemented: give explicit pads");
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

// A window that leaves no output pixel (kernel larger than the padded input): one-line error.
inline void check_output_size(const char* op, int64_t out_h, int64_t out_w, const std::vector<int64_t>& x_shape) {
  if (out_h < 1 || out_w < 1)
    fail(op, "output size " + std::to_string(out_h) + "x" + std::to_string(out_w) + " <= 0 for input " +
                 shape_str(x_shape));
}

// Input i as a tensor of `type`, with its shape; one-line error otherwise.
inline std::vector<int64_t> tensor_shape(const char* op, const Ort::ConstValue& v, const char* name,
                                         ONNXTensorElementDataType type) {
  if (!v || !v.IsTensor()) fail(op, std::string("input ") + name + " must be a tensor");
  auto info = v.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != type) {
    const char* want = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32   ? "int32"
                       : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ? "uint8"
                       : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8  ? "int8"
                       : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 ? "int16"
                       : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? "int64"
                                                                     : "float32";
    fail(op, std::string("input ") + name + " must be " + want);
  }
  return info.GetShape();
}

// Work items run on the session's intra-op thread pool (intra_op_num_threads); with one
// thread ORT runs them inline. guarded_parallel_for keeps every exception on this side of the
// pool and rethrows the first one here, on the thread that called the kernel.
inline bconv2d::ParallelFor session_parallel_for(Ort::KernelContext& ctx) {
  return bconv2d::guarded_parallel_for([&ctx](size_t count, const std::function<void(size_t)>& item) {
    ctx.ParallelFor([](void* fn, size_t i) noexcept { (*static_cast<const std::function<void(size_t)>*>(fn))(i); },
                    count, 0, const_cast<void*>(static_cast<const void*>(&item)));
  });
}

// An output's dims, after checking its element count in 64 bits against core's limit (before
// ORT allocates it).
inline std::vector<int64_t> output_dims(const char* op, std::vector<int64_t> dims) {
  int64_t count = 1;
  for (int64_t d : dims) count = bconv2d::sat_mul(count, d);
  bconv2d::check_elements(op, "the output", count);
  return dims;
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

// `values` must have `count` entries in [lo, kMaxWindow] (core/bconv2d/limits.h).
inline void check_entries(const char* op, const char* name, const std::vector<int64_t>& values, size_t count,
                          int64_t lo) {
  if (values.size() != count)
    fail(op, std::string(name) + " must have " + std::to_string(count) + " entries, got " + shape_str(values));
  for (int64_t v : values)
    if (v < lo || v > bconv2d::kMaxWindow)
      fail(op, std::string(name) + " entries must be in [" + std::to_string(lo) + ", " +
                   std::to_string(bconv2d::kMaxWindow) + "], got " + shape_str(values));
}

inline Window read_window(const Ort::ConstKernelInfo& ki, const char* op) {
  check_no_auto_pad(ki, op);
  const auto kernel_shape = ints_attr(ki, op, "kernel_shape", {}, true);
  const auto strides = ints_attr(ki, op, "strides", {1, 1}, false);
  const auto pads = ints_attr(ki, op, "pads", {0, 0, 0, 0}, false);
  check_entries(op, "kernel_shape", kernel_shape, 2, 1);
  check_entries(op, "strides", strides, 2, 1);
  if (pads.size() != 4) fail(op, "pads must have 4 entries [top, left, bottom, right], got " + shape_str(pads));
  check_entries(op, "pads", pads, 4, 0);
  return Window{int(kernel_shape[0]), int(kernel_shape[1]), int(strides[0]), int(strides[1]),
                int(pads[0]),         int(pads[1]),         int(pads[2]),   int(pads[3])};
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
  const int64_t group = int_attr(ki, op, "group", 1);
  const int64_t relu = int_attr(ki, op, "relu", 0);
  check_entries(op, "dilations", dilations, 2, 1);
  if (group < 1 || group > bconv2d::kMaxWindow)
    fail(op, "group must be in [1, " + std::to_string(bconv2d::kMaxWindow) + "], got " + std::to_string(group));
  if (relu != 0 && relu != 1) fail(op, "relu must be 0 or 1, got " + std::to_string(relu));
  bconv2d::BConv2DParams p;
  set_window(p, win);
  p.dilation_h = int(dilations[0]);
  p.dilation_w = int(dilations[1]);
  p.group = int(group);
  p.relu = relu == 1;
  p.validate_attributes(op);  // the dilated extent and the tap count
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
