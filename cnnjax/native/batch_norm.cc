// Training-mode BatchNorm kernels for XLA:CPU (AVX-512, float32, channels last).
//
// Every operand is viewed as rows [M, C] (M = the product of the leading axes), C a
// multiple of 16. With z = (x - mean) a + b (+ r) the normalized pre-activation and
// y = relu(z) or z (attribute relu):
// cnnjax_bn_stats:              x -> mean[C], var[C] (biased), one read of x
// cnnjax_bn_apply(_residual):   x, mean, a, b (, r) -> y
// cnnjax_bn_grad_reduce:        x, y, dy, mean -> sum(dz), sum(dz (x - mean)) over rows,
//                               where dz = dy masked by y > 0 under relu (ReLU's gradient at
//                               0 is 0, as in JAX), else dy
// cnnjax_bn_grad_apply(_residual): x, y, dy, mean, alpha, beta, gamma ->
//                               dx = alpha dz + beta + gamma (x - mean) (, dr = dz)
// XLA:CPU runs the same elementwise fusions at a third of memory speed or less (measured
// in docs/performance.md); these stream each operand once per call.
//
// Rows are split into fixed chunks of about 64 KB (independent of the thread count).
// Reductions sum each chunk in float32 registers, then combine the chunks' float64
// partials in chunk order, so results do not depend on the number of threads. The
// statistics take each chunk's mean and squared deviations from it while the chunk is
// in cache (with the sum of deviations correcting both for the rounding of that mean)
// and merge them exactly (Chan, Golub & LeVeque 1979), so the variance has no
// E[x^2] - E[x]^2 cancellation.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using cnnjax::ParallelFor;

constexpr int64_t kChunkFloats = 16384;

struct Rows {
  int64_t m = 0, c = 0, chunk_rows = 0, chunks = 0;
};

// The [M, C] view of x; false unless C is a positive multiple of 16.
bool RowsOf(ffi::Buffer<ffi::F32>& x, Rows* r) {
  auto d = x.dimensions();
  if (d.size() < 1) return false;
  r->c = d.back();
  if (r->c % 16 || r->c == 0) return false;
  r->m = x.element_count() / r->c;
  r->chunk_rows = std::max<int64_t>(1, kChunkFloats / r->c);
  r->chunks = (r->m + r->chunk_rows - 1) / r->chunk_rows;
  return true;
}

bool SameSize(const Rows& r, int64_t elements) { return elements == r.m * r.c; }

template <typename B>
bool Channels(const Rows& r, const B& v) { return v.element_count() == r.c; }

ffi::Error Bad(const char* name) {
  return ffi::Error::InvalidArgument(std::string(name) + ": inconsistent shapes");
}

inline __m512 Masked(bool relu, __m512 y, __m512 dy) {
  return relu ? _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), dy)
              : dy;
}

ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                     ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_stats: channels must be a positive multiple of 16");
  if (!Channels(r, *mean) || !Channels(r, *var)) return Bad("cnnjax_bn_stats");
  const int64_t c = r.c, vecs = c / 16;
  // Per chunk: its mean and sum of squared deviations, per channel.
  std::vector<double> part_mean(r.chunks * c), part_m2(r.chunks * c);
  const float* xs = x.typed_data();
  double* pm = part_mean.data();
  double* p2 = part_m2.data();
  ParallelFor(pool, r.chunks, [=](int64_t k) {
    const int64_t m0 = k * r.chunk_rows, m1 = std::min(r.m, m0 + r.chunk_rows);
    const float inv_rows = 1.0f / static_cast<float>(m1 - m0);
    for (int64_t v = 0; v < vecs; ++v) {
      __m512 s = _mm512_setzero_ps();
      for (int64_t i = m0; i < m1; ++i) s = _mm512_add_ps(s, _mm512_loadu_ps(xs + i * c + 16 * v));
      const __m512 mu = _mm512_mul_ps(s, _mm512_set1_ps(inv_rows));
      // Deviations from the rounded mean mu, and their sum, which corrects mu and the
      // squared deviations to the chunk's exact mean: sum (x - mean)^2 = q - d^2 / n.
      __m512 d_sum = _mm512_setzero_ps(), q = _mm512_setzero_ps();
      for (int64_t i = m0; i < m1; ++i) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xs + i * c + 16 * v), mu);
        d_sum = _mm512_add_ps(d_sum, d);
        q = _mm512_fmadd_ps(d, d, q);
      }
      alignas(64) float mu_out[16], d_out[16], q_out[16];
      _mm512_store_ps(mu_out, mu);
      _mm512_store_ps(d_out, d_sum);
      _mm512_store_ps(q_out, q);
      const double rows = static_cast<double>(m1 - m0);
      for (int64_t l = 0; l < 16; ++l) {
        const double d = d_out[l];
        pm[k * c + 16 * v + l] = mu_out[l] + d / rows;
        p2[k * c + 16 * v + l] = std::max(0.0, q_out[l] - d * d / rows);
      }
    }
  });
  float* mo = mean->typed_data();
  float* vo = var->typed_data();
  for (int64_t ch = 0; ch < c; ++ch) {
    double n = 0, mu = 0, m2 = 0;
    for (int64_t k = 0; k < r.chunks; ++k) {
      const double nk = static_cast<double>(std::min(r.m, (k + 1) * r.chunk_rows) -
                                            k * r.chunk_rows);
      const double delta = pm[k * c + ch] - mu, total = n + nk;
      mu += delta * nk / total;
      m2 += p2[k * c + ch] + delta * delta * n * nk / total;
      n = total;
    }
    mo[ch] = static_cast<float>(mu);
    vo[ch] = r.m ? static_cast<float>(m2 / n) : 0.0f;
  }
  return ffi::Error::Success();
}

