// The depthwise passes of hdc_stage (hdc_conv.cu): per-pixel tap geometry shared with the fused
// forward, the backward's depthwise recompute and input/weight gradient kernels in two variants
// (pixel: one pixel per thread; band: one row band of a plane per CTA, staged in shared memory),
// and the band launch geometry. Kept apart from hdc_conv.cu so that tests/ops/emu can run the
// same source on the CPU; the including file first provides tile::to_float / from_float
// (convert.cuh), dyn_smem() (dyn_smem.cuh) and, on the GPU, the CUDA vector types.
#pragma once

#include <algorithm>
#include <cstdint>

#include "warp_sum.cuh"

namespace mtlkit {
namespace {

using tile::from_float;
using tile::to_float;

// Per-pixel tap geometry: bit t of `mask` says tap t of pixel (h, w) lies inside the image.
__device__ __forceinline__ unsigned tap_mask(int h, int w, int H, int W, int d) {
  unsigned mask = 0;
#pragma unroll
  for (int t = 0; t < 9; ++t) {
    const int hh = h + (t / 3 - 1) * d, ww = w + (t % 3 - 1) * d;
    if (hh >= 0 && hh < H && ww >= 0 && ww < W) mask |= 1u << t;
  }
  return mask;
}
__device__ __forceinline__ int tap_off(int t, int W, int d) {
  return (t / 3 - 1) * d * W + (t % 3 - 1) * d;
}

// Depthwise output at pixel p of one channel plane xp, from 10 float weights (9 taps + bias).
template <typename T>
__device__ __forceinline__ float dw_value(const T* __restrict__ xp, int p, unsigned mask,
                                          const float* w, int W, int d) {
  float s = w[9];
#pragma unroll
  for (int t = 0; t < 9; ++t)
    if (mask & (1u << t)) s += w[t] * to_float(xp[p + tap_off(t, W, d)]);
  return s;
}

// w[0..8] = the 9 depthwise taps of channel c as float, w[9] = its bias (0 without one).
template <typename T>
__device__ __forceinline__ void load_taps(float (&w)[10], const T* __restrict__ dw_w,
                                          const T* __restrict__ dw_b, int c) {
#pragma unroll
  for (int t = 0; t < 9; ++t) w[t] = to_float(dw_w[c * 9 + t]);
  w[9] = dw_b != nullptr ? to_float(dw_b[c]) : 0.f;
}

// Pixels per CTA of hdc_grad_x_kernel (grid.x = ceil(H W / kGradXChunk)).
constexpr int kGradXChunk = 256 * 16;

// y[b, c, p] = dw_b[c] + sum_t dw_w[c, t] x[b, c, p + off_t], stored in T (the value the forward
// fed its tensor cores), for the pointwise-weight gradient. grid = (ceil(P / 256), C, B).
template <typename T>
__global__ void __launch_bounds__(256)
    hdc_dw_kernel(const T* __restrict__ x, const T* __restrict__ dw_w,
                  const T* __restrict__ dw_b, T* __restrict__ y, int C, int H, int W, int d) {
  const int P = H * W;
  const int p = static_cast<int>(blockIdx.x) * 256 + static_cast<int>(threadIdx.x);
  const int c = static_cast<int>(blockIdx.y);
  if (p >= P) return;
  float w[10];
  load_taps(w, dw_w, dw_b, c);
  const int64_t plane = (static_cast<int64_t>(blockIdx.z) * C + c) * P;
  y[plane + p] = from_float<T>(dw_value(x + plane, p, tap_mask(p / W, p % W, H, W, d), w, W, d));
}

// row[t] = sum of acc[t] over the 256 threads of the CTA, t < 10 (the depthwise weight and bias
// gradient partials); every thread must call it.
__device__ __forceinline__ void cta_sum10(const float (&acc)[10], float (&red)[8][10],
                                          float* __restrict__ row) {
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
#pragma unroll
  for (int t = 0; t < 10; ++t) {
    const float s = tile::warp_sum(acc[t]);
    if (lane == 0) red[warp][t] = s;
  }
  __syncthreads();
  if (tid < 10) {
    float s = 0.f;
#pragma unroll
    for (int wp = 0; wp < 8; ++wp) s += red[wp][tid];
    row[tid] = s;
  }
}

// gx[b, ci, q] = sum_t dw_w[ci, t] gy[b, ci, q - off_t] (sources inside the image) and partials
// part[(b * nchunk + chunk), ci, t] = sum_{p in chunk} gy[p] x[p + off_t] (t < 9), gy[p] (t = 9).
// grid = (nchunk, Cin, B), 256 threads, chunk = pixels per CTA.
template <typename T>
__global__ void __launch_bounds__(256)
    hdc_grad_x_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                      const T* __restrict__ dw_w, T* __restrict__ gx, float* __restrict__ part,
                      int Cin, int H, int W, int d, int chunk) {
  __shared__ float red[8][10];
  const int tid = static_cast<int>(threadIdx.x);
  const int P = H * W;
  const int ci = static_cast<int>(blockIdx.y);
  const int64_t b = blockIdx.z;
  const int64_t plane = (b * Cin + ci) * P;
  const T* gyp = gy + plane;
  const T* xp = x + plane;
  T* gxp = gx + plane;
  float w[10];  // taps only (w[9] = 0)
  load_taps(w, dw_w, static_cast<const T*>(nullptr), ci);
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.f;

  const int pstart = static_cast<int>(blockIdx.x) * chunk;
  const int pend = min(P, pstart + chunk);
  for (int p = pstart + tid; p < pend; p += 256) {
    const int h = p / W, wc = p % W;
    const unsigned mask = tap_mask(h, wc, H, W, d);
    const float g = to_float(gyp[p]);
    float gsum = 0.f;
#pragma unroll
    for (int t = 0; t < 9; ++t) {
      const int off = tap_off(t, W, d);
      // forward tap t of pixel p read x[p + off_t]
      if (mask & (1u << t)) acc[t] += g * to_float(xp[p + off]);
      // pixel p' = p - off_t used x[p] through tap t; it exists iff the mirrored tap
      // 8 - t of p lies inside the image (same offset, opposite sign).
      if (mask & (1u << (8 - t))) gsum += w[t] * to_float(gyp[p - off]);
    }
    acc[9] += g;
    gxp[p] = from_float<T>(gsum);
  }
  cta_sum10(acc, red,
            part + (static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * Cin * 10 + ci * 10);
}

// ----------------------------------------------------------------------------- band kernels
// depthwise="band": the same two depthwise passes with every tap read from shared memory.
// One CTA per (band of R output rows, channel c, image b); grid = (nbands, C, B), 256 threads.
// The CTA stages rows [h0 - d, h0 + Rb + d) of its plane (Rb = rows of this band) as float:
// stage row rr holds image row h0 - d + rr at columns [L, L + W) of a row of SW floats, and
// columns [L - d, L), [L + W, L + W + d) and rows outside the image are zero. Tap t of output
// pixel (h0 + r, w) is then the unconditional read sm[(r + d + dy d) SW + L + w + dx d]; the
// zero halo plays the role of the tap mask (zero padding). L = d rounded up to 4 and SW a
// multiple of 4 keep the interior of each stage row 16-byte aligned for the vector path.
constexpr int kBandThreads = 256;

// Row-major walk of a (rows x n) index space: (r, c) = divmod(i, n) for i = start, start + 256,
// ... without a division per step (256 % n < n, so one carry per step suffices).
struct BandWalk {
  int r, c, dr, dc;
  __device__ BandWalk(int start, int n)
      : r(start / n), c(start % n), dr(kBandThreads / n), dc(kBandThreads % n) {}
  __device__ __forceinline__ void next(int n) {
    r += dr;
    c += dc;
    if (c >= n) {
      c -= n;
      ++r;
    }
  }
};

// Stage nrows = Rb + 2d rows of plane src (H x W) starting at image row h0 - d into sm (layout
// above). Loads are coalesced along the row; with `vec` (src 16-byte aligned, W * sizeof(T) a
// multiple of 16, so no vector straddles a row) each thread moves 16 bytes per load.
template <typename T>
__device__ __forceinline__ void band_stage(float* __restrict__ sm, const T* __restrict__ src,
                                           int h0, int nrows, int H, int W, int d, int L, int SW,
                                           bool vec) {
  const int tid = static_cast<int>(threadIdx.x);
  // zero halo columns [L - d, L) and [L + W, L + W + d) of every stage row
  for (int i = tid; i < nrows * 2 * d; i += kBandThreads) {
    const int rr = i / (2 * d), k = i - rr * 2 * d;
    sm[rr * SW + (k < d ? L - d + k : L + W + (k - d))] = 0.f;
  }
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  if (vec) {
    const int Wv = W / V;
#pragma unroll 2
    for (BandWalk it(tid, Wv); it.r < nrows; it.next(Wv)) {
      const int gh = h0 - d + it.r, c = it.c * V;
      float v[V];
      if (gh >= 0 && gh < H) {
        const uint4 u = *reinterpret_cast<const uint4*>(src + gh * W + c);
        const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = to_float(e[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = 0.f;
      }
      float4* dst = reinterpret_cast<float4*>(sm + it.r * SW + L + c);
#pragma unroll
      for (int k = 0; k < V / 4; ++k)
        dst[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
    }
  } else {
#pragma unroll 4
    for (BandWalk it(tid, W); it.r < nrows; it.next(W)) {
      const int gh = h0 - d + it.r;
      sm[it.r * SW + L + it.c] = (gh >= 0 && gh < H) ? to_float(src[gh * W + it.c]) : 0.f;
    }
  }
}

// y[b, c, p] = dw_b[c] + sum_t dw_w[c, t] x[b, c, p + off_t] for the Rb rows of band blockIdx.x
// (same float sum, same tap order and same rounding to T as hdc_dw_kernel).
template <typename T>
__global__ void __launch_bounds__(kBandThreads)
    hdc_dw_band_kernel(const T* __restrict__ x, const T* __restrict__ dw_w,
                       const T* __restrict__ dw_b, T* __restrict__ y, int C, int H, int W, int d,
                       int R, int L, int SW, bool vec) {
  float* band_sm = reinterpret_cast<float*>(dyn_smem());
  const int c = static_cast<int>(blockIdx.y);
  const int h0 = static_cast<int>(blockIdx.x) * R;
  const int Rb = min(R, H - h0);
  const int64_t plane = (static_cast<int64_t>(blockIdx.z) * C + c) * H * W;
  band_stage(band_sm, x + plane, h0, Rb + 2 * d, H, W, d, L, SW, vec);
  float w[10];
  load_taps(w, dw_w, dw_b, c);
  __syncthreads();  // stage complete
  T* yb = y + plane + static_cast<int64_t>(h0) * W;
  for (BandWalk it(static_cast<int>(threadIdx.x), W); it.r < Rb; it.next(W)) {
    // centre of pixel (h0 + r, w) in the stage: row r + d, column L + w
    const float* s = band_sm + (it.r + d) * SW + L + it.c;
    float v = w[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) v += w[t] * s[(t / 3 - 1) * d * SW + (t % 3 - 1) * d];
    yb[it.r * W + it.c] = from_float<T>(v);
  }
}

// gx[b, ci, q] = sum_t dw_w[ci, t] gy[b, ci, q - off_t] for the pixels q of band blockIdx.x
// (sources outside the image read the zero halo), and the partials
// part[(b * nbands + band), ci, t] = sum_{p in band} gy[p] x[p + off_t] (t < 9), gy[p] (t = 9),
// the layout of hdc_grad_x_kernel with one chunk per band. Dynamic shared memory: the x stage
// followed by the gy stage, (R + 2d) SW floats each.
template <typename T>
__global__ void __launch_bounds__(kBandThreads)
    hdc_grad_x_band_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                           const T* __restrict__ dw_w, T* __restrict__ gx,
                           float* __restrict__ part, int Cin, int H, int W, int d, int R, int L,
                           int SW, bool vec) {
  float* band_sm = reinterpret_cast<float*>(dyn_smem());
  __shared__ float red[kBandThreads / 32][10];
  const int tid = static_cast<int>(threadIdx.x);
  const int ci = static_cast<int>(blockIdx.y);
  const int64_t b = blockIdx.z;
  const int h0 = static_cast<int>(blockIdx.x) * R;
  const int Rb = min(R, H - h0);
  const int64_t plane = (b * Cin + ci) * H * W;
  float* xs = band_sm;
  float* gs = band_sm + (R + 2 * d) * SW;
  band_stage(xs, x + plane, h0, Rb + 2 * d, H, W, d, L, SW, vec);
  band_stage(gs, gy + plane, h0, Rb + 2 * d, H, W, d, L, SW, vec);
  float w[10];  // taps only (w[9] = 0)
  load_taps(w, dw_w, static_cast<const T*>(nullptr), ci);
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.f;
  __syncthreads();  // both stages complete

  T* gxb = gx + plane + static_cast<int64_t>(h0) * W;
  for (BandWalk it(tid, W); it.r < Rb; it.next(W)) {
    const int centre = (it.r + d) * SW + L + it.c;  // pixel p = q = (h0 + r, w)
    const float g = gs[centre];
    float gsum = 0.f;
#pragma unroll
    for (int t = 0; t < 9; ++t) {
      const int off = (t / 3 - 1) * d * SW + (t % 3 - 1) * d;
      acc[t] += g * xs[centre + off];  // forward tap t of p read x[p + off_t]
      gsum += w[t] * gs[centre - off];  // p' = q - off_t read x[q] through tap t
    }
    acc[9] += g;
    gxb[it.r * W + it.c] = from_float<T>(gsum);
  }
  cta_sum10(acc, red, part + (b * gridDim.x + blockIdx.x) * Cin * 10 + ci * 10);
}

// Launch geometry of a band kernel staging `nbuf` planes: R rows per band (0: the stage does not
// fit, use the pixel kernel), nbands = ceil(H / R), stage row layout (L, SW) and dynamic shared
// memory bytes nbuf (R + 2d) SW 4.
struct BandPlan {
  int R = 0, nbands = 0, L = 0, SW = 0;
  int64_t smem = 0;
};

// About 2048 output pixels per CTA (R = ceil(2048 / W), at most H), reduced until the stage fits
// `default_limit` bytes of dynamic shared memory; when even R = 1 does not, the largest R that
// fits `optin_limit` (the caller then raises the kernel's attribute); R is then balanced over
// the bands (20/20/20 rather than 26/26/8 rows for H = 60, W = 80).
inline BandPlan band_geometry(int H, int W, int d, int nbuf, int64_t default_limit,
                              int64_t optin_limit) {
  BandPlan bp;
  const int64_t L = (int64_t{d} + 3) / 4 * 4, SW = (L + W + d + 3) / 4 * 4;  // int64: W + 2d
  const int64_t row_bytes = int64_t{nbuf} * SW * static_cast<int64_t>(sizeof(float));
  const int64_t target = std::min<int64_t>(H, std::max<int64_t>(1, (2048 + W - 1) / W));
  auto rows_within = [&](int64_t limit) {  // largest R <= target with the stage within limit
    return std::min<int64_t>(target, limit / row_bytes - 2 * int64_t{d});
  };
  int64_t R = rows_within(default_limit);
  if (R < 1) R = rows_within(optin_limit);
  if (R < 1) return BandPlan{};  // not even one row fits: pixel kernel
  const int64_t nbands = (H + R - 1) / R;
  R = (H + nbands - 1) / nbands;  // <= R: still fits
  bp.R = static_cast<int>(R);  // everything fits in shared memory now: small
  bp.nbands = static_cast<int>(nbands);
  bp.L = static_cast<int>(L);
  bp.SW = static_cast<int>(SW);
  bp.smem = row_bytes * (R + 2 * int64_t{d});
  return bp;
}

}  // namespace
}  // namespace mtlkit
