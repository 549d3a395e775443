// ONNX Runtime custom ops over core/bconv2d, one kernel class for the three I/O kinds:
//   XnorConv2d              float X (+threshold) -> float Y   (contract v1)
//   XnorConv2dBits          bits Xp              -> float Y   (packed-bits form)
//   XnorConv2dBitsBinarize  bits Xp              -> bits Yp   (next layer's threshold fused)
#pragma once

#include <memory>
#include <mutex>

#include "kernel_utils.h"

namespace xnorpipe::ort {

enum class ConvIo { kFloatToFloat, kBitsToFloat, kBitsToBits };

class XnorConv2dKernel {
 public:
  // Reads and checks the attributes; throws std::exception / Ort::Exception on bad ones.
  XnorConv2dKernel(const OrtApi& api, const OrtKernelInfo* info, ConvIo io);
  // Never throws: every failure comes back as an OrtStatus.
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(OrtKernelContext* context);
  const char* op_name() const;

  const OrtApi& api_;
  ConvIo io_;
  bconv2d::BConv2DParams attrs_;  // channels (float input) / filters filled per call from the inputs
  bconv2d::PopcountPath path_;    // from CPUID / $XNORPIPE_POPCOUNT at kernel creation
  // Reordered weights of a constant-initializer W, built on first use (needs C for masking).
  bool weights_constant_ = false;
  ConstantCache<bconv2d::PackedFilters> filters_;
  // Bit output of a pointwise layer: the popcount intervals of constant scale, bias and
  // output_threshold, built on first use (O(M * C) float evaluations: once, not per call).
  bool output_constant_ = false;
  ConstantCache<bconv2d::PopcountIntervals> intervals_;
};

template <ConvIo kIo>
struct XnorConv2dOp : Ort::CustomOpBase<XnorConv2dOp<kIo>, XnorConv2dKernel, /*WithStatus=*/true> {
  XnorConv2dOp() { this->start_ver_ = this->end_ver_ = 1; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return create_kernel<XnorConv2dKernel>(api, GetName(), kernel, api, info, kIo);
  }
  const char* GetName() const {
    return kIo == ConvIo::kFloatToFloat ? "XnorConv2d" : kIo == ConvIo::kBitsToFloat ? "XnorConv2dBits"
                                                                                      : "XnorConv2dBitsBinarize";
  }
  size_t GetInputTypeCount() const { return kIo == ConvIo::kBitsToFloat ? 4 : 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    const bool int32 = index == 1 || (index == 0 && kIo != ConvIo::kFloatToFloat);
    return int32 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return kIo == ConvIo::kBitsToBits ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

}  // namespace xnorpipe::ort
