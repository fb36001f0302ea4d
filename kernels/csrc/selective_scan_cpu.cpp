// Fast CPU selective scan (Mamba-1), forward and backward.
//
// Dimension names: B batch, E d_inner, N d_state, G groups, L length, K chunk.
// Layouts expected from the Python launcher (kernels/cpu_scan.py), all contiguous:
//   u, delta, z, y        (B, E, L)
//   A                     (E, N)
//   Bm, Cm                (B, G, L, N)   -- time-major so that one step reads N floats
//   D, delta_bias         (E,)
//   h0, hT                (B, E, N)
//   checkpoints           (B, E, ceil(L / K), N): the state entering each chunk
//
// Every (b, e) channel is an independent recurrence with its N states in registers;
// channels are spread over threads. The backward recomputes the states of one chunk
// from its checkpoint into a small buffer and walks it in reverse, so it never holds
// (B, L, E, N). dB and dC sum over the channels of a group: each thread accumulates
// into its own buffer, summed by the launcher.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kMaxState = 256;
constexpr int64_t kLanes = 8;   // channels advanced together, one per SIMD lane
constexpr int64_t kTile = 64;   // time steps staged per tile in the forward

// exp(x), relative error ~1e-7, written so that loops over n vectorize (no libm call):
// x = (i + f) ln 2 with i integer and |f| <= 1/2; 2^f by a degree-6 polynomial fitted on
// Chebyshev nodes of [-1/2, 1/2]; 2^i by adding i to the float's exponent bits.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f;           // x / ln 2
  const float fi = std::nearbyint(t);
  const float f = t - fi;                              // in [-1/2, 1/2]
  float p = 1.546973208e-04f;
  p = p * f + 1.340043217e-03f;
  p = p * f + 9.618025603e-03f;
  p = p * f + 5.550327214e-02f;
  p = p * f + 2.402265121e-01f;
  p = p * f + 6.931472067e-01f;
  p = p * f + 1.000000000e+00f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(fi) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline double fast_exp(double x) { return std::exp(x); }

// log(x) for normal x > 0, relative error ~1e-7, vectorisable: x = m 2^k with
// m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)) by its odd series.
inline float fast_log(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t k = ((bits >> 23) & 0xff) - 127;
  bits = (bits & 0x007fffff) | 0x3f800000;             // m in [1, 2)
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  k = high ? k + 1 : k;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  float p = s2 * (1.0f / 9.0f) + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p + static_cast<float>(k) * 0.693147180559945f;
}

// softplus(x) = log(1 + e^x), vectorisable; e^x alone where 1 + e^x would round it away.
inline float fast_softplus(float x) {
  const float w = fast_exp(x);
  const float small = w * (1.0f - 0.5f * w);
  return x > 20.0f ? x : (w < 1e-4f ? small : fast_log(1.0f + w));
}
inline double fast_softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <typename T>
struct ScanArgs {
  const T *u, *delta, *A, *Bm, *Cm, *D, *z, *bias, *h0;
  int64_t batch, d_inner, length, d_state, groups, chunk;
  bool softplus, has_z;
  int64_t n_chunks() const { return (length + chunk - 1) / chunk; }
  int64_t group_of(int64_t e) const { return e / (d_inner / groups); }
};

template <typename T>
T step_dt(const ScanArgs<T>& a, T raw) {
  return a.softplus ? fast_softplus(raw) : raw;
}

