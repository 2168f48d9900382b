// Flash-style attention kernels shared by bfe_attention (BFCI eq. 3-4) and tpp_attention
// (BFCI eq. 5-6). See attention_core.h for the problem definition.
//
// Design (CUDA cores, float32 accumulation, any dtype in {float32, bfloat16, float16}):
// - A block owns BR = 64 rows (queries in the forward and dq kernels, keys in the dk/dv
//   kernels) of one (batch, map) and walks the other side in tiles of BC = 32 rows.
// - Score tiles S = A B^T (64 x 32) are accumulated over the feature dimension in chunks of
//   DC = 32 staged through shared memory, so the feature dimension (T * D for TPP) is unbounded;
//   each thread of the 16 x 16 grid owns 4 rows x 2 columns of the tile.
// - Forward: online softmax (running max m, running sum l, rescaled accumulator), then
//   O += P V_tile with P staged in shared memory; lse = m + log(l) is stored for the backward.
// - Backward (FlashAttention-2 recomputation, no atomics except the tiny mix-weight gradient):
//   dq kernel (rows = queries): P = exp(S - lse), dP = dO V^T, dS = P * (dP - Drow),
//   dq_j = scale * sum_g w_gj dS_g k_j, d w_gj = sum(q_j * scale * dS_g k_j);
//   dk kernel (rows = keys): dk_j = scale * sum_g w_gj dS_g^T q_j;
//   dv kernel (rows = keys): dv = P^T dO.
//   Drow = rowsum(dO * O) is computed by the caller.
// - Output columns of a part (head dim) are at most kMaxPartDim = 128; each thread holds
//   4 rows x 8 columns (column = tx + 16 u).
// The (Nq x Nk) score matrix is never written to global memory.

#include "attention_core.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <string>

namespace mtlkit {
namespace {

constexpr int kThreads = 256;  // 16 x 16 thread grid: ty = tid / 16, tx = tid % 16
constexpr int BR = 64;         // rows owned by a block
constexpr int BC = 32;         // rows of the other side per inner step
constexpr int DC = 32;         // reduction chunk of a score tile
constexpr int NU = kMaxPartDim / 16;  // output columns per thread

static_assert(BR == 4 * 16 && BC == 2 * 16, "thread mapping assumes 4 x 2 score entries");

struct Smem {
  float a[BR][DC + 1];               // chunk of the row-side operand
  float b[BC][DC + 1];               // chunk of the column-side operand
  float p[BR][BC + 1];               // probabilities / score gradients of the current tile
  float c[BC][kMaxPartDim + 1];      // one part (<= 128 columns) of BC rows
  float red[kThreads / 32];          // block reduction scratch
};

// A (batch, map) slice of a PartLayout with typed pointer; rows beyond `rows` and columns
// beyond the feature dimension read as zero.
template <typename T>
struct View {
  const T* base;
  int64_t part_stride;
  int64_t row_stride;
  int parts;
  int part_dim;
  int rows;
  const float* w;  // per-part multipliers (mix weights of this map) or nullptr
  float scale;

  __device__ __forceinline__ int dim() const { return parts * part_dim; }

  // Element (row, c) of the concatenated feature vector, times scale * w[c / part_dim].
  __device__ __forceinline__ float load(int row, int c) const {
    if (row >= rows || c >= parts * part_dim) return 0.f;
    const int j = c / part_dim;
    const int d = c - j * part_dim;
    const float x = static_cast<float>(
        base[j * part_stride + static_cast<int64_t>(row) * row_stride + d]);
    return x * (w != nullptr ? scale * w[j] : scale);
  }

