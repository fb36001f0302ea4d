// One recurrent step of a Mamba block on the CPU: [RMSNorm ->] in_proj -> causal conv over
// the last K inputs -> SiLU -> x_proj -> dt_proj -> selective state update with D skip and
// z gate -> out_proj [-> + residual], for a batch of streams, fp32 or fp64.
//
// Dimension names: B batch, D d_model, E d_inner, N d_state, R dt_rank, K d_conv.
// Layouts (the Python side, core/mamba.py, passes them as they are; all contiguous):
//   x                 (B, D)       the block's input for this step; with a norm weight, the
//                                  residual stream, normalised first and (add_residual)
//                                  returned, in place, plus the block's output
//   conv              (B, E, K-1)  the last K-1 conv inputs, oldest first; updated in place
//   ssm               (B, E, N)    the SSM state; updated in place
//   w_in (2E, D), w_conv (E, 1, K), w_x (R+2N, E), w_dt (E, R), w_out (D, E): nn.Linear /
//   nn.Conv1d weights; b_in, b_conv, b_out optional biases; dt_bias, D (E,); A (E, N)
//   = -exp(A_log), computed once per weight version by the caller.
//   xn (B, D), xz (B, 2E), xc (B, E), dbc (B, R+2N), dt (B, E), y (B, E): scratch the
//   caller keeps with the cache, so a step allocates nothing but its output.
//
// At generation batch sizes the step is bound by reading the weights (a d_model 256 layer
// holds 1.7 MB), so the projections are written here as row-by-row dot products that read
// each weight row once for the whole batch, at the speed of a plain sum over the weights
// (29 GB/s on the development CPU, where MKL's gemv on one row of input reached 6-9),
// without a dispatch per call, and with the residual add fused; above batch 8 they go to
// ATen's mm. Between the projections are two loops over the channels: conv +
// SiLU, and the state update, whose N-long inner loop is one SIMD vector for N = 16 (exp by
// a polynomial). The conv window is shifted in registers: with K - 1 = 3 values per
// channel that costs what a ring buffer's index arithmetic would, and keeps the cache in the
// oldest-first layout that Mamba.forward reads and returns, so a prompt's state needs no
// conversion before stepping.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fast_math.h"

namespace {

constexpr int64_t kMaxConv = 16;
constexpr int64_t kGrain = 256;      // channels per thread chunk
constexpr int64_t kRowGrain = 128;   // weight rows per thread chunk
constexpr int64_t kMaxDotBatch = 8;  // above this batch the projections go to ATen's mm

using mambaseq::fast_exp;

template <typename T>
inline T silu(T x) { return x / (T(1) + fast_exp(-x)); }

inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

// Y[b, r] (+)= bias[r] + sum_c W[r, c] X[b, c] for r < rows, b < batch: one weight row at a
// time, dotted with every batch row while it sits in L1. (Four rows at once, for four
// independent sums, streamed the weights 4x slower on the development CPU: 7 vs 29 GB/s.)
// W (rows, cols) contiguous; X, Y rows at strides ldx, ldy.
template <typename T>
void linear_rows(const T* W, const T* bias, const T* X, int64_t ldx, T* Y, int64_t ldy,
                 int64_t batch, int64_t rows, int64_t cols, bool accumulate) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* w = W + r * cols;
      const T b_r = bias ? bias[r] : T(0);
      for (int64_t b = 0; b < batch; ++b) {
        const T* x = X + b * ldx;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < cols; ++c) acc += w[c] * x[c];
        T& y = Y[b * ldy + r];
        y = accumulate ? y + acc + b_r : acc + b_r;
      }
    }
  });
}

