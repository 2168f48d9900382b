// Entry points hdc_dw / hdc_grad_x of the emulator module (module.cpp): the depthwise kernels of
// csrc/hdc_depthwise.cuh (pixel and band variants) run on the CPU through cuda_emu.h /
// convert_emu.h, with the launch geometry of hdc_conv.cu's backward (pixel chunks of
// kGradXChunk pixels; band_geometry with an H100's default and opt-in shared memory).
#include <torch/extension.h>

// clang-format off
#include "cuda_emu.h"
#include "convert_emu.h"
#include "hdc_depthwise.cuh"
// clang-format on

#include <optional>
#include <tuple>

namespace {


template <typename F>
void dispatch(at::ScalarType st, F&& f) {
  if (st == at::kFloat) {
    f(float{});
  } else if (st == at::kBFloat16) {
    f(__nv_bfloat16{});
  } else if (st == at::kHalf) {
    f(__half{});
  } else {
    TORCH_CHECK(false, "unsupported dtype ", st);
  }
}

template <typename T>
const T* cp(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mp(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// The shared-memory plan of a band kernel staging nbuf planes (static shared bytes `stat`);
// R == 0: no band fits, hdc_conv.cu then runs the pixel kernel.
mtlkit::BandPlan plan(int H, int W, int d, int nbuf, int64_t stat) {
  return mtlkit::band_geometry(H, W, d, nbuf, emu::kDefaultSmem - stat, emu::kOptinSmem - stat);
}

bool vec_ok(const at::Tensor& t, int W) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && (W * t.element_size()) % 16 == 0;
}

// y = depthwise dilated 3x3 conv of x (B, C, H, W) with dw_w (C, 9) and optional dw_b (C,);
// `band` picks the band kernel where a band fits (else, as in hdc_conv.cu, the pixel kernel).
at::Tensor hdc_dw(const at::Tensor& x, const at::Tensor& dw_w,
                  const std::optional<at::Tensor>& dw_b, int64_t dil, bool band,
                  const emu::Options& opt) {
  const int B = static_cast<int>(x.size(0)), C = static_cast<int>(x.size(1));
  const int H = static_cast<int>(x.size(2)), W = static_cast<int>(x.size(3));
  const int d = static_cast<int>(dil);
  at::Tensor y = at::empty_like(x);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* b = dw_b.has_value() ? cp<T>(*dw_b) : nullptr;
    std::function<void()> body;
    dim3 grid;
    int threads = 256;
    size_t smem = 0;
    const mtlkit::BandPlan bp = band ? plan(H, W, d, 1, 0) : mtlkit::BandPlan{};
    if (bp.R > 0) {
      grid = dim3(bp.nbands, C, B);
      threads = mtlkit::kBandThreads;
      smem = static_cast<size_t>(bp.smem);
      const bool vec = vec_ok(x, W);
      body = [=, &x, &dw_w, &y] {
        mtlkit::hdc_dw_band_kernel<T>(cp<T>(x), cp<T>(dw_w), b, mp<T>(y), C, H, W, d, bp.R, bp.L,
                                      bp.SW, vec);
      };
    } else {
      grid = dim3((H * W + 255) / 256, C, B);
      body = [=, &x, &dw_w, &y] {
        mtlkit::hdc_dw_kernel<T>(cp<T>(x), cp<T>(dw_w), b, mp<T>(y), C, H, W, d);
      };
    }
    emu::launch(grid, dim3(threads), smem, body, opt);
  });
  return y;
}

// gx = depthwise gradient of x from gy; part (B * nchunk, C, 10) float32: per-chunk sums of
// gy * x[p + off_t] (t < 9) and gy (t = 9).
std::tuple<at::Tensor, at::Tensor> hdc_grad_x(const at::Tensor& gy, const at::Tensor& x,
                                              const at::Tensor& dw_w, int64_t dil, bool band,
                                              const emu::Options& opt) {
  const int B = static_cast<int>(x.size(0)), C = static_cast<int>(x.size(1));
  const int H = static_cast<int>(x.size(2)), W = static_cast<int>(x.size(3));
  const int d = static_cast<int>(dil);
  at::Tensor gx = at::empty_like(x);
  at::Tensor part;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    std::function<void()> body;
    dim3 grid;
    int threads = 256;
    size_t smem = 0;
    const int64_t stat = sizeof(float) * (mtlkit::kBandThreads / 32) * 10;  // red[][10]
    const mtlkit::BandPlan bp = band ? plan(H, W, d, 2, stat) : mtlkit::BandPlan{};
    if (bp.R > 0) {
      part = at::empty({int64_t{B} * bp.nbands, C, 10}, x.options().dtype(at::kFloat));
      grid = dim3(bp.nbands, C, B);
      threads = mtlkit::kBandThreads;
      smem = static_cast<size_t>(bp.smem);
      const bool vec = vec_ok(x, W) && vec_ok(gy, W);
      body = [=, &gy, &x, &dw_w, &gx, &part] {
        mtlkit::hdc_grad_x_band_kernel<T>(cp<T>(gy), cp<T>(x), cp<T>(dw_w), mp<T>(gx),
                                          part.data_ptr<float>(), C, H, W, d, bp.R, bp.L, bp.SW,
                                          vec);
      };
    } else {
      const int nchunk = (H * W + mtlkit::kGradXChunk - 1) / mtlkit::kGradXChunk;
      part = at::empty({int64_t{B} * nchunk, C, 10}, x.options().dtype(at::kFloat));
      grid = dim3(nchunk, C, B);
      body = [=, &gy, &x, &dw_w, &gx, &part] {
        mtlkit::hdc_grad_x_kernel<T>(cp<T>(gy), cp<T>(x), cp<T>(dw_w), mp<T>(gx),
                                     part.data_ptr<float>(), C, H, W, d, mtlkit::kGradXChunk);
      };
    }
    emu::launch(grid, dim3(threads), smem, body, opt);
  });
  return {gx, part};
}

}  // namespace

void register_hdc(pybind11::module_& m) {
  m.def("hdc_dw", &hdc_dw);
  m.def("hdc_grad_x", &hdc_grad_x);
}
