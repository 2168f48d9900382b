// CPU emulation of the parts of the CUDA execution model that mtlkit's tensor-core attention
// kernels use, so that the real kernel source (csrc/attention_tc_kernels.cuh) runs in the tests
// on a machine without a GPU.
//
// Model: a launch runs its CTAs one after another. The threads of a CTA are cooperative fibers
// (ucontext) on one OS thread; a fiber runs until it reaches __syncthreads or a warp-collective
// instruction (__shfl_xor_sync, ldmatrix, mma.sync), where it waits for the other participants.
// Two schedules, both in an order shuffled by a seed: `lockstep` gives every thread one turn per
// round, so the warps advance together; `greedy` runs one warp as far as it can go (to a
// __syncthreads) before the next one starts, so a warp that writes shared memory without a
// barrier does so while the others have not yet read the old contents. Barriers that can never
// complete (a thread exited or waits elsewhere) are reported as deadlocks instead of hanging.
// Dynamic shared memory is filled with 0xFF bytes (NaN as bf16/f16) before each CTA, so reading
// shared memory that the kernel never wrote poisons the results. Static __shared__ arrays are
// function-local statics (one CTA runs at a time). Asynchronous copies (cp.async) land either at
// cp.async.wait_group (`copies_land_early` false: reading before the wait sees the poison) or at
// once (true: a copy issued while another warp still reads the old tile overwrites it); the
// hardware may do either, so the tests run both.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {

constexpr int kWarp = 32;
// Shared memory per CTA of an H100: the default limit and the opt-in maximum (bytes).
constexpr int64_t kDefaultSmem = 48 * 1024;
constexpr int64_t kOptinSmem = 232448;
constexpr size_t kStackBytes = 256 * 1024;

// What one lane hands to, and receives from, a warp-collective instruction.
struct LaneSlot {
  uint32_t in[10];
  const void* ptr;
  float out[4];
  uint32_t out_u[4];
};

struct Copy {  // one pending cp.async
  void* dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  bool done = false;
  std::vector<Copy> open;                  // cp.async issued since the last commit
  std::vector<std::vector<Copy>> pending;  // committed groups, oldest first
};

struct Cta {
  int nthreads = 0;
  dim3 block;
  std::vector<Fiber> fibers;
  ucontext_t sched;
  int cur = -1;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> smem_buf;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  unsigned block_gen = 0;
  int block_arrived = 0;
  std::vector<unsigned> warp_gen;
  std::vector<int> warp_arrived;
  std::vector<LaneSlot> lanes;  // nthreads slots
  uint64_t progress = 0;
  std::string error;
};

inline dim3 thread_idx, block_idx, block_dim, grid_dim;
inline Cta* cta = nullptr;
inline bool copies_land_early = false;

inline int tid() { return cta->cur; }

// Give the OS thread back to the scheduler; returns when this fiber is resumed.
inline void yield() { swapcontext(&cta->fibers[cta->cur].ctx, &cta->sched); }

// Record an emulation error and stop this CTA (the scheduler throws it).
[[noreturn]] inline void fail(const std::string& msg) {
  if (cta->error.empty()) cta->error = msg;
  swapcontext(&cta->fibers[cta->cur].ctx, &cta->sched);
  std::abort();  // never resumed
}

inline void syncthreads() {
  Cta& c = *cta;
  const unsigned gen = c.block_gen;
  ++c.progress;
  if (++c.block_arrived == c.nthreads) {
    c.block_arrived = 0;
    ++c.block_gen;
  } else {
    while (c.block_gen == gen) yield();
  }
}

// Runs `compute(slots of the warp)` once every lane of the calling warp has arrived (the last
// lane to arrive computes for all); every lane returns after that.
template <typename Compute>
inline void warp_collective(Compute&& compute) {
  Cta& c = *cta;
  const int w = tid() / kWarp;
  const unsigned gen = c.warp_gen[w];
  ++c.progress;
  if (++c.warp_arrived[w] == kWarp) {
    compute(&c.lanes[static_cast<size_t>(w) * kWarp]);
    c.warp_arrived[w] = 0;
    ++c.warp_gen[w];
  } else {
    while (c.warp_gen[w] == gen) yield();
  }
}

inline LaneSlot& my_slot() { return cta->lanes[tid()]; }

inline bool in_smem(const void* p, size_t bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  return b >= cta->smem && b + bytes <= cta->smem + cta->smem_bytes;
}

inline void fiber_main() {
  (*cta->body)();
  cta->fibers[cta->cur].done = true;
  // returning resumes uc_link (the scheduler)
}

struct Options {
  uint32_t seed = 12345;      // shuffles the thread order
  bool greedy = false;        // greedy warps instead of lockstep
  bool early_copies = false;  // copies_land_early
};

