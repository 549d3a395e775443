// Non-x86 builds: the AVX2/AVX-512 entry points exist so the driver links, but cpu_supports()
// reports both paths absent, so select_kernel never picks them and these never run.
#include <stdexcept>
#include <string>

#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"

namespace xnorpipe::bconv2d {

[[noreturn]] void no_x86_stub(const char* fn) {
  throw std::logic_error(std::string(fn) + ": x86 kernel called on a non-x86 build");
}

void pack_avx2(const PackArgs&) { no_x86_stub("pack_avx2"); }
void tile_avx2(const TileArgs&) { no_x86_stub("tile_avx2"); }
void pack_avx512(const PackArgs&) { no_x86_stub("pack_avx512"); }
void pack_planar_avx512(const PlanarPackArgs&) { no_x86_stub("pack_planar_avx512"); }
void pointwise_avx512(const PointwiseArgs&) { no_x86_stub("pointwise_avx512"); }
void tile_avx512(const TileArgs&) { no_x86_stub("tile_avx512"); }

}  // namespace xnorpipe::bconv2d

#include "core/conv_binarize/conv_binarize.h"

namespace xnorpipe::conv_binarize {
void conv_binarize_row_avx512(const RowArgs&) { bconv2d::no_x86_stub("conv_binarize_row_avx512"); }
void conv_binarize_row_avx2(const RowArgs&) { bconv2d::no_x86_stub("conv_binarize_row_avx2"); }
}  // namespace xnorpipe::conv_binarize

#include "core/pool/pool.h"

namespace xnorpipe::pool {
void avg_plane_bits_avx512(const float*, int, int, const PoolParams&, int, int, const AvgRowTaps&, float, float, uint32_t,
                           uint32_t*) {
  bconv2d::no_x86_stub("avg_plane_bits_avx512");
}
}  // namespace xnorpipe::pool