  // Element d of part j of a row, unscaled.
  __device__ __forceinline__ float load_part(int row, int j, int d) const {
    if (row >= rows || d >= part_dim) return 0.f;
    return static_cast<float>(
        base[j * part_stride + static_cast<int64_t>(row) * row_stride + d]);
  }
};

template <typename T>
__device__ __forceinline__ View<T> make_view(const PartLayout& L, int b, int g, int rows,
                                             const float* w, float scale) {
  View<T> v;
  v.base = static_cast<const T*>(L.ptr) + b * L.batch_stride + g * L.map_stride;
  v.part_stride = L.part_stride;
  v.row_stride = L.row_stride;
  v.parts = L.parts;
  v.part_dim = L.part_dim;
  v.rows = rows;
  v.w = w;
  v.scale = scale;
  return v;
}

__device__ __forceinline__ float group16_max(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

__device__ __forceinline__ float group16_sum(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; the result is valid in thread 0. Every thread must call it.
__device__ float block_sum(Smem& sm, float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int tid = threadIdx.x;
  if ((tid & 31) == 0) sm.red[tid >> 5] = v;
  __syncthreads();
  float total = 0.f;
  if (tid == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += sm.red[w];
  }
  __syncthreads();
  return total;
}

// s[i][jj] = sum_c A(a0 + ty + 16 i, c) * B(b0 + tx + 16 jj, c) over the whole feature dim.
// Starts with __syncthreads(), so the caller may reuse sm.p / sm.c right after it returns
// only for writing after every thread is past its previous reads (guaranteed by that barrier).
template <typename TA, typename TB>
__device__ __forceinline__ void tile_dot(Smem& sm, const View<TA>& A, int a0, const View<TB>& B,
                                         int b0, float (&s)[4][2]) {
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s[i][0] = 0.f;
    s[i][1] = 0.f;
  }
  const int dim = A.dim();
  for (int c0 = 0; c0 < dim; c0 += DC) {
    __syncthreads();
#pragma unroll
    for (int it = 0; it < (BR * DC) / kThreads; ++it) {
      const int e = tid + it * kThreads;
      const int r = e / DC;
      const int c = e % DC;
      sm.a[r][c] = A.load(a0 + r, c0 + c);
    }
#pragma unroll
    for (int it = 0; it < (BC * DC) / kThreads; ++it) {
      const int e = tid + it * kThreads;
      const int r = e / DC;
      const int c = e % DC;
      sm.b[r][c] = B.load(b0 + r, c0 + c);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < DC; ++kk) {
      float av[4];
      float bv[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = sm.a[ty + 16 * i][kk];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) bv[jj] = sm.b[tx + 16 * jj][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) s[i][jj] = fmaf(av[i], bv[jj], s[i][jj]);
      }
    }
  }
}

// sm.c[r][d] = part j of rows r0 + r (zero outside the view).
template <typename T>
__device__ __forceinline__ void load_part_tile(Smem& sm, const View<T>& V, int r0, int j) {
  const int tid = threadIdx.x;
#pragma unroll 4
  for (int it = 0; it < (BC * kMaxPartDim) / kThreads; ++it) {
    const int e = tid + it * kThreads;
    const int r = e / kMaxPartDim;
    const int d = e % kMaxPartDim;
    sm.c[r][d] = V.load_part(r0 + r, j, d);
  }
}

// acc[i][u] += sum_n sm.p[ty + 16 i][n] * sm.c[n][tx + 16 u] for u < nu.
__device__ __forceinline__ void accum_pc(const Smem& sm, float (&acc)[4][NU], int nu) {
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
#pragma unroll 4
  for (int n = 0; n < BC; ++n) {
    float pv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) pv[i] = sm.p[ty + 16 * i][n];
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      if (u < nu) {
        const float cv = sm.c[n][tx + 16 * u];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][u] = fmaf(pv[i], cv, acc[i][u]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. grid = (ceil(nq / BR), v.parts, batch * maps). Block (x, j, b * maps + g) computes
// rows [x * BR, x * BR + BR) of value part j of map g.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attn_fwd_kernel(const AttnProblem p, T* __restrict__ out, float* __restrict__ lse) {
  __shared__ Smem sm;
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
  const int b = blockIdx.z / p.maps;
  const int g = blockIdx.z % p.maps;
  const int j = blockIdx.y;
  const int r0 = blockIdx.x * BR;

  const View<T> Q = make_view<T>(p.q, b, g, p.nq, weight_row(p, g), p.scale);
  const View<T> K = make_view<T>(p.k, b, g, p.nk, nullptr, 1.f);
  const View<T> V = make_view<T>(p.v, b, g, p.nk, nullptr, 1.f);
  const int width = p.v.part_dim;
  const int nu = (width + 15) / 16;

  float m[4];
  float l[4];
  float acc[4][NU];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int u = 0; u < NU; ++u) acc[i][u] = 0.f;
  }

  for (int c0 = 0; c0 < p.nk; c0 += BC) {
    float s[4][2];
    tile_dot(sm, Q, r0, K, c0, s);
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      if (c0 + tx + 16 * jj >= p.nk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[i][jj] = -INFINITY;
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Column c0 (tx = 0, jj = 0) is always valid, so the tile max is finite.
      const float mx = group16_max(fmaxf(s[i][0], s[i][1]));
      const float m_new = fmaxf(m[i], mx);
      const float corr = expf(m[i] - m_new);  // 0 on the first tile (m = -inf)
      const float p0 = expf(s[i][0] - m_new);
      const float p1 = expf(s[i][1] - m_new);
      l[i] = l[i] * corr + group16_sum(p0 + p1);
      m[i] = m_new;
#pragma unroll
      for (int u = 0; u < NU; ++u) acc[i][u] *= corr;
      sm.p[ty + 16 * i][tx] = p0;
      sm.p[ty + 16 * i][tx + 16] = p1;
    }
    load_part_tile(sm, V, c0, j);
    __syncthreads();
    accum_pc(sm, acc, nu);
  }

