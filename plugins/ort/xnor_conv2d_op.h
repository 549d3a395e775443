// ONNX Runtime custom op xnorpipe::XnorConv2d (version 1) over core/bconv2d.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <mutex>

#include "core/bconv2d/optimized.h"

namespace xnorpipe::ort {

class XnorConv2dKernel {
 public:
  // Reads and checks the attributes; throws std::exception / Ort::Exception on bad ones.
  XnorConv2dKernel(const OrtApi& api, const OrtKernelInfo* info);
  // Never throws: every failure comes back as an OrtStatus.
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  bconv2d::BConv2DParams attrs_;  // channels/filters filled per call from the inputs
  bconv2d::PopcountPath path_;    // from CPUID / $XNORPIPE_POPCOUNT at kernel creation
  bool weights_constant_ = false;
  // Reordered weights of a constant-initializer W, built on first use (needs C for masking).
  std::mutex cache_mutex_;
  std::shared_ptr<const bconv2d::PackedFilters> cached_filters_;
  const void* cached_w_data_ = nullptr;
  int cached_channels_ = 0;
};

struct XnorConv2dOp : Ort::CustomOpBase<XnorConv2dOp, XnorConv2dKernel, /*WithStatus=*/true> {
  XnorConv2dOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return "XnorConv2d"; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace xnorpipe::ort
