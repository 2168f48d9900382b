// Entry points tc_forward / tc_backward of the emulator module (module.cpp): the tensor-core
// attention kernels of csrc/attention_tc_kernels.cuh run on the CPU through cuda_emu.h /
// tc_ptx_emu.h, with the launch geometry of attention_tc.cu (fwd_launch / bwd_launch).
//
// Every entry point takes the emulation's Options (seed, greedy, early_copies; cuda_emu.h). An
// operand is (tensor, [batch_stride, map_stride, part_stride, row_stride, parts, part_dim]) in
// the PartLayout convention of csrc/attention_core.h.
#include <torch/extension.h>

// clang-format off
#include "cuda_emu.h"
#include "tc_ptx_emu.h"
#include "attention_tc_kernels.cuh"
// clang-format on

#include <optional>
#include <vector>

namespace {

using mtlkit::AttnProblem;
using mtlkit::PartLayout;

PartLayout layout_of(const at::Tensor& t, const std::vector<int64_t>& s) {
  TORCH_CHECK(s.size() == 6, "layout must be [batch, map, part, row strides, parts, part_dim]");
  PartLayout L;
  L.ptr = t.data_ptr();
  L.batch_stride = s[0];
  L.map_stride = s[1];
  L.part_stride = s[2];
  L.row_stride = s[3];
  L.parts = static_cast<int>(s[4]);
  L.part_dim = static_cast<int>(s[5]);
  return L;
}

struct Operand {
  at::Tensor t;
  std::vector<int64_t> layout;
};

AttnProblem make_problem(const Operand& q, const Operand& k, const Operand& v, const Operand& o,
                         int64_t batch, int64_t maps, int64_t nq, int64_t nk,
                         const std::optional<at::Tensor>& weight, double scale, bool shared_qk) {
  AttnProblem p;
  p.batch = static_cast<int>(batch);
  p.maps = static_cast<int>(maps);
  p.nq = static_cast<int>(nq);
  p.nk = static_cast<int>(nk);
  p.q = layout_of(q.t, q.layout);
  p.k = layout_of(k.t, k.layout);
  p.v = layout_of(v.t, v.layout);
  p.o = layout_of(o.t, o.layout);
  p.weight = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  p.scale = static_cast<float>(scale);
  p.shared_qk = shared_qk;
  p.dtype = q.t.scalar_type();
  TORCH_CHECK(mtlkit::tc_problem_ok(p), "problem does not qualify for the tensor-core kernels");
  return p;
}

// The dynamic shared memory of an H100 (227 KB opt-in) less the kernels' static arrays.
void check_smem(size_t bytes) {
  TORCH_CHECK(static_cast<int64_t>(bytes + mtlkit::kBwdStaticSmem) <= emu::kOptinSmem,
              "tiles need more shared memory than an H100 has: ", bytes);
}

// out (o layout) and lse (batch, maps, nq) float32 are written.
void forward(Operand q, Operand k, Operand v, Operand o, int64_t batch, int64_t maps, int64_t nq,
             int64_t nk, std::optional<at::Tensor> weight, double scale, bool shared_qk,
             at::Tensor lse, emu::Options opt) {
  const AttnProblem p = make_problem(q, k, v, o, batch, maps, nq, nk, weight, scale, shared_qk);
  const mtlkit::TcLaunch l = mtlkit::fwd_launch(p);
  check_smem(l.smem);
  auto* out = static_cast<uint16_t*>(o.t.data_ptr());
  float* lse_p = lse.data_ptr<float>();
  const bool bf16 = p.dtype == c10::ScalarType::BFloat16;
  const std::function<void()> body = [&] {
    if (bf16) {
      mtlkit::attn_tc_fwd_kernel<true>(p, out, lse_p, l.ppg);
    } else {
      mtlkit::attn_tc_fwd_kernel<false>(p, out, lse_p, l.ppg);
    }
  };
  emu::launch(l.grid, dim3(mtlkit::kThreads), l.smem, body, opt);
}

// o is grad_out; dq, dk, dv float32 with the strides of q, k, v; dweight (maps, q parts) float32
// accumulated into (zero it first) when given.
template <bool BF16, int MODE>
void run_bwd(const AttnProblem& p, const float* lse, const float* drow, float* dst, float* dw,
             const emu::Options& opt) {
  const mtlkit::TcLaunch l = mtlkit::bwd_launch(p, static_cast<mtlkit::Mode>(MODE));
  check_smem(l.smem);
  const std::function<void()> body = [&] {
    mtlkit::attn_tc_bwd_kernel<BF16, MODE>(p, lse, drow, dst, dw, l.ppg);
  };
  emu::launch(l.grid, dim3(mtlkit::kThreads), l.smem, body, opt);
}

void backward(Operand q, Operand k, Operand v, Operand dout, int64_t batch, int64_t maps,
              int64_t nq, int64_t nk, std::optional<at::Tensor> weight, double scale,
              bool shared_qk, at::Tensor lse, at::Tensor drow, at::Tensor dq, at::Tensor dk,
              at::Tensor dv, std::optional<at::Tensor> dweight, emu::Options opt) {
  const AttnProblem p =
      make_problem(q, k, v, dout, batch, maps, nq, nk, weight, scale, shared_qk);
  const float* l = lse.data_ptr<float>();
  const float* d = drow.data_ptr<float>();
  float* dw = dweight.has_value() ? dweight->data_ptr<float>() : nullptr;
  if (p.dtype == c10::ScalarType::BFloat16) {
    run_bwd<true, mtlkit::kDq>(p, l, d, dq.data_ptr<float>(), dw, opt);
    run_bwd<true, mtlkit::kDk>(p, l, d, dk.data_ptr<float>(), nullptr, opt);
    run_bwd<true, mtlkit::kDv>(p, l, d, dv.data_ptr<float>(), nullptr, opt);
  } else {
    run_bwd<false, mtlkit::kDq>(p, l, d, dq.data_ptr<float>(), dw, opt);
    run_bwd<false, mtlkit::kDk>(p, l, d, dk.data_ptr<float>(), nullptr, opt);
    run_bwd<false, mtlkit::kDv>(p, l, d, dv.data_ptr<float>(), nullptr, opt);
  }
}

}  // namespace

void register_tc(pybind11::module_& m) {
  pybind11::class_<Operand>(m, "Operand")
      .def(pybind11::init<at::Tensor, std::vector<int64_t>>());
  m.def("tc_forward", &forward);
  m.def("tc_backward", &backward);
}
