// CPU stand-ins for csrc/convert.cuh and the CUDA vector types that the depthwise kernels of
// csrc/hdc_depthwise.cuh use: bfloat16 / float16 as 16-bit storage structs with
// round-to-nearest-even conversions, uint4 / float4 as 16-byte aligned structs.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace emu {

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7fc0u);  // quiet NaN
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_f16(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // round to nearest even
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
inline float f16_to_float(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return static_cast<float>(h);
}

}  // namespace emu

namespace mtlkit {
namespace tile {

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return emu::bf16_to_float(v.bits); }
inline float to_float(__half v) { return emu::f16_to_float(v.bits); }

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) {
  return v;
}
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return {emu::float_to_bf16(v)};
}
template <>
inline __half from_float<__half>(float v) {
  return {emu::float_to_f16(v)};
}

}  // namespace tile
}  // namespace mtlkit