// Forward of up to kLanes channels [e0, e0 + width) of one group, one channel per SIMD
// lane: the group's B_t, C_t are broadcast, every per-step scalar (softplus, gate) is
// vectorised across lanes, and kTile steps of u/delta/z/y are staged time-major.
template <typename T>
void forward_block(const ScanArgs<T>& a, int64_t b, int64_t e0, int64_t width, T* y, T* hT,
                   T* ckpt) {
  const int64_t N = a.d_state, L = a.length;
  const int64_t g = a.group_of(e0);
  const T* Bm = a.Bm + (b * a.groups + g) * L * N;
  const T* Cm = a.Cm + (b * a.groups + g) * L * N;
  alignas(64) T A[kMaxState][kLanes], h[kMaxState][kLanes];
  alignas(64) T u[kTile][kLanes], dt[kTile][kLanes], gate[kTile][kLanes], out[kTile][kLanes];
  T Dv[kLanes], bias[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) {
    const bool on = j < width;
    const int64_t e = e0 + j, be = b * a.d_inner + e;
    Dv[j] = on ? a.D[e] : T(0);
    bias[j] = on ? a.bias[e] : T(0);
    for (int64_t n = 0; n < N; ++n) {
      A[n][j] = on ? a.A[e * N + n] : T(0);
      h[n][j] = on ? a.h0[be * N + n] : T(0);
    }
  }
  for (int64_t t0 = 0; t0 < L; t0 += kTile) {
    const int64_t steps = std::min(kTile, L - t0);
    for (int64_t j = 0; j < kLanes; ++j) {  // stage (lane, time) -> (time, lane)
      const int64_t off = (b * a.d_inner + e0 + j) * L + t0;
      for (int64_t s = 0; s < steps; ++s) {
        const bool on = j < width;
        u[s][j] = on ? a.u[off + s] : T(0);
        dt[s][j] = on ? a.delta[off + s] : T(0);
        gate[s][j] = on && a.has_z ? a.z[off + s] : T(0);
      }
    }
    T* dt_flat = &dt[0][0];      // (steps * kLanes,) views of the staged tiles
    T* gate_flat = &gate[0][0];
    const int64_t count = steps * kLanes;
    if (a.softplus) {
#pragma omp simd
      for (int64_t k = 0; k < count; ++k) dt_flat[k] = fast_softplus(dt_flat[k] + bias[k % kLanes]);
    } else {
      for (int64_t k = 0; k < count; ++k) dt_flat[k] += bias[k % kLanes];
    }
    if (a.has_z) {
#pragma omp simd
      for (int64_t k = 0; k < count; ++k) {
        gate_flat[k] = gate_flat[k] / (T(1) + fast_exp(-gate_flat[k]));  // silu(z)
      }
    } else {
      for (int64_t k = 0; k < count; ++k) gate_flat[k] = T(1);
    }
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = t0 + s;
      if (ckpt != nullptr && t % a.chunk == 0) {
        for (int64_t j = 0; j < width; ++j) {
          T* dst = ckpt + ((b * a.d_inner + e0 + j) * a.n_chunks() + t / a.chunk) * N;
          for (int64_t n = 0; n < N; ++n) dst[n] = h[n][j];
        }
      }
      const T* Bt = Bm + t * N;
      const T* Ct = Cm + t * N;
      alignas(64) T acc[kLanes] = {};
      alignas(64) T dtu[kLanes];
      for (int64_t j = 0; j < kLanes; ++j) dtu[j] = dt[s][j] * u[s][j];
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bt[n], cn = Ct[n];
#pragma omp simd
        for (int64_t j = 0; j < kLanes; ++j) {
          h[n][j] = fast_exp(dt[s][j] * A[n][j]) * h[n][j] + dtu[j] * bn;
          acc[j] += h[n][j] * cn;
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) out[s][j] = (acc[j] + Dv[j] * u[s][j]) * gate[s][j];
    }
    for (int64_t j = 0; j < width; ++j) {
      T* dst = y + (b * a.d_inner + e0 + j) * L + t0;
      for (int64_t s = 0; s < steps; ++s) dst[s] = out[s][j];
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    for (int64_t n = 0; n < N; ++n) hT[(b * a.d_inner + e0 + j) * N + n] = h[n][j];
  }
}

