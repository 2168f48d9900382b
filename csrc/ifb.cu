// ifb: iterated affinity multiplication of the TPIM Iterative Fusion Block (paper 002, eq. 6-8).
//
// With V_0 = v and C = affinity (B, N, N), v (B, N, c):
//   variant A (eq. 6): V_{k+1} = C V_k                       (a = 1,     b = 0)
//   variant B (eq. 7): V_{k+1} = alpha C V_k + V_k           (a = alpha, b = 1)
//   variant C (eq. 8): V_{k+1} = alpha C V_k + (1 - alpha) V_k (a = alpha, b = 1 - alpha)
// i.e. V_{k+1} = a C V_k + b V_k, and the op returns V_iters.
//
// Forward: per iteration one cuBLAS GEMM through ATen, V_{k+1} = Mv V_k (A) or
// V_{k+1} = V_k + Mv V_k (B, C) with the iteration matrix Mv = C, alpha C or alpha (C - I)
// formed once per call (step_matrix; alpha is read on the device, so no host sync). The iterates
// V_0..V_{iters-1} are written into one stacked buffer `states` (B, N, iters, c) when the
// backward will need them (save_states), else two ping-pong buffers are used; cuBLAS reads and
// writes the stacked slots in place through their leading dimension iters * c.
//
// MTLKIT_IFB_GEMM=wmma selects the first version instead: a hand-written tensor-core tile GEMM
// fused with the blend (ifb_step_kernel), run over batch groups whose affinities fit in ~60% of
// the L2 cache so that C is read from L2 from the second iteration on (batch_group). On an H100
// it was 2-4x slower than cuBLAS at every issue-7 shape (benchmarks/RESULTS.md); a persistent
// cooperative kernel holding row blocks of C in shared memory is not implemented.
//
// Backward, with G_k = dL/dV_k and G_iters = grad_out:
//   G_k      = a C^T G_{k+1} + b G_{k+1}      (the same step with Mv^T: G_{k+1} + Mv^T G_{k+1})
//   S        = sum_k G_{k+1} V_k^T = [G_1 .. G_iters] [V_0 .. V_{iters-1}]^T   (one at::bmm
//              over the stacked iterations: K = iters * c)
//   dC       = a S
//   d alpha  = sum_k <G_{k+1}, C V_k - [variant C] V_k> = <C, S> - [variant C] <Gstack, Vstack>
//              (trace identity <G, C V> = <C, G V^T>; variant A: 0).
// G_1..G_iters are stacked the same way (B, N, iters, c), so both stacks view as
// (B, N, iters * c) matrices without copies.
//
// Accumulation is float32 everywhere (cuBLAS with float32 compute; float32 inputs stay in true
// float32 unless torch.backends.cuda.matmul.allow_tf32 is set); iterates are stored in the input
// dtype.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>

#include "wmma_tile.cuh"

