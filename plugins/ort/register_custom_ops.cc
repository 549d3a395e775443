// Entry point of libxnorpipe_ort.so, the only exported symbol:
//   so.register_custom_ops_library(path)  (Python) / RegisterCustomOpsLibrary (C++).
// Built against the ORT 1.21 headers (API version 21); later runtimes keep the C ABI of older
// API versions, so the library loads in newer onnxruntime releases too.
#include <list>
#include <mutex>

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
  static xnorpipe::ort::XnorConv2dOp xnor_conv2d_op;
  try {
    Ort::CustomOpDomain domain("xnorpipe");
    domain.Add(&xnor_conv2d_op);
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
