// Tensor-core flash attention kernels for the AttnProblem of attention_core.h (BFCI eq. 3-6),
// 16-bit dtypes, and their launch geometry. Launched by attention_tc.cu (core="tc").
// The including file first provides the PTX wrappers of tc_ptx.cuh (on the GPU) or of
// tests/ops/emu/tc_ptx_emu.h (the CPU emulation that runs these kernels in the tests).
//
// Layout and arithmetic:
// - A CTA of 4 warps owns kRows = 64 rows (queries in the forward and dq kernels, keys in the dk
//   and dv kernels) of one (batch, map); each warp owns 16 of them. The other side is walked in
//   tiles of kCols = 64 rows, staged in shared memory with cp.async (zero-filled past the end).
// - Products run on mma.sync.m16n8k16 (bf16 or f16 inputs, float32 accumulators). Operand
//   fragments come from shared memory through ldmatrix (.trans for the [k][n] operands); the
//   score tile of a warp (16 x 64) lives in registers in the accumulator layout:
//   s[nt][e] is row (lane / 4) + 8 (e / 2), column 8 nt + 2 (lane % 4) + (e % 2).
// - Scores S = scale * sum_j w_j R_j C_j^T are accumulated part by part (j = the feature chunks
//   of attention_core.h) and combined with the float32 mix weights, so TPP's folded task mixing
//   (BFCI eq. 6) costs one multiply-add per score and part.
// - Forward: online softmax in registers (running max m, sum l), O += P V with P re-packed from
//   the accumulator registers as the A operand (no shared-memory round trip); lse = m + log l.
// - Backward (FlashAttention-2 recomputation): three kernels of one template,
//     dq: rows = queries, dS = P * (dO V^T - Drow), G = dS K_group;
//     dk: rows = keys,  dS^T = P^T * (V dO^T - Drow^T), G = dS^T Q_group;
//     dv: rows = keys,  G = P^T dO_group;
//   then dq_j = scale * w_gj * G_j, dk_j likewise, dv = G, d w_gj = scale * sum(q_j * G_j).
// - An output group is at most kGroupCols = 128 columns (whole parts); wider outputs (TPP with
//   M = 1 and T * D > 128) use several CTAs along grid.y, each recomputing the scores.
// Requirements: see attention_tc.cu (tc_problem_ok below checks the dtype and the layouts).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "attention_core.h"
#include "warp_sum.cuh"

