// CUDA kernels of the xnorpipe::XnorConv2d v1 contract (docs/XNORCONV2D.md).
//
// One fused launch per layer (at CIFAR sizes launches dominate): each block binarizes the
// float input tile it needs into shared-memory bit words, then runs an implicit GEMM
// (output pixels x filters x taps*channels) on those bits:
//   xnor_conv2d_mma   sm_80+ binary tensor cores, mma.m16n8k256 .and.popc (.xor is emulated
//                     from sm_90 on, so XOR counts are derived from AND counts);
//   xnor_conv2d_popc  any sm_75+ GPU (and the fallback): __popc on 32-bit words.
// Both return, per output, y = valid*Cg - 2*popc(xor) summed over the taps inside the image
// only (zero padding of the +-1 tensor), then scale*y + bias as two roundings (no FMA, so
// the result is bit-exact with the reference) and an optional relu.
//
// Arguments follow TensorRT's AOT plugin convention: input pointers, int scalars, output.
// Launch: block (128,1,1); grid (N * tiles_h * tiles_w * ceil(Mg/64), group, 1);
// dynamic shared memory 4 * (FH*FW*8 + min(kH*kW, 9)*512) bytes, where
// FH = (TH-1)*sh + (kH-1)*dh + 1 and FW likewise (xnorpipe/gpu/plan.py computes it).

#include <stdint.h>

#define XNOR_THREADS 128  // 4 warps
#define XNOR_BM 64        // output pixels per block: 16 fragment rows per warp
#define XNOR_BN 64        // filters per block
#define XNOR_TAPB 9       // taps per weight stage in shared memory

#define XNOR_PARAMS                                                                        \
    const float* __restrict__ x, const int* __restrict__ w, const float* __restrict__ thr, \
        const float* __restrict__ scale, const float* __restrict__ bias, int N, int C,     \
        int H, int W, int M, int Ho, int Wo, int kH, int kW, int sh, int sw, int pt,       \
        int pl, int dh, int dw, int group, int relu, int TH, int TW, float* __restrict__ y

