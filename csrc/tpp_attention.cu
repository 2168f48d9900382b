// tpp_attention: Task Pattern Propagation attention of BFCI (paper 000, eq. 5-6; OPS.md).
//
// The 1x1 convolution over the T concatenated attention maps is folded into the logits:
//   Abar_m = sum_j w_mj q_j k_j^T / sqrt(D) = (q~_m) (k~)^T / sqrt(D),
//   q~_m = [w_m0 q_0, ..., w_m,T-1 q_{T-1}],  k~ = [k_0, ..., k_{T-1}]   (feature dim T * D),
// so each propagation map is one softmax attention whose feature vector is gathered from the T
// task tensors on the fly (attention_core.cu); mix_bias shifts whole softmax rows and cancels.
//   M == T: map m attends with q~_m and k~ and propagates v_m  -> out_m;
//   M == 1: one map propagates the concatenation [v_0, ..., v_{T-1}] -> every out_j in one pass.
// Memory: O(T * N * D) (inputs, outputs, gradients, logsumexp); no (N x N) map is stored.
// Backward: dq_j = sum_m w_mj dS_m k_j / sqrt(D), dk_j = sum_m w_mj dS_m^T q_j / sqrt(D),
// dv_j = P_{m(j)}^T dout_j, d w_mj = sum(dS_m * q_j k_j^T) / sqrt(D); d mix_bias = 0.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "attention_core.h"
#include "mtlkit_ops.h"

namespace mtlkit {
namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mix_weight, const std::optional<at::Tensor>& mix_bias) {
  TORCH_CHECK(q.is_cuda(), "tpp_attention: q must be a CUDA tensor");
  TORCH_CHECK(q.dim() == 4, "tpp_attention: q must have shape (B, T, N, D), got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                  q.scalar_type() == at::kHalf,
              "tpp_attention: q must be float32, bfloat16 or float16, got ", q.scalar_type());
  const int64_t B = q.size(0), T = q.size(1), N = q.size(2), D = q.size(3);
  TORCH_CHECK(T >= 1, "tpp_attention: q must have shape (B, T, N, D) with T >= 1, got ",
              q.sizes());
  TORCH_CHECK(D >= 1 && D <= kMaxPartDim, "tpp_attention: q must have shape (B, T, N, D) with D ",
              "in [1, ", kMaxPartDim, "], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), "tpp_attention: k must have shape (B, T, N, D) = ",
              q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == T && v.size(2) == N,
              "tpp_attention: v must have shape (B, T, N, Dv) = (", B, ", ", T, ", ", N,
              ", Dv), got ", v.sizes());
  TORCH_CHECK(v.size(3) >= 1 && v.size(3) <= kMaxPartDim, "tpp_attention: v must have Dv in [1, ",
              kMaxPartDim, "], got ", v.sizes());
  TORCH_CHECK(mix_weight.dim() == 2 && mix_weight.size(1) == T &&
                  (mix_weight.size(0) == 1 || mix_weight.size(0) == T),
              "tpp_attention: mix_weight must have shape (M, T) = (1 or ", T, ", ", T, "), got ",
              mix_weight.sizes());
  if (mix_bias.has_value()) {
    TORCH_CHECK(mix_bias->dim() == 1 && mix_bias->size(0) == mix_weight.size(0),
                "tpp_attention: mix_bias must have shape (M,) = (", mix_weight.size(0),
                ",), got ", mix_bias->sizes());
    TORCH_CHECK(mix_bias->device() == q.device(), "tpp_attention: mix_bias must be on ",
                q.device());
  }
  struct Named {
    const char* name;
    const at::Tensor* t;
  };
  const Named all[] = {{"q", &q}, {"k", &k}, {"v", &v}, {"mix_weight", &mix_weight}};
  for (const auto& n : all) {
    TORCH_CHECK(n.t->device() == q.device(), "tpp_attention: ", n.name, " must be on ",
                q.device(), ", got ", n.t->device());
    TORCH_CHECK(n.t->scalar_type() == q.scalar_type(), "tpp_attention: ", n.name,
                " must have dtype ", q.scalar_type(), " like q, got ", n.t->scalar_type());
    TORCH_CHECK(n.t->is_contiguous(), "tpp_attention: ", n.name, " must be contiguous");
  }
  TORCH_CHECK(N <= INT32_MAX, "tpp_attention: N too large");
  TORCH_CHECK(B * mix_weight.size(0) <= 65535, "tpp_attention: B * M must be <= 65535");
}

