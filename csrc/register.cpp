// Schemas of the mtlkit custom ops (torch.ops.mtlkit.*) and the Python module entry point.
//
// This is the only TORCH_LIBRARY(mtlkit, ...) block; other sources add schemas with
// TORCH_LIBRARY_FRAGMENT(mtlkit, m) (ifb, hdc_conv) and CUDA kernels with
// TORCH_LIBRARY_IMPL(mtlkit, CUDA, m). Fake (meta) kernels and autograd formulas are registered
// from Python (mtlkit/ops/bfe.py, tpp.py) with torch.library.register_fake / register_autograd;
// backward kernels are ops of their own.

#include <Python.h>
#include <torch/library.h>

#include "mtlkit_ops.h"

// `import mtlkit._C` loads this shared library, which runs the static registrations below.
// The module itself has no Python attributes (ops are reached through torch.ops.mtlkit).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "mtlkit CUDA kernels; the ops are registered as torch.ops.mtlkit.*",  // m_doc
      -1,    // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mtlkit, m) {
  // `core` picks the attention kernels: "simt" (CUDA cores) or "tc" (tensor cores, mma.sync;
  // an error for a problem they cannot take). mtlkit.ops calls them as the implementations
  // `cuda` and `cuda_tc`; the forward's core is passed on to the backward.
  // BFCI BFE (paper 000, eq. 1-4). Returns (out (B, Nq, E), lse (B, heads, Nq) float32).
  m.def(
      "bfe_attention(Tensor q, Tensor feats, Tensor k_weight, Tensor v_weight, Tensor? k_bias, "
      "Tensor? v_bias, int pool, int heads, str core=\"simt\") -> (Tensor, Tensor)");
  // Returns (grad_q, grad_feats, grad_k_weight, grad_v_weight, grad_k_bias, grad_v_bias).
  m.def(
      "bfe_attention_backward(Tensor grad_out, Tensor q, Tensor feats, Tensor k_weight, "
      "Tensor v_weight, Tensor? k_bias, Tensor? v_bias, Tensor out, Tensor lse, int pool, "
      "int heads, str core=\"simt\") -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // BFCI TPP (paper 000, eq. 5-6). Returns (out (B, T, N, Dv), lse (B, M, N) float32).
  m.def(
      "tpp_attention(Tensor q, Tensor k, Tensor v, Tensor mix_weight, Tensor? mix_bias, "
      "str core=\"simt\") -> (Tensor, Tensor)");
  // Returns (grad_q, grad_k, grad_v, grad_mix_weight).
  m.def(
      "tpp_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor mix_weight, "
      "Tensor out, Tensor lse, str core=\"simt\") -> (Tensor, Tensor, Tensor, Tensor)");
}