// Resumes fiber i until it blocks or ends; returns whether it ended.
inline bool resume(Cta& c, int i) {
  const dim3 b = c.block;
  c.cur = i;
  thread_idx = dim3(i % b.x, (i / b.x) % b.y, i / (b.x * b.y));
  swapcontext(&c.sched, &c.fibers[i].ctx);
  if (!c.error.empty()) throw std::runtime_error(c.error);
  return c.fibers[i].done;
}

// Runs body() as every thread of every CTA of the grid (CTAs in x, y, z order).
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body,
                   const Options& opt = {}) {
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  copies_land_early = opt.early_copies;
  Cta c;
  c.nthreads = static_cast<int>(block.x * block.y * block.z);
  if (c.nthreads % kWarp != 0) throw std::invalid_argument("emu: block size must be whole warps");
  c.block = block;
  c.body = &body;
  c.fibers.resize(c.nthreads);
  for (auto& f : c.fibers) f.stack.reset(new char[kStackBytes]);
  c.smem_buf.resize(smem_bytes + 16);
  c.smem = c.smem_buf.data() + (16 - reinterpret_cast<uintptr_t>(c.smem_buf.data()) % 16) % 16;
  c.smem_bytes = smem_bytes;
  c.warp_gen.assign(c.nthreads / kWarp, 0);
  c.warp_arrived.assign(c.nthreads / kWarp, 0);
  c.lanes.resize(c.nthreads);
  std::mt19937 rng(opt.seed);
  const int nwarps = c.nthreads / kWarp;
  std::vector<int> order(c.nthreads), warps(nwarps), lanes(kWarp);
  for (int i = 0; i < c.nthreads; ++i) order[i] = i;
  for (int w = 0; w < nwarps; ++w) warps[w] = w;
  for (int l = 0; l < kWarp; ++l) lanes[l] = l;

  Cta* const saved = cta;
  cta = &c;
  block_dim = block;
  grid_dim = grid;
  try {
    for (unsigned bz = 0; bz < grid.z; ++bz) {
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          block_idx = dim3(bx, by, bz);
          std::memset(c.smem, 0xFF, smem_bytes);
          c.block_gen = 0;
          c.block_arrived = 0;
          std::fill(c.warp_gen.begin(), c.warp_gen.end(), 0u);
          std::fill(c.warp_arrived.begin(), c.warp_arrived.end(), 0);
          for (auto& f : c.fibers) {
            f.done = false;
            f.open.clear();
            f.pending.clear();
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.get();
            f.ctx.uc_stack.ss_size = kStackBytes;
            f.ctx.uc_link = &c.sched;
            makecontext(&f.ctx, fiber_main, 0);
          }
          int alive = c.nthreads;
          while (alive > 0) {
            const uint64_t before = c.progress;
            int finished = 0;
            if (opt.greedy) {
              std::shuffle(warps.begin(), warps.end(), rng);
              for (const int w : warps) {
                for (uint64_t seen = ~uint64_t{0}; seen != c.progress;) {  // until it blocks
                  seen = c.progress;
                  std::shuffle(lanes.begin(), lanes.end(), rng);
                  for (const int l : lanes) {
                    const int i = w * kWarp + l;
                    if (!c.fibers[i].done && resume(c, i)) ++finished;
                  }
                }
              }
            } else {
              std::shuffle(order.begin(), order.end(), rng);
              for (const int i : order) {
                if (!c.fibers[i].done && resume(c, i)) ++finished;
              }
            }
            alive -= finished;
            if (alive > 0 && finished == 0 && c.progress == before) {
              throw std::runtime_error(
                  "emu: deadlock: " + std::to_string(alive) +
                  " threads wait at a barrier that the others never reach (block " +
                  std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) + ")");
            }
          }
        }
      }
    }
  } catch (...) {
    cta = saved;
    throw;
  }
  cta = saved;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { emu::syncthreads(); }

// The running CTA's dynamic shared memory (csrc/dyn_smem.cuh on the GPU).
inline unsigned char* dyn_smem() { return emu::cta->smem; }

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  if (mask != 0xffffffffu) emu::fail("emu: __shfl_xor_sync with a partial mask");
  std::memcpy(&emu::my_slot().in[0], &v, 4);
  emu::warp_collective([lane_mask](emu::LaneSlot* s) {
    for (int l = 0; l < emu::kWarp; ++l) {
      std::memcpy(&s[l].out[0], &s[(l ^ lane_mask) & 31].in[0], 4);
    }
  });
  return emu::my_slot().out[0];
}

inline float __expf(float x) { return std::exp(x); }
inline int min(int a, int b) { return a < b ? a : b; }

// One CTA runs at a time, so a read-modify-write is atomic.
inline float atomicAdd(float* address, float v) {
  const float old = *address;
  *address = old + v;
  return old;
}
