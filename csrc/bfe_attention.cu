// bfe_attention: fused downsampled cross-attention of the BFCI Bridge Feature Extractor
// (paper 000, eq. 1-4; contract in OPS.md).
//
// Forward:
//   1. pool kernel: X[b, t*h*w + y*w + x, c] = mean of the pool x pool window of feats[b, t, c]
//      (eq. 1-2: Flat(AvgPool) of each task map, concatenated task-major), X: (B, Nk, C);
//   2. K = X k_weight^T + k_bias, V = X v_weight^T + v_bias via at::linear (cuBLAS), (B, Nk, E);
//   3. flash-style attention per head (attention_core.cu): online softmax, float32 accumulation,
//      logsumexp saved; the (Nq x Nk) score matrix is never materialised.
// Backward (FlashAttention-2 recomputation): recompute X, K, V; Drow = rowsum(dO * O) per head;
// dq, dK, dV from the attention kernels (float32); projection backward dW = dK^T X,
// db = sum dK, dX = dK Wk + dV Wv (float32 GEMMs); pooling backward
// dfeats[b, t, c, y, x] = dX[b, t*h*w + (y/pool)*w + x/pool, c] / pool^2.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "attention_core.h"
#include "mtlkit_ops.h"

namespace mtlkit {
namespace {

constexpr int kPoolThreads = 256;

// One thread per pooled element (b, t, c, oy, ox), ox fastest (coalesced window reads).
template <typename T>
__global__ void bfe_pool_kernel(const T* __restrict__ feats, T* __restrict__ X, int64_t total,
                                int T_, int C, int H, int W, int pool) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int w = W / pool;
  const int h = H / pool;
  const int ox = static_cast<int>(idx % w);
  int64_t rest = idx / w;
  const int oy = static_cast<int>(rest % h);
  rest /= h;
  const int c = static_cast<int>(rest % C);
  rest /= C;
  const int t = static_cast<int>(rest % T_);
  const int64_t b = rest / T_;
  const T* src = feats + (((b * T_ + t) * C + c) * H + static_cast<int64_t>(oy) * pool) * W +
                 static_cast<int64_t>(ox) * pool;
  float sum = 0.f;
  for (int dy = 0; dy < pool; ++dy) {
    for (int dx = 0; dx < pool; ++dx) sum += static_cast<float>(src[dy * W + dx]);
  }
  const int64_t n = (static_cast<int64_t>(t) * h + oy) * w + ox;
  const int64_t nk = static_cast<int64_t>(T_) * h * w;
  X[(b * nk + n) * C + c] = static_cast<T>(sum / static_cast<float>(pool * pool));
}

// One thread per feats element (b, t, c, y, x): dfeats = dX[token of its window, c] / pool^2.
template <typename T>
__global__ void bfe_pool_backward_kernel(const float* __restrict__ dX, T* __restrict__ dfeats,
                                         int64_t total, int T_, int C, int H, int W, int pool) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int w = W / pool;
  const int h = H / pool;
  const int x = static_cast<int>(idx % W);
  int64_t rest = idx / W;
  const int y = static_cast<int>(rest % H);
  rest /= H;
  const int c = static_cast<int>(rest % C);
  rest /= C;
  const int t = static_cast<int>(rest % T_);
  const int64_t b = rest / T_;
  const int64_t n = (static_cast<int64_t>(t) * h + y / pool) * w + x / pool;
  const int64_t nk = static_cast<int64_t>(T_) * h * w;
  dfeats[idx] = static_cast<T>(dX[(b * nk + n) * C + c] / static_cast<float>(pool * pool));
}