  const int64_t obase = b * p.o.batch_stride + g * p.o.map_stride + j * p.o.part_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = r0 + ty + 16 * i;
    if (row >= p.nq) continue;
    const float inv = 1.f / l[i];
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int col = tx + 16 * u;
      if (col < width) out[obase + row * p.o.row_stride + col] = static_cast<T>(acc[i][u] * inv);
    }
    if (j == 0 && tx == 0) {
      lse[(static_cast<int64_t>(b) * p.maps + g) * p.nq + row] = m[i] + logf(l[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dq (and d mix_weight). grid = (ceil(nq / BR), q.parts, batch * gmaps); the block loops over
// lmaps maps (gmaps * lmaps == maps; shared_qk: gmaps = 1, else lmaps = 1).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attn_dq_kernel(const AttnProblem p, const float* __restrict__ lse,
                   const float* __restrict__ drow, float* __restrict__ dq,
                   float* __restrict__ dweight) {
  __shared__ Smem sm;
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
  const int gmaps = p.shared_qk ? 1 : p.maps;
  const int lmaps = p.shared_qk ? p.maps : 1;
  const int b = blockIdx.z / gmaps;
  const int gz = blockIdx.z % gmaps;
  const int j = blockIdx.y;
  const int r0 = blockIdx.x * BR;
  const int width = p.q.part_dim;
  const int nu = (width + 15) / 16;

  float acc[4][NU];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int u = 0; u < NU; ++u) acc[i][u] = 0.f;
  }

  for (int lm = 0; lm < lmaps; ++lm) {
    const int g = gz * lmaps + lm;
    const float* wg = weight_row(p, g);
    const View<T> Q = make_view<T>(p.q, b, g, p.nq, wg, p.scale);
    const View<T> K = make_view<T>(p.k, b, g, p.nk, nullptr, 1.f);
    const View<T> V = make_view<T>(p.v, b, g, p.nk, nullptr, 1.f);
    const View<T> dO = make_view<T>(p.o, b, g, p.nq, nullptr, 1.f);
    const int64_t sbase = (static_cast<int64_t>(b) * p.maps + g) * p.nq;
    float lse_r[4];
    float dr[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = r0 + ty + 16 * i;
      lse_r[i] = row < p.nq ? lse[sbase + row] : 0.f;
      dr[i] = row < p.nq ? drow[sbase + row] : 0.f;
    }
    float gacc[4][NU];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int u = 0; u < NU; ++u) gacc[i][u] = 0.f;
    }
    for (int c0 = 0; c0 < p.nk; c0 += BC) {
      float s[4][2];
      float dp[4][2];
      tile_dot(sm, Q, r0, K, c0, s);
      tile_dot(sm, dO, r0, V, c0, dp);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const bool valid = c0 + tx + 16 * jj < p.nk;
          const float ds = valid ? expf(s[i][jj] - lse_r[i]) * (dp[i][jj] - dr[i]) : 0.f;
          sm.p[ty + 16 * i][tx + 16 * jj] = ds;
        }
      }
      load_part_tile(sm, K, c0, j);
      __syncthreads();
      accum_pc(sm, gacc, nu);
    }
    const float wj = wg != nullptr ? wg[j] : 1.f;
    float partial = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = r0 + ty + 16 * i;
#pragma unroll
      for (int u = 0; u < NU; ++u) {
        const float gr = gacc[i][u] * p.scale;
        if (dweight != nullptr && u < nu) partial += gr * Q.load_part(row, j, tx + 16 * u);
        acc[i][u] += wj * gr;
      }
    }
    if (dweight != nullptr) {
      const float total = block_sum(sm, partial);
      if (tid == 0) atomicAdd(dweight + static_cast<int64_t>(g) * p.q.parts + j, total);
    }
  }

  const int g_out = p.shared_qk ? 0 : gz;
  const int64_t base = b * p.q.batch_stride + g_out * p.q.map_stride + j * p.q.part_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = r0 + ty + 16 * i;
    if (row >= p.nq) continue;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int col = tx + 16 * u;
      if (col < width) dq[base + row * p.q.row_stride + col] = acc[i][u];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dk. grid = (ceil(nk / BR), k.parts, batch * gmaps); rows are keys, the inner loop walks the