template <bool kResidual>
void ApplyRows(const Rows& r, ffi::ThreadPool& pool, const float* xs, const float* ms,
               const float* as, const float* bs, const float* rs, float* ys, bool relu) {
  const int64_t c = r.c, vecs = c / 16;
  ParallelFor(pool, r.chunks, [=](int64_t k) {
    const int64_t m0 = k * r.chunk_rows, m1 = std::min(r.m, m0 + r.chunk_rows);
    for (int64_t i = m0; i < m1; ++i)
      for (int64_t v = 0; v < vecs; ++v) {
        const int64_t e = i * c + 16 * v;
        const __m512 xc = _mm512_sub_ps(_mm512_loadu_ps(xs + e), _mm512_loadu_ps(ms + 16 * v));
        __m512 z = _mm512_fmadd_ps(xc, _mm512_loadu_ps(as + 16 * v), _mm512_loadu_ps(bs + 16 * v));
        if (kResidual) z = _mm512_add_ps(z, _mm512_loadu_ps(rs + e));
        if (relu) z = _mm512_max_ps(z, _mm512_setzero_ps());
        _mm512_storeu_ps(ys + e, z);
      }
  });
}

ffi::Error ApplyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                     ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                     ffi::ResultBuffer<ffi::F32> y, int64_t relu) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_apply: channels must be a positive multiple of 16");
  if (!Channels(r, mean) || !Channels(r, a) || !Channels(r, b) ||
      !SameSize(r, y->element_count()))
    return Bad("cnnjax_bn_apply");
  ApplyRows<false>(r, pool, x.typed_data(), mean.typed_data(), a.typed_data(), b.typed_data(), nullptr,
                   y->typed_data(), relu != 0);
  return ffi::Error::Success();
}

ffi::Error ApplyResidualImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                             ffi::Buffer<ffi::F32> res, ffi::ResultBuffer<ffi::F32> y,
                             int64_t relu) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_apply_residual: channels must be a positive multiple of 16");
  if (!Channels(r, mean) || !Channels(r, a) || !Channels(r, b) ||
      !SameSize(r, res.element_count()) ||
      !SameSize(r, y->element_count()))
    return Bad("cnnjax_bn_apply_residual");
  ApplyRows<true>(r, pool, x.typed_data(), mean.typed_data(), a.typed_data(), b.typed_data(), res.typed_data(),
                  y->typed_data(), relu != 0);
  return ffi::Error::Success();
}

ffi::Error GradReduceImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy,
                          ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_dz,
                          ffi::ResultBuffer<ffi::F32> sum_dz_xc, int64_t relu) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_grad_reduce: channels must be a positive multiple of 16");
  if (!SameSize(r, y.element_count()) || !SameSize(r, dy.element_count()) ||
      !Channels(r, mean) || !Channels(r, *sum_dz) || !Channels(r, *sum_dz_xc))
    return Bad("cnnjax_bn_grad_reduce");
  const int64_t c = r.c, vecs = c / 16;
  std::vector<double> part(r.chunks * 2 * c);
  const float *xs = x.typed_data(), *ys = y.typed_data(), *gs = dy.typed_data();
  const float* ms = mean.typed_data();
  double* ps = part.data();
  const bool masked = relu != 0;
  ParallelFor(pool, r.chunks, [=](int64_t k) {
    const int64_t m0 = k * r.chunk_rows, m1 = std::min(r.m, m0 + r.chunk_rows);
    for (int64_t v = 0; v < vecs; ++v) {
      const __m512 mu = _mm512_loadu_ps(ms + 16 * v);
      __m512 s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps();
      for (int64_t i = m0; i < m1; ++i) {
        const int64_t e = i * c + 16 * v;
        const __m512 dz = Masked(masked, _mm512_loadu_ps(ys + e), _mm512_loadu_ps(gs + e));
        s1 = _mm512_add_ps(s1, dz);
        s2 = _mm512_fmadd_ps(dz, _mm512_sub_ps(_mm512_loadu_ps(xs + e), mu), s2);
      }
      alignas(64) float o1[16], o2[16];
      _mm512_store_ps(o1, s1);
      _mm512_store_ps(o2, s2);
      for (int64_t l = 0; l < 16; ++l) {
        ps[(2 * k) * c + 16 * v + l] = o1[l];
        ps[(2 * k + 1) * c + 16 * v + l] = o2[l];
      }
    }
  });
  float* o1 = sum_dz->typed_data();
  float* o2 = sum_dz_xc->typed_data();
  for (int64_t ch = 0; ch < c; ++ch) {
    double t1 = 0, t2 = 0;
    for (int64_t k = 0; k < r.chunks; ++k) {
      t1 += ps[(2 * k) * c + ch];
      t2 += ps[(2 * k + 1) * c + ch];
    }
    o1[ch] = static_cast<float>(t1);
    o2[ch] = static_cast<float>(t2);
  }
  return ffi::Error::Success();
}