// Gradients of one channel. dB/dC go to this thread's accumulators (B, G, L, N);
// per-channel parameter gradients go to (B, E, ...) slots summed over b by the launcher.
template <typename T>
void backward_channel(const ScanArgs<T>& a, int64_t b, int64_t e, const T* ckpt,
                      const T* dy, const T* dhT, T* du, T* ddelta, T* dz, T* dA_be,
                      T* dD_be, T* dbias_be, T* dh0, T* dBacc, T* dCacc,
                      std::vector<T>& hbuf) {
  const int64_t N = a.d_state, L = a.length, K = a.chunk;
  const int64_t be = b * a.d_inner + e;
  const T* u = a.u + be * L;
  const T* dl = a.delta + be * L;
  const T* z = a.has_z ? a.z + be * L : nullptr;
  const int64_t g = a.group_of(e);
  const int64_t bg = (b * a.groups + g) * L * N;
  const T* Bm = a.Bm + bg;
  const T* Cm = a.Cm + bg;
  T* dBm = dBacc + bg;
  T* dCm = dCacc + bg;
  const T* A = a.A + e * N;
  const T Dv = a.D[e], bias = a.bias[e];
  T grad_h[kMaxState], dA[kMaxState];
  for (int64_t n = 0; n < N; ++n) { grad_h[n] = dhT[be * N + n]; dA[n] = T(0); }
  T dD = T(0), dbias = T(0);
  for (int64_t c = a.n_chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
    // hbuf row i holds the state before step t0 + i (row 0 is the checkpoint).
    T* h = hbuf.data();
    std::memcpy(h, ckpt + (be * a.n_chunks() + c) * N, N * sizeof(T));
    for (int64_t t = t0; t < t1 - 1; ++t) {
      const T dt = step_dt(a, dl[t] + bias);
      const T dtu = dt * u[t];
      T* next = h + (t - t0 + 1) * N;
      const T* prev = next - N;
      const T* Bt = Bm + t * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) next[n] = fast_exp(dt * A[n]) * prev[n] + dtu * Bt[n];
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const T raw = dl[t] + bias;
      const T dt = step_dt(a, raw);
      const T ut = u[t];
      const T* prev = h + (t - t0) * N;
      const T* Bt = Bm + t * N;
      const T* Ct = Cm + t * N;
      T* dBt = dBm + t * N;
      T* dCt = dCm + t * N;
      // Output side: y = (C.h + D u) * silu(z).
      T gy = dy[be * L + t];
      if (z != nullptr) {
        const T zt = z[t], s = sigmoid(zt);
        T pre = Dv * ut;
        for (int64_t n = 0; n < N; ++n) {
          pre += (fast_exp(dt * A[n]) * prev[n] + dt * ut * Bt[n]) * Ct[n];
        }
        dz[be * L + t] = gy * pre * s * (T(1) + zt * (T(1) - s));
        gy *= zt * s;
      }
      dD += gy * ut;
      T dut = gy * Dv, ddt = T(0);
#pragma omp simd reduction(+ : dut, ddt)
      for (int64_t n = 0; n < N; ++n) {
        const T decay = fast_exp(dt * A[n]);
        const T h_t = decay * prev[n] + dt * ut * Bt[n];
        dCt[n] += gy * h_t;
        const T gh = grad_h[n] + gy * Ct[n];       // dL/dh_t
        dBt[n] += gh * dt * ut;
        dut += gh * dt * Bt[n];
        const T dh_decay = gh * decay * prev[n];   // dL/d(dt*A) through exp
        ddt += dh_decay * A[n] + gh * Bt[n] * ut;
        dA[n] += dh_decay * dt;
        grad_h[n] = gh * decay;                    // becomes dL/dh_{t-1}
      }
      du[be * L + t] = dut;
      const T draw = a.softplus ? ddt * sigmoid(raw) : ddt;
      ddelta[be * L + t] = draw;
      dbias += draw;
    }
  }
  for (int64_t n = 0; n < N; ++n) { dh0[be * N + n] = grad_h[n]; dA_be[be * N + n] = dA[n]; }
  dD_be[be] = dD;
  dbias_be[be] = dbias;
}