// queries; the score tile is the transpose S^T (rows keys, columns queries).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attn_dk_kernel(const AttnProblem p, const float* __restrict__ lse,
                   const float* __restrict__ drow, float* __restrict__ dk) {
  __shared__ Smem sm;
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
  const int gmaps = p.shared_qk ? 1 : p.maps;
  const int lmaps = p.shared_qk ? p.maps : 1;
  const int b = blockIdx.z / gmaps;
  const int gz = blockIdx.z % gmaps;
  const int j = blockIdx.y;
  const int r0 = blockIdx.x * BR;
  const int width = p.k.part_dim;
  const int nu = (width + 15) / 16;

  float acc[4][NU];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int u = 0; u < NU; ++u) acc[i][u] = 0.f;
  }

  for (int lm = 0; lm < lmaps; ++lm) {
    const int g = gz * lmaps + lm;
    const float* wg = weight_row(p, g);
    const View<T> K = make_view<T>(p.k, b, g, p.nk, nullptr, 1.f);
    const View<T> Qw = make_view<T>(p.q, b, g, p.nq, wg, p.scale);
    const View<T> Q = make_view<T>(p.q, b, g, p.nq, nullptr, 1.f);
    const View<T> V = make_view<T>(p.v, b, g, p.nk, nullptr, 1.f);
    const View<T> dO = make_view<T>(p.o, b, g, p.nq, nullptr, 1.f);
    const int64_t sbase = (static_cast<int64_t>(b) * p.maps + g) * p.nq;
    float gacc[4][NU];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int u = 0; u < NU; ++u) gacc[i][u] = 0.f;
    }
    for (int c0 = 0; c0 < p.nq; c0 += BC) {
      float s[4][2];
      float dp[4][2];
      tile_dot(sm, K, r0, Qw, c0, s);   // s[i][jj] = S[query c0 + tx + 16 jj, key row i]
      tile_dot(sm, V, r0, dO, c0, dp);  // dp[i][jj] = dP[query, key]
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int qi = c0 + tx + 16 * jj;
        const bool valid = qi < p.nq;
        const float lse_c = valid ? lse[sbase + qi] : 0.f;
        const float dr_c = valid ? drow[sbase + qi] : 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float ds = valid ? expf(s[i][jj] - lse_c) * (dp[i][jj] - dr_c) : 0.f;
          sm.p[ty + 16 * i][tx + 16 * jj] = ds;
        }
      }
      load_part_tile(sm, Q, c0, j);
      __syncthreads();
      accum_pc(sm, gacc, nu);
    }
    const float wj = (wg != nullptr ? wg[j] : 1.f) * p.scale;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int u = 0; u < NU; ++u) acc[i][u] += wj * gacc[i][u];
    }
  }

  const int g_out = p.shared_qk ? 0 : gz;
  const int64_t base = b * p.k.batch_stride + g_out * p.k.map_stride + j * p.k.part_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = r0 + ty + 16 * i;
    if (row >= p.nk) continue;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int col = tx + 16 * u;
      if (col < width) dk[base + row * p.k.row_stride + col] = acc[i][u];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dv = P^T dO. grid = (ceil(nk / BR), v.parts, batch * maps); every value part belongs to one map.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attn_dv_kernel(const AttnProblem p, const float* __restrict__ lse, float* __restrict__ dv) {
  __shared__ Smem sm;
  const int tid = threadIdx.x;
  const int ty = tid >> 4;
  const int tx = tid & 15;
  const int b = blockIdx.z / p.maps;
  const int g = blockIdx.z % p.maps;
  const int j = blockIdx.y;
  const int r0 = blockIdx.x * BR;
  const int width = p.v.part_dim;
  const int nu = (width + 15) / 16;

  const View<T> K = make_view<T>(p.k, b, g, p.nk, nullptr, 1.f);
  const View<T> Qw = make_view<T>(p.q, b, g, p.nq, weight_row(p, g), p.scale);
  const View<T> dO = make_view<T>(p.o, b, g, p.nq, nullptr, 1.f);
  const int64_t sbase = (static_cast<int64_t>(b) * p.maps + g) * p.nq;

  float acc[4][NU];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int u = 0; u < NU; ++u) acc[i][u] = 0.f;
  }
  for (int c0 = 0; c0 < p.nq; c0 += BC) {
    float s[4][2];
    tile_dot(sm, K, r0, Qw, c0, s);
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int qi = c0 + tx + 16 * jj;
      const bool valid = qi < p.nq;
      const float lse_c = valid ? lse[sbase + qi] : 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sm.p[ty + 16 * i][tx + 16 * jj] = valid ? expf(s[i][jj] - lse_c) : 0.f;
      }
    }
    load_part_tile(sm, dO, c0, j);
    __syncthreads();
    accum_pc(sm, acc, nu);
  }

  const int64_t base = b * p.v.batch_stride + g * p.v.map_stride + j * p.v.part_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = r0 + ty + 16 * i;
    if (row >= p.nk) continue;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int col = tx + 16 * u;
      if (col < width) dv[base + row * p.v.row_stride + col] = acc[i][u];
    }
  }
}