// Y (+)= X W^T + bias through whichever is faster at this batch (see the header).
void linear(const at::Tensor& X, const at::Tensor& W, const c10::optional<at::Tensor>& bias,
            at::Tensor& Y, bool accumulate) {
  const bool has_bias = bias.has_value() && bias->defined();
  if (X.size(0) > kMaxDotBatch) {
    if (accumulate) {
      Y.add_(has_bias ? at::addmm(*bias, X, W.t()) : at::mm(X, W.t()));
    } else if (has_bias) {
      at::addmm_out(Y, *bias, X, W.t());
    } else {
      at::mm_out(Y, X, W.t());
    }
    return;
  }
  TORCH_CHECK(W.is_contiguous() && X.stride(1) == 1 && Y.stride(1) == 1,
              "mamba step: projection operands must have contiguous rows");
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "mamba_step_linear", [&] {
    linear_rows<scalar_t>(W.data_ptr<scalar_t>(),
                          has_bias ? bias->data_ptr<scalar_t>() : nullptr,
                          X.data_ptr<scalar_t>(), X.stride(0), Y.data_ptr<scalar_t>(),
                          Y.stride(0), X.size(0), W.size(0), W.size(1), accumulate);
  });
}

// xn[b] = x[b] / sqrt(mean(x[b]^2) + eps) * w
template <typename T>
void rms_norm(const T* x, const T* w, T eps, T* xn, int64_t batch, int64_t D) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* xb = x + b * D;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += xb[d] * xb[d];
    const T scale = T(1) / std::sqrt(ss / T(D) + eps);
    for (int64_t d = 0; d < D; ++d) xn[b * D + d] = xb[d] * scale * w[d];
  }
}

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// xc[b, e] = silu(b_conv[e] + sum_k w[e, k] window_k) over the window (conv[b, e, :], x);
// the window then drops its oldest input.
template <typename T>
void conv_silu(T* conv, const T* xz, const T* w, const T* bias, T* xc,
               int64_t batch, int64_t E, int64_t K) {
  const int64_t km1 = K - 1;
  at::parallel_for(0, batch * E, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / E, e = i % E;
      T* win = conv + i * km1;
      const T* we = w + e * K;
      const T x_new = xz[b * 2 * E + e];
      T acc = bias ? bias[e] : T(0);
      for (int64_t k = 0; k < km1; ++k) acc += we[k] * win[k];
      acc += we[km1] * x_new;
      for (int64_t k = 0; k + 1 < km1; ++k) win[k] = win[k + 1];
      if (km1 > 0) win[km1 - 1] = x_new;
      xc[i] = silu(acc);
    }
  });
}

// dt = softplus(dt) (dt_bias already added); ssm = ssm * exp(dt A) + dt x B;
// y = (ssm C + D x) silu(z).
template <typename T>
void state_update(T* ssm, const T* xc, const T* dt, const T* A,
                  const T* Dskip, const T* dbc, const T* xz, T* y,
                  int64_t batch, int64_t E, int64_t N, int64_t R) {
  const int64_t row = R + 2 * N;
  at::parallel_for(0, batch * E, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / E, e = i % E;
      const T* Bm = dbc + b * row + R;
      const T* Cm = Bm + N;
      const T* Ae = A + e * N;
      T* h = ssm + i * N;
      const T delta = softplus(dt[i]);
      const T x = xc[i];
      const T dx = delta * x;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (int64_t n = 0; n < N; ++n) {
        const T s = h[n] * fast_exp(delta * Ae[n]) + dx * Bm[n];
        h[n] = s;
        acc += s * Cm[n];
      }
      y[i] = (acc + Dskip[e] * x) * silu(xz[b * 2 * E + E + e]);
    }
  });
}

void check(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "mamba step: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "mamba step: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "mamba step: ", name, " must be contiguous");
}

}  // namespace

