// mtlkit CUDA ops: declarations shared by the registration file and the kernels.
//
// Schemas live in register.cpp (TORCH_LIBRARY(mtlkit, m)); CUDA implementations are registered
// in each op's .cu file with TORCH_LIBRARY_IMPL(mtlkit, CUDA, m). Python adds fake kernels and
// autograd (mtlkit/ops/bfe.py, tpp.py). Contract: /work/shared/OPS.md.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace mtlkit {

// ---- bfe_attention: BFCI Bridge Feature Extractor cross-attention (paper 000, eq. 1-4) -------
// q (B, Nq, E), feats (B, T, C, H, W), k_weight/v_weight (E, C), k_bias/v_bias (E,) or None.
// Returns out (B, Nq, E) in q's dtype and lse (B, heads, Nq) float32 (row logsumexp of the
// scaled scores, saved for the backward). core: "simt" (CUDA cores) or "tc" (tensor cores; a
// problem they cannot take is an error, see attention_core.h).
std::tuple<at::Tensor, at::Tensor> bfe_attention_cuda(
    const at::Tensor& q, const at::Tensor& feats, const at::Tensor& k_weight,
    const at::Tensor& v_weight, const std::optional<at::Tensor>& k_bias,
    const std::optional<at::Tensor>& v_bias, int64_t pool, int64_t heads, c10::string_view core);

// Gradients (grad_q, grad_feats, grad_k_weight, grad_v_weight, grad_k_bias, grad_v_bias), in
// the dtypes of the inputs; the bias gradients are returned even when a bias is None.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bfe_attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                            const at::Tensor& feats, const at::Tensor& k_weight,
                            const at::Tensor& v_weight, const std::optional<at::Tensor>& k_bias,
                            const std::optional<at::Tensor>& v_bias, const at::Tensor& out,
                            const at::Tensor& lse, int64_t pool, int64_t heads,
                            c10::string_view core);

// ---- tpp_attention: BFCI Task Pattern Propagation (paper 000, eq. 5-6) ----------------------
// q, k (B, T, N, D), v (B, T, N, Dv), mix_weight (M, T) with M in {1, T}, mix_bias (M,) or None
// (no effect), core as for bfe_attention. Returns out (B, T, N, Dv) and lse (B, M, N) float32.
std::tuple<at::Tensor, at::Tensor> tpp_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const at::Tensor& mix_weight,
                                                      const std::optional<at::Tensor>& mix_bias,
                                                      c10::string_view core);

// Gradients (grad_q, grad_k, grad_v, grad_mix_weight); grad of mix_bias is zero (Python side).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tpp_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mix_weight, const at::Tensor& out, const at::Tensor& lse,
    c10::string_view core);

}  // namespace mtlkit
