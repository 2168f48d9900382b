// Tensor-core flash attention for the AttnProblem of attention_core.h (BFCI eq. 3-6), 16-bit
// dtypes. Selected by MTLKIT_ATTN_CORE=tc (see attention_core.cu); the CUDA-core kernels stay the
// default until these have been checked on a GPU.
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
// Requirements (checked by attn_tc_*; otherwise they return false and the caller falls back):
// bfloat16 or float16, part dims multiples of 16, 16-byte aligned pointers, every stride a
// multiple of 8 elements, compute capability >= 8.0 and the shared memory below available.
#include "attention_core.h"
#include "wmma_tile.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

// ------------------------------------------------------------------ PTX wrappers (sm_80+)
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; valid == false fills zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c (16 x 8, float32) += a (16 x 16, row) * b (16 x 8, col).
template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> one register of two 16-bit values (lo in the low half).
template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (BF16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <bool BF16>
__device__ __forceinline__ float to_f(uint16_t u) {
  if constexpr (BF16) {
    return __uint_as_float(static_cast<uint32_t>(u) << 16);
  } else {
    return __half2float(__ushort_as_half(u));
  }
}

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
  extern __shared__ __align__(16) unsigned char tc_smem[];
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
  extern __shared__ __align__(16) unsigned char tc_smem[];
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

// ------------------------------------------------------------------ host side
bool layout_ok(const PartLayout& L) {
  return L.part_dim % 16 == 0 && reinterpret_cast<std::uintptr_t>(L.ptr) % 16 == 0 &&
         L.batch_stride % 8 == 0 && L.map_stride % 8 == 0 && L.part_stride % 8 == 0 &&
         L.row_stride % 8 == 0;
}

// Parts per output group (whole parts, at most kGroupCols columns) and the number of groups.
int parts_per_group(const PartLayout& L) { return std::max(1, kGroupCols / L.part_dim); }
int groups(const PartLayout& L) {
  const int ppg = parts_per_group(L);
  return (L.parts + ppg - 1) / ppg;
}
int group_width(const PartLayout& L) {
  return std::min(parts_per_group(L), L.parts) * L.part_dim;
}

size_t tile_bytes(int width) { return sizeof(uint16_t) * kRows * (width + kPad); }

bool common_ok(const AttnProblem& p) {
  if (p.dtype != c10::ScalarType::BFloat16 && p.dtype != c10::ScalarType::Half) return false;
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return false;
  return layout_ok(p.q) && layout_ok(p.k) && layout_ok(p.v) && layout_ok(p.o) &&
         p.v.part_dim == p.o.part_dim && p.v.parts == p.o.parts && p.o.map_stride % 8 == 0;
}

bool smem_fits(size_t bytes) {
  const size_t static_bytes = 2 * sizeof(float) * kCols;
  return bytes + static_bytes <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

}  // namespace

bool attn_tc_forward(const AttnProblem& p, void* out, float* lse) {
  if (!common_ok(p) || reinterpret_cast<std::uintptr_t>(out) % 16 != 0) return false;
  const int dq = p.q.parts * p.q.part_dim;
  const size_t bytes = 2 * tile_bytes(dq) + tile_bytes(group_width(p.v));
  if (!smem_fits(bytes)) return false;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(ceil_div(p.nq, kRows), groups(p.v), p.batch * p.maps);
  const int ppg = parts_per_group(p.v);
  auto launch = [&](auto kernel) {
    set_smem(kernel, bytes);
    kernel<<<grid, kThreads, bytes, stream>>>(p, static_cast<uint16_t*>(out), lse, ppg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (p.dtype == c10::ScalarType::BFloat16) {
    launch(attn_tc_fwd_kernel<true>);
  } else {
    launch(attn_tc_fwd_kernel<false>);
  }
  return true;
}

bool attn_tc_backward(const AttnProblem& p, const float* lse, const float* drow, float* dq,
                      float* dk, float* dv, float* dweight) {
  if (!common_ok(p)) return false;
  for (const float* t : {dq, dk, dv}) {
    if (reinterpret_cast<std::uintptr_t>(t) % 8 != 0) return false;
  }
  const int dqw = p.q.parts * p.q.part_dim;
  const int dvw = p.v.parts * p.v.part_dim;
  const size_t bytes_qk = 2 * tile_bytes(dqw) + 2 * tile_bytes(dvw);
  const size_t bytes_v = 2 * tile_bytes(dqw) + tile_bytes(group_width(p.v));
  if (!smem_fits(std::max(bytes_qk, bytes_v))) return false;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int gmaps = p.shared_qk ? 1 : p.maps;
  const dim3 grid_q(ceil_div(p.nq, kRows), groups(p.q), p.batch * gmaps);
  const dim3 grid_k(ceil_div(p.nk, kRows), groups(p.k), p.batch * gmaps);
  const dim3 grid_v(ceil_div(p.nk, kRows), groups(p.v), p.batch * p.maps);
  auto launch = [&](auto kernel, dim3 grid, size_t bytes, float* dst, float* dw, int ppg) {
    set_smem(kernel, bytes);
    kernel<<<grid, kThreads, bytes, stream>>>(p, lse, drow, dst, dw, ppg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto run = [&](auto bf16_tag) {
    constexpr bool BF16 = decltype(bf16_tag)::value;
    launch(attn_tc_bwd_kernel<BF16, kDq>, grid_q, bytes_qk, dq, dweight, parts_per_group(p.q));
    launch(attn_tc_bwd_kernel<BF16, kDk>, grid_k, bytes_qk, dk, nullptr, parts_per_group(p.k));
    launch(attn_tc_bwd_kernel<BF16, kDv>, grid_v, bytes_v, dv, nullptr, parts_per_group(p.v));
  };
  if (p.dtype == c10::ScalarType::BFloat16) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
  return true;
}

}  // namespace mtlkit