namespace mtlkit {
namespace {

constexpr int kRows = 64;        // rows owned by a CTA (4 warps x 16)
constexpr int kCols = 64;        // rows of the other side per inner step
constexpr int kThreads = 128;
constexpr int kPad = 8;          // shared row padding in elements (ldmatrix without conflicts)
constexpr int kGroupCols = 128;  // output columns per CTA
constexpr int kNT = kCols / 8;   // n8 tiles of a score tile
constexpr int kGT = kGroupCols / 8;  // n8 tiles of an output group

enum Mode : int { kDq = 0, kDk = 1, kDv = 2 };

// Static shared memory of the backward kernels (sL, sD), beside the dynamic tiles.
constexpr size_t kBwdStaticSmem = 2 * sizeof(float) * kCols;

// Max / sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ------------------------------------------------------------------ operands
// One operand of a (batch, map): rows of `parts` chunks of `part_dim` 16-bit elements.
struct Side {
  const uint16_t* base;
  int64_t part_stride;
  int64_t row_stride;
  int part_dim;
  int rows;
};

__device__ __forceinline__ Side side_of(const PartLayout& L, int b, int g, int rows) {
  Side s;
  s.base = static_cast<const uint16_t*>(L.ptr) + b * L.batch_stride + g * L.map_stride;
  s.part_stride = L.part_stride;
  s.row_stride = L.row_stride;
  s.part_dim = L.part_dim;
  s.rows = rows;
  return s;
}

// sm[r][c] (row stride ld) = feature columns [c0, c0 + width) of rows r0 + r, r < 64; rows past
// the end are zero. c0 and width are multiples of 8 (whole 16-byte chunks of one part).
__device__ __forceinline__ void load_tile(uint16_t* sm, int ld, const Side& s, int r0, int c0,
                                          int width) {
  const int chunks = width / 8;
  for (int e = static_cast<int>(threadIdx.x); e < kRows * chunks; e += kThreads) {
    const int r = e / chunks;
    const int c = c0 + (e - r * chunks) * 8;
    const int j = c / s.part_dim;
    const int d = c - j * s.part_dim;
    const int row = r0 + r;
    const bool ok = row < s.rows;
    const uint16_t* src =
        ok ? s.base + j * s.part_stride + static_cast<int64_t>(row) * s.row_stride + d : s.base;
    cp_async16(sm + r * ld + (c - c0), src, ok);
  }
}

// a = 0 for an accumulator array of N n8 tiles (4 floats per thread each).
template <int N>
__device__ __forceinline__ void zero(float (&a)[N][4]) {
#pragma unroll
  for (int nt = 0; nt < N; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) a[nt][e] = 0.f;
  }
}

// acc[nt] += A_w B^T over feature columns [k0, k1): A = the warp's 16 rows of sa, B = the 64
// rows of sb (both [row][k], row strides lda / ldb).
template <bool BF16>
__device__ __forceinline__ void mma_abt(float (&acc)[kNT][4], const uint16_t* sa, int lda,
                                        const uint16_t* sb, int ldb, int k0, int k1) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int mi = lane >> 3, r = lane & 7;
  // ldmatrix.x4 lane addresses. A: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) -> a0..a3.
  // B: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) -> two n8 tiles.
  const uint16_t* pa = sa + (warp * 16 + r + (mi & 1) * 8) * lda + (mi >> 1) * 8;
  const uint16_t* pb = sb + (r + (mi >> 1) * 8) * ldb + (mi & 1) * 8;
  for (int k = k0; k < k1; k += 16) {
    uint32_t a[4];
    ldsm_x4(a, pa + k);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t bb[4];
      ldsm_x4(bb, pb + np * 16 * ldb + k);
      mma16816<BF16>(acc[2 * np], a, bb[0], bb[1]);
      mma16816<BF16>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

// s = scale * sum_j w_j A_j B_j^T over the `parts` chunks of part_dim columns (w may be null).
template <bool BF16>
__device__ __forceinline__ void scores(float (&s)[kNT][4], const uint16_t* sa, int lda,
                                       const uint16_t* sb, int ldb, int parts, int part_dim,
                                       const float* w, float scale) {
  zero(s);
  for (int j = 0; j < parts; ++j) {
    float t[kNT][4];
    zero(t);
    mma_abt<BF16>(t, sa, lda, sb, ldb, j * part_dim, (j + 1) * part_dim);
    const float f = scale * (w != nullptr ? w[j] : 1.f);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = fmaf(f, t[nt][e], s[nt][e]);
    }
  }
}

// acc[nt] (16 x 8 ntiles) += X Z: X = the warp's 16 x 64 tile in accumulator registers (rounded
// to 16 bits as the A operand), Z = 64 rows of sz ([k][n], row stride ldz), ntiles even <= kGT.
template <bool BF16>
__device__ __forceinline__ void mma_xz(float (&acc)[kGT][4], const float (&x)[kNT][4],
                                       const uint16_t* sz, int ldz, int ntiles) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int mi = lane >> 3, r = lane & 7;
  // ldmatrix.x4.trans lane addresses: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
  // (k 8-15, n 8-15) -> b0b1, b2b3 of two n8 tiles.
  const uint16_t* pz = sz + (r + (mi & 1) * 8) * ldz + (mi >> 1) * 8;
#pragma unroll
  for (int kc = 0; kc < kCols / 16; ++kc) {
    uint32_t a[4];
    a[0] = pack2<BF16>(x[2 * kc][0], x[2 * kc][1]);
    a[1] = pack2<BF16>(x[2 * kc][2], x[2 * kc][3]);
    a[2] = pack2<BF16>(x[2 * kc + 1][0], x[2 * kc + 1][1]);
    a[3] = pack2<BF16>(x[2 * kc + 1][2], x[2 * kc + 1][3]);
#pragma unroll
    for (int np = 0; np < kGT / 2; ++np) {
      if (2 * np < ntiles) {
        uint32_t bb[4];
        ldsm_x4_trans(bb, pz + kc * 16 * ldz + np * 16);
        mma16816<BF16>(acc[2 * np], a, bb[0], bb[1]);
        mma16816<BF16>(acc[2 * np + 1], a, bb[2], bb[3]);
      }
    }
  }
}