namespace mtlkit {
namespace {

using tile::from_float;
using tile::to_float;

constexpr int kBM = 64;  // output rows (of N) per CTA
constexpr int kBK = 32;  // depth per staged tile

int variant_mode(c10::string_view variant) {
  TORCH_CHECK(variant == "A" || variant == "B" || variant == "C",
              "ifb: variant must be \"A\", \"B\" or \"C\", got \"",
              std::string(variant.data(), variant.size()), "\"");
  return variant == "A" ? 0 : (variant == "B" ? 1 : 2);
}

// Y[b] (N x c, row stride ldy) = a * op(M[b]) X[b] + b * X[b], op(M) = M or M^T,
// M: (B, N, N) contiguous; X: (N x c, row stride ldx, batch stride x_bs).
// (a, b) from mode: 0 -> (1, 0); 1 -> (alpha, 1); 2 -> (alpha, 1 - alpha).
// grid = (ceil(c / BN), ceil(N / BM), B). VEC: 16-byte global loads are legal (aligned
// pointers, N and ldx and x_bs multiples of the vector width); tails fall back to scalar loads.
template <typename T, int BN, int WARPS_N, bool TRANS, bool VEC>
__global__ void __launch_bounds__(32 * 2 * WARPS_N)
    ifb_step_kernel(const T* __restrict__ M, const T* __restrict__ X, T* __restrict__ Y, int N,
                    int c, int64_t x_bs, int ldx, int64_t y_bs, int ldy,
                    const float* __restrict__ alpha, int mode) {
  using Mma = tile::TileMma<T, /*A_ROW=*/!TRANS, /*B_ROW=*/true, kBM, BN, kBK, 2, WARPS_N>;
  constexpr int NT = Mma::THREADS;
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  __shared__ __align__(128) unsigned char smem[Mma::SMEM_BYTES];
  T* As = Mma::a_tile(smem);
  T* Bs = Mma::b_tile(smem);

  const int tid = static_cast<int>(threadIdx.x);
  const int col0 = static_cast<int>(blockIdx.x) * BN;
  const int row0 = static_cast<int>(blockIdx.y) * kBM;
  const int64_t bz = blockIdx.z;
  const T* Mb = M + bz * static_cast<int64_t>(N) * N;
  const T* Xb = X + bz * x_bs;
  T* Yb = Y + bz * y_bs;

  Mma mma;
  mma.init();

  for (int k0 = 0; k0 < N; k0 += kBK) {
    // ---- A tile: A(m, k) = op(M)(row0 + m, k0 + k)
    if constexpr (!TRANS) {
      // As[m][k] <- M[row0 + m][k0 + k]: contiguous along k.
      constexpr int KV = kBK / V;
      for (int i = tid; i < kBM * KV; i += NT) {
        const int m = i / KV, kv = i % KV;
        const int row = row0 + m, k = k0 + kv * V;
        T* dst = As + Mma::a_off(m, kv * V);
        const T* src = Mb + static_cast<int64_t>(row) * N + k;
        if (VEC && row < N && k + V <= N) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e)
            dst[e] = (row < N && k + e < N) ? src[e] : from_float<T>(0.f);
        }
      }
    } else {
      // As[k][m] <- M[k0 + k][row0 + m] (A = M^T): contiguous along m.
      constexpr int MV = kBM / V;
      for (int i = tid; i < kBK * MV; i += NT) {
        const int k = i / MV, mv = i % MV;
        const int krow = k0 + k, col = row0 + mv * V;
        T* dst = As + Mma::a_off(mv * V, k);
        const T* src = Mb + static_cast<int64_t>(krow) * N + col;
        if (VEC && krow < N && col + V <= N) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e)
            dst[e] = (krow < N && col + e < N) ? src[e] : from_float<T>(0.f);
        }
      }
    }
    // ---- B tile: Bs[k][n] <- X[k0 + k][col0 + n]: contiguous along n.
    {
      constexpr int NV = BN / V;
      for (int i = tid; i < kBK * NV; i += NT) {
        const int k = i / NV, nv = i % NV;
        const int krow = k0 + k, col = col0 + nv * V;
        T* dst = Bs + Mma::b_off(k, nv * V);
        const T* src = Xb + static_cast<int64_t>(krow) * ldx + col;
        if (VEC && krow < N && col + V <= c) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e)
            dst[e] = (krow < N && col + e < c) ? src[e] : from_float<T>(0.f);
        }
      }
    }
    __syncthreads();
    mma.step(As, Bs);
    __syncthreads();
  }

  // ---- epilogue: Y = a * acc + b * X
  float* Cs = Mma::c_tile(smem);
  mma.store(Cs);
  __syncthreads();
  const float al = mode == 0 ? 1.f : alpha[0];
  const float beta = mode == 0 ? 0.f : (mode == 1 ? 1.f : 1.f - al);
  for (int i = tid; i < kBM * BN; i += NT) {
    const int m = i / BN, n = i % BN;
    const int row = row0 + m, col = col0 + n;
    if (row < N && col < c) {
      float val = al * Cs[m * Mma::LDC + n];
      if (mode != 0) val += beta * to_float(Xb[static_cast<int64_t>(row) * ldx + col]);
      Yb[static_cast<int64_t>(row) * ldy + col] = from_float<T>(val);
    }
  }
}

