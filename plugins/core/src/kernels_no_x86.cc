// Non-x86 builds: the AVX2/AVX-512 entry points exist so the driver links, but cpu_supports()
// reports both paths absent, so select_kernel never picks them and these never run.
#include <stdexcept>
#include <string>

#include "core/bconv2d/bitpack.h"
#include "core/bconv2d/optimized.h"

namespace xnorpipe::bconv2d {

namespace {
[[noreturn]] void no_x86(const char* fn) {
  throw std::logic_error(std::string(fn) + ": x86 kernel called on a non-x86 build");
}
}  // namespace

void pack_avx2(const PackArgs&) { no_x86("pack_avx2"); }
void tile_avx2(const TileArgs&) { no_x86("tile_avx2"); }
void pack_avx512(const PackArgs&) { no_x86("pack_avx512"); }
void pack_planar_avx512(const PlanarPackArgs&) { no_x86("pack_planar_avx512"); }
void pointwise_avx512(const PointwiseArgs&) { no_x86("pointwise_avx512"); }
void tile_avx512(const TileArgs&) { no_x86("tile_avx512"); }

}  // namespace xnorpipe::bconv2d