void check_problem(const AttnProblem& p) {
  TORCH_CHECK(p.q.part_dim >= 1 && p.q.part_dim <= kMaxPartDim,
              "attention: query/key part dim must be in [1, ", kMaxPartDim, "], got ",
              p.q.part_dim);
  TORCH_CHECK(p.v.part_dim >= 1 && p.v.part_dim <= kMaxPartDim,
              "attention: value part dim must be in [1, ", kMaxPartDim, "], got ",
              p.v.part_dim);
  TORCH_CHECK(p.q.parts == p.k.parts && p.q.part_dim == p.k.part_dim,
              "attention: query and key feature layouts differ");
  TORCH_CHECK(p.o.parts == p.v.parts && p.o.part_dim == p.v.part_dim,
              "attention: output and value feature layouts differ");
  TORCH_CHECK(static_cast<int64_t>(p.batch) * p.maps <= 65535,
              "attention: batch * maps must be <= 65535, got ", p.batch, " * ", p.maps);
  TORCH_CHECK(p.q.parts <= 65535 && p.v.parts <= 65535, "attention: too many parts");
}

template <typename F>
void dispatch_dtype(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      f(float{});
      break;
    case c10::ScalarType::BFloat16:
      f(c10::BFloat16{});
      break;
    case c10::ScalarType::Half:
      f(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, "attention: dtype must be float32, bfloat16 or float16, got ", dtype);
  }
}

// Message of a tensor-core request the tc kernels cannot take (mtlkit/ops/_attention.py matches
// "core='tc' declined" to fall back to the CUDA-core kernels with a warning).
constexpr const char* kTcDeclined =
    "attention: core='tc' declined this problem (the tensor-core kernels need bfloat16 or "
    "float16, head dims that are multiples of 16, 16-byte aligned operands, compute capability "
    ">= 8.0 and enough shared memory); run it with core='simt'";

}  // namespace

bool parse_attention_core(std::string_view core, const char* op) {
  TORCH_CHECK(core == "simt" || core == "tc", op,
              ": core must be 'simt' (CUDA cores) or 'tc' (tensor cores), got '",
              std::string(core), "'");
  return core == "tc";
}

void attn_forward(const AttnProblem& p, void* out, float* lse) {
  check_problem(p);
  if (p.batch == 0 || p.maps == 0 || p.nq == 0) return;
  TORCH_CHECK(p.nk >= 1, "attention: at least one key is required");
  if (p.tensor_cores) {
    TORCH_CHECK(attn_tc_forward(p, out, lse), kTcDeclined);
    return;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(ceil_div(p.nq, BR), p.v.parts, p.batch * p.maps);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    attn_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(p, static_cast<T*>(out), lse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void attn_backward(const AttnProblem& p, const float* lse, const float* drow, float* dq,
                   float* dk, float* dv, float* dweight) {
  check_problem(p);
  if (p.batch == 0 || p.maps == 0 || p.nq == 0 || p.nk == 0) return;
  if (p.tensor_cores) {
    TORCH_CHECK(attn_tc_backward(p, lse, drow, dq, dk, dv, dweight), kTcDeclined);
    return;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int gmaps = p.shared_qk ? 1 : p.maps;
  const dim3 grid_q(ceil_div(p.nq, BR), p.q.parts, p.batch * gmaps);
  const dim3 grid_k(ceil_div(p.nk, BR), p.k.parts, p.batch * gmaps);
  const dim3 grid_v(ceil_div(p.nk, BR), p.v.parts, p.batch * p.maps);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    attn_dq_kernel<T><<<grid_q, kThreads, 0, stream>>>(p, lse, drow, dq, dweight);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    attn_dk_kernel<T><<<grid_k, kThreads, 0, stream>>>(p, lse, drow, dk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    attn_dv_kernel<T><<<grid_v, kThreads, 0, stream>>>(p, lse, dv);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace mtlkit