// partials[blockIdx.x] = sum_i a[i] * b[i] (float32); when scale_b, also b[i] *= alpha[0]
// (after its use in the product). a, b: n contiguous elements.
template <typename T>
__global__ void __launch_bounds__(256)
    dot_partials_kernel(const T* __restrict__ a, T* __restrict__ b, int64_t n,
                        const float* __restrict__ alpha, bool scale_b,
                        float* __restrict__ partials) {
  __shared__ float warp_part[8];
  const float al = scale_b ? alpha[0] : 1.f;
  float s = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float bv = to_float(b[i]);
    s += to_float(a[i]) * bv;
    if (scale_b) b[i] = from_float<T>(al * bv);
  }
  s = tile::warp_sum(s);
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  if (lane == 0) warp_part[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < static_cast<int>(blockDim.x) / 32 ? warp_part[lane] : 0.f;
    s = tile::warp_sum(s);
    if (lane == 0) partials[blockIdx.x] = s;
  }
}

// ----------------------------------------------------------------------------- host helpers
struct StepArgs {
  const void* M;  // (B, N, N)
  const void* X;
  void* Y;
  int64_t x_bs, y_bs;
  int ldx, ldy;
};

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <typename T, int BN, int WARPS_N, bool TRANS>
void launch_step_cfg(const StepArgs& s, int B, int N, int c, const float* alpha, int mode,
                     cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const bool vec = aligned16(s.M) && aligned16(s.X) && N % V == 0 && s.ldx % V == 0 &&
                   s.x_bs % V == 0;
  const dim3 grid((c + BN - 1) / BN, (N + kBM - 1) / kBM, B);
  const dim3 block(32 * 2 * WARPS_N);
  const T* M = static_cast<const T*>(s.M);
  const T* X = static_cast<const T*>(s.X);
  T* Y = static_cast<T*>(s.Y);
  if (vec) {
    ifb_step_kernel<T, BN, WARPS_N, TRANS, true><<<grid, block, 0, stream>>>(
        M, X, Y, N, c, s.x_bs, s.ldx, s.y_bs, s.ldy, alpha, mode);
  } else {
    ifb_step_kernel<T, BN, WARPS_N, TRANS, false><<<grid, block, 0, stream>>>(
        M, X, Y, N, c, s.x_bs, s.ldx, s.y_bs, s.ldy, alpha, mode);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_step(const StepArgs& s, bool trans, int B, int N, int c, const float* alpha,
                 int mode, cudaStream_t stream) {
  // c <= 64: one 64-wide column tile, so every row block of C is streamed exactly once.
  if (c <= 64) {
    if (trans)
      launch_step_cfg<T, 64, 2, true>(s, B, N, c, alpha, mode, stream);
    else
      launch_step_cfg<T, 64, 2, false>(s, B, N, c, alpha, mode, stream);
  } else {
    if (trans)
      launch_step_cfg<T, 128, 4, true>(s, B, N, c, alpha, mode, stream);
    else
      launch_step_cfg<T, 128, 4, false>(s, B, N, c, alpha, mode, stream);
  }
}

// Which GEMM carries an iteration: cuBLAS through ATen (default; measured faster on an H100 at
// every issue-7 shape, see benchmarks/RESULTS.md) or the WMMA step kernel above
// (MTLKIT_IFB_GEMM=wmma, kept for comparison).
bool use_wmma_step() {
  static const bool wmma = [] {
    const char* env = std::getenv("MTLKIT_IFB_GEMM");
    return env != nullptr && std::string(env) == "wmma";
  }();
  return wmma;
}

// The matrix of one cuBLAS iteration, so that every variant is one GEMM with an identity
// skip term: V_{k+1} = Mv V_k with Mv = C (A); V_{k+1} = V_k + Mv V_k with Mv = alpha C (B) or
// Mv = alpha (C - I) (C: alpha C V + (1 - alpha) V = V + alpha (C - I) V). Formed once per call
// (one element-wise pass over the affinities; alpha stays on the device, no host sync), it
// replaces two element-wise passes and two extra launches per iteration. The backward runs
// G_k = G_{k+1} + Mv^T G_{k+1} with the same matrix.
at::Tensor step_matrix(const at::Tensor& C, const at::Tensor& alpha, int mode) {
  if (mode == 0) return C;
  at::Tensor M = C * alpha;  // float32 0-dim factor: formed in float32, rounded once
  if (mode == 2) M.diagonal(0, 1, 2).sub_(alpha);
  return M;
}

// One iteration on cuBLAS: Y = op(Mv) X (A) or Y = X + op(Mv) X (B, C), with Mv from
// step_matrix. X and Y are (nb, N, c) views into the caller's buffers (row stride ldx / ldy,
// which cuBLAS takes as leading dimensions, so the stacked states need no copies).
void step_blas(const at::Tensor& Mv, int64_t b0, int64_t nb, const void* X, int64_t x_bs,
               int ldx, void* Y, int64_t y_bs, int ldy, bool trans, int c, int mode) {
  const int64_t N = Mv.size(1);
  const int64_t esz = Mv.element_size();
  const auto opts = Mv.options();
  at::Tensor Xt = at::from_blob(const_cast<char*>(static_cast<const char*>(X)) + b0 * x_bs * esz,
                                {nb, N, c}, {x_bs, ldx, 1}, opts);
  at::Tensor Yt = at::from_blob(static_cast<char*>(Y) + b0 * y_bs * esz, {nb, N, c},
                                {y_bs, ldy, 1}, opts);
  at::Tensor Mt = Mv.narrow(0, b0, nb);
  if (trans) Mt = Mt.transpose(1, 2);
  if (mode == 0) {
    at::bmm_out(Yt, Mt, Xt);
  } else {
    at::baddbmm_out(Yt, Xt, Mt, Xt);  // Y = X + Mt X (beta = alpha = 1)
  }
}

// One iteration for batches [b0, b0 + nb): X, Y point at batch 0 (element strides x_bs, y_bs).
void step(const at::Tensor& M, int64_t b0, int64_t nb, const void* X, int64_t x_bs, int ldx,
          void* Y, int64_t y_bs, int ldy, bool trans, int c, const at::Tensor& alpha, int mode) {
  if (!use_wmma_step()) {  // M is step_matrix(C, alpha, mode) here
    step_blas(M, b0, nb, X, x_bs, ldx, Y, y_bs, ldy, trans, c, mode);
    return;
  }
  const int64_t N = M.size(1);
  const int64_t esz = M.element_size();
  const StepArgs s{static_cast<const char*>(M.data_ptr()) + b0 * N * N * esz,
                   static_cast<const char*>(X) + b0 * x_bs * esz,
                   static_cast<char*>(Y) + b0 * y_bs * esz,
                   x_bs, y_bs, ldx, ldy};
  const int B = static_cast<int>(nb), n = static_cast<int>(N);
  const float* al = alpha.data_ptr<float>();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (M.scalar_type()) {
    case at::kFloat:
      launch_step<float>(s, trans, B, n, c, al, mode, stream);
      break;
    case at::kBFloat16:
      launch_step<__nv_bfloat16>(s, trans, B, n, c, al, mode, stream);
      break;
    case at::kHalf:
      launch_step<__half>(s, trans, B, n, c, al, mode, stream);
      break;
    default:
      TORCH_CHECK(false, "ifb: unsupported dtype ", M.scalar_type());
  }
}

// Batch group size for L2 residency of the affinity across iterations. The iterations of a
// group of batch elements run back to back; when the group's affinities fit in ~60% of the L2
// cache (e.g. B = 16, N = 1200: 2.9 MB per bfloat16 affinity), every iteration after the first
// reads C from L2 instead of HBM. Returns B (no grouping) when one affinity alone does not fit
// (nothing to gain) or the whole batch fits; groups stay large enough to fill the GPU.
int64_t batch_group(int64_t B, int64_t N, int64_t c, int64_t esz) {
  static const bool off = [] {
    const char* env = std::getenv("MTLKIT_IFB_GROUP");
    return env != nullptr && std::string(env) == "0";
  }();
  // The grouping serves the WMMA step kernel; with cuBLAS the smaller batched GEMMs and the extra
  // launches cost more than L2 residency saves (H100, B = 16, N = 1200: forward 2.0 ms grouped
  // vs the 0.52 ms of one baddbmm per iteration), so the cuBLAS path runs the whole batch.
  if (off || !use_wmma_step()) return B;
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const double budget = 0.6 * static_cast<double>(prop->l2CacheSize);
  const double per = static_cast<double>(N) * static_cast<double>(N) * static_cast<double>(esz);
  int64_t g = static_cast<int64_t>(budget / per);
  if (g < 2 || g >= B) return B;
  const int64_t bn = c <= 64 ? 64 : 128;
  const int64_t tiles = ((N + kBM - 1) / kBM) * ((c + bn - 1) / bn);
  const int64_t fill = (prop->multiProcessorCount + tiles - 1) / tiles;  // >= one CTA per SM
  return std::min(B, std::max(g, fill));
}

// sum(a * b) as a 0-dim float32 tensor; when scale_b, b *= alpha in place afterwards.
at::Tensor dot(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, bool scale_b) {
  const int64_t n = a.numel();
  auto fopts = a.options().dtype(at::kFloat);
  if (n == 0) return at::zeros({}, fopts);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (n + 256 * 8 - 1) / (256 * 8);
  const int blocks = static_cast<int>(std::min<int64_t>(want, static_cast<int64_t>(sms) * 8));
  at::Tensor partials = at::empty({blocks}, fopts);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float* al = alpha.data_ptr<float>();
  switch (a.scalar_type()) {
    case at::kFloat:
      dot_partials_kernel<float><<<blocks, 256, 0, stream>>>(
          a.data_ptr<float>(), b.data_ptr<float>(), n, al, scale_b, partials.data_ptr<float>());
      break;
    case at::kBFloat16:
      dot_partials_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(
          reinterpret_cast<const __nv_bfloat16*>(a.data_ptr()),
          reinterpret_cast<__nv_bfloat16*>(b.data_ptr()), n, al, scale_b,
          partials.data_ptr<float>());
      break;
    case at::kHalf:
      dot_partials_kernel<__half><<<blocks, 256, 0, stream>>>(
          reinterpret_cast<const __half*>(a.data_ptr()), reinterpret_cast<__half*>(b.data_ptr()),
          n, al, scale_b, partials.data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "ifb: unsupported dtype ", a.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials.sum();
}

void check_inputs(const at::Tensor& affinity, const at::Tensor& v, const at::Tensor& alpha) {
  TORCH_CHECK(affinity.is_cuda(), "ifb: affinity must be a CUDA tensor");
  TORCH_CHECK(affinity.dim() == 3 && affinity.size(1) == affinity.size(2),
              "ifb: affinity must have shape (B, N, N), got ", affinity.sizes());
  const int64_t B = affinity.size(0), N = affinity.size(1);
  TORCH_CHECK(v.dim() == 3 && v.size(0) == B && v.size(1) == N,
              "ifb: v must have shape (B, N, c) = (", B, ", ", N, ", c), got ", v.sizes());
  TORCH_CHECK(v.device() == affinity.device(), "ifb: v must be on ", affinity.device(),
              " like affinity, got ", v.device());
  TORCH_CHECK(v.scalar_type() == affinity.scalar_type(), "ifb: v must have dtype ",
              affinity.scalar_type(), " like affinity, got ", v.scalar_type());
  const auto dt = affinity.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "ifb: affinity must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(alpha.numel() == 1 && alpha.dim() == 0 && alpha.is_floating_point(),
              "ifb: alpha must be a 0-dim floating tensor, got shape ", alpha.sizes());
  TORCH_CHECK(B <= 65535, "ifb: batch B must be <= 65535, got ", B);
  TORCH_CHECK((N + kBM - 1) / kBM <= 65535, "ifb: N must be <= ", 65535 * kBM, ", got ", N);
  TORCH_CHECK(v.size(2) <= (1 << 24), "ifb: c too large: ", v.size(2));
}

// ----------------------------------------------------------------------------- ops
// mtlkit::ifb(affinity, v, alpha, iters, variant, save_states) -> (out, states)
std::tuple<at::Tensor, at::Tensor> ifb_cuda(const at::Tensor& affinity_in, const at::Tensor& v_in,
                                            const at::Tensor& alpha_in, int64_t iters,
                                            c10::string_view variant, bool save_states) {
  check_inputs(affinity_in, v_in, alpha_in);
  TORCH_CHECK(iters >= 0, "ifb: iters must be >= 0, got ", iters);
  const int mode = variant_mode(variant);
  const c10::cuda::CUDAGuard guard(affinity_in.device());
  const at::Tensor C = affinity_in.contiguous();
  const at::Tensor v = v_in.contiguous();
  const at::Tensor alpha = alpha_in.to(C.device(), at::kFloat).contiguous();
  const int64_t B = C.size(0), N = C.size(1), c = v.size(2);
  at::Tensor out = at::empty({B, N, c}, v.options());
  at::Tensor states = at::empty({B, N, save_states ? iters : 0, c}, v.options());
  if (iters == 0 || out.numel() == 0) {
    out.copy_(v);
    if (save_states && states.numel() > 0) states.select(2, 0).copy_(v);
    // iters > 0 with an empty output: every iterate is empty too.
    return {out, states};
  }
  TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 8,
              "ifb: the CUDA kernel needs compute capability >= 8.0");
  const int64_t esz = v.element_size();
  char* st = static_cast<char*>(states.data_ptr());
  at::Tensor ping, pong;
  if (save_states) {
    states.select(2, 0).copy_(v);
  } else if (iters > 1) {
    ping = at::empty({B, N, c}, v.options());
    if (iters > 2) pong = at::empty({B, N, c}, v.options());
  }
  const int64_t st_ld = iters * c, st_bs = N * iters * c;
  TORCH_CHECK(st_ld <= INT32_MAX, "ifb: iters * c too large");
  const at::Tensor M = use_wmma_step() ? C : step_matrix(C, alpha, mode);
  const int64_t group = batch_group(B, N, c, esz);
  for (int64_t b0 = 0; b0 < B; b0 += group) {
    const int64_t nb = std::min(group, B - b0);
    for (int64_t k = 0; k < iters; ++k) {
      // source V_k
      const void* X;
      int64_t x_bs, ldx;
      if (k == 0) {
        X = v.data_ptr(), x_bs = N * c, ldx = c;
      } else if (save_states) {
        X = st + k * c * esz, x_bs = st_bs, ldx = st_ld;
      } else {
        X = ((k - 1) % 2 == 0 ? ping : pong).data_ptr(), x_bs = N * c, ldx = c;
      }
      // destination V_{k+1}
      void* Y;
      int64_t y_bs, ldy;
      if (k == iters - 1) {
        Y = out.data_ptr(), y_bs = N * c, ldy = c;
      } else if (save_states) {
        Y = st + (k + 1) * c * esz, y_bs = st_bs, ldy = st_ld;
      } else {
        Y = (k % 2 == 0 ? ping : pong).data_ptr(), y_bs = N * c, ldy = c;
      }
      step(M, b0, nb, X, x_bs, static_cast<int>(ldx), Y, y_bs, static_cast<int>(ldy),
           /*trans=*/false, static_cast<int>(c), alpha, mode);
    }
  }
  return {out, states};
}

// mtlkit::ifb_backward(grad_out, affinity, alpha, states, iters, variant)
//   -> (grad_affinity, grad_v, grad_alpha)
std::tuple<at::Tensor, at::Tensor, at::Tensor> ifb_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& affinity_in, const at::Tensor& alpha_in,
    const at::Tensor& states_in, int64_t iters, c10::string_view variant) {
  check_inputs(affinity_in, grad_out_in, alpha_in);
  TORCH_CHECK(iters >= 0, "ifb_backward: iters must be >= 0, got ", iters);
  const int mode = variant_mode(variant);
  const c10::cuda::CUDAGuard guard(affinity_in.device());
  const at::Tensor C = affinity_in.contiguous();
  const at::Tensor g = grad_out_in.contiguous();
  const int64_t B = C.size(0), N = C.size(1), c = g.size(2);
  at::Tensor grad_alpha = at::zeros_like(alpha_in);
  if (iters == 0 || g.numel() == 0) {
    return {at::zeros_like(C), g.clone(), grad_alpha};
  }
  TORCH_CHECK(states_in.dim() == 4 && states_in.size(0) == B && states_in.size(1) == N &&
                  states_in.size(2) == iters && states_in.size(3) == c,
              "ifb_backward: states must have shape (B, N, iters, c) = (", B, ", ", N, ", ",
              iters, ", ", c, "), got ", states_in.sizes(),
              " (was the forward run with save_states=False?)");
  TORCH_CHECK(states_in.scalar_type() == C.scalar_type(), "ifb_backward: states must have dtype ",
              C.scalar_type(), ", got ", states_in.scalar_type());
  TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 8,
              "ifb: the CUDA kernel needs compute capability >= 8.0");
  const at::Tensor states = states_in.contiguous();
  const at::Tensor alpha = alpha_in.to(C.device(), at::kFloat).contiguous();

  // Gs slot j holds G_{j+1}; G_iters = grad_out.
  at::Tensor Gs = at::empty({B, N, iters, c}, g.options());
  Gs.select(2, iters - 1).copy_(g);
  const int64_t esz = g.element_size();
  char* gs = static_cast<char*>(Gs.data_ptr());
  const int64_t ld = iters * c, bs = N * iters * c;
  TORCH_CHECK(ld <= INT32_MAX, "ifb_backward: iters * c too large");
  at::Tensor grad_v = at::empty({B, N, c}, g.options());
  const at::Tensor M = use_wmma_step() ? C : step_matrix(C, alpha, mode);
  const int64_t group = batch_group(B, N, c, esz);
  for (int64_t b0 = 0; b0 < B; b0 += group) {
    const int64_t nb = std::min(group, B - b0);
    for (int64_t k = iters - 1; k >= 1; --k) {
      // G_k (slot k - 1) = a C^T G_{k+1} (slot k) + b G_{k+1}
      step(M, b0, nb, gs + k * c * esz, bs, static_cast<int>(ld), gs + (k - 1) * c * esz, bs,
           static_cast<int>(ld), /*trans=*/true, static_cast<int>(c), alpha, mode);
    }
    step(M, b0, nb, gs, bs, static_cast<int>(ld), grad_v.data_ptr(), N * c,
         static_cast<int>(c), /*trans=*/true, static_cast<int>(c), alpha, mode);
  }

  // S = sum_k G_{k+1} V_k^T: one GEMM over the stacked iterations, K = iters * c.
  at::Tensor S =
      at::bmm(Gs.view({B, N, iters * c}), states.view({B, N, iters * c}).transpose(1, 2));
  if (mode == 0) return {S, grad_v, grad_alpha};
  // d alpha = <C, S> (- <Gs, states> for C); then grad_affinity = alpha * S in place.
  at::Tensor ga = dot(C, S, alpha, /*scale_b=*/true);
  if (mode == 2) ga = ga - dot(Gs, states, alpha, /*scale_b=*/false);
  grad_alpha.copy_(ga);
  return {S, grad_v, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtlkit, m) {
  m.def(
      "ifb(Tensor affinity, Tensor v, Tensor alpha, int iters, str variant, bool save_states)"
      " -> (Tensor, Tensor)");
  m.def(
      "ifb_backward(Tensor grad_out, Tensor affinity, Tensor alpha, Tensor states, int iters,"
      " str variant) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mtlkit, CUDA, m) {
  m.impl("ifb", &ifb_cuda);
  m.impl("ifb_backward", &ifb_backward_cuda);
}

}  // namespace mtlkit
