// The contract's bit tensor for activations (packed-bits form): int32 [N][ceil(C/32)][H*W],
// bit k of word q = (x[32q+k] >= threshold[32q+k]), NaN -> 0, bits past C are 0.
#pragma once

#include <cstdint>

#include "core/bconv2d/optimized.h"
#include "core/bconv2d/select_kernel.h"

namespace xnorpipe::bconv2d {

// Rows of one image: x [channels][x_stride] at the first pixel -> out [ceil(C/32)][out_stride],
// npx pixels per row; out_stride >= npx. Writes exactly npx words per row.
void binarize_rows(const float* x, int64_t x_stride, const float* threshold, int channels, int npx, uint32_t* out,
                   int64_t out_stride, PopcountPath path);

// Binarize op: x [N][C][plane] -> bits [N][ceil(C/32)][plane].
void binarize(const float* x, int n_batch, int channels, int64_t plane, const float* threshold, uint32_t* bits,
              PopcountPath path, const ParallelFor& parallel_for);

}  // namespace xnorpipe::bconv2d
