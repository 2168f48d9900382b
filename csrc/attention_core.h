// Generic flash-style attention core shared by bfe_attention and tpp_attention.
//
// Both ops reduce to softmax attention where the feature vector of a query/key/value row is the
// concatenation of `parts` chunks of `part_dim` elements, each chunk at its own address:
//
//   elem(b, g, row, c) = ptr[b * batch_stride + g * map_stride + (c / part_dim) * part_stride
//                            + row * row_stride + c % part_dim]
//
// for batch b and "map" g (a head of BFE, a propagation map of TPP). Query chunk j of map g is
// multiplied by weight[g * q.parts + j] (TPP mix weights folded into the logits; BFCI eq. 6):
//
//   S_g = scale * sum_j w_gj q_j k_j^T,   out_g = softmax(S_g) V_g,   lse_g = logsumexp_rows(S_g)
//
// BFE (eq. 3-4): maps = heads, one part of D per head (map_stride = D), no weights.
// TPP with M == T: maps = T, q/k parts = T shared by every map (map_stride 0), V_g = v_g.
// TPP with M == 1: maps = 1, V = concatenation of the T values (parts = T), so one pass gives
// every out_j. Neither the (Nq x Nk) scores nor the T maps are ever written to global memory.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string_view>

namespace mtlkit {

struct PartLayout {
  const void* ptr = nullptr;  // element (b=0, g=0, row=0, c=0)
  int64_t batch_stride = 0;
  int64_t map_stride = 0;
  int64_t part_stride = 0;
  int64_t row_stride = 0;
  int parts = 1;
  int part_dim = 0;
};

struct AttnProblem {
  int batch = 0;
  int maps = 1;
  int nq = 0;
  int nk = 0;
  PartLayout q, k, v;  // queries (nq rows), keys and values (nk rows)
  PartLayout o;        // output / grad_output layout (nq rows, same parts as v)
  const float* weight = nullptr;  // (maps, q.parts) float32 or nullptr (all ones)
  float scale = 1.f;
  // true (TPP): q and k are shared by every map (map_stride 0); the gradient kernels for q and
  // k then sum over the maps. false (BFE): every map owns its q and k chunk.
  bool shared_qk = false;
  c10::ScalarType dtype = c10::ScalarType::Float;
  // true (the op's core argument is "tc"): the tensor-core kernels of attention_tc.cu run, and a
  // problem they cannot take is an error (the Python glue then falls back to "simt" and warns);
  // false ("simt"): the CUDA-core kernels of attention_core.cu.
  bool tensor_cores = false;
};

// The `core` argument of the attention ops: "simt" -> false, "tc" -> true; anything else is an
// error naming the op and the accepted values.
bool parse_attention_core(std::string_view core, const char* op);

// Mix weights of map g (row g of the (maps, q.parts) weight matrix), or nullptr (all ones).
__host__ __device__ inline const float* weight_row(const AttnProblem& p, int g) {
  return p.weight != nullptr ? p.weight + static_cast<int64_t>(g) * p.q.parts : nullptr;
}

// Grid extent covering `a` items with blocks of `b`.
inline unsigned int ceil_div(int a, int b) { return static_cast<unsigned int>((a + b - 1) / b); }

// Largest part_dim the kernels accept (register accumulators hold 128 columns per row).
constexpr int kMaxPartDim = 128;

// out: o layout with o.ptr replaced by `out` (dtype p.dtype); lse: (batch, maps, nq) float32.
void attn_forward(const AttnProblem& p, void* out, float* lse);

// dout: grad of out in the o layout (p.o.ptr), lse from the forward, drow (batch, maps, nq)
// float32 = rowsum(dout * out) per map. dq, dk, dv: float32 buffers with the element strides
// of q, k, v (fully overwritten). dweight: (maps, q.parts) float32, zero-initialised by the
// caller and accumulated into, or nullptr.
void attn_backward(const AttnProblem& p, const float* lse, const float* drow, float* dq,
                   float* dk, float* dv, float* dweight);

// Tensor-core versions (attention_tc.cu, mma.sync; bfloat16 and float16 with part dims that are
// multiples of 16, 16-byte aligned operands). Same contracts as above; they return false without
// doing anything when the problem does not qualify (dtype, layout, shared memory, device).
bool attn_tc_forward(const AttnProblem& p, void* out, float* lse);
bool attn_tc_backward(const AttnProblem& p, const float* lse, const float* drow, float* dq,
                      float* dk, float* dv, float* dweight);

}  // namespace mtlkit
