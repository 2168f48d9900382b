// CPU versions of the PTX wrappers of csrc/tc_ptx.cuh, written from the PTX ISA's definitions
// (not from the kernels), for the emulated runs of csrc/attention_tc_kernels.cuh:
// - cp.async.cg 16 bytes with zero fill; the copy lands at cp.async.wait_group or at once
//   (emu::copies_land_early, see cuda_emu.h);
// - ldmatrix.m8n8.x4(.trans).b16: lane 8 i + r gives the address of row r of matrix i; lane l
//   receives, per matrix, elements (l / 4, 2 (l % 4) + {0, 1}), or with .trans
//   (2 (l % 4) + {0, 1}, l / 4), low half first;
// - mma.sync.m16n8k16.row.col.f32.{bf16,f16}: with g = l / 4, t = l % 4, register a_i holds
//   A(g + 8 (i % 2), 2 t + 8 (i / 2) + {0, 1}), b_i holds B(2 t + 8 i + {0, 1}, g), and c_i / d_i
//   C(g + 8 (i / 2), 2 t + i % 2). Products are summed in double and rounded once.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "convert_emu.h"
#include "cuda_emu.h"

namespace mtlkit {
namespace {

namespace emu_detail {

using emu::bf16_to_float;
using emu::f16_to_float;
using emu::float_to_bf16;
using emu::float_to_f16;

template <bool BF16>
inline float half_to_float(uint16_t u) {
  return BF16 ? bf16_to_float(u) : f16_to_float(u);
}
inline uint16_t lo16(uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); }
inline uint16_t hi16(uint32_t r) { return static_cast<uint16_t>(r >> 16); }

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  emu::LaneSlot& me = emu::my_slot();
  me.ptr = p;
  emu::warp_collective([trans](emu::LaneSlot* s) {
    for (int l = 0; l < emu::kWarp; ++l) {
      if (reinterpret_cast<uintptr_t>(s[l].ptr) % 16 != 0 || !emu::in_smem(s[l].ptr, 16)) {
        emu::fail("emu: ldmatrix row address of lane " + std::to_string(l) +
                  " is not a 16-byte aligned shared-memory row");
      }
    }
    for (int l = 0; l < emu::kWarp; ++l) {
      for (int i = 0; i < 4; ++i) {
        uint16_t e[2];
        for (int h = 0; h < 2; ++h) {
          const int row = trans ? 2 * (l % 4) + h : l / 4;
          const int col = trans ? l / 4 : 2 * (l % 4) + h;
          std::memcpy(&e[h], static_cast<const uint16_t*>(s[8 * i + row].ptr) + col, 2);
        }
        s[l].out_u[i] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
      }
    }
  });
  for (int i = 0; i < 4; ++i) r[i] = me.out_u[i];
}

inline void land(const emu::Copy& c) {
  if (c.valid) {
    std::memcpy(c.dst, c.src, 16);
  } else {
    std::memset(c.dst, 0, 16);
  }
}

}  // namespace emu_detail

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || !emu::in_smem(dst, 16)) {
    emu::fail("emu: cp.async destination is not a 16-byte aligned shared-memory address");
  }
  if (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    emu::fail("emu: cp.async.cg source is not 16-byte aligned");
  }
  const emu::Copy c{dst, src, valid};
  if (emu::copies_land_early) emu_detail::land(c);
  emu::cta->fibers[emu::tid()].open.push_back(c);
}
__device__ __forceinline__ void cp_async_commit() {
  emu::Fiber& f = emu::cta->fibers[emu::tid()];
  f.pending.push_back(std::move(f.open));
  f.open.clear();
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  emu::Fiber& f = emu::cta->fibers[emu::tid()];
  while (f.pending.size() > static_cast<size_t>(N)) {
    if (!emu::copies_land_early) {
      for (const emu::Copy& c : f.pending.front()) emu_detail::land(c);
    }
    f.pending.erase(f.pending.begin());
  }
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  emu_detail::ldmatrix_x4(r, p, false);
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  emu_detail::ldmatrix_x4(r, p, true);
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  emu::LaneSlot& me = emu::my_slot();
  for (int i = 0; i < 4; ++i) me.in[i] = a[i];
  me.in[4] = b0;
  me.in[5] = b1;
  for (int i = 0; i < 4; ++i) std::memcpy(&me.in[6 + i], &c[i], 4);
  emu::warp_collective([](emu::LaneSlot* s) {
    using emu_detail::half_to_float;
    using emu_detail::hi16;
    using emu_detail::lo16;
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < emu::kWarp; ++l) {
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
        A[row][col] = half_to_float<BF16>(lo16(s[l].in[i]));
        A[row][col + 1] = half_to_float<BF16>(hi16(s[l].in[i]));
      }
      for (int i = 0; i < 2; ++i) {
        B[2 * t + 8 * i][g] = half_to_float<BF16>(lo16(s[l].in[4 + i]));
        B[2 * t + 8 * i + 1][g] = half_to_float<BF16>(hi16(s[l].in[4 + i]));
      }
      for (int i = 0; i < 4; ++i) std::memcpy(&C[g + 8 * (i / 2)][2 * t + i % 2], &s[l].in[6 + i], 4);
    }
    for (int l = 0; l < emu::kWarp; ++l) {
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        double acc = C[row][col];
        for (int k = 0; k < 16; ++k) acc += static_cast<double>(A[row][k]) * B[k][col];
        s[l].out[i] = static_cast<float>(acc);
      }
    }
  });
  for (int i = 0; i < 4; ++i) c[i] = me.out[i];
}

template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const uint16_t l = BF16 ? emu_detail::float_to_bf16(lo) : emu_detail::float_to_f16(lo);
  const uint16_t h = BF16 ? emu_detail::float_to_bf16(hi) : emu_detail::float_to_f16(hi);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

template <bool BF16>
__device__ __forceinline__ float to_f(uint16_t u) {
  return emu_detail::half_to_float<BF16>(u);
}

}  // namespace
}  // namespace mtlkit
