// Warp-wide float sum, shared by the tile-product kernels (wmma_tile.cuh) and the tensor-core
// attention kernels. Kept free of CUDA library headers so that the CPU emulation of the
// attention kernels (tests/ops/emu) can compile it as ordinary C++.
#pragma once

namespace mtlkit {
namespace tile {

// Sum of v over the 32 lanes of a warp, returned to every lane (butterfly of __shfl_xor_sync).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace tile
}  // namespace mtlkit