// ------------------------------------------------------------------ forward
// grid = (ceil(nq / 64), value groups, batch * maps); group y holds value parts
// [y * ppg, y * ppg + ppg). Dynamic shared memory: Q (64 x Dq), K tile (64 x Dq), V tile
// (64 x group width), row stride width + kPad each.
template <bool BF16>
__global__ void __launch_bounds__(kThreads)
    attn_tc_fwd_kernel(const AttnProblem p, uint16_t* __restrict__ out, float* __restrict__ lse,
                       int ppg) {
  unsigned char* tc_smem = dyn_smem();
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int gq = lane >> 2, t4 = lane & 3;
  const int b = static_cast<int>(blockIdx.z) / p.maps;
  const int g = static_cast<int>(blockIdx.z) % p.maps;
  const int r0 = static_cast<int>(blockIdx.x) * kRows;
  const int j0 = static_cast<int>(blockIdx.y) * ppg;
  const int wv = min(ppg, p.v.parts - j0) * p.v.part_dim;
  const int dq = p.q.parts * p.q.part_dim;
  const int ldq = dq + kPad, ldv = wv + kPad;
  uint16_t* sQ = reinterpret_cast<uint16_t*>(tc_smem);
  uint16_t* sK = sQ + kRows * ldq;
  uint16_t* sV = sK + kCols * ldq;

  const Side Q = side_of(p.q, b, g, p.nq);
  const Side K = side_of(p.k, b, g, p.nk);
  const Side V = side_of(p.v, b, g, p.nk);
  const float* w = weight_row(p, g);
  load_tile(sQ, ldq, Q, r0, 0, dq);
  cp_async_commit();

  float o[kGT][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};
  for (int c0 = 0; c0 < p.nk; c0 += kCols) {
    __syncthreads();  // every warp is done with the previous K and V tiles
    load_tile(sK, ldq, K, c0, 0, dq);
    cp_async_commit();
    load_tile(sV, ldv, V, c0, j0 * p.v.part_dim, wv);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K have landed, V may still be in flight
    __syncthreads();
    float s[kNT][4];
    scores<BF16>(s, sQ, ldq, sK, ldq, p.q.parts, p.q.part_dim, w, p.scale);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (c0 + nt * 8 + 2 * t4 + (e & 1) >= p.nk) s[nt][e] = -INFINITY;
      }
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hh], s[nt][2 * hh + 1]));
      // column c0 is valid, so the quad maximum is finite
      const float m_new = fmaxf(m[hh], quad_max(mx));
      const float corr = __expf(m[hh] - m_new);  // 0 on the first tile (m = -inf)
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 2 * hh; e < 2 * hh + 2; ++e) {
          s[nt][e] = __expf(s[nt][e] - m_new);
          sum += s[nt][e];
        }
      }
      l[hh] = l[hh] * corr + quad_sum(sum);
      m[hh] = m_new;
#pragma unroll
      for (int nt = 0; nt < kGT; ++nt) {
        o[nt][2 * hh] *= corr;
        o[nt][2 * hh + 1] *= corr;
      }
    }
    cp_async_wait<0>();
    __syncthreads();
    mma_xz<BF16>(o, s, sV, ldv, wv / 8);
  }

  const int64_t obase = b * p.o.batch_stride + g * p.o.map_stride;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = r0 + warp * 16 + gq + 8 * hh;
    if (row >= p.nq) continue;
    const float inv = 1.f / l[hh];