template <typename T>
ScanArgs<T> make_args(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                      const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                      const torch::Tensor& z, const torch::Tensor& bias, const torch::Tensor& h0,
                      bool softplus, bool has_z, int64_t chunk) {
  ScanArgs<T> a;
  a.u = u.data_ptr<T>(); a.delta = delta.data_ptr<T>(); a.A = A.data_ptr<T>();
  a.Bm = Bm.data_ptr<T>(); a.Cm = Cm.data_ptr<T>(); a.D = D.data_ptr<T>();
  a.z = has_z ? z.data_ptr<T>() : nullptr; a.bias = bias.data_ptr<T>(); a.h0 = h0.data_ptr<T>();
  a.batch = u.size(0); a.d_inner = u.size(1); a.length = u.size(2);
  a.d_state = A.size(1); a.groups = Bm.size(1); a.chunk = chunk;
  a.softplus = softplus; a.has_z = has_z;
  TORCH_CHECK(a.d_state <= kMaxState, "selective_scan (cpu): d_state must be <= ", kMaxState);
  return a;
}

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                    torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                    torch::Tensor z, torch::Tensor bias, torch::Tensor h0,
                                    bool softplus, bool has_z, int64_t chunk, bool save_ckpt) {
  auto y = torch::empty_like(u);
  auto hT = torch::empty_like(h0);
  const int64_t n_chunks = (u.size(2) + chunk - 1) / chunk;
  auto ckpt = save_ckpt ? torch::empty({u.size(0), u.size(1), n_chunks, A.size(1)}, u.options())
                        : torch::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    auto a = make_args<scalar_t>(u, delta, A, Bm, Cm, D, z, bias, h0, softplus, has_z, chunk);
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* hp = hT.data_ptr<scalar_t>();
    scalar_t* cp = save_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr;
    const int64_t per_group = a.d_inner / a.groups;
    const int64_t blocks_per_group = (per_group + kLanes - 1) / kLanes;
    at::parallel_for(0, a.batch * a.groups * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / (a.groups * blocks_per_group);
        const int64_t g = (i / blocks_per_group) % a.groups;
        const int64_t first = (i % blocks_per_group) * kLanes;
        forward_block(a, b, g * per_group + first, std::min(kLanes, per_group - first), yp, hp, cp);
      }
    });
  });
  return {y, hT, ckpt};
}

std::vector<torch::Tensor> scan_bwd(torch::Tensor dy, torch::Tensor dhT, torch::Tensor u,
                                    torch::Tensor delta, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor D, torch::Tensor z,
                                    torch::Tensor bias, torch::Tensor h0, torch::Tensor ckpt,
                                    bool softplus, bool has_z, int64_t chunk) {
  const int64_t batch = u.size(0), d_inner = u.size(1);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), batch * d_inner));
  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(u);
  auto dz = has_z ? torch::empty_like(u) : torch::empty({0}, u.options());
  auto dA_be = torch::empty({batch, d_inner, A.size(1)}, u.options());
  auto dD_be = torch::empty({batch, d_inner}, u.options());
  auto dbias_be = torch::empty({batch, d_inner}, u.options());
  auto dh0 = torch::empty_like(h0);
  auto dBacc = torch::zeros({workers, Bm.size(0), Bm.size(1), Bm.size(2), Bm.size(3)}, u.options());
  auto dCacc = torch::zeros_like(dBacc);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    auto a = make_args<scalar_t>(u, delta, A, Bm, Cm, D, z, bias, h0, softplus, has_z, chunk);
    const int64_t channels = batch * d_inner;
    const int64_t per_worker = (channels + workers - 1) / workers;
    const int64_t acc_size = Bm.numel();
    at::parallel_for(0, workers, 1, [&](int64_t wb, int64_t we) {
      std::vector<scalar_t> hbuf(chunk * a.d_state);
      for (int64_t w = wb; w < we; ++w) {
        for (int64_t i = w * per_worker; i < std::min(channels, (w + 1) * per_worker); ++i) {
          backward_channel(a, i / d_inner, i % d_inner, ckpt.data_ptr<scalar_t>(),
                           dy.data_ptr<scalar_t>(), dhT.data_ptr<scalar_t>(),
                           du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(),
                           has_z ? dz.data_ptr<scalar_t>() : nullptr,
                           dA_be.data_ptr<scalar_t>(), dD_be.data_ptr<scalar_t>(),
                           dbias_be.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(),
                           dBacc.data_ptr<scalar_t>() + w * acc_size,
                           dCacc.data_ptr<scalar_t>() + w * acc_size, hbuf);
        }
      }
    });
  });
  return {du, ddelta, dz, dA_be.sum(0), dBacc.sum(0), dCacc.sum(0), dD_be.sum(0),
          dbias_be.sum(0), dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (CPU)");
}
