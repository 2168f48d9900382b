// hdc_stage: one stage of the hybrid dilated depthwise-separable convolution stack of the BFCI
// Task Feature Refiner (paper 000, Sec. 3.4, eq. 7; HDC dilations [1, 2, 5]).
//
//   y[b, ci, p]  = dw_b[ci] + sum_t dw_w[ci, t] x[b, ci, p + off_t]     (3x3 depthwise, dilation d,
//                                                                     zero padding d, same size)
//   z[b, co, p]  = pw_b[co] + sum_ci pw_w[co, ci] y[b, ci, p]         (1x1 pointwise)
//   out          = relu(z)
// with taps t = 3 * (dy + 1) + (dx + 1), dy, dx in {-1, 0, 1}, offset (dy * d, dx * d).
// mtlkit.ops.hdc_conv chains S stages in Python (x (B, C_s, H, W) -> (B, C_{s+1}, H, W)).
//
// Forward (hdc_fwd_kernel): one CTA owns BM output channels x BN flattened pixels of one image.
// For every BK-channel slice it computes the depthwise outputs of its pixels straight into the
// shared-memory B operand (the 9 taps are read through L1; the depthwise output never reaches
// global memory), stages the pointwise weights as the A operand, and accumulates the pointwise
// product on tensor cores (float32 accumulators); bias + ReLU are applied in the epilogue.
// For 16-bit dtypes and 128 < C_in <= 256, hdc_fwd_resident_kernel keeps the whole pointwise
// weight block in shared memory and loops over pixel tiles (see its comment); use_resident_forward
// picks the kernel (MTLKIT_HDC_FWD=auto|resident|tiled).
//
// Backward, with gz = grad_out * (out > 0) (ReLU mask from the saved stage output):
//   gy = pw_w^T gz                       one batched cuBLAS GEMM (weight broadcast over B)
//   d pw_w = sum_b gz_b y_b^T            y recomputed by hdc_dw_kernel, one batched cuBLAS GEMM
//   d pw_b = sum_{b,p} gz                  and float32 sums over the batch
//   gx[q] = sum_t dw_w[t] gy[q - off_t]  hdc_grad_x_kernel, which also accumulates per-chunk
//   d dw_w[t] = sum gy[p] x[p + off_t]     partials of the depthwise weight and bias gradients
//   d dw_b = sum gy                        (all 9 taps and the bias in one pass, one reduction)
// (The first version computed gy and d pw_w with hand-written WMMA kernels; on an H100 they
// took 143 us and 678 us per stage at B = 8, C = 256, 60x80 bf16, several times cuBLAS.)
// The ops' `depthwise` argument picks the two depthwise passes of the backward (mtlkit.ops calls
// them as the implementations `cuda` and `cuda_band`): "pixel" (default, hdc_dw_kernel /
// hdc_grad_x_kernel: one pixel per thread, 9 masked gathers through L1) or "band"
// (hdc_dw_band_kernel / hdc_grad_x_band_kernel: one CTA per band of R rows of one plane, the rows
// plus a zero halo of d staged in shared memory, so every tap is an unconditional shared read;
// the pixel kernels remain the fallback when not even one staged row fits in shared memory,
// which mtlkit/ops/hdc.py predicts and reports before it asks for "band").
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "dyn_smem.cuh"
#include "wmma_tile.cuh"
// clang-format off
#include "hdc_depthwise.cuh"
// clang-format on