namespace {

struct Geo {
    int n, g, mb;          // image, group, block of 64 filters
    int Cg, Mg, nw, taps;  // channels / filters per group, words per tap, kH*kW
    int oh0, ow0;          // output origin of the tile
    int ih0, iw0;          // input origin of the tile's footprint (may be negative: padding)
    int FH, FW;            // footprint size
};

// Decode the block index; false when the block has nothing to do (block-uniform).
__device__ __forceinline__ bool make_geo(Geo& G, int N, int C, int M, int Ho, int Wo, int kH,
                                         int kW, int sh, int sw, int pt, int pl, int dh, int dw,
                                         int group, int TH, int TW) {
    G.Cg = C / group;
    G.Mg = M / group;
    G.nw = (G.Cg + 31) >> 5;
    G.taps = kH * kW;
    const int nfb = (G.Mg + XNOR_BN - 1) / XNOR_BN;
    const int tiles_w = (Wo + TW - 1) / TW;
    const int tiles_h = (Ho + TH - 1) / TH;
    unsigned bx = blockIdx.x;
    // filter block varies fastest: blocks that share an input tile run together (L2 reuse)
    G.mb = bx % nfb;
    bx /= nfb;
    const int tw = bx % tiles_w;
    bx /= tiles_w;
    const int th = bx % tiles_h;
    G.n = bx / tiles_h;
    G.g = blockIdx.y;
    if (G.n >= N || G.g >= group) return false;
    G.oh0 = th * TH;
    G.ow0 = tw * TW;
    G.ih0 = G.oh0 * sh - pt;
    G.iw0 = G.ow0 * sw - pl;
    G.FH = (TH - 1) * sh + (kH - 1) * dh + 1;
    G.FW = (TW - 1) * sw + (kW - 1) * dw + 1;
    return true;
}

// One GEMM row = one output pixel of the tile.
struct Row {
    bool in_tile;  // r < TH*TW (else a dead row: reads nothing, stores nothing)
    bool live;     // inside the output: stored
    int fy, fx;    // footprint coordinates of tap (0, 0)
    int ih, iw;    // image coordinates of tap (0, 0)
    int oh, ow;
};

__device__ __forceinline__ Row make_row(int r, const Geo& G, int Ho, int Wo, int sh, int sw,
                                        int TH, int TW) {
    Row R;
    R.in_tile = r < TH * TW;
    const int ty = R.in_tile ? r / TW : 0;
    const int tx = R.in_tile ? r - ty * TW : 0;
    R.oh = G.oh0 + ty;
    R.ow = G.ow0 + tx;
    R.live = R.in_tile && R.oh < Ho && R.ow < Wo;
    R.fy = ty * sh;
    R.fx = tx * sw;
    R.ih = G.ih0 + R.fy;
    R.iw = G.iw0 + R.fx;
    return R;
}

// Word w of a 256-channel chunk is stored at slot (w%4)*2 + w/4, so that the two words one
// mma lane needs (t and t+4) are one aligned 64-bit load.
__device__ __forceinline__ int swz(int w) { return ((w & 3) << 1) | (w >> 2); }

__device__ __forceinline__ int count_in(int start, int k, int d, int lim) {
    int c = 0;
    for (int i = 0; i < k; ++i) c += (unsigned)(start + i * d) < (unsigned)lim;
    return c;
}

// Binarize channel words [8*qc, 8*qc+8) of the tile's footprint: tileA[pos*8 + swz(w)].
// Positions outside the image and bits past Cg stay 0.
__device__ __forceinline__ void binarize_tile(uint32_t* tileA, const float* __restrict__ x,
                                              const float* __restrict__ thr, const Geo& G,
                                              int C, int H, int W, int qc) {
    const int npos = G.FH * G.FW;
    const size_t plane = (size_t)H * W;
    for (int idx = threadIdx.x; idx < npos * 8; idx += XNOR_THREADS) {
        const int wd = idx / npos;  // consecutive threads: consecutive pixels (coalesced)
        const int pos = idx - wd * npos;
        const int q = qc * 8 + wd;
        const int fy = pos / G.FW;
        const int fx = pos - fy * G.FW;
        const int ih = G.ih0 + fy;
        const int iw = G.iw0 + fx;
        uint32_t bits = 0;
        if (q < G.nw && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
            const int c0 = G.g * G.Cg + q * 32;
            const int nb = min(32, G.Cg - q * 32);
            const float* xp = x + ((size_t)G.n * C + c0) * plane + (size_t)ih * W + iw;
            const float* tp = thr + c0;
#pragma unroll 4
            for (int b = 0; b < nb; ++b)  // x >= thr; NaN compares false: -1 (bit 0)
                bits |= (uint32_t)(__ldg(xp + b * plane) >= __ldg(tp + b)) << b;
        }
        tileA[pos * 8 + swz(wd)] = bits;
    }
}

// Weights of taps [tap0, tap0+ntap), words [8*qc, 8*qc+8), filters [64*mb, 64*mb+64):
// Bs[(tl*64 + f)*8 + swz(w)], straight from the contract layout [M, kH, kW, nw].
// Pad bits of the last word are masked (the contract says 0, this makes it so).
__device__ __forceinline__ void load_weights(uint32_t* Bs, const int* __restrict__ w,
                                             const Geo& G, int qc, int tap0, int ntap) {
    const int rem = G.Cg & 31;
    const uint32_t lastmask = rem ? ((1u << rem) - 1u) : 0xffffffffu;
    for (int idx = threadIdx.x; idx < ntap * XNOR_BN * 8; idx += XNOR_THREADS) {
        const int wd = idx & 7;
        const int f = (idx >> 3) & (XNOR_BN - 1);
        const int tl = idx >> 9;
        const int q = qc * 8 + wd;
        const int m = G.mb * XNOR_BN + f;
        uint32_t v = 0;
        if (q < G.nw && m < G.Mg) {
            v = (uint32_t)__ldg(w + ((size_t)(G.g * G.Mg + m) * G.taps + tap0 + tl) * G.nw + q);
            if (q == G.nw - 1) v &= lastmask;
        }
        Bs[(tl * XNOR_BN + f) * 8 + swz(wd)] = v;
    }
}

// y = scale*sum + bias as two separate roundings, then relu.
__device__ __forceinline__ void store_out(float* __restrict__ y, const float* __restrict__ scale,
                                          const float* __restrict__ bias, int relu, const Geo& G,
                                          const Row& R, int M, int Ho, int Wo, int m, int sum) {
    const int mo = G.g * G.Mg + m;
    float v = __fadd_rn(__fmul_rn(__ldg(scale + mo), __int2float_rn(sum)), __ldg(bias + mo));
    if (relu && v < 0.0f) v = 0.0f;
    y[(((size_t)G.n * M + mo) * Ho + R.oh) * Wo + R.ow] = v;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Tensor-core path. Warp w owns GEMM rows [16w, 16w+16) and all 64 filters (8 n-fragments).
// Per (tap, 256-channel chunk) one k-step: S += popc(a & b) on the bits, and Bv += popc(b)
// restricted to rows whose tap is inside the image (A = all ones there, 0 elsewhere).
// With Apop = popc(a) over the row (out-of-image taps are 0 bits already):
//   popc(xor over valid taps) = Apop + Bv - 2*S.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ void mma_and_popc(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(XNOR_THREADS) xnor_conv2d_mma(XNOR_PARAMS) {
    Geo G;
    if (!make_geo(G, N, C, M, Ho, Wo, kH, kW, sh, sw, pt, pl, dh, dw, group, TH, TW)) return;
    extern __shared__ __align__(16) uint32_t smem[];
    uint32_t* tileA = smem;
    uint32_t* Bs = smem + G.FH * G.FW * 8;

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int gq = lane >> 2;  // fragment row / column group
    const int tq = lane & 3;   // thread in group: words tq and tq+4 of the k-step
    // Fragment rows of this lane: gq (a0, a2; c0, c1) and gq+8 (a1, a3; c2, c3).
    const Row R0 = make_row(warp * 16 + gq, G, Ho, Wo, sh, sw, TH, TW);
    const Row R1 = make_row(warp * 16 + gq + 8, G, Ho, Wo, sh, sw, TH, TW);

    int acc[8][4], accv[8][4];
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[f][e] = accv[f][e] = 0;
    int apop0 = 0, apop1 = 0;

    const int nchunks = (G.nw + 7) >> 3;
    for (int qc = 0; qc < nchunks; ++qc) {
        __syncthreads();  // the previous chunk's tile and weights are consumed
        binarize_tile(tileA, x, thr, G, C, H, W, qc);
        for (int tap0 = 0; tap0 < G.taps; tap0 += XNOR_TAPB) {
            const int ntap = min(XNOR_TAPB, G.taps - tap0);
            if (tap0 > 0) __syncthreads();
            load_weights(Bs, w, G, qc, tap0, ntap);
            __syncthreads();
            for (int tl = 0; tl < ntap; ++tl) {
                const int tap = tap0 + tl;
                const int di = (tap / kW) * dh;
                const int dj = (tap % kW) * dw;
                uint2 a0 = make_uint2(0u, 0u), a1 = make_uint2(0u, 0u);
                uint32_t v0 = 0u, v1 = 0u;
                if (R0.in_tile) {
                    a0 = *reinterpret_cast<const uint2*>(
                        tileA + ((R0.fy + di) * G.FW + R0.fx + dj) * 8 + 2 * tq);
                    v0 = ((unsigned)(R0.ih + di) < (unsigned)H &&
                          (unsigned)(R0.iw + dj) < (unsigned)W) ? 0xffffffffu : 0u;
                }
                if (R1.in_tile) {
                    a1 = *reinterpret_cast<const uint2*>(
                        tileA + ((R1.fy + di) * G.FW + R1.fx + dj) * 8 + 2 * tq);
                    v1 = ((unsigned)(R1.ih + di) < (unsigned)H &&
                          (unsigned)(R1.iw + dj) < (unsigned)W) ? 0xffffffffu : 0u;
                }
                apop0 += __popc(a0.x) + __popc(a0.y);
                apop1 += __popc(a1.x) + __popc(a1.y);
                const uint32_t* bp = Bs + (tl * XNOR_BN + gq) * 8 + 2 * tq;
#pragma unroll
                for (int f = 0; f < 8; ++f) {
                    const uint2 b = *reinterpret_cast<const uint2*>(bp + f * 64);
                    mma_and_popc(acc[f], a0.x, a1.x, a0.y, a1.y, b.x, b.y);
                    mma_and_popc(accv[f], v0, v1, v0, v1, b.x, b.y);
                }
            }
        }
    }

    // Each quad of lanes holds one row's words tq, tq+4: sum them.
    apop0 += __shfl_xor_sync(0xffffffffu, apop0, 1);
    apop0 += __shfl_xor_sync(0xffffffffu, apop0, 2);
    apop1 += __shfl_xor_sync(0xffffffffu, apop1, 1);
    apop1 += __shfl_xor_sync(0xffffffffu, apop1, 2);
    const int valid0 = count_in(R0.ih, kH, dh, H) * count_in(R0.iw, kW, dw, W) * G.Cg;
    const int valid1 = count_in(R1.ih, kH, dh, H) * count_in(R1.iw, kW, dw, W) * G.Cg;
#pragma unroll
    for (int f = 0; f < 8; ++f) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int m = G.mb * XNOR_BN + f * 8 + 2 * tq + e;
            if (m >= G.Mg) continue;
            if (R0.live)
                store_out(y, scale, bias, relu, G, R0, M, Ho, Wo, m,
                          valid0 - 2 * (apop0 + accv[f][e] - 2 * acc[f][e]));
            if (R1.live)
                store_out(y, scale, bias, relu, G, R1, M, Ho, Wo, m,
                          valid1 - 2 * (apop1 + accv[f][2 + e] - 2 * acc[f][2 + e]));
        }
    }
}
#endif

