// ONNX Runtime custom op xnorpipe::ConvIntegerBinarize (docs/XNORCONV2D.md): the integer first
// layer. X uint8 [N, H, W, C] (the decoded image), W int8 [M, C, kH, kW], x_zero_point uint8 [C],
// pad_value int16 [M, kH, kW], threshold int32 [M], margin int32 [M], fine_weight int32
// [M, C, kH, kW], fine_pad_value int32 [M, kH, kW], fine_threshold int64 [M] -> bits int32
// [N, ceil(M/32), Ho, Wo]. Attributes: kernel_shape, strides, pads, dilations (ONNX Conv's names
// and defaults). Thin glue over core/conv_integer_binarize.
#pragma once

#include <memory>
#include <mutex>

#include "core/conv_integer_binarize/conv_integer_binarize.h"
#include "kernel_utils.h"

namespace xnorpipe::ort {

class ConvIntegerBinarizeKernel {
 public:
  ConvIntegerBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  bconv2d::BConv2DParams attrs_;  // channels and filters filled per call
  conv_integer_binarize::IntIsa isa_;
  bool weights_constant_ = false;
  ConstantCache<conv_integer_binarize::PackedIntWeights> weights_;
  // Every other input constant too: the bounds of the last input size, and the packed weights
  // they were built with.
  bool thresholds_constant_ = false;
  std::mutex thresholds_mutex_;
  std::shared_ptr<const conv_integer_binarize::IntThresholds> thresholds_;
  const void* thresholds_weights_ = nullptr;
};

struct ConvIntegerBinarizeOp : Ort::CustomOpBase<ConvIntegerBinarizeOp, ConvIntegerBinarizeKernel, /*WithStatus=*/true> {
  ConvIntegerBinarizeOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<ConvIntegerBinarizeKernel>(api, GetName(), kernel, api, info);
  }
  const char* GetName() const { return "ConvIntegerBinarize"; }
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return index < kInputs ? kInputTypes[index] : kInputTypes[0]; }
  static constexpr size_t kInputs = 9;
  static constexpr ONNXTensorElementDataType kInputTypes[kInputs] = {
      ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
      ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
      ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

}  // namespace xnorpipe::ort
