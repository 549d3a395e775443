// Entry point of libxnorpipe_ort.so, the only exported symbol:
//   so.register_custom_ops_library(path)  (Python) / RegisterCustomOpsLibrary (C++).
// Built against the ORT 1.21 headers (API version 21); later runtimes keep the C ABI of older
// API versions, so the library loads in newer onnxruntime releases too.
#include <list>
#include <mutex>

#include "bit_ops.h"
#include "conv_integer_binarize_op.h"
#include "xnor_conv2d_op.h"

namespace {
std::mutex domains_mutex;
std::list<Ort::CustomOpDomain>& domains() {  // must outlive every session that uses them
  static auto* list = new std::list<Ort::CustomOpDomain>();
  return *list;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base ? api_base->GetApi(ORT_API_VERSION) : nullptr;
  if (!api) return nullptr;  // runtime older than the headers: nothing can report the error
  Ort::InitApi(api);
  using xnorpipe::ort::ConvIo;
  static xnorpipe::ort::XnorConv2dOp<ConvIo::kFloatToFloat> xnor_conv2d_op;
  static xnorpipe::ort::XnorConv2dOp<ConvIo::kBitsToFloat> xnor_conv2d_bits_op;
  static xnorpipe::ort::XnorConv2dOp<ConvIo::kBitsToBits> xnor_conv2d_bits_binarize_op;
  static xnorpipe::ort::BinarizeOp binarize_op;
  static xnorpipe::ort::BitMaxPoolOp bit_max_pool_op;
  static xnorpipe::ort::ConvBinarizeOp conv_binarize_op;
  static xnorpipe::ort::AvgPoolBinarizeOp avg_pool_binarize_op;
  static xnorpipe::ort::ConvIntegerBinarizeOp conv_integer_binarize_op;
  try {
    Ort::CustomOpDomain domain("xnorpipe");
    for (const OrtCustomOp* op : std::initializer_list<const OrtCustomOp*>{
             &xnor_conv2d_op, &xnor_conv2d_bits_op, &xnor_conv2d_bits_binarize_op, &binarize_op, &bit_max_pool_op, &conv_binarize_op,
             &avg_pool_binarize_op, &conv_integer_binarize_op})
      domain.Add(op);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(domains_mutex);
    domains().push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