// ---------------------------------------------------------------------------------------
// __popc path. Thread (rt, ft) owns rows rt + 16k (k < 4) and filters ft + 8j (j < 8):
// interleaved so that a warp's shared-memory reads spread over the banks.
extern "C" __global__ void __launch_bounds__(XNOR_THREADS) xnor_conv2d_popc(XNOR_PARAMS) {
    Geo G;
    if (!make_geo(G, N, C, M, Ho, Wo, kH, kW, sh, sw, pt, pl, dh, dw, group, TH, TW)) return;
    extern __shared__ __align__(16) uint32_t smem[];
    uint32_t* tileA = smem;
    uint32_t* Bs = smem + G.FH * G.FW * 8;

    const int rt = threadIdx.x >> 3;
    const int ft = threadIdx.x & 7;
    Row R[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) R[k] = make_row(rt + 16 * k, G, Ho, Wo, sh, sw, TH, TW);

    int xc[4][8];  // popc(xor) over valid taps
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) xc[k][j] = 0;

    const int nchunks = (G.nw + 7) >> 3;
    for (int qc = 0; qc < nchunks; ++qc) {
        __syncthreads();
        binarize_tile(tileA, x, thr, G, C, H, W, qc);
        const int nwc = min(8, G.nw - qc * 8);
        for (int tap0 = 0; tap0 < G.taps; tap0 += XNOR_TAPB) {
            const int ntap = min(XNOR_TAPB, G.taps - tap0);
            if (tap0 > 0) __syncthreads();
            load_weights(Bs, w, G, qc, tap0, ntap);
            __syncthreads();
            for (int tl = 0; tl < ntap; ++tl) {
                const int tap = tap0 + tl;
                const int di = (tap / kW) * dh;
                const int dj = (tap % kW) * dw;
                int offs[4];
                uint32_t vm[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const bool valid = R[k].in_tile &&
                                       (unsigned)(R[k].ih + di) < (unsigned)H &&
                                       (unsigned)(R[k].iw + dj) < (unsigned)W;
                    offs[k] = valid ? ((R[k].fy + di) * G.FW + R[k].fx + dj) * 8 : 0;
                    vm[k] = valid ? 0xffffffffu : 0u;
                }
                const uint32_t* bp = Bs + (tl * XNOR_BN + ft) * 8;
                for (int wd = 0; wd < nwc; ++wd) {
                    const int s = swz(wd);
                    uint32_t b[8];
#pragma unroll
                    for (int j = 0; j < 8; ++j) b[j] = bp[j * 64 + s];
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const uint32_t a = tileA[offs[k] + s];
#pragma unroll
                        for (int j = 0; j < 8; ++j) xc[k][j] += __popc(a ^ b[j]) & (int)vm[k];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (!R[k].live) continue;
        const int valid = count_in(R[k].ih, kH, dh, H) * count_in(R[k].iw, kW, dw, W) * G.Cg;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int m = G.mb * XNOR_BN + ft + 8 * j;
            if (m < G.Mg) store_out(y, scale, bias, relu, G, R[k], M, Ho, Wo, m, valid - 2 * xc[k][j]);
        }
    }
}