// Problem of the folded attention. `w` is mix_weight as contiguous float32 (M, T).
AttnProblem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& o, const at::Tensor& w) {
  const int64_t B = q.size(0), T = q.size(1), N = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t M = w.size(0);
  AttnProblem p;
  p.batch = static_cast<int>(B);
  p.maps = static_cast<int>(M);
  p.nq = static_cast<int>(N);
  p.nk = static_cast<int>(N);
  auto qk_layout = [&](const at::Tensor& t) {
    PartLayout L;
    L.ptr = t.data_ptr();
    L.batch_stride = T * N * D;
    L.map_stride = 0;  // shared by every map
    L.part_stride = N * D;
    L.row_stride = D;
    L.parts = static_cast<int>(T);
    L.part_dim = static_cast<int>(D);
    return L;
  };
  auto v_layout = [&](const at::Tensor& t) {
    PartLayout L;
    L.ptr = t.data_ptr();
    L.batch_stride = T * N * Dv;
    L.row_stride = Dv;
    L.part_dim = static_cast<int>(Dv);
    if (M == T) {  // map m propagates v_m only (this branch also covers T == M == 1)
      L.map_stride = N * Dv;
      L.part_stride = 0;
      L.parts = 1;
    } else {  // M == 1: one map propagates every v_j
      L.map_stride = 0;
      L.part_stride = N * Dv;
      L.parts = static_cast<int>(T);
    }
    return L;
  };
  p.q = qk_layout(q);
  p.k = qk_layout(k);
  p.v = v_layout(v);
  p.o = v_layout(o);
  p.weight = w.data_ptr<float>();
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.shared_qk = true;
  p.dtype = q.scalar_type();
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tpp_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const at::Tensor& mix_weight,
                                                      const std::optional<at::Tensor>& mix_bias,
                                                      c10::string_view core) {
  check_inputs(q, k, v, mix_weight, mix_bias);
  const bool tensor_cores = parse_attention_core(core, "tpp_attention");
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor w = mix_weight.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(v);
  at::Tensor lse =
      at::empty({q.size(0), mix_weight.size(0), q.size(2)}, q.options().dtype(at::kFloat));
  AttnProblem p = make_problem(q, k, v, out, w);
  p.tensor_cores = tensor_cores;
  attn_forward(p, out.data_ptr(), lse.data_ptr<float>());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tpp_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mix_weight, const at::Tensor& out, const at::Tensor& lse,
    c10::string_view core) {
  check_inputs(q, k, v, mix_weight, std::nullopt);
  const bool tensor_cores = parse_attention_core(core, "tpp_attention_backward");
  TORCH_CHECK(grad_out.sizes() == v.sizes() && grad_out.scalar_type() == v.scalar_type() &&
                  grad_out.device() == v.device() && grad_out.is_contiguous(),
              "tpp_attention_backward: grad_out must be a contiguous ", v.scalar_type(),
              " tensor of shape ", v.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == v.sizes() && out.scalar_type() == v.scalar_type() &&
                  out.device() == v.device() && out.is_contiguous(),
              "tpp_attention_backward: out must be the contiguous forward output of shape ",
              v.sizes(), ", got ", out.sizes());
  const int64_t B = q.size(0), T = q.size(1), N = q.size(2), M = mix_weight.size(0);
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == M && lse.size(2) == N &&
                  lse.scalar_type() == at::kFloat && lse.device() == q.device() &&
                  lse.is_contiguous(),
              "tpp_attention_backward: lse must be a contiguous float32 tensor of shape (B, M, "
              "N) = (", B, ", ", M, ", ", N, "), got ", lse.sizes());
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor w = mix_weight.to(at::kFloat).contiguous();

  // Drow[b, m, i] = sum over the values propagated by map m of dout * out.
  at::Tensor prod = (grad_out.to(at::kFloat) * out.to(at::kFloat)).sum(-1);  // (B, T, N)
  if (M != T) prod = prod.sum(1, /*keepdim=*/true);                          // (B, 1, N)
  const at::Tensor drow = prod.contiguous();

  // The kernels overwrite every element unless N == 0 (then there is nothing to write).
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dq = N == 0 ? at::zeros(q.sizes(), f32) : at::empty(q.sizes(), f32);
  at::Tensor dk = N == 0 ? at::zeros(k.sizes(), f32) : at::empty(k.sizes(), f32);
  at::Tensor dv = N == 0 ? at::zeros(v.sizes(), f32) : at::empty(v.sizes(), f32);
  at::Tensor dw = at::zeros({M, T}, q.options().dtype(at::kFloat));
  AttnProblem p = make_problem(q, k, v, out, w);
  p.o.ptr = grad_out.data_ptr();
  p.tensor_cores = tensor_cores;
  attn_backward(p, lse.data_ptr<float>(), drow.data_ptr<float>(), dq.data_ptr<float>(),
                dk.data_ptr<float>(), dv.data_ptr<float>(), dw.data_ptr<float>());
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dw.to(mix_weight.scalar_type())};
}

TORCH_LIBRARY_IMPL(mtlkit, CUDA, m) {
  m.impl("tpp_attention", &tpp_attention_cuda);
  m.impl("tpp_attention_backward", &tpp_attention_backward_cuda);
}

}  // namespace mtlkit