// Returns the block's output (B, D), or with add_residual x itself, x + output; conv, ssm
// and the scratch tensors are written.
at::Tensor mamba_step(const at::Tensor& x, const at::Tensor& conv, const at::Tensor& ssm,
                      const c10::optional<at::Tensor>& norm_w, double eps, bool add_residual,
                      const at::Tensor& w_in, const c10::optional<at::Tensor>& b_in,
                      const at::Tensor& w_conv, const c10::optional<at::Tensor>& b_conv,
                      const at::Tensor& w_x, const at::Tensor& w_dt, const at::Tensor& dt_bias,
                      const at::Tensor& A, const at::Tensor& Dskip, const at::Tensor& w_out,
                      const c10::optional<at::Tensor>& b_out, at::Tensor xn, at::Tensor xz,
                      at::Tensor xc, at::Tensor dbc, at::Tensor dt, at::Tensor y) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "mamba step: the CPU kernel takes fp32 or fp64, got ", dtype);
  TORCH_CHECK(x.dim() == 2 && ssm.dim() == 3 && conv.dim() == 3,
              "mamba step: x must be (B, D), ssm (B, E, N), conv (B, E, K-1)");
  const int64_t batch = x.size(0), D = x.size(1), E = ssm.size(1), N = ssm.size(2);
  const int64_t K = w_conv.size(-1), R = w_dt.size(1);
  TORCH_CHECK(K <= kMaxConv, "mamba step: d_conv ", K, " is above ", kMaxConv);
  TORCH_CHECK(conv.size(0) == batch && conv.size(1) == E && conv.size(2) == K - 1,
              "mamba step: conv cache ", conv.sizes(), " does not match (B, E, K-1) = (",
              batch, ", ", E, ", ", K - 1, ")");
  TORCH_CHECK(ssm.size(0) == batch, "mamba step: ssm cache batch ", ssm.size(0), " != ", batch);
  TORCH_CHECK(xz.size(0) == batch, "mamba step: scratch batch ", xz.size(0), " != ", batch);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{x, "x"},
                                {conv, "conv cache"}, {ssm, "ssm cache"},
                                {w_in, "in_proj weight"}, {w_conv, "conv weight"},
                                {w_x, "x_proj weight"}, {w_dt, "dt_proj weight"},
                                {w_out, "out_proj weight"}, {dt_bias, "dt bias"}, {A, "A"},
                                {Dskip, "D"}, {xn, "xn"}, {xz, "xz"}, {xc, "xc"},
                                {dbc, "dbc"}, {dt, "dt"}, {y, "y"}}) {
    check(t, name, dtype);
  }
  for (const auto* opt : {&norm_w, &b_in, &b_conv, &b_out}) {
    if (opt->has_value() && (*opt)->defined()) check(**opt, "bias or norm weight", dtype);
  }
  const bool norm = norm_w.has_value() && norm_w->defined();
  TORCH_CHECK(norm || !add_residual, "mamba step: add_residual needs the norm weight");

  AT_DISPATCH_FLOATING_TYPES(dtype, "mamba_step_norm", [&] {
    if (norm) {
      rms_norm<scalar_t>(x.data_ptr<scalar_t>(), norm_w->data_ptr<scalar_t>(),
                         static_cast<scalar_t>(eps), xn.data_ptr<scalar_t>(), batch, D);
    }
  });
  linear(norm ? xn : x, w_in, b_in, xz, false);                          // (B, 2E)
  AT_DISPATCH_FLOATING_TYPES(dtype, "mamba_step_conv", [&] {
    conv_silu<scalar_t>(conv.data_ptr<scalar_t>(), xz.data_ptr<scalar_t>(),
                        w_conv.data_ptr<scalar_t>(), data_or_null<scalar_t>(b_conv),
                        xc.data_ptr<scalar_t>(), batch, E, K);
  });
  linear(xc, w_x, c10::nullopt, dbc, false);                             // (B, R+2N)
  linear(dbc.narrow(1, 0, R), w_dt, dt_bias, dt, false);                 // (B, E)
  AT_DISPATCH_FLOATING_TYPES(dtype, "mamba_step_state", [&] {
    state_update<scalar_t>(ssm.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                           dt.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                           Dskip.data_ptr<scalar_t>(), dbc.data_ptr<scalar_t>(),
                           xz.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), batch, E, N, R);
  });
  if (add_residual) {
    at::Tensor out = x;
    linear(y, w_out, b_out, out, true);                                   // x += out_proj(y)
    return x;
  }
  at::Tensor out = at::empty({batch, w_out.size(0)}, x.options());
  linear(y, w_out, b_out, out, false);                                   // (B, D)
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mamba_step", &mamba_step, "One recurrent step of a Mamba block (CPU, fp32/fp64)");
}