namespace mtlkit {
namespace {

using tile::from_float;
using tile::to_float;

// Tile configuration of the three tile-GEMM kernels: BM rows (output channels for the forward
// and the pointwise-weight gradient, input channels for the depthwise-output gradient) chosen per
// launch from {64, 128, 256} so that a CTA covers up to 256 channels (the depthwise recompute
// then happens once per pixel tile, not once per 64 channels); BN = 64 columns; BK = 32 deep;
// warps of 32 x 32 (2 warps across BN); THREADS = 2 * BM. The float accumulator tile is written
// out in passes of at most 128 rows, so every kernel stays within 48 KB of static shared memory.
template <int BM_>
struct HdcCfg {
  static constexpr int BM = BM_, BN = 64, BK = 32;
  static constexpr int WARPS_M = BM / 32, WARPS_N = 2;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int PASS = BM < 128 ? BM : 128;
  template <typename Mma>
  static constexpr int smem_bytes() {
    constexpr int c = PASS * Mma::LDC * static_cast<int>(sizeof(float));
    return Mma::AB_BYTES > c ? Mma::AB_BYTES : c;
  }
};

// ----------------------------------------------------------------------------- forward
// out[b, co, p] = relu(pw_b[co] + sum_ci pw_w[co, ci] dw(x)[b, ci, p]).
// grid = (ceil(P / BN), ceil(Cout / BM), B); vec: pw_w rows 16-byte aligned (Cin % V == 0).
template <typename T, int BM>
__global__ void __launch_bounds__(2 * BM)
    hdc_fwd_kernel(const T* __restrict__ x, const T* __restrict__ dw_w,
                   const T* __restrict__ dw_b, const T* __restrict__ pw_w,
                   const T* __restrict__ pw_b, T* __restrict__ out, int Cin, int Cout, int H,
                   int W, int d, bool vec) {
  using Cfg = HdcCfg<BM>;
  constexpr int BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::THREADS;
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  // A(m = co, k = ci) row-major (pw_w rows); B(k = ci, n = p) row-major (pixels contiguous).
  using Mma = tile::TileMma<T, true, true, BM, BN, BK, Cfg::WARPS_M, Cfg::WARPS_N>;
  static_assert(NT % BN == 0, "each thread owns one pixel column of the B tile");
  __shared__ __align__(128) unsigned char smem[Cfg::template smem_bytes<Mma>()];
  __shared__ float wsm[BK][10];  // depthwise taps + bias of the current channel slice
  T* As = Mma::a_tile(smem);
  T* Bs = Mma::b_tile(smem);

  const int tid = static_cast<int>(threadIdx.x);
  const int P = H * W;
  const int p0 = static_cast<int>(blockIdx.x) * BN;
  const int co0 = static_cast<int>(blockIdx.y) * BM;
  const int64_t b = blockIdx.z;

  // This thread's pixel column of the B tile (fixed for the whole kernel).
  const int n = tid % BN;
  const int p = p0 + n;
  const bool pvalid = p < P;
  const unsigned mask = pvalid ? tap_mask(p / W, p % W, H, W, d) : 0u;

  Mma mma;
  mma.init();
  for (int k0 = 0; k0 < Cin; k0 += BK) {
    for (int i = tid; i < BK * 10; i += NT) {
      const int kk = i / 10, t = i % 10;
      const int ci = k0 + kk;
      float wv = 0.f;
      if (ci < Cin) {
        if (t < 9)
          wv = to_float(dw_w[ci * 9 + t]);
        else if (dw_b != nullptr)
          wv = to_float(dw_b[ci]);
      }
      wsm[kk][t] = wv;
    }
    // A tile: As[m][kk] <- pw_w[co0 + m][k0 + kk], V channels per copy.
    for (int i = tid; i < BM * (BK / V); i += NT) {
      const int m = i / (BK / V), kv = (i % (BK / V)) * V;
      const int co = co0 + m, ci = k0 + kv;
      const int nvalid = co < Cout ? max(0, min(V, Cin - ci)) : 0;
      tile::copy_vec(As + Mma::a_off(m, kv), pw_w + static_cast<int64_t>(co) * Cin + ci, nvalid,
                     vec);
    }
    __syncthreads();  // wsm ready
    // B tile: depthwise outputs of BK channels at this thread's pixel.
    for (int kk = tid / BN; kk < BK; kk += NT / BN) {
      const int ci = k0 + kk;
      float s = 0.f;
      if (pvalid && ci < Cin) s = dw_value(x + (b * Cin + ci) * P, p, mask, wsm[kk], W, d);
      Bs[Mma::b_off(kk, n)] = from_float<T>(s);
    }
    __syncthreads();
    mma.step(As, Bs);
    __syncthreads();
  }

  float* Cs = Mma::c_tile(smem);
  for (int r0 = 0; r0 < BM; r0 += Cfg::PASS) {
    mma.store_rows(Cs, r0, Cfg::PASS);
    __syncthreads();
    for (int i = tid; i < Cfg::PASS * BN; i += NT) {
      const int mr = i / BN, nn = i % BN;
      const int co = co0 + r0 + mr, pp = p0 + nn;
      if (co < Cout && pp < P) {
        float v = Cs[mr * Mma::LDC + nn] + (pw_b != nullptr ? to_float(pw_b[co]) : 0.f);
        v = (v > 0.f || v != v) ? v : 0.f;  // ReLU (NaN propagates like torch.relu)
        out[(b * Cout + co) * P + pp] = from_float<T>(v);
      }
    }
    __syncthreads();
  }
}

// Resident-weight variant for 128 < C_in <= 256 (the TFR widths): each CTA loads its BM rows of
// pw_w (all C_in columns, zero-padded to 256) into shared memory once, then loops over (image,
// 64-pixel) tiles: the depthwise outputs of all C_in channels of the tile go to the B operand
// (each thread owns one pixel column, so the tap mask is computed once per tile), one 256-deep
// tensor-core product, and the bias + ReLU epilogue through a float tile that aliases the B
// operand. Two barriers per tile instead of three per 32 channels, and pw_w is read from L2 once
// per CTA instead of once per tile. grid = (min(tiles, SMs), ceil(C_out / BM)); dynamic shared
// memory = Mma::AB_BYTES (bf16: 172 KB with BM = 256; float32: 203 KB with BM = 128).
constexpr int kResK = 256;

template <typename T>
struct ResCfg {
  static constexpr int BM = sizeof(T) == 2 ? 256 : 128, BN = 64;
  static constexpr int WARPS_M = BM / 32, WARPS_N = 2;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int PASS = 128;
  using Mma = tile::TileMma<T, true, true, BM, BN, kResK, WARPS_M, WARPS_N>;
  static_assert(Mma::B_ELEMS * sizeof(T) >= PASS * Mma::LDC * sizeof(float),
                "the epilogue tile must fit in the B operand it aliases");
};

template <typename T>
__global__ void __launch_bounds__(ResCfg<T>::THREADS)
    hdc_fwd_resident_kernel(const T* __restrict__ x, const T* __restrict__ dw_w,
                            const T* __restrict__ dw_b, const T* __restrict__ pw_w,
                            const T* __restrict__ pw_b, T* __restrict__ out, int B, int Cin,
                            int Cout, int H, int W, int d, bool vec) {
  using Cfg = ResCfg<T>;
  using Mma = typename Cfg::Mma;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::THREADS;
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float wsm[kResK][10];  // depthwise taps + bias of every input channel
  T* As = Mma::a_tile(smem);
  T* Bs = Mma::b_tile(smem);
  float* Cs = reinterpret_cast<float*>(Bs);

  const int tid = static_cast<int>(threadIdx.x);
  const int P = H * W;
  const int co0 = static_cast<int>(blockIdx.y) * BM;
  for (int i = tid; i < kResK * 10; i += NT) {
    const int ci = i / 10, t = i % 10;
    float wv = 0.f;
    if (ci < Cin) {
      if (t < 9)
        wv = to_float(dw_w[ci * 9 + t]);
      else if (dw_b != nullptr)
        wv = to_float(dw_b[ci]);
    }
    wsm[ci][t] = wv;
  }
  for (int i = tid; i < BM * (kResK / V); i += NT) {
    const int m = i / (kResK / V), kv = (i % (kResK / V)) * V;
    const int co = co0 + m;
    const int nvalid = co < Cout ? max(0, min(V, Cin - kv)) : 0;
    tile::copy_vec(As + Mma::a_off(m, kv), pw_w + static_cast<int64_t>(co) * Cin + kv, nvalid,
                   vec);
  }
  const int n = tid % BN;  // this thread's pixel column of every tile
  const int tiles_per_image = (P + BN - 1) / BN;
  const int ntiles = B * tiles_per_image;
  for (int tile_id = static_cast<int>(blockIdx.x); tile_id < ntiles;
       tile_id += static_cast<int>(gridDim.x)) {
    const int64_t b = tile_id / tiles_per_image;
    const int p0 = (tile_id % tiles_per_image) * BN;
    const int p = p0 + n;
    const bool pvalid = p < P;
    const unsigned mask = pvalid ? tap_mask(p / W, p % W, H, W, d) : 0u;
    __syncthreads();  // A and wsm ready (first tile); previous epilogue done with Cs = Bs
    const T* xb = x + b * Cin * P;
#pragma unroll 4
    for (int kk = tid / BN; kk < kResK; kk += NT / BN) {
      float v = 0.f;
      if (pvalid && kk < Cin)
        v = dw_value(xb + static_cast<int64_t>(kk) * P, p, mask, wsm[kk], W, d);
      Bs[Mma::b_off(kk, n)] = from_float<T>(v);
    }
    __syncthreads();
    Mma mma;
    mma.init();
    mma.step(As, Bs);
    for (int r0 = 0; r0 < BM; r0 += Cfg::PASS) {
      __syncthreads();  // every warp is done reading Bs / the previous pass of Cs
      mma.store_rows(Cs, r0, Cfg::PASS);
      __syncthreads();
      for (int i = tid; i < Cfg::PASS * BN; i += NT) {
        const int mr = i / BN, nn = i % BN;
        const int co = co0 + r0 + mr, pp = p0 + nn;
        if (co < Cout && pp < P) {
          float v = Cs[mr * Mma::LDC + nn] + (pw_b != nullptr ? to_float(pw_b[co]) : 0.f);
          v = (v > 0.f || v != v) ? v : 0.f;  // ReLU (NaN propagates like torch.relu)
          out[(b * Cout + co) * P + pp] = from_float<T>(v);
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------- host side
template <typename T>
const T* cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* optr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

template <typename F>
void dispatch_dtype(at::ScalarType dt, const char* what, F&& f) {
  switch (dt) {
    case at::kFloat:
      f(float{});
      break;
    case at::kBFloat16:
      f(__nv_bfloat16{});
      break;
    case at::kHalf:
      f(__half{});
      break;
    default:
      TORCH_CHECK(false, what, ": unsupported dtype ", dt, " (float32, bfloat16, float16)");
  }
}

// BM (rows per CTA) of the tile-GEMM kernels for `rows` channels, and its dispatch.
int pick_bm(int64_t rows) { return rows <= 64 ? 64 : (rows <= 128 ? 128 : 256); }

template <typename F>
void dispatch_bm(int bm, F&& f) {
  if (bm == 64)
    f(std::integral_constant<int, 64>{});
  else if (bm == 128)
    f(std::integral_constant<int, 128>{});
  else
    f(std::integral_constant<int, 256>{});
}

// 16-byte vector loads of pw_w rows are legal (aligned base, rows a multiple of 16 bytes).
bool pw_vec_ok(const at::Tensor& pw_w) {
  return reinterpret_cast<std::uintptr_t>(pw_w.data_ptr()) % 16 == 0 &&
         (pw_w.size(1) * pw_w.element_size()) % 16 == 0;
}

struct Shapes {
  int64_t B, Cin, Cout, H, W;
};

Shapes check_stage(const char* op, const at::Tensor& x, const at::Tensor& dw_w,
                   const std::optional<at::Tensor>& dw_b, const at::Tensor& pw_w,
                   const std::optional<at::Tensor>& pw_b, int64_t dilation) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape (B, C_in, H, W), got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ",
                t.device());
    TORCH_CHECK(t.scalar_type() == dt, op, ": ", name, " must have dtype ", dt, " like x, got ",
                t.scalar_type());
  };
  TORCH_CHECK(dw_w.dim() == 4 && dw_w.size(0) == Cin && dw_w.size(1) == 1 && dw_w.size(2) == 3 &&
                  dw_w.size(3) == 3,
              op, ": dw_weight must have shape (C_in, 1, 3, 3) = (", Cin, ", 1, 3, 3), got ",
              dw_w.sizes());
  same(dw_w, "dw_weight");
  if (dw_b.has_value()) {
    TORCH_CHECK(dw_b->dim() == 1 && dw_b->size(0) == Cin, op,
                ": dw_bias must have shape (C_in,) = (", Cin, ",), got ", dw_b->sizes());
    same(*dw_b, "dw_bias");
  }
  TORCH_CHECK(pw_w.dim() == 2 && pw_w.size(1) == Cin, op,
              ": pw_weight must have shape (C_out, C_in) = (C_out, ", Cin, "), got ",
              pw_w.sizes());
  same(pw_w, "pw_weight");
  const int64_t Cout = pw_w.size(0);
  if (pw_b.has_value()) {
    TORCH_CHECK(pw_b->dim() == 1 && pw_b->size(0) == Cout, op,
                ": pw_bias must have shape (C_out,) = (", Cout, ",), got ", pw_b->sizes());
    same(*pw_b, "pw_bias");
  }
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  // Flat tap offsets (dy * d * W + dx * d, d clamped by effective_dilation) must fit in int.
  const int64_t d_eff = std::min<int64_t>(dilation, std::max<int64_t>({H, W, 1}));
  TORCH_CHECK(H * W + d_eff * (W + 1) < (int64_t{1} << 31), op,
              ": H * W too large for the kernel, got ", H, " x ", W);
  TORCH_CHECK(B <= 65535 && Cin <= 65535 && Cout <= 65535, op,
              ": batch and channel counts must be <= 65535, got B=", B, ", C_in=", Cin,
              ", C_out=", Cout);
  return {B, Cin, Cout, H, W};
}

std::optional<at::Tensor> contig(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

// A dilation >= max(H, W) puts every off-centre tap outside the image, exactly like
// max(H, W) itself does, so the kernels use the clamped value (keeps flat offsets small).
int effective_dilation(int64_t d, int64_t H, int64_t W) {
  return static_cast<int>(std::min<int64_t>(d, std::max<int64_t>({H, W, 1})));
}

void check_arch() {
  TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 8,
              "hdc_stage: the CUDA kernel needs compute capability >= 8.0");
}

// The `depthwise` argument: "pixel" -> false, "band" -> true; anything else is an error naming
// the op and the accepted values.
bool parse_depthwise(c10::string_view depthwise, const char* op) {
  TORCH_CHECK(depthwise == "pixel" || depthwise == "band", op,
              ": depthwise must be 'pixel' or 'band', got '", std::string(depthwise), "'");
  return depthwise == "band";
}

// mtlkit::hdc_stage(x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, depthwise) -> out
// (`depthwise` only matters to the backward; the forward checks it and autograd passes it on)
// Forward kernel choice: MTLKIT_HDC_FWD=auto (default: the resident-weight kernel for 16-bit
// dtypes and 128 < C_in <= 256 when the device grants the shared memory), resident (whenever
// C_in <= 256 and the memory fits) or tiled (always the per-32-channel kernel).
bool use_resident_forward(int64_t Cin, int smem_bytes, bool half_precision) {
  static const std::string mode = [] {
    const char* env = std::getenv("MTLKIT_HDC_FWD");
    return std::string(env != nullptr ? env : "auto");
  }();
  if (mode == "tiled" || Cin > kResK || Cin < 1) return false;
  // auto: 16-bit only (H100, B = 8, C = 256, 60x80: bf16 166 us vs 230 us per stage; float32
  // with 3xTF32 the tiled kernel is faster, 436 us vs 680 us)
  if (mode != "resident" && (Cin <= 128 || !half_precision)) return false;
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const size_t static_bytes = sizeof(float) * kResK * 10;
  return prop->sharedMemPerBlockOptin >= static_cast<size_t>(smem_bytes) + static_bytes;
}

at::Tensor hdc_stage_cuda(const at::Tensor& x_in, const at::Tensor& dw_w_in,
                          const std::optional<at::Tensor>& dw_b_in, const at::Tensor& pw_w_in,
                          const std::optional<at::Tensor>& pw_b_in, int64_t dilation,
                          c10::string_view depthwise) {
  const Shapes s = check_stage("hdc_stage", x_in, dw_w_in, dw_b_in, pw_w_in, pw_b_in, dilation);
  parse_depthwise(depthwise, "hdc_stage");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dw_w = dw_w_in.contiguous(), pw_w = pw_w_in.contiguous();
  const auto dw_b = contig(dw_b_in), pw_b = contig(pw_b_in);
  at::Tensor out = at::empty({s.B, s.Cout, s.H, s.W}, x.options());
  if (out.numel() == 0) return out;
  if (s.Cin == 0) {  // empty contraction: relu(bias)
    if (pw_b.has_value())
      out.copy_(at::relu(*pw_b).view({1, s.Cout, 1, 1}).expand_as(out));
    else
      out.zero_();
    return out;
  }
  check_arch();
  const int P = static_cast<int>(s.H * s.W);
  const int bm = pick_bm(s.Cout);
  const bool vec = pw_vec_ok(pw_w);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  bool resident = false;
  dispatch_dtype(x.scalar_type(), "hdc_stage", [&](auto tag) {
    using T = decltype(tag);
    using Cfg = ResCfg<T>;
    if (!use_resident_forward(s.Cin, Cfg::Mma::AB_BYTES, sizeof(T) == 2)) return;
    resident = true;
    auto* kern = &hdc_fwd_resident_kernel<T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        Cfg::Mma::AB_BYTES));
    const int64_t tiles = s.B * ((P + Cfg::BN - 1) / Cfg::BN);
    const int64_t ny = (s.Cout + Cfg::BM - 1) / Cfg::BM;
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(tiles, sms / ny))),
                    static_cast<unsigned>(ny));
    kern<<<grid, Cfg::THREADS, Cfg::Mma::AB_BYTES, stream>>>(
        cptr<T>(x), cptr<T>(dw_w), optr<T>(dw_b), cptr<T>(pw_w), optr<T>(pw_b), mptr<T>(out),
        static_cast<int>(s.B), static_cast<int>(s.Cin), static_cast<int>(s.Cout),
        static_cast<int>(s.H), static_cast<int>(s.W), effective_dilation(dilation, s.H, s.W),
        vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (resident) return out;
  dispatch_dtype(x.scalar_type(), "hdc_stage", [&](auto tag) {
    using T = decltype(tag);
    dispatch_bm(bm, [&](auto bm_tag) {
      constexpr int BM = decltype(bm_tag)::value;
      const dim3 grid((P + HdcCfg<BM>::BN - 1) / HdcCfg<BM>::BN,
                      static_cast<unsigned>((s.Cout + BM - 1) / BM), static_cast<unsigned>(s.B));
      hdc_fwd_kernel<T, BM><<<grid, HdcCfg<BM>::THREADS, 0, stream>>>(
          cptr<T>(x), cptr<T>(dw_w), optr<T>(dw_b), cptr<T>(pw_w), optr<T>(pw_b), mptr<T>(out),
          static_cast<int>(s.Cin), static_cast<int>(s.Cout), static_cast<int>(s.H),
          static_cast<int>(s.W), effective_dilation(dilation, s.H, s.W), vec);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// band_geometry for `kern` on the current device (raising the kernel's dynamic shared-memory
// attribute when the plan needs more than the default 48 KB).
template <typename K>
BandPlan plan_band(K* kern, int H, int W, int d, int nbuf) {
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kern));
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const auto stat = static_cast<int64_t>(attr.sharedSizeBytes);
  const int64_t default_limit = static_cast<int64_t>(prop->sharedMemPerBlock) - stat;
  const BandPlan bp = band_geometry(
      H, W, d, nbuf, default_limit, static_cast<int64_t>(prop->sharedMemPerBlockOptin) - stat);
  if (bp.smem > default_limit)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bp.smem)));
  return bp;
}

// 16-byte loads of whole rows of T: every plane row starts 16-byte aligned.
template <typename T>
bool band_vec_ok(const at::Tensor& t, int W) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0 &&
         (static_cast<int64_t>(W) * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// mtlkit::hdc_stage_backward(grad_out, x, out, dw_weight, dw_bias, pw_weight, dilation,
//   depthwise) -> (grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias)
// depthwise: "pixel" (one pixel per thread, taps gathered through L1) or "band" (one row band
// per CTA staged in shared memory) for the two depthwise kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hdc_stage_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& out_in,
    const at::Tensor& dw_w_in, const std::optional<at::Tensor>& dw_b_in,
    const at::Tensor& pw_w_in, int64_t dilation, c10::string_view depthwise) {
  const Shapes s =
      check_stage("hdc_stage_backward", x_in, dw_w_in, dw_b_in, pw_w_in, std::nullopt, dilation);
  for (const at::Tensor* t : {&grad_out_in, &out_in}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == s.B && t->size(1) == s.Cout &&
                    t->size(2) == s.H && t->size(3) == s.W,
                "hdc_stage_backward: grad_out and out must have shape (B, C_out, H, W) = (", s.B,
                ", ", s.Cout, ", ", s.H, ", ", s.W, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == x_in.scalar_type() && t->device() == x_in.device(),
                "hdc_stage_backward: grad_out and out must match x in dtype and device");
  }
  const bool band = parse_depthwise(depthwise, "hdc_stage_backward");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dw_w = dw_w_in.contiguous(), pw_w = pw_w_in.contiguous();
  const at::Tensor gout = grad_out_in.contiguous(), out = out_in.contiguous();
  const auto dw_b = contig(dw_b_in);
  const auto opts = x.options();
  const auto fopts = opts.dtype(at::kFloat);