#pragma unroll
    for (int nt = 0; nt < kGT; ++nt) {
      if (nt * 8 < wv) {
        const int col = nt * 8 + 2 * t4;
        const int jj = j0 + col / p.v.part_dim;
        const int d = col % p.v.part_dim;
        uint16_t* dst = out + obase + jj * p.o.part_stride + row * p.o.row_stride + d;
        *reinterpret_cast<uint32_t*>(dst) =
            pack2<BF16>(o[nt][2 * hh] * inv, o[nt][2 * hh + 1] * inv);
      }
    }
    if (blockIdx.y == 0 && t4 == 0) {
      lse[(static_cast<int64_t>(b) * p.maps + g) * p.nq + row] = m[hh] + logf(l[hh]);
    }
  }
}

// ------------------------------------------------------------------ backward
// One template for the three gradient kernels (see the file comment). grid = (ceil(rows / 64),
// output groups, batch * gmaps); shared_qk (TPP with M = T) makes dq and dk loop over the maps
// and sum into their float32 output (first map stores, later maps add: each CTA owns its rows).
// Dynamic shared memory: R (64 x Dq), C tile (64 x Dq), then for dq/dk R2 (64 x Dv) and C2 tile
// (64 x Dv), for dv a dO tile of the group width.
template <bool BF16, int MODE>
__global__ void __launch_bounds__(kThreads)
    attn_tc_bwd_kernel(const AttnProblem p, const float* __restrict__ lse,
                       const float* __restrict__ drow, float* __restrict__ dst,
                       float* __restrict__ dweight, int ppg) {
  unsigned char* tc_smem = dyn_smem();
  __shared__ float sL[kCols];  // column-side lse (dk, dv: +inf past the last query)
  __shared__ float sD[kCols];  // column-side Drow (dk)
  constexpr bool kRowsQ = MODE == kDq;   // rows are queries (else keys)
  constexpr bool kNeedDp = MODE != kDv;  // score gradients (else probabilities)
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, t4 = lane & 3;

  const PartLayout outL = MODE == kDq ? p.q : (MODE == kDk ? p.k : p.v);
  const bool shared = p.shared_qk && MODE != kDv;
  const int gmaps = shared ? 1 : p.maps;
  const int lmaps = shared ? p.maps : 1;
  const int b = static_cast<int>(blockIdx.z) / gmaps;
  const int gz = static_cast<int>(blockIdx.z) % gmaps;
  const int r0 = static_cast<int>(blockIdx.x) * kRows;
  const int j0 = static_cast<int>(blockIdx.y) * ppg;
  const int wz = min(ppg, outL.parts - j0) * outL.part_dim;
  const int nrows = kRowsQ ? p.nq : p.nk;
  const int ncols = kRowsQ ? p.nk : p.nq;
  const int dq = p.q.parts * p.q.part_dim, ldq = dq + kPad;
  const int dv = p.v.parts * p.v.part_dim, ldv = dv + kPad;
  uint16_t* sR = reinterpret_cast<uint16_t*>(tc_smem);
  uint16_t* sC = sR + kRows * ldq;
  uint16_t* sR2 = sC + kCols * ldq;  // dq/dk: dO or V rows; dv: the dO group tile
  uint16_t* sC2 = sR2 + kRows * ldv;
  // The gradient's right-hand operand Z: the key (dq) or query (dk) group inside the C tile,
  // or the dO group tile (dv).
  const uint16_t* sZ = MODE == kDv ? sR2 : sC + j0 * outL.part_dim;
  const int ldz = MODE == kDv ? wz + kPad : ldq;

  for (int lm = 0; lm < lmaps; ++lm) {
    const int g = gz * lmaps + lm;
    const float* w = weight_row(p, g);
    const Side Q = side_of(p.q, b, g, p.nq);
    const Side K = side_of(p.k, b, g, p.nk);
    const Side V = side_of(p.v, b, g, p.nk);
    const Side dO = side_of(p.o, b, g, p.nq);
    const Side& R = kRowsQ ? Q : K;
    const Side& C = kRowsQ ? K : Q;
    const int64_t sbase = (static_cast<int64_t>(b) * p.maps + g) * p.nq;

    __syncthreads();  // the previous map's reads of the row operands are done
    load_tile(sR, ldq, R, r0, 0, dq);
    if constexpr (kNeedDp) load_tile(sR2, ldv, kRowsQ ? dO : V, r0, 0, dv);
    cp_async_commit();
    float rl[2] = {0.f, 0.f};  // dq: lse and Drow of the thread's two rows
    float rd[2] = {0.f, 0.f};
    if constexpr (kRowsQ) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = r0 + warp * 16 + gq + 8 * hh;
        if (row < p.nq) {
          rl[hh] = lse[sbase + row];
          rd[hh] = drow[sbase + row];
        }
      }
    }

    float G[kGT][4];
    zero(G);
    for (int c0 = 0; c0 < ncols; c0 += kCols) {
      __syncthreads();  // every warp is done with the previous column tiles
      load_tile(sC, ldq, C, c0, 0, dq);
      if constexpr (kNeedDp) {
        load_tile(sC2, ldv, kRowsQ ? V : dO, c0, 0, dv);
      } else {
        load_tile(sR2, ldz, dO, c0, j0 * outL.part_dim, wz);
      }
      cp_async_commit();
      if constexpr (!kRowsQ) {
        if (tid < kCols) {
          const int col = c0 + tid;
          const bool ok = col < p.nq;
          sL[tid] = ok ? lse[sbase + col] : INFINITY;
          sD[tid] = (ok && kNeedDp) ? drow[sbase + col] : 0.f;
        }
      }
      cp_async_wait<0>();
      __syncthreads();

      float s[kNT][4];
      scores<BF16>(s, sR, ldq, sC, ldq, p.q.parts, p.q.part_dim, w, p.scale);
      float dp[kNT][4];
      if constexpr (kNeedDp) {
        zero(dp);
        mma_abt<BF16>(dp, sR2, ldv, sC2, ldv, 0, dv);
      }
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int cl = nt * 8 + 2 * t4 + (e & 1);
          float x;
          if constexpr (kRowsQ) {
            const float pr = c0 + cl < p.nk ? __expf(s[nt][e] - rl[e >> 1]) : 0.f;
            x = pr * (dp[nt][e] - rd[e >> 1]);
          } else {
            const float pr = __expf(s[nt][e] - sL[cl]);
            if constexpr (kNeedDp) {
              x = pr * (dp[nt][e] - sD[cl]);
            } else {
              x = pr;
            }
          }
          s[nt][e] = x;
        }
      }
      mma_xz<BF16>(G, s, sZ, ldz, wz / 8);
    }

    // Epilogue of this map: dq_j / dk_j = scale * w_gj * G_j, dv = G; d w_gj (dq only).
    const int64_t base = b * outL.batch_stride + g * outL.map_stride;
    const bool want_dw = kRowsQ && w != nullptr && dweight != nullptr;
    float dwp[kGT];  // per n8 tile partial of sum(q * G) (dq with weights)
