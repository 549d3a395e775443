// Small helpers shared by the custom-op kernels: attribute reading, one-line errors, status
// conversion and ORT's intra-op pool as core's ParallelFor.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <functional>
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

// Runs `compute`, turning every exception into an OrtStatus: a kernel never throws into ORT.
template <typename F>
OrtStatusPtr status_of(const OrtApi& api, const char* op, F&& compute) {
  try {
    compute();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::invalid_argument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(op) + ": " + e.what()).c_str());
  } catch (...) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(op) + ": unknown error").c_str());
  }
}

// Kernel creation: the same conversion, ORT_FAIL for anything but bad attributes.
template <typename Kernel, typename... Args>
OrtStatusPtr create_kernel(const OrtApi& api, const char* op, void** kernel, Args&&... args) {
  try {
    *kernel = new Kernel(std::forward<Args>(args)...);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::invalid_argument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, (std::string(op) + ": " + e.what()).c_str());
  } catch (...) {
    return api.CreateStatus(ORT_FAIL, (std::string(op) + ": unknown error creating the kernel").c_str());
  }
}

}  // namespace xnorpipe::ort
