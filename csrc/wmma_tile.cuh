// Block-level tensor-core tile product shared by the ifb and hdc_conv kernels.
//
// One CTA computes a BM x BN float32 accumulator tile C += A (BM x BK) * B (BK x BN) from
// operand tiles that the calling kernel has staged in shared memory, then stores the tile to a
// float32 shared-memory tile for a kernel-specific epilogue. Built on the WMMA API (sm_80+):
//   - bfloat16 / float16 operands: m16n16k16 fragments, float32 accumulation;
//   - float32 operands: m16n16k8 TF32 fragments with the "3xTF32" split (a = hi + lo, both
//     TF32; a*b ~= hi_a*hi_b + hi_a*lo_b + lo_a*hi_b), which keeps float32 accuracy (~1e-6
//     relative) while running on tensor cores.
//
// Shared-memory layouts (chosen per operand so that the global loads that fill them are
// coalesced): A_ROW: As[m][k] (ld LDA = BK + PAD), else As[k][m] (ld LDA = BM + PAD);
// B_ROW: Bs[k][n] (ld LDB = BN + PAD), else Bs[n][k] (ld LDB = BK + PAD). PAD keeps every leading
// dimension a multiple of 16 bytes (WMMA requirement) and skews banks. Every fragment pointer is
// 32-byte aligned because BM, BN, BK and the warp tiles are multiples of 16 and the buffer is
// 128-byte aligned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "convert.cuh"
#include "warp_sum.cuh"

namespace mtlkit {
namespace tile {

// dst[0, V) <- src[0, V) with V = 16 / sizeof(T) elements, element e taken only when
// e < nvalid (else 0): one 16-byte load/store when `vec` (src and dst 16-byte aligned) and the
// whole vector is valid, else element by element (src is never read past nvalid).
template <typename T>
__device__ __forceinline__ void copy_vec(T* dst, const T* src, int nvalid, bool vec) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  if (vec && nvalid >= V) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = e < nvalid ? src[e] : from_float<T>(0.f);
  }
}

// ----------------------------------------------------------------------------- WMMA shapes
template <typename T>
struct MmaKind {
  static constexpr int K = 16;  // m16n16k16 for 16-bit operands
  using In = T;
};
template <>
struct MmaKind<float> {
  static constexpr int K = 8;  // m16n16k8 TF32
  using In = nvcuda::wmma::precision::tf32;
};

template <typename T, bool A_ROW, bool B_ROW, int BM_, int BN_, int BK_, int WARPS_M,
          int WARPS_N>
struct TileMma {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WTM = BM / WARPS_M;  // warp tile rows
  static constexpr int WTN = BN / WARPS_N;  // warp tile cols
  static constexpr int FM = WTM / 16;
  static constexpr int FN = WTN / 16;
  static constexpr int KS = MmaKind<T>::K;
  static constexpr int PAD = sizeof(T) == 2 ? 8 : 4;  // 16 bytes
  static constexpr int LDA = A_ROW ? BK + PAD : BM + PAD;
  static constexpr int LDB = B_ROW ? BN + PAD : BK + PAD;
  static constexpr int A_ELEMS = (A_ROW ? BM : BK) * LDA;
  static constexpr int B_ELEMS = (B_ROW ? BK : BN) * LDB;
  static constexpr int LDC = BN + 4;
  static constexpr int AB_BYTES = (A_ELEMS + B_ELEMS) * static_cast<int>(sizeof(T));
  static constexpr int C_BYTES = BM * LDC * static_cast<int>(sizeof(float));
  // The operand tiles and the float accumulator tile share one buffer (never live together).
  static constexpr int SMEM_BYTES = AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES;

  static_assert(BM % (16 * WARPS_M) == 0 && BN % (16 * WARPS_N) == 0, "warp tiles of 16");
  static_assert(BK % 16 == 0, "BK must be a multiple of 16");
  static_assert((A_ELEMS * sizeof(T)) % 32 == 0, "B tile must start 32-byte aligned");

