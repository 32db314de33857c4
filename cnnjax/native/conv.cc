// Direct convolution kernels for XLA:CPU (AVX-512, float32, NHWC / HWIO).
//
// With strides (sh, sw), attributes stride_h and stride_w of both calls:
// cnnjax_conv_forward:     y[n, h, w, o] = sum_{i, j, c} xp[n, h sh + i, w sw + j, c] k[i, j, c, o]
//                          (a VALID correlation; the caller pads x, and computes an input
//                          gradient as the stride-1 correlation of dy, dilated by the strides
//                          and padded, with the flipped kernel)
// cnnjax_conv_kernel_grad: dk[i, j, c, o] = sum_{n, h, w} xp[n, h sh + i, w sw + j, c] dy[n, h, w, o]
//
// Output channels come in vectors of 16. Each output pixel block keeps its sums in
// registers for the whole (i, j, c) reduction: one kernel row load and one broadcast
// of the input per 16-wide multiply-add, no im2col matrix. Work is split over the
// batch on XLA's intra-op thread pool; each output element is computed by one thread
// in a fixed order, and the kernel gradient sums fixed batch chunks in a fixed order,
// so results do not depend on the number of threads.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#include "blocks.inc"

namespace {

struct Work {
  std::function<void(int64_t)> fn;
  int64_t total;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

void RunItems(Work& work) {
  for (int64_t item; (item = work.next.fetch_add(1)) < work.total;) {
    work.fn(item);
    work.done.fetch_add(1, std::memory_order_release);
  }
}

// Runs fn(0..total-1) on the calling thread and the pool. The caller waits only for
// items some thread has already taken, so a busy pool cannot deadlock it.
void ParallelFor(ffi::ThreadPool& pool, int64_t total, std::function<void(int64_t)> fn) {
  auto work = std::make_shared<Work>();
  work->fn = std::move(fn);
  work->total = total;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { RunItems(*work); });
  RunItems(*work);
  while (work->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

int64_t VectorsPerBlock(int64_t remaining) {
  return remaining >= 64 ? 4 : remaining >= 32 ? 2 : 1;
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("cnnjax_conv_forward: expected 4-d operands");
  const int64_t n = xd[0], hp = xd[1], wp = xd[2], cin = xd[3];
  const int64_t kh = kd[0], kw = kd[1], cout = kd[3];
  if (sh < 1 || sw < 1 || hp < kh || wp < kw)
    return ffi::Error::InvalidArgument("cnnjax_conv_forward: bad strides or kernel size");
  const int64_t ho = (hp - kh) / sh + 1, wo = (wp - kw) / sw + 1;
  if (kd[2] != cin || cout % 16 || yd[0] != n || yd[1] != ho || yd[2] != wo || yd[3] != cout)
    return ffi::Error::InvalidArgument("cnnjax_conv_forward: inconsistent shapes");
  const float* xs = x.typed_data();
  const float* ks = k.typed_data();
  float* ys = y->typed_data();
  // One output-channel block at a time over the example, so that the block's kernel
  // slice (kh * kw * cin * 64 floats at most) stays in cache while the rows stream by.
  ParallelFor(pool, n, [=](int64_t b) {
    for (int64_t o0 = 0; o0 < cout;) {
      const int64_t ob = VectorsPerBlock(cout - o0);
      const int64_t* widths = kForwardWidths[ob == 4 ? 2 : ob - 1];
      for (int64_t h = 0; h < ho; ++h) {
        const float* xrow = xs + (b * hp + h * sh) * wp * cin;
        float* yrow = ys + (b * ho + h) * wo * cout;
        for (int64_t w0 = 0, t = 0; w0 < wo;) {
          while (widths[t] > wo - w0) ++t;
          forward_block(ob, widths[t], xrow, ks, yrow, wp * cin, sw * cin, cin, cout, kh, kw, w0,
                        o0);
          w0 += widths[t];
        }
      }
      o0 += 16 * ob;
    }
  });
  return ffi::Error::Success();
}

// Fixed batch chunks of the kernel gradient (independent of the thread count).
constexpr int64_t kKernelGradChunks = 8;

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk, int64_t sh,
                          int64_t sw) {
  auto xd = x.dimensions(), gd = dy.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4)
    return ffi::Error::InvalidArgument("cnnjax_conv_kernel_grad: expected 4-d operands");
  const int64_t n = xd[0], hp = xd[1], wp = xd[2], cin = xd[3];
  const int64_t ho = gd[1], wo = gd[2], cout = gd[3];
  const int64_t kh = kd[0], kw = kd[1];
  if (sh < 1 || sw < 1 || gd[0] != n || kh != hp - (ho - 1) * sh || kw != wp - (wo - 1) * sw ||
      kd[2] != cin || kd[3] != cout || cout % 16)
    return ffi::Error::InvalidArgument("cnnjax_conv_kernel_grad: inconsistent shapes");
  if (n == 0 || ho == 0 || wo == 0) {
    std::memset(dk->typed_data(), 0, dk->element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  const int64_t chunks = std::min(n, kKernelGradChunks);
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  const int64_t taps = kh * kw, tap_size = cin * cout, size = taps * tap_size;
  std::vector<float> partial(chunks * size, 0.0f);
  const float* xs = x.typed_data();
  const float* gs = dy.typed_data();
  float* ps = partial.data();
  ParallelFor(pool, chunks * taps, [=](int64_t item) {
    const int64_t chunk = item / taps, tap = item % taps, i = tap / kw, j = tap % kw;
    const int64_t n0 = std::min(n, chunk * per_chunk), n1 = std::min(n, n0 + per_chunk);
    float* out = ps + chunk * size + tap * tap_size;
    // A few rows at a time (about 64 pixels: x and dy rows stay in L1) while every block
    // of (input channels x output vectors) of this tap's gradient takes its products.
    const int64_t rows_per_pass = std::max<int64_t>(1, std::min<int64_t>(ho, 64 / wo));
    for (int64_t b = n0; b < n1; ++b)
      for (int64_t h = 0; h < ho; h += rows_per_pass) {
        const int64_t rows = std::min(rows_per_pass, ho - h);
        const float* xrow = xs + ((b * hp + h * sh + i) * wp + j) * cin;
        const float* grow = gs + (b * ho + h) * wo * cout;
        for (int64_t o0 = 0; o0 < cout;) {
          const int64_t ob = VectorsPerBlock(cout - o0);
          const int64_t* widths = kKernelGradWidths[ob == 4 ? 2 : ob - 1];
          for (int64_t c0 = 0, t = 0; c0 < cin;) {
            while (widths[t] > cin - c0) ++t;
            kernel_grad_block(ob, widths[t], xrow + c0, grow + o0, out + c0 * cout + o0, rows,
                              wo, sw * cin, sh * wp * cin, cout);
            c0 += widths[t];
          }
          o0 += 16 * ob;
        }
      }
  });
  float* out = dk->typed_data();
  std::memcpy(out, ps, size * sizeof(float));
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t e = 0; e < size; ++e) out[e] += ps[c * size + e];
  return ffi::Error::Success();
}

// Both calls: (x, kernel or dy) -> result, with the strides as attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_conv_forward, ForwardImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_conv_kernel_grad, KernelGradImpl, Binding());
