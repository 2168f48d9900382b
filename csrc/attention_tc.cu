// Launchers of the tensor-core attention kernels (attention_tc_kernels.cuh, whose header comment
// describes the design). Selected by the attention ops' argument core="tc" (the implementation
// `cuda_tc` of mtlkit.ops; see attention_core.cu).
// Requirements (otherwise attn_tc_* return false and attention_core.cu raises "core='tc'
// declined", which the Python glue turns into a warning and a run on core="simt"): bfloat16 or
// float16, part dims multiples of 16, 16-byte aligned pointers, every stride a multiple of 8
// elements, compute capability >= 8.0 and the dynamic shared memory available.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

// clang-format off
#include "dyn_smem.cuh"
#include "tc_ptx.cuh"
#include "attention_tc_kernels.cuh"
// clang-format on

namespace mtlkit {
namespace {

bool device_ok(const AttnProblem& p) {
  return at::cuda::getCurrentDeviceProperties()->major >= 8 && tc_problem_ok(p);
}

bool smem_fits(size_t bytes) {
  return bytes + kBwdStaticSmem <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

}  // namespace

bool attn_tc_forward(const AttnProblem& p, void* out, float* lse) {
  if (!device_ok(p) || reinterpret_cast<std::uintptr_t>(out) % 16 != 0) return false;
  const TcLaunch l = fwd_launch(p);
  if (!smem_fits(l.smem)) return false;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel) {
    set_smem(kernel, l.smem);
    kernel<<<l.grid, kThreads, l.smem, stream>>>(p, static_cast<uint16_t*>(out), lse, l.ppg);
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
  if (!device_ok(p)) return false;
  for (const float* t : {dq, dk, dv}) {
    if (reinterpret_cast<std::uintptr_t>(t) % 8 != 0) return false;
  }
  const TcLaunch lq = bwd_launch(p, kDq), lk = bwd_launch(p, kDk), lv = bwd_launch(p, kDv);
  if (!smem_fits(std::max({lq.smem, lk.smem, lv.smem}))) return false;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel, const TcLaunch& l, float* dst, float* dw) {
    set_smem(kernel, l.smem);
    kernel<<<l.grid, kThreads, l.smem, stream>>>(p, lse, drow, dst, dw, l.ppg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto run = [&](auto bf16_tag) {
    constexpr bool BF16 = decltype(bf16_tag)::value;
    launch(attn_tc_bwd_kernel<BF16, kDq>, lq, dq, dweight);
    launch(attn_tc_bwd_kernel<BF16, kDk>, lk, dk, nullptr);
    launch(attn_tc_bwd_kernel<BF16, kDv>, lv, dv, nullptr);
  };
  if (p.dtype == c10::ScalarType::BFloat16) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
  return true;
}

}  // namespace mtlkit