  using In = typename MmaKind<T>::In;
  using LayoutA = std::conditional_t<A_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>;
  using LayoutB = std::conditional_t<B_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, KS, In, LayoutA>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, KS, In, LayoutB>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, KS, float>;

  // Element offsets of A(m, k) and B(k, n) inside the staged tiles.
  __device__ static __forceinline__ int a_off(int m, int k) {
    return A_ROW ? m * LDA + k : k * LDA + m;
  }
  __device__ static __forceinline__ int b_off(int k, int n) {
    return B_ROW ? k * LDB + n : n * LDB + k;
  }
  // The staged tiles inside the shared buffer.
  __device__ static __forceinline__ T* a_tile(unsigned char* smem) {
    return reinterpret_cast<T*>(smem);
  }
  __device__ static __forceinline__ T* b_tile(unsigned char* smem) {
    return reinterpret_cast<T*>(smem) + A_ELEMS;
  }
  __device__ static __forceinline__ float* c_tile(unsigned char* smem) {
    return reinterpret_cast<float*>(smem);
  }

  FragC acc[FM][FN];
  int wm, wn;

  __device__ __forceinline__ void init() {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    wm = warp / WARPS_N;
    wn = warp % WARPS_N;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  // acc += As * Bs over the BK depth of the staged tiles (caller synchronises around it).
  __device__ __forceinline__ void step(const T* As, const T* Bs) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += KS) {
      FragA a[FM];
      FragB b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i)
        nvcuda::wmma::load_matrix_sync(a[i], As + a_off(wm * WTM + i * 16, kk), LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::load_matrix_sync(b[j], Bs + b_off(kk, wn * WTN + j * 16), LDB);
      if constexpr (std::is_same_v<T, float>) {
        FragA alo[FM];
        FragB blo[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int t = 0; t < a[i].num_elements; ++t) {
            const float v = a[i].x[t];
            const float hi = nvcuda::wmma::__float_to_tf32(v);
            a[i].x[t] = hi;
            alo[i].x[t] = nvcuda::wmma::__float_to_tf32(v - hi);
          }
#pragma unroll
        for (int j = 0; j < FN; ++j)
#pragma unroll
          for (int t = 0; t < b[j].num_elements; ++t) {
            const float v = b[j].x[t];
            const float hi = nvcuda::wmma::__float_to_tf32(v);
            b[j].x[t] = hi;
            blo[j].x[t] = nvcuda::wmma::__float_to_tf32(v - hi);
          }
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) {
            // small terms first
            nvcuda::wmma::mma_sync(acc[i][j], alo[i], b[j], acc[i][j]);
            nvcuda::wmma::mma_sync(acc[i][j], a[i], blo[j], acc[i][j]);
            nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
          }
      } else {
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
  }

  // Cs[m - r0][n] (ld LDC) = acc for the tile rows m in [r0, r0 + rows): lets a kernel run its
  // epilogue in passes through a smaller float tile. r0 and rows are multiples of WTM.
  __device__ __forceinline__ void store_rows(float* Cs, int r0, int rows) {
#pragma unroll
    for (int i = 0; i < FM; ++i) {
      const int row = wm * WTM + i * 16;
      if (row < r0 || row >= r0 + rows) continue;
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (row - r0) * LDC + wn * WTN + j * 16, acc[i][j], LDC,
                                        nvcuda::wmma::mem_row_major);
    }
  }

  // Cs[m][n] (ld LDC) = acc. Cs aliases the operand tiles: call after the loop's last sync.
  __device__ __forceinline__ void store(float* Cs) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm * WTM + i * 16) * LDC + wn * WTN + j * 16,
                                        acc[i][j], LDC, nvcuda::wmma::mem_row_major);
  }
};

}  // namespace tile
}  // namespace mtlkit