template <typename F>
void dispatch_float_types(at::ScalarType dtype, const char* name, F&& f) {
  switch (dtype) {
    case at::kFloat:
      f(float{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    case at::kHalf:
      f(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, name, ": dtype must be float32, bfloat16 or float16, got ", dtype);
  }
}

unsigned int blocks_for(int64_t total) {
  return static_cast<unsigned int>((total + kPoolThreads - 1) / kPoolThreads);
}

// X (B, T*h*w, C) in feats' dtype.
at::Tensor pool_tokens(const at::Tensor& feats, int64_t pool) {
  const int64_t B = feats.size(0), T = feats.size(1), C = feats.size(2), H = feats.size(3),
                W = feats.size(4);
  const int64_t h = H / pool, w = W / pool;
  at::Tensor X = at::empty({B, T * h * w, C}, feats.options());
  const int64_t total = B * T * C * h * w;
  if (total == 0) return X;
  TORCH_CHECK(total / kPoolThreads < (int64_t{1} << 31), "bfe_attention: feats too large");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(feats.scalar_type(), "bfe_attention", [&](auto tag) {
    using T_ = decltype(tag);
    bfe_pool_kernel<T_><<<blocks_for(total), kPoolThreads, 0, stream>>>(
        feats.data_ptr<T_>(), X.data_ptr<T_>(), total, static_cast<int>(T),
        static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), static_cast<int>(pool));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return X;
}

void check_inputs(const at::Tensor& q, const at::Tensor& feats, const at::Tensor& k_weight,
                  const at::Tensor& v_weight, const std::optional<at::Tensor>& k_bias,
                  const std::optional<at::Tensor>& v_bias, int64_t pool, int64_t heads) {
  TORCH_CHECK(q.is_cuda(), "bfe_attention: q must be a CUDA tensor");
  TORCH_CHECK(q.dim() == 3, "bfe_attention: q must have shape (B, Nq, E), got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                  q.scalar_type() == at::kHalf,
              "bfe_attention: q must be float32, bfloat16 or float16, got ", q.scalar_type());
  TORCH_CHECK(pool >= 1, "bfe_attention: pool must be >= 1, got ", pool);
  TORCH_CHECK(heads >= 1, "bfe_attention: heads must be >= 1, got ", heads);
  const int64_t B = q.size(0), E = q.size(2);
  TORCH_CHECK(E % heads == 0, "bfe_attention: q must have shape (B, Nq, E) with E divisible by ",
              "heads=", heads, ", got ", q.sizes());
  TORCH_CHECK(E / heads >= 1 && E / heads <= kMaxPartDim,
              "bfe_attention: head dim E / heads must be in [1, ", kMaxPartDim, "], got ",
              E / heads);
  TORCH_CHECK(feats.dim() == 5 && feats.size(0) == B,
              "bfe_attention: feats must have shape (B, T, C, H, W) with B=", B, ", got ",
              feats.sizes());
  const int64_t C = feats.size(2);
  TORCH_CHECK(feats.size(1) >= 1 && feats.size(3) % pool == 0 && feats.size(4) % pool == 0 &&
                  feats.size(3) >= pool && feats.size(4) >= pool,
              "bfe_attention: feats must have shape (B, T, C, H, W) with T >= 1 and H, W ",
              "divisible by pool=", pool, ", got ", feats.sizes());
  TORCH_CHECK(k_weight.dim() == 2 && k_weight.size(0) == E && k_weight.size(1) == C,
              "bfe_attention: k_weight must have shape (E, C) = (", E, ", ", C, "), got ",
              k_weight.sizes());
  TORCH_CHECK(v_weight.dim() == 2 && v_weight.size(0) == E && v_weight.size(1) == C,
              "bfe_attention: v_weight must have shape (E, C) = (", E, ", ", C, "), got ",
              v_weight.sizes());
  struct Named {
    const char* name;
    const at::Tensor* t;
  };
  const Named all[] = {{"q", &q}, {"feats", &feats}, {"k_weight", &k_weight},
                       {"v_weight", &v_weight}};
  for (const auto& n : all) {
    TORCH_CHECK(n.t->device() == q.device(), "bfe_attention: ", n.name, " must be on ",
                q.device(), ", got ", n.t->device());
    TORCH_CHECK(n.t->scalar_type() == q.scalar_type(), "bfe_attention: ", n.name,
                " must have dtype ", q.scalar_type(), " like q, got ", n.t->scalar_type());
    TORCH_CHECK(n.t->is_contiguous(), "bfe_attention: ", n.name, " must be contiguous");
  }
  const std::optional<at::Tensor>* biases[] = {&k_bias, &v_bias};
  const char* bias_names[] = {"k_bias", "v_bias"};
  for (int i = 0; i < 2; ++i) {
    if (!biases[i]->has_value()) continue;
    const at::Tensor& bt = biases[i]->value();
    TORCH_CHECK(bt.dim() == 1 && bt.size(0) == E, "bfe_attention: ", bias_names[i],
                " must have shape (E,) = (", E, ",), got ", bt.sizes());
    TORCH_CHECK(bt.device() == q.device() && bt.scalar_type() == q.scalar_type(),
                "bfe_attention: ", bias_names[i], " must be a ", q.scalar_type(), " tensor on ",
                q.device());
    TORCH_CHECK(bt.is_contiguous(), "bfe_attention: ", bias_names[i], " must be contiguous");
  }
  TORCH_CHECK(B * heads <= 65535, "bfe_attention: B * heads must be <= 65535");
}

// Attention problem of the BFE heads: maps = heads, one part of D per head.
AttnProblem make_problem(const at::Tensor& q, const at::Tensor& K, const at::Tensor& V,
                         const at::Tensor& o, int64_t heads) {
  const int64_t B = q.size(0), Nq = q.size(1), E = q.size(2), Nk = K.size(1);
  const int D = static_cast<int>(E / heads);
  AttnProblem p;
  p.batch = static_cast<int>(B);
  p.maps = static_cast<int>(heads);
  p.nq = static_cast<int>(Nq);
  p.nk = static_cast<int>(Nk);
  auto layout = [&](const at::Tensor& t, int64_t rows) {
    PartLayout L;
    L.ptr = t.data_ptr();
    L.batch_stride = rows * E;
    L.map_stride = D;
    L.part_stride = 0;
    L.row_stride = E;
    L.parts = 1;
    L.part_dim = D;
    return L;
  };
  p.q = layout(q, Nq);
  p.k = layout(K, Nk);
  p.v = layout(V, Nk);
  p.o = layout(o, Nq);
  p.weight = nullptr;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.shared_qk = false;
  p.dtype = q.scalar_type();
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bfe_attention_cuda(
    const at::Tensor& q, const at::Tensor& feats, const at::Tensor& k_weight,
    const at::Tensor& v_weight, const std::optional<at::Tensor>& k_bias,
    const std::optional<at::Tensor>& v_bias, int64_t pool, int64_t heads,
    c10::string_view core) {
  check_inputs(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads);
  const bool tensor_cores = parse_attention_core(core, "bfe_attention");
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(q.size(1) <= INT32_MAX, "bfe_attention: Nq too large");
  const at::Tensor X = pool_tokens(feats, pool);
  TORCH_CHECK(X.size(1) <= INT32_MAX, "bfe_attention: Nk too large");
  const at::Tensor K = at::linear(X, k_weight, k_bias).contiguous();
  const at::Tensor V = at::linear(X, v_weight, v_bias).contiguous();
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), heads, q.size(1)}, q.options().dtype(at::kFloat));
  AttnProblem p = make_problem(q, K, V, out, heads);
  p.tensor_cores = tensor_cores;
  attn_forward(p, out.data_ptr(), lse.data_ptr<float>());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bfe_attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                            const at::Tensor& feats, const at::Tensor& k_weight,
                            const at::Tensor& v_weight, const std::optional<at::Tensor>& k_bias,
                            const std::optional<at::Tensor>& v_bias, const at::Tensor& out,
                            const at::Tensor& lse, int64_t pool, int64_t heads,
                            c10::string_view core) {
  check_inputs(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads);
  const bool tensor_cores = parse_attention_core(core, "bfe_attention_backward");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && grad_out.scalar_type() == q.scalar_type() &&
                  grad_out.device() == q.device() && grad_out.is_contiguous(),
              "bfe_attention_backward: grad_out must be a contiguous ", q.scalar_type(),
              " tensor of shape ", q.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() &&
                  out.device() == q.device() && out.is_contiguous(),
              "bfe_attention_backward: out must be the contiguous forward output of shape ",
              q.sizes(), ", got ", out.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == heads &&
                  lse.size(2) == q.size(1) && lse.scalar_type() == at::kFloat &&
                  lse.device() == q.device() && lse.is_contiguous(),
              "bfe_attention_backward: lse must be a contiguous float32 tensor of shape (B, "
              "heads, Nq) = (", q.size(0), ", ", heads, ", ", q.size(1), "), got ", lse.sizes());
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), Nq = q.size(1), E = q.size(2), C = feats.size(2);
  const int64_t D = E / heads;

  const at::Tensor X = pool_tokens(feats, pool);
  const int64_t Nk = X.size(1);
  const at::Tensor K = at::linear(X, k_weight, k_bias).contiguous();
  const at::Tensor V = at::linear(X, v_weight, v_bias).contiguous();

  // Drow[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]
  const at::Tensor drow = (grad_out.to(at::kFloat) * out.to(at::kFloat))
                              .view({B, Nq, heads, D})
                              .sum(-1)
                              .permute({0, 2, 1})
                              .contiguous();
  // The kernels overwrite every element unless there is nothing to attend (Nq == 0).
  const auto f32 = q.options().dtype(at::kFloat);
  const bool degenerate = Nq == 0 || Nk == 0;
  at::Tensor dq = degenerate ? at::zeros({B, Nq, E}, f32) : at::empty({B, Nq, E}, f32);
  at::Tensor dK = degenerate ? at::zeros({B, Nk, E}, f32) : at::empty({B, Nk, E}, f32);
  at::Tensor dV = degenerate ? at::zeros({B, Nk, E}, f32) : at::empty({B, Nk, E}, f32);
  AttnProblem p = make_problem(q, K, V, out, heads);
  p.o.ptr = grad_out.data_ptr();
  p.tensor_cores = tensor_cores;
  attn_backward(p, lse.data_ptr<float>(), drow.data_ptr<float>(), dq.data_ptr<float>(),
                dK.data_ptr<float>(), dV.data_ptr<float>(), nullptr);

  // Projection backward (eq. 2) in float32.
  const at::Tensor X2 = X.to(at::kFloat).view({B * Nk, C});
  const at::Tensor dK2 = dK.view({B * Nk, E});
  const at::Tensor dV2 = dV.view({B * Nk, E});
  const at::Tensor grad_kw = at::mm(dK2.t(), X2);
  const at::Tensor grad_vw = at::mm(dV2.t(), X2);
  const at::Tensor grad_kb = dK2.sum(0);
  const at::Tensor grad_vb = dV2.sum(0);
  const at::Tensor dX = (at::mm(dK2, k_weight.to(at::kFloat)) +
                         at::mm(dV2, v_weight.to(at::kFloat)))
                            .contiguous();

  // Pooling backward (eq. 1).
  at::Tensor grad_feats = at::empty_like(feats);
  const int64_t total = feats.numel();
  if (total > 0) {
    TORCH_CHECK(total / kPoolThreads < (int64_t{1} << 31), "bfe_attention: feats too large");
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_float_types(feats.scalar_type(), "bfe_attention_backward", [&](auto tag) {
      using T_ = decltype(tag);
      bfe_pool_backward_kernel<T_><<<blocks_for(total), kPoolThreads, 0, stream>>>(
          dX.data_ptr<float>(), grad_feats.data_ptr<T_>(), total,
          static_cast<int>(feats.size(1)), static_cast<int>(C),
          static_cast<int>(feats.size(3)), static_cast<int>(feats.size(4)),
          static_cast<int>(pool));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const auto dt = q.scalar_type();
  return {dq.to(dt), grad_feats, grad_kw.to(dt), grad_vw.to(dt), grad_kb.to(dt),
          grad_vb.to(dt)};
}

TORCH_LIBRARY_IMPL(mtlkit, CUDA, m) {
  m.impl("bfe_attention", &bfe_attention_cuda);
  m.impl("bfe_attention_backward", &bfe_attention_backward_cuda);
}

}  // namespace mtlkit