#pragma unroll
    for (int nt = 0; nt < kGT; ++nt) dwp[nt] = 0.f;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int lrow = warp * 16 + gq + 8 * hh;
      const int row = r0 + lrow;
      if (row >= nrows) continue;
#pragma unroll
      for (int nt = 0; nt < kGT; ++nt) {
        if (nt * 8 < wz) {
          const int col = nt * 8 + 2 * t4;
          const int jj = j0 + col / outL.part_dim;
          const int d = col % outL.part_dim;
          const float f = MODE == kDv ? 1.f : p.scale * (w != nullptr ? w[jj] : 1.f);
          float2* out2 = reinterpret_cast<float2*>(dst + base + jj * outL.part_stride +
                                                   static_cast<int64_t>(row) * outL.row_stride + d);
          float2 v = make_float2(f * G[nt][2 * hh], f * G[nt][2 * hh + 1]);
          if (lm > 0) {
            const float2 prev = *out2;
            v.x += prev.x;
            v.y += prev.y;
          }
          *out2 = v;
          if (want_dw) {
            const uint16_t* qrow = sR + lrow * ldq + j0 * outL.part_dim + col;
            dwp[nt] += to_f<BF16>(qrow[0]) * G[nt][2 * hh] +
                       to_f<BF16>(qrow[1]) * G[nt][2 * hh + 1];
          }
        }
      }
    }
    if (want_dw) {
      // parts of this group: n8 tile nt belongs to part j0 + 8 nt / part_dim
      const int gparts = wz / outL.part_dim;
      for (int jj = 0; jj < gparts; ++jj) {
        float part = 0.f;
#pragma unroll
        for (int nt = 0; nt < kGT; ++nt) {
          if ((nt * 8) / outL.part_dim == jj && nt * 8 < wz) part += dwp[nt];
        }
        part = tile::warp_sum(part);
        if (lane == 0) {
          atomicAdd(dweight + static_cast<int64_t>(g) * p.q.parts + j0 + jj, p.scale * part);
        }
      }
    }
  }
}
// ------------------------------------------------------------------ launch geometry (host)
inline bool layout_ok(const PartLayout& L) {
  return L.part_dim % 16 == 0 && reinterpret_cast<std::uintptr_t>(L.ptr) % 16 == 0 &&
         L.batch_stride % 8 == 0 && L.map_stride % 8 == 0 && L.part_stride % 8 == 0 &&
         L.row_stride % 8 == 0;
}