template <bool kResidual>
void GradApplyRows(const Rows& r, ffi::ThreadPool& pool, const float* xs, const float* ys,
                   const float* gs, const float* ms, const float* al, const float* be,
                   const float* ga, float* dxs, float* drs, bool relu) {
  const int64_t c = r.c, vecs = c / 16;
  ParallelFor(pool, r.chunks, [=](int64_t k) {
    const int64_t m0 = k * r.chunk_rows, m1 = std::min(r.m, m0 + r.chunk_rows);
    for (int64_t i = m0; i < m1; ++i)
      for (int64_t v = 0; v < vecs; ++v) {
        const int64_t e = i * c + 16 * v, f = 16 * v;
        const __m512 dz = Masked(relu, _mm512_loadu_ps(ys + e), _mm512_loadu_ps(gs + e));
        const __m512 xc = _mm512_sub_ps(_mm512_loadu_ps(xs + e), _mm512_loadu_ps(ms + f));
        const __m512 dx = _mm512_fmadd_ps(
            _mm512_loadu_ps(al + f), dz,
            _mm512_fmadd_ps(_mm512_loadu_ps(ga + f), xc, _mm512_loadu_ps(be + f)));
        _mm512_storeu_ps(dxs + e, dx);
        if (kResidual) _mm512_storeu_ps(drs + e, dz);
      }
  });
}

bool GradApplyShapes(const Rows& r, ffi::Buffer<ffi::F32>& y, ffi::Buffer<ffi::F32>& dy,
                     ffi::Buffer<ffi::F32>& mean, ffi::Buffer<ffi::F32>& alpha,
                     ffi::Buffer<ffi::F32>& beta, ffi::Buffer<ffi::F32>& gamma,
                     int64_t dx_elements) {
  return SameSize(r, y.element_count()) && SameSize(r, dy.element_count()) &&
         Channels(r, mean) && Channels(r, alpha) && Channels(r, beta) && Channels(r, gamma) &&
         SameSize(r, dx_elements);
}

ffi::Error GradApplyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                         ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                         ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> beta,
                         ffi::Buffer<ffi::F32> gamma, ffi::ResultBuffer<ffi::F32> dx,
                         int64_t relu) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_grad_apply: channels must be a positive multiple of 16");
  if (!GradApplyShapes(r, y, dy, mean, alpha, beta, gamma, dx->element_count()))
    return Bad("cnnjax_bn_grad_apply");
  GradApplyRows<false>(r, pool, x.typed_data(), y.typed_data(), dy.typed_data(),
                       mean.typed_data(), alpha.typed_data(), beta.typed_data(),
                       gamma.typed_data(), dx->typed_data(), nullptr, relu != 0);
  return ffi::Error::Success();
}

ffi::Error GradApplyResidualImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy,
                                 ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> alpha,
                                 ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> gamma,
                                 ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dr,
                                 int64_t relu) {
  Rows r;
  if (!RowsOf(x, &r)) return ffi::Error::InvalidArgument("cnnjax_bn_grad_apply_residual: channels must be a positive multiple of 16");
  if (!GradApplyShapes(r, y, dy, mean, alpha, beta, gamma, dx->element_count()) ||
      !SameSize(r, dr->element_count()))
    return Bad("cnnjax_bn_grad_apply_residual");
  GradApplyRows<true>(r, pool, x.typed_data(), y.typed_data(), dy.typed_data(),
                      mean.typed_data(), alpha.typed_data(), beta.typed_data(),
                      gamma.typed_data(), dx->typed_data(), dr->typed_data(), relu != 0);
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_stats, StatsImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Ret<F32>()
                                  .Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_apply, ApplyImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_apply_residual, ApplyResidualImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_grad_reduce, GradReduceImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_grad_apply, GradApplyImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_bn_grad_apply_residual, GradApplyResidualImpl,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Attr<int64_t>("relu"));
