// ONNX Runtime custom ops on the activation bit tensor (packed-bits form):
//   Binarize    float X [N,C,H,W], threshold [C] -> bits [N, ceil(C/32), H, W]
//   BitMaxPool  bits -> bits (word-wise OR over each window's in-image taps)
//   ConvBinarize float X, W, B, threshold -> bits (float conv + ReLU + the next binarization)
//   AvgPoolBinarize float X, threshold -> bits (AveragePool + the next binarization)
#pragma once

#include <memory>
#include <mutex>

#include "core/pool/pool.h"
#include "core/conv_binarize/conv_binarize.h"
#include "kernel_utils.h"

namespace xnorpipe::ort {

class BinarizeKernel {
 public:
  BinarizeKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  bconv2d::PopcountPath path_;
};

struct BinarizeOp : Ort::CustomOpBase<BinarizeOp, BinarizeKernel, /*WithStatus=*/true> {
  BinarizeOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<BinarizeKernel>(api, GetName(), kernel, api, info);
  }
  const char* GetName() const { return "Binarize"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

class BitMaxPoolKernel {
 public:
  BitMaxPoolKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  pool::PoolParams params_;
};

struct BitMaxPoolOp : Ort::CustomOpBase<BitMaxPoolOp, BitMaxPoolKernel, /*WithStatus=*/true> {
  BitMaxPoolOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<BitMaxPoolKernel>(api, GetName(), kernel, api, info);
  }
  const char* GetName() const { return "BitMaxPool"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

// Shared by BitMaxPool and AvgPoolBinarize: kernel_shape, strides, pads.
pool::PoolParams read_pool_attributes(const Ort::ConstKernelInfo& info, const char* op);

class AvgPoolBinarizeKernel {
 public:
  AvgPoolBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  const OrtApi& api_;
  pool::PoolParams params_;
  bconv2d::PopcountPath path_;
};

struct AvgPoolBinarizeOp : Ort::CustomOpBase<AvgPoolBinarizeOp, AvgPoolBinarizeKernel, /*WithStatus=*/true> {
  AvgPoolBinarizeOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<AvgPoolBinarizeKernel>(api, GetName(), kernel, api, info);
  }
  const char* GetName() const { return "AvgPoolBinarize"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

class ConvBinarizeKernel {
 public:
  ConvBinarizeKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);

  const OrtApi& api_;
  bconv2d::BConv2DParams attrs_;  // channels and filters filled per call
  bconv2d::PopcountPath path_;
  bool weights_constant_ = false;
  ConstantCache<conv_binarize::PackedConvWeights> weights_;
};

struct ConvBinarizeOp : Ort::CustomOpBase<ConvBinarizeOp, ConvBinarizeKernel, /*WithStatus=*/true> {
  ConvBinarizeOp() { start_ver_ = end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<ConvBinarizeKernel>(api, GetName(), kernel, api, info);
  }
  const char* GetName() const { return "ConvBinarize"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; }
};

}  // namespace xnorpipe::ort
