// Base of a kernel's dynamic shared memory, for kernels in headers that the CPU emulation also
// compiles (tests/ops/emu/cuda_emu.h defines its own dyn_smem()).
#pragma once

namespace mtlkit {
namespace {

// 16-byte aligned start of the dynamic shared memory of the running kernel.
__device__ __forceinline__ unsigned char* dyn_smem() {
  extern __shared__ __align__(16) unsigned char mtlkit_dyn_smem[];
  return mtlkit_dyn_smem;
}

}  // namespace
}  // namespace mtlkit
