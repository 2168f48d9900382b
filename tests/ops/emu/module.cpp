// The emulator module (built by tests/ops/_emu.py): CUDA kernel source of csrc/ executed on the
// CPU through cuda_emu.h. tc_emu.cpp adds the tensor-core attention kernels, hdc_emu.cpp the
// depthwise kernels of hdc_conv.
#include <torch/extension.h>

#include "cuda_emu.h"

void register_tc(pybind11::module_& m);
void register_hdc(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<emu::Options>(m, "Options")
      .def(pybind11::init([](uint32_t seed, bool greedy, bool early_copies) {
             return emu::Options{seed, greedy, early_copies};
           }),
           pybind11::arg("seed"), pybind11::arg("greedy"), pybind11::arg("early_copies"));
  register_tc(m);
  register_hdc(m);
}