  if (x.numel() == 0 || s.Cout == 0) {
    return {at::zeros_like(x), at::zeros_like(dw_w), at::zeros({s.Cin}, opts), at::zeros_like(pw_w),
            at::zeros({s.Cout}, opts)};
  }
  check_arch();
  const int P = static_cast<int>(s.H * s.W);
  const int B = static_cast<int>(s.B), Cin = static_cast<int>(s.Cin);
  const int H = static_cast<int>(s.H), W = static_cast<int>(s.W);
  const int d = effective_dilation(dilation, s.H, s.W);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // gz = grad_out * (out > 0): the ReLU mask from the saved stage output.
  const at::Tensor gz = at::threshold_backward(gout, out, 0).view({s.B, s.Cout, P});
  // gy = pw_w^T gz: one batched GEMM with the weight broadcast over the batch (cuBLAS).
  const at::Tensor gy = at::bmm(pw_w.t().expand({s.B, s.Cin, s.Cout}), gz);
  // d pw_w = sum_b gz_b y_b^T with y recomputed (hdc_dw_kernel or hdc_dw_band_kernel),
  // d pw_b = sum gz; both summed over the batch in float32.
  at::Tensor y = at::empty_like(x);
  at::Tensor gx = at::empty_like(x);  // every element written by the grad_x kernel
  // gx and the depthwise weight/bias partials over pixel chunks (pixel kernel: chunks of
  // kGradXChunk flattened pixels; band kernel: one chunk per row band), summed below.
  const int nchunk_x = (P + kGradXChunk - 1) / kGradXChunk;
  at::Tensor part_dw;

