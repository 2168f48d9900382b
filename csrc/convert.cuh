// float <-> element-type conversions of the kernels (float, bfloat16, float16), in their own
// header so that the CPU emulation of the kernels (tests/ops/emu/convert_emu.h) can stand in
// for it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mtlkit {
namespace tile {

// to_float(v) widens an element; from_float<T>(v) rounds to nearest even.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

}  // namespace tile
}  // namespace mtlkit