// Parts per output group (whole parts, at most kGroupCols columns) and the number of groups.
inline int parts_per_group(const PartLayout& L) { return std::max(1, kGroupCols / L.part_dim); }
inline int groups(const PartLayout& L) {
  const int ppg = parts_per_group(L);
  return (L.parts + ppg - 1) / ppg;
}
inline int group_width(const PartLayout& L) {
  return std::min(parts_per_group(L), L.parts) * L.part_dim;
}

inline size_t tile_bytes(int width) { return sizeof(uint16_t) * kRows * (width + kPad); }

// dtype and layouts qualify (the device and its shared memory are checked by the launcher).
inline bool tc_problem_ok(const AttnProblem& p) {
  if (p.dtype != c10::ScalarType::BFloat16 && p.dtype != c10::ScalarType::Half) return false;
  return layout_ok(p.q) && layout_ok(p.k) && layout_ok(p.v) && layout_ok(p.o) &&
         p.v.part_dim == p.o.part_dim && p.v.parts == p.o.parts && p.o.map_stride % 8 == 0;
}

// Grid, dynamic shared memory and parts per output group of one kernel launch.
struct TcLaunch {
  dim3 grid;
  size_t smem = 0;
  int ppg = 1;
};

inline TcLaunch fwd_launch(const AttnProblem& p) {
  const int dq = p.q.parts * p.q.part_dim;
  TcLaunch l;
  l.grid = dim3(ceil_div(p.nq, kRows), groups(p.v), p.batch * p.maps);
  l.smem = 2 * tile_bytes(dq) + tile_bytes(group_width(p.v));
  l.ppg = parts_per_group(p.v);
  return l;
}

inline TcLaunch bwd_launch(const AttnProblem& p, Mode mode) {
  const int dqw = p.q.parts * p.q.part_dim;
  const int dvw = p.v.parts * p.v.part_dim;
  const int gmaps = p.shared_qk ? 1 : p.maps;
  TcLaunch l;
  if (mode == kDv) {
    l.grid = dim3(ceil_div(p.nk, kRows), groups(p.v), p.batch * p.maps);
    l.smem = 2 * tile_bytes(dqw) + tile_bytes(group_width(p.v));
    l.ppg = parts_per_group(p.v);
  } else {
    const PartLayout& out = mode == kDq ? p.q : p.k;
    l.grid = dim3(ceil_div(mode == kDq ? p.nq : p.nk, kRows), groups(out), p.batch * gmaps);
    l.smem = 2 * tile_bytes(dqw) + 2 * tile_bytes(dvw);
    l.ppg = parts_per_group(out);
  }
  return l;
}

}  // namespace
}  // namespace mtlkit