  dispatch_dtype(x.scalar_type(), "hdc_stage_backward", [&](auto tag) {
    using T = decltype(tag);
    const BandPlan p0 = band ? plan_band(&hdc_dw_band_kernel<T>, H, W, d, 1) : BandPlan{};
    if (p0.R > 0) {
      const dim3 g0(p0.nbands, Cin, B);
      hdc_dw_band_kernel<T><<<g0, kBandThreads, p0.smem, stream>>>(
          cptr<T>(x), cptr<T>(dw_w), optr<T>(dw_b), mptr<T>(y), Cin, H, W, d, p0.R, p0.L, p0.SW,
          band_vec_ok<T>(x, W));
    } else {
      const dim3 g0((P + 255) / 256, Cin, B);
      hdc_dw_kernel<T><<<g0, 256, 0, stream>>>(cptr<T>(x), cptr<T>(dw_w), optr<T>(dw_b),
                                               mptr<T>(y), Cin, H, W, d);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const BandPlan p3 = band ? plan_band(&hdc_grad_x_band_kernel<T>, H, W, d, 2) : BandPlan{};
    const int nchunk = p3.R > 0 ? p3.nbands : nchunk_x;
    part_dw = at::empty({static_cast<int64_t>(B) * nchunk, Cin, 10}, fopts);
    const dim3 g3(nchunk, Cin, B);
    if (p3.R > 0) {
      hdc_grad_x_band_kernel<T><<<g3, kBandThreads, p3.smem, stream>>>(
          cptr<T>(gy), cptr<T>(x), cptr<T>(dw_w), mptr<T>(gx), part_dw.data_ptr<float>(), Cin, H,
          W, d, p3.R, p3.L, p3.SW, band_vec_ok<T>(x, W) && band_vec_ok<T>(gy, W));
    } else {
      hdc_grad_x_kernel<T><<<g3, 256, 0, stream>>>(cptr<T>(gy), cptr<T>(x), cptr<T>(dw_w),
                                                   mptr<T>(gx), part_dw.data_ptr<float>(), Cin,
                                                   H, W, d, kGradXChunk);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // (explicit IntArrayRef: a braced list is ambiguous with OptionalIntArrayRef in some torch)
  const std::array<int64_t, 1> batch_dim{0};
  const std::array<int64_t, 2> batch_pixel_dims{0, 2};
  const at::Tensor g_pw_w =
      at::sum(at::bmm(gz, y.view({s.B, s.Cin, P}).transpose(1, 2)), at::IntArrayRef(batch_dim),
              false, at::kFloat)
          .to(pw_w.scalar_type());
  const at::Tensor g_pw_b =
      at::sum(gz, at::IntArrayRef(batch_pixel_dims), false, at::kFloat).to(pw_w.scalar_type());

  const at::Tensor dws = part_dw.sum(0);  // (C_in, 10) float32
  // contiguous: the narrowed (C_in, 10) rows would otherwise keep a row stride of 10, which
  // disagrees with the fake kernel (torch.compile checks the strides)
  at::Tensor g_dw_w =
      dws.narrow(1, 0, 9).reshape({Cin, 1, 3, 3}).to(dw_w.scalar_type()).contiguous();
  at::Tensor g_dw_b = dws.select(1, 9).to(dw_w.scalar_type()).contiguous();
  return {gx, g_dw_w, g_dw_b, g_pw_w, g_pw_b};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtlkit, m) {
  m.def(
      "hdc_stage(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias,"
      " int dilation, str depthwise=\"pixel\") -> Tensor");
  m.def(
      "hdc_stage_backward(Tensor grad_out, Tensor x, Tensor out, Tensor dw_weight,"
      " Tensor? dw_bias, Tensor pw_weight, int dilation, str depthwise=\"pixel\")"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mtlkit, CUDA, m) {
  m.impl("hdc_stage", &hdc_stage_cuda);
  m.impl("hdc_stage_backward", &hdc_stage_backward_cuda);
}

}  // namespace mtlkit
