// Fast CPU selective scan (Mamba-1), forward and backward.
//
// Dimension names: B batch, E d_inner, N d_state, G groups, L length, K chunk.
// Tensors from the Python launcher (kernels/cpu_scan.py), read and written through their
// strides, so that views such as the transposed output of a Linear need no copy:
//   u, delta, z, dy        (B, E, L), any strides
//   Bm, Cm                 (B, G, N, L), any strides (x_proj gives n or t the unit stride)
//   A                      (E, N) contiguous;  D, delta_bias (E,) contiguous
//   h0, dhT                (B, E, N) contiguous
//   checkpoints            (B, E, ceil(L / K), N): the state entering each chunk
// Outputs y, du, ddelta, dz take the layout (channel- or time-major) of u, u, delta, z;
// y takes z's when there is a gate (y is computed elementwise with silu(z)).
//
// Both directions advance kLanes channels of one B/C group together, one channel per SIMD
// lane: the group's B_t, C_t are broadcast and every per-step scalar (softplus, gate) is
// vectorised across lanes. Blocks of channels are spread over threads. The per-state loops
// run on lane vectors (Vec<T>, a GCC/Clang vector type) so that sums and states stay in
// registers; steps are staged into [step][lane] tiles (8x8 AVX transposes for channel-major
// fp32 inputs) and B_t, C_t into [step][n] rows when their step stride is 1.
//
// The backward recomputes one chunk at a time from its checkpoint, keeping the states and
// decays of the chunk in a buffer, and walks it in reverse. dB and dC sum over the channels
// of a group: each block writes its own partial sums (its lanes added in a fixed order) for
// a segment of the sequence, and the partials are then added block by block in a fixed
// order. Memory for partials is bounded (partial_budget elements each for dB and dC, or one
// chunk's; kept by the calling thread between calls), whatever L and the thread count, and
// the result is bitwise the same for any number of threads. While a chunk computes, the
// next one walked is prefetched.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "fast_math.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kMaxState = 256;
constexpr int64_t kLanes = 8;                 // channels advanced together, one per SIMD lane
constexpr int64_t kTile = 64;                 // time steps staged per tile in the forward

using mambaseq::fast_exp;

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

// softplus(x) = log(1 + e^x) given w = e^x, vectorisable; w alone where 1 + w would round
// it away. sigmoid(x) = d softplus / dx = w / (1 + w) from the same w (fast_exp clamps x,
// so w is finite and nonzero); in fp64 (libm exp, no clamp) 1 / (1 + e^-x).
inline float softplus_of(float x, float w) {
  const float small = w * (1.0f - 0.5f * w);
  return x > 20.0f ? x : (w < 1e-4f ? small : fast_log(1.0f + w));
}
inline double softplus_of(double x, double w) { return x > 20.0 ? x : std::log1p(w); }
inline float sigmoid_of(float, float w) { return w / (1.0f + w); }
inline double sigmoid_of(double x, double) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
inline T fast_sigmoid(T x) { return T(1) / (T(1) + fast_exp(-x)); }

// One value per lane of a block as a GCC/Clang vector (kLanes floats: one AVX register),
// so that per-state values of the inner loops (running sums, decays) stay in registers;
// compilers lower the type to whatever SIMD the CPU has, or to scalars.
template <typename T>
struct LaneVector {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T)), may_alias));
};
template <typename T>
using Vec = typename LaneVector<T>::type;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }

// 2^t on every lane (the decays exp(dt A) = 2^(dt A log2 e), A log2 e kept per block), in
// fp32 by fast_exp's polynomial (fast_math.h): t = i + f, |f| <= 1/2, i added to the
// exponent bits as (t + 1.5 2^23)'s low bits shifted up (t rounded to the nearest integer
// as nearbyint does), after fast_exp's clamp (e^-87 .. e^88).
inline Vec<float> exp2_lanes(Vec<float> t) {
  typedef uint32_t Bits __attribute__((vector_size(kLanes * sizeof(uint32_t))));
#if defined(__AVX__)
  static_assert(sizeof(Vec<float>) == sizeof(__m256), "one AVX register");
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-125.5f)), _mm256_set1_ps(126.9f));
#else
  t = t < -125.5f ? Vec<float>{} - 125.5f : t;
  t = t > 126.9f ? Vec<float>{} + 126.9f : t;
#endif
  const Vec<float> shifted = t + 12582912.0f;          // 1.5 2^23: integer part in low bits
  const Vec<float> f = t - (shifted - 12582912.0f);
  Vec<float> p = f * 1.546973208e-04f + 1.340043217e-03f;
  p = p * f + 9.618025603e-03f;
  p = p * f + 5.550327214e-02f;
  p = p * f + 2.402265121e-01f;
  p = p * f + 6.931472067e-01f;
  p = p * f + 1.000000000e+00f;
  return reinterpret_cast<Vec<float>>(reinterpret_cast<Bits>(p) +
                                      (reinterpret_cast<Bits>(shifted) << 23));
}
inline Vec<double> exp2_lanes(Vec<double> t) {
  for (int64_t j = 0; j < kLanes; ++j) t[j] = std::exp2(t[j]);
  return t;
}

// A (B, E, L) tensor addressed through its strides.
template <typename T>
struct Seq {
  T* p;
  int64_t sb, se, st;
  T& at(int64_t b, int64_t e, int64_t t) const { return p[b * sb + e * se + t * st]; }
};

template <typename T>
Seq<T> seq_of(const torch::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// A (B, G, N, L) tensor of B_t or C_t addressed through its strides.
template <typename T>
struct GroupSeq {
  const T* p;
  int64_t sb, sg, sn, st;
  // The N values of step t of batch b, group g are step(b, g, t)[n * sn].
  const T* step(int64_t b, int64_t g, int64_t t) const { return p + b * sb + g * sg + t * st; }
};

template <typename T>
GroupSeq<T> group_seq_of(const torch::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

#if defined(__AVX__)
// dst[i * ldd + j] = src[j * ld + i] for i, j < 8: an 8 x 8 transpose in registers.
inline void transpose8(const float* src, int64_t ld, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {           // rows 0-3 (h = 0) and 4-7 (h = 1) of the source
    const __m256 a = t[4 * h], b = t[4 * h + 1], c = t[4 * h + 2], d = t[4 * h + 3];
    r[4 * h] = _mm256_shuffle_ps(a, c, _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * h + 1] = _mm256_shuffle_ps(a, c, _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * h + 2] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * h + 3] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x31));
  }
}
#endif

// Steps of a channel-major full block moved 8 at a time by transpose8 (fp32 with AVX);
// from: the source, its stride between lanes (channels), to: the destination, its stride
// between lanes. Returns the steps done; the callers move the rest one by one.
template <typename T>
int64_t transpose_steps(const T* from, int64_t from_ld, T* to, int64_t to_ld, int64_t steps,
                        bool to_tile) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    int64_t k = 0;
    for (; k + 8 <= steps; k += 8) {
      if (to_tile) transpose8(from + k, from_ld, to + k * to_ld, to_ld);
      else transpose8(from + k * from_ld, from_ld, to + k, to_ld);
    }
    return k;
  }
#endif
  return 0;
}

// Rows [t0, t0 + steps) of lanes [e0, e0 + width) of channel-batch b -> tile[step][lane];
// lanes past width read as `fill`.
template <typename T>
void stage(const Seq<const T>& s, int64_t b, int64_t e0, int64_t width, int64_t t0, int64_t steps,
           T (*tile)[kLanes], T fill) {
  if (s.se == 1 && width == kLanes) {  // time-major: a step's lanes are contiguous
    const T* src = &s.at(b, e0, t0);
    for (int64_t k = 0; k < steps; ++k) std::memcpy(tile[k], src + k * s.st, sizeof(tile[k]));
    return;
  }
  const int64_t done = s.st == 1 && width == kLanes
      ? transpose_steps(&s.at(b, e0, t0), s.se, tile[0], kLanes, steps, true) : 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    if (j >= width) {
      for (int64_t k = done; k < steps; ++k) tile[k][j] = fill;
      continue;
    }
    const T* src = &s.at(b, e0 + j, t0);
    for (int64_t k = done; k < steps; ++k) tile[k][j] = src[k * s.st];
  }
}

// Inverse of stage for the first `width` lanes.
template <typename T>
void unstage(const Seq<T>& s, int64_t b, int64_t e0, int64_t width, int64_t t0, int64_t steps,
             const T (*tile)[kLanes]) {
  if (s.se == 1 && width == kLanes) {
    T* dst = &s.at(b, e0, t0);
    for (int64_t k = 0; k < steps; ++k) std::memcpy(dst + k * s.st, tile[k], sizeof(tile[k]));
    return;
  }
  const int64_t done = s.st == 1 && width == kLanes
      ? transpose_steps(tile[0], kLanes, &s.at(b, e0, t0), s.se, steps, false) : 0;
  for (int64_t j = 0; j < width; ++j) {
    T* dst = &s.at(b, e0 + j, t0);
    for (int64_t k = done; k < steps; ++k) dst[k * s.st] = tile[k][j];
  }
}

// N values of each of `width` lanes (lane j's at src + j * ld) -> rows[n][j]; lanes past
// width read as zero.
template <typename T>
void gather_lanes(const T* src, int64_t ld, int64_t width, int64_t N, Vec<T>* rows) {
  T* out = reinterpret_cast<T*>(rows);
  const int64_t done = width == kLanes ? transpose_steps(src, ld, out, kLanes, N, true) : 0;
  for (int64_t n = done; n < N; ++n) {
    for (int64_t j = 0; j < kLanes; ++j) rows[n][j] = j < width ? src[j * ld + n] : T(0);
  }
}

// Inverse of gather_lanes for the first `width` lanes.
template <typename T>
void scatter_lanes(const Vec<T>* rows, int64_t width, int64_t N, T* dst, int64_t ld) {
  const T* in = reinterpret_cast<const T*>(rows);
  const int64_t done = width == kLanes ? transpose_steps(in, kLanes, dst, ld, N, false) : 0;
  for (int64_t n = done; n < N; ++n) {
    for (int64_t j = 0; j < width; ++j) dst[j * ld + n] = rows[n][j];
  }
}

// Asks the cache for `steps` steps from `first` of `rows` rows (rows row_stride apart) when
// they run along time (step_stride 1). The backward walks chunks last first, and the lanes
// of a channel-major input are rows L apart: the hardware prefetcher lagged, and asking
// for the next chunk while computing this one made the backward 5-10% faster (the
// forward, walking forward, gained nothing from it).
template <typename T>
void prefetch_rows(const T* first, int64_t row_stride, int64_t step_stride, int64_t rows,
                   int64_t steps) {
  if (step_stride != 1 || steps <= 0) return;
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = first + r * row_stride;
    for (int64_t k = 0; k < steps; k += kLine) __builtin_prefetch(row + k);
    __builtin_prefetch(row + steps - 1);
  }
}

// Prefetches steps [t0, t0 + steps) of a block's lanes of each given (B, E, L) sequence
// (skipping absent ones) and of its group's B and C.
template <typename T>
void prefetch_block(std::initializer_list<const Seq<const T>*> seqs, const GroupSeq<T>& Bm,
                    const GroupSeq<T>& Cm, int64_t b, int64_t g, int64_t e0, int64_t width,
                    int64_t N, int64_t t0, int64_t steps) {
  for (const Seq<const T>* x : seqs) {
    if (x->p != nullptr) prefetch_rows(&x->at(b, e0, t0), x->se, x->st, width, steps);
  }
  prefetch_rows(Bm.step(b, g, t0), Bm.sn, Bm.st, N, steps);
  prefetch_rows(Cm.step(b, g, t0), Cm.sn, Cm.st, N, steps);
}

// Rows of B_t or C_t for consecutive steps: step s's N values at p + s * stride, unit stride.
template <typename T>
struct Rows {
  const T* p;
  int64_t stride;
  const T* operator[](int64_t s) const { return p + s * stride; }
};

// Steps [t0, t0 + steps) of B or C of batch b, group g as Rows: in place when a step's N
// values are contiguous, else copied into buf (steps x N). x_proj's output gives them a
// stride of L, and the N lines of one step then lie 4 KiB apart when L is a power of two,
// all in one L1 set: read in place, every step missed L1.
template <typename T>
Rows<T> stage_group(const GroupSeq<T>& x, int64_t b, int64_t g, int64_t t0, int64_t steps,
                    int64_t N, T* buf) {
  const T* src = x.step(b, g, t0);
  if (x.sn == 1) return {src, x.st};
  int64_t grouped = 0, done = 0;  // states [0, grouped) moved for steps [0, done)
  if (x.st == 1) {
    for (; grouped + kLanes <= N; grouped += kLanes) {
      done = transpose_steps(src + grouped * x.sn, x.sn, buf + grouped, N, steps, true);
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = n < grouped ? done : 0; k < steps; ++k) {
      buf[k * N + n] = src[n * x.sn + k * x.st];
    }
  }
  return {buf, N};
}

template <typename T>
struct ScanArgs {
  Seq<const T> u, delta, z;
  GroupSeq<T> Bm, Cm;
  const T *A, *D, *bias, *h0;
  int64_t batch, d_inner, length, d_state, groups, chunk, n_chunks;  // n_chunks = ceil(L / K)
  bool softplus, has_z;
  int64_t per_group() const { return d_inner / groups; }
  int64_t blocks_per_group() const { return (per_group() + kLanes - 1) / kLanes; }
};

// Channels [e0, e0 + width) of one group: the unit both directions work on.
struct Block {
  int64_t b, g, e0, width, index;  // index: position of the block within its group
};

template <typename T>
Block block_of(const ScanArgs<T>& a, int64_t i) {
  const int64_t per_batch = a.groups * a.blocks_per_group();
  Block k;
  k.b = i / per_batch;
  k.g = (i / a.blocks_per_group()) % a.groups;
  k.index = i % a.blocks_per_group();
  const int64_t first = k.index * kLanes;
  k.e0 = k.g * a.per_group() + first;
  k.width = std::min(kLanes, a.per_group() - first);
  return k;
}

// Per-lane constants of a block: A (n, lane), A2 = A log2(e) (the decays are 2^(dt A2)),
// D, delta_bias; zeros in lanes past width.
template <typename T>
struct LaneParams {
  alignas(64) T A[kMaxState][kLanes], A2[kMaxState][kLanes];
  alignas(64) T D[kLanes], bias[kLanes];
  LaneParams(const ScanArgs<T>& a, const Block& k) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const bool on = j < k.width;
      D[j] = on ? a.D[k.e0 + j] : T(0);
      bias[j] = on ? a.bias[k.e0 + j] : T(0);
      for (int64_t n = 0; n < a.d_state; ++n) {
        A[n][j] = on ? a.A[(k.e0 + j) * a.d_state + n] : T(0);
        A2[n][j] = A[n][j] * T(1.44269504088896341);
      }
    }
  }
};

// delta + bias -> dt (softplus or not) over a staged tile; keeps sigmoid(delta + bias),
// d softplus / d raw, in `slope` when given.
template <typename T>
void step_sizes(const ScanArgs<T>& a, const LaneParams<T>& p, int64_t steps, T (*dt)[kLanes],
                T (*slope)[kLanes]) {
  for (int64_t s = 0; s < steps; ++s) {
    if (!a.softplus) {
      for (int64_t j = 0; j < kLanes; ++j) dt[s][j] += p.bias[j];
      if (slope != nullptr) std::fill(slope[s], slope[s] + kLanes, T(1));
    } else if (slope != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const T raw = dt[s][j] + p.bias[j], w = fast_exp(raw);
        slope[s][j] = sigmoid_of(raw, w);
        dt[s][j] = softplus_of(raw, w);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const T raw = dt[s][j] + p.bias[j];
        dt[s][j] = softplus_of(raw, fast_exp(raw));
      }
    }
  }
}

// Calls body(n, chain) for n in [0, count): sums that body keeps per chain form kChains
// independent dependency chains (an FMA waits ~4 cycles for the previous one), combined
// by combine_chains in a fixed order.
constexpr int64_t kChains = 4;

template <typename F>
inline void over_states(int64_t count, F&& body) {
  int64_t n = 0;
  for (; n + kChains <= count; n += kChains) {
    body(n, 0);
    body(n + 1, 1);
    body(n + 2, 2);
    body(n + 3, 3);
  }
  for (; n < count; ++n) body(n, 0);
}

template <typename T>
inline T combine_chains(const T (*acc)[kLanes], int64_t j) {
  return (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
}

// Forward of one block: h_t = exp(dt A) h + dt u B_t, y_t = (C_t.h_t + D u) silu(z).
template <typename T>
void forward_block(const ScanArgs<T>& a, const Block& k, const Seq<T>& y, T* hT, T* ckpt) {
  using V = Vec<T>;
  const int64_t N = a.d_state, L = a.length;
  const LaneParams<T> p(a, k);
  V h[kMaxState];
  alignas(64) T u[kTile][kLanes], dt[kTile][kLanes], gate[kTile][kLanes], out[kTile][kLanes];
  std::vector<T> bc_buf(2 * kTile * N);
  gather_lanes(a.h0 + (k.b * a.d_inner + k.e0) * N, N, k.width, N, h);
  int64_t next_ckpt = 0;  // the next step whose entering state is saved
  for (int64_t t0 = 0; t0 < L; t0 += kTile) {
    const int64_t steps = std::min(kTile, L - t0);
    stage(a.u, k.b, k.e0, k.width, t0, steps, u, T(0));
    stage(a.delta, k.b, k.e0, k.width, t0, steps, dt, T(0));
    step_sizes(a, p, steps, dt, static_cast<T(*)[kLanes]>(nullptr));
    const Rows<T> Bs = stage_group(a.Bm, k.b, k.g, t0, steps, N, bc_buf.data());
    const Rows<T> Cs = stage_group(a.Cm, k.b, k.g, t0, steps, N, bc_buf.data() + kTile * N);
    if (a.has_z) {
      stage(a.z, k.b, k.e0, k.width, t0, steps, gate, T(0));
      for (int64_t s = 0; s < steps; ++s) {
#pragma omp simd
        for (int64_t j = 0; j < kLanes; ++j) gate[s][j] = gate[s][j] * fast_sigmoid(gate[s][j]);
      }
    }
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = t0 + s;
      if (ckpt != nullptr && t == next_ckpt) {  // (not t % chunk: a division per step)
        const int64_t first = ((k.b * a.d_inner + k.e0) * a.n_chunks + t / a.chunk) * N;
        scatter_lanes(h, k.width, N, ckpt + first, a.n_chunks * N);
        next_ckpt += a.chunk;
      }
      const T* Bt = Bs[s];
      const T* Ct = Cs[s];
      const V dts = load(dt[s]), dtu = dts * load(u[s]);
      V acc[kChains] = {};
      over_states(N, [&](int64_t n, int64_t c) {
        h[n] = exp2_lanes(dts * load(p.A2[n])) * h[n] + dtu * Bt[n];
        acc[c] += h[n] * Ct[n];
      });
      const V pre = (acc[0] + acc[1]) + (acc[2] + acc[3]) + load(p.D) * load(u[s]);
      store(out[s], a.has_z ? pre * load(gate[s]) : pre);
    }
    unstage(y, k.b, k.e0, k.width, t0, steps, out);
  }
  scatter_lanes(h, k.width, N, hT + (k.b * a.d_inner + k.e0) * N, N);
}

// out[n] = sum over lanes of rows[n][lane] * v[lane], lanes added in a fixed tree order:
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
template <typename T>
inline void lane_dot(const T (*rows)[kLanes], const T* v, int64_t count, T* out) {
  for (int64_t n = 0; n < count; ++n) {
    const T* r = rows[n];
    out[n] = ((r[0] * v[0] + r[1] * v[1]) + (r[2] * v[2] + r[3] * v[3]))
           + ((r[4] * v[4] + r[5] * v[5]) + (r[6] * v[6] + r[7] * v[7]));
  }
}

#if defined(__AVX__)
// The same sums eight rows at a time: two rounds of horizontal adds and a swap of 128-bit
// halves transpose the eight products into one vector of eight sums, in the tree order above.
template <>
inline void lane_dot<float>(const float (*rows)[kLanes], const float* v, int64_t count,
                            float* out) {
  static_assert(kLanes == 8, "one AVX register per row");
  const __m256 w = _mm256_loadu_ps(v);
  int64_t n = 0;
  for (; n + 8 <= count; n += 8) {
    __m256 p[8];
    for (int i = 0; i < 8; ++i) p[i] = _mm256_mul_ps(_mm256_loadu_ps(rows[n + i]), w);
    const __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
    const __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
    _mm256_storeu_ps(out + n, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                                            _mm256_permute2f128_ps(lo, hi, 0x31)));
  }
  for (; n < count; ++n) {
    const float* r = rows[n];
    out[n] = ((r[0] * v[0] + r[1] * v[1]) + (r[2] * v[2] + r[3] * v[3]))
           + ((r[4] * v[4] + r[5] * v[5]) + (r[6] * v[6] + r[7] * v[7]));
  }
}
#endif

// Gradients a block carries from one segment of the sequence to the previous one.
template <typename T>
struct Carry {
  T* grad_h;          // (B, E, N): dL/dh entering the segment's last step; dL/dh0 at the end
  T *dA, *dD, *dbias; // (B, E, N), (B, E), (B, E) per-channel sums
};

// Outputs of the backward.
template <typename T>
struct Grads {
  Seq<T> du, ddelta, dz;
  Seq<const T> dy;
  T *dB_part, *dC_part;  // (blocks_per_group, B, G, segment, N) partial sums of one segment
  int64_t segment;       // steps per segment
};

// Scratch of one worker: one chunk's states and decays (rows of N lane vectors), staged
// tiles, and the chunk's B_t and C_t rows.
template <typename T>
struct ChunkBuffers {
  // kLanes values aligned as one lane vector; read as Vec<T> (a may_alias type) or as T rows
  struct alignas(sizeof(Vec<T>)) Lanes { T v[kLanes]; };
  std::vector<Lanes> h, decay, tiles;
  std::vector<T> bc;
  int64_t K;
  ChunkBuffers(int64_t chunk, int64_t N)
      : h((chunk + 1) * N), decay(chunk * N), tiles(9 * chunk), bc(2 * chunk * N), K(chunk) {}
  static Vec<T>* row(std::vector<Lanes>& v, int64_t s, int64_t N) {
    return reinterpret_cast<Vec<T>*>(v.data() + s * N);
  }
  T (*tile(int64_t i))[kLanes] { return reinterpret_cast<T(*)[kLanes]>(tiles.data() + i * K); }
};

// Backward of one block over the chunks of [seg0, seg1), last chunk first.
template <typename T>
void backward_block(const ScanArgs<T>& a, const Block& k, const T* ckpt, const Grads<T>& g,
                    const Carry<T>& carry, int64_t seg0, int64_t seg1, ChunkBuffers<T>& buf) {
  using V = Vec<T>;
  const int64_t N = a.d_state, K = a.chunk;
  const LaneParams<T> p(a, k);
  V grad_h[kMaxState], dA[kMaxState];
  V dD, dbias;
  const int64_t be0 = k.b * a.d_inner + k.e0;
  for (int64_t j = 0; j < kLanes; ++j) {
    dD[j] = j < k.width ? carry.dD[be0 + j] : T(0);
    dbias[j] = j < k.width ? carry.dbias[be0 + j] : T(0);
  }
  gather_lanes(carry.grad_h + be0 * N, N, k.width, N, grad_h);
  gather_lanes(carry.dA + be0 * N, N, k.width, N, dA);
  T (*u)[kLanes] = buf.tile(0);
  T (*dt)[kLanes] = buf.tile(1);
  T (*slope)[kLanes] = buf.tile(2);
  T (*zt)[kLanes] = buf.tile(3);
  T (*gy)[kLanes] = buf.tile(4);
  T (*pre)[kLanes] = buf.tile(5);
  T (*du)[kLanes] = buf.tile(6);
  T (*ddt)[kLanes] = buf.tile(7);
  T (*dtu)[kLanes] = buf.tile(8);
  const int64_t part_row = (k.index * a.batch + k.b) * a.groups + k.g;
  for (int64_t c = (seg1 - 1) / K; c >= seg0 / K; --c) {
    const int64_t t0 = c * K, steps = std::min(K, a.length - t0);
    stage(a.u, k.b, k.e0, k.width, t0, steps, u, T(0));
    stage(a.delta, k.b, k.e0, k.width, t0, steps, dt, T(0));
    step_sizes(a, p, steps, dt, slope);
    const Rows<T> Bs = stage_group(a.Bm, k.b, k.g, t0, steps, N, buf.bc.data());
    const Rows<T> Cs = stage_group(a.Cm, k.b, k.g, t0, steps, N, buf.bc.data() + K * N);
    if (c > seg0 / K) {  // the previous chunk (the next one walked), while this one computes
      prefetch_block({&a.u, &a.delta, &a.z, &g.dy}, a.Bm, a.Cm, k.b, k.g, k.e0, k.width, N,
                     t0 - K, K);
    }
    // Recompute the chunk: H row s is the state before step t0 + s.
    gather_lanes(ckpt + (be0 * a.n_chunks + c) * N, a.n_chunks * N, k.width, N,
                 buf.row(buf.h, 0, N));
    for (int64_t s = 0; s < steps; ++s) {
      const T* Bt = Bs[s];
      const T* Ct = Cs[s];
      const V* prev = buf.row(buf.h, s, N);
      V* next = buf.row(buf.h, s + 1, N);
      V* dec = buf.row(buf.decay, s, N);
      const V dts = load(dt[s]), dtus = dts * load(u[s]);
      store(dtu[s], dtus);
      V acc[kChains] = {};
      over_states(N, [&](int64_t n, int64_t c) {
        dec[n] = exp2_lanes(dts * load(p.A2[n]));
        next[n] = dec[n] * prev[n] + dtus * Bt[n];
        acc[c] += next[n] * Ct[n];
      });
      store(pre[s], (acc[0] + acc[1]) + (acc[2] + acc[3]) + load(p.D) * load(u[s]));
    }
    // Output side: y = pre * silu(z); gy = dL/d(pre).
    stage(g.dy, k.b, k.e0, k.width, t0, steps, gy, T(0));
    if (a.has_z) {
      stage(a.z, k.b, k.e0, k.width, t0, steps, zt, T(0));
      for (int64_t s = 0; s < steps; ++s) {
#pragma omp simd
        for (int64_t j = 0; j < kLanes; ++j) {
          const T z = zt[s][j], sig = fast_sigmoid(z);
          zt[s][j] = gy[s][j] * pre[s][j] * sig * (T(1) + z * (T(1) - sig));  // dz
          gy[s][j] *= z * sig;
        }
      }
      unstage(g.dz, k.b, k.e0, k.width, t0, steps, zt);
    }
    // Reverse walk over the chunk.
    for (int64_t s = steps - 1; s >= 0; --s) {
      const T* Bt = Bs[s];
      const T* Ct = Cs[s];
      const V* prev = buf.row(buf.h, s, N);
      const V* dec = buf.row(buf.decay, s, N);
      const V gys = load(gy[s]), dts = load(dt[s]), us = load(u[s]);
      alignas(64) T gh_step[kMaxState][kLanes];
      V sums_b[kChains] = {}, sums_a[kChains] = {};
      over_states(N, [&](int64_t n, int64_t c) {
        const V gh = grad_h[n] + gys * Ct[n];   // dL/dh_t
        store(gh_step[n], gh);
        sums_b[c] += gh * Bt[n];
        const V x = gh * dec[n] * prev[n];                 // dL/d(dt A_n) through exp
        sums_a[c] += x * load(p.A[n]);
        dA[n] += x * dts;
        grad_h[n] = gh * dec[n];                           // becomes dL/dh_{t-1}
      });
      const V sum_b = (sums_b[0] + sums_b[1]) + (sums_b[2] + sums_b[3]);
      const V sum_a = (sums_a[0] + sums_a[1]) + (sums_a[2] + sums_a[3]);
      store(du[s], gys * load(p.D) + sum_b * dts);
      const V ddts = (sum_a + sum_b * us) * load(slope[s]);
      store(ddt[s], ddts);
      dD += gys * us;
      dbias += ddts;
      // This block's share of dB_t = sum_e dL/dh_t dt u and dC_t = sum_e gy h_t.
      const int64_t row = (part_row * g.segment + (t0 + s - seg0)) * N;
      lane_dot(gh_step, dtu[s], N, g.dB_part + row);
      lane_dot(reinterpret_cast<const T(*)[kLanes]>(buf.row(buf.h, s + 1, N)), gy[s], N,
               g.dC_part + row);
    }
    unstage(g.du, k.b, k.e0, k.width, t0, steps, du);
    unstage(g.ddelta, k.b, k.e0, k.width, t0, steps, ddt);
  }
  for (int64_t j = 0; j < k.width; ++j) {
    carry.dD[be0 + j] = dD[j];
    carry.dbias[be0 + j] = dbias[j];
  }
  scatter_lanes(grad_h, k.width, N, carry.grad_h + be0 * N, N);
  scatter_lanes(dA, k.width, N, carry.dA + be0 * N, N);
}

// dB[b, g, seg0 + t, n] = sum over blocks, in block order, of the segment's partials.
template <typename T>
void reduce_partials(const ScanArgs<T>& a, const T* part, int64_t segment, int64_t seg0,
                     int64_t steps, T* out) {
  const int64_t N = a.d_state, rows = a.batch * a.groups;
  const int64_t block_stride = rows * segment * N;
  at::parallel_for(0, rows * steps, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bg = i / steps, s = i % steps;
      const T* src = part + (bg * segment + s) * N;
      T* dst = out + (bg * a.length + seg0 + s) * N;
      for (int64_t n = 0; n < N; ++n) dst[n] = src[n];
      for (int64_t kb = 1; kb < a.blocks_per_group(); ++kb) {
        const T* more = src + kb * block_stride;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) dst[n] += more[n];
      }
    }
  });
}

template <typename T>
ScanArgs<T> make_args(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                      const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                      const torch::Tensor& z, const torch::Tensor& bias, const torch::Tensor& h0,
                      bool softplus, bool has_z, int64_t chunk) {
  TORCH_CHECK(A.is_contiguous() && D.is_contiguous() && bias.is_contiguous() && h0.is_contiguous(),
              "selective_scan (cpu): A, D, delta_bias and the initial state must be contiguous");
  ScanArgs<T> a;
  a.u = seq_of<const T>(u);
  a.delta = seq_of<const T>(delta);
  a.z = has_z ? seq_of<const T>(z) : Seq<const T>{nullptr, 0, 0, 0};
  a.Bm = group_seq_of<T>(Bm); a.Cm = group_seq_of<T>(Cm); a.A = A.data_ptr<T>();
  a.D = D.data_ptr<T>(); a.bias = bias.data_ptr<T>(); a.h0 = h0.data_ptr<T>();
  a.batch = u.size(0); a.d_inner = u.size(1); a.length = u.size(2);
  a.d_state = A.size(1); a.groups = Bm.size(1); a.chunk = chunk;
  a.n_chunks = (a.length + chunk - 1) / chunk;
  a.softplus = softplus; a.has_z = has_z;
  TORCH_CHECK(a.d_state <= kMaxState, "selective_scan (cpu): d_state must be <= ", kMaxState);
  return a;
}

// An empty (B, E, L) tensor laid out like `like`: time-major when `like`'s time stride is
// the smaller, else channel-major.
torch::Tensor empty_in_layout_of(const torch::Tensor& like) {
  if (like.stride(2) > like.stride(1) && like.size(1) > 1) {
    return torch::empty({like.size(0), like.size(2), like.size(1)}, like.options()).transpose(1, 2);
  }
  return torch::empty(like.sizes(), like.options());
}

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                    torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D,
                                    torch::Tensor z, torch::Tensor bias, torch::Tensor h0,
                                    bool softplus, bool has_z, int64_t chunk, bool save_ckpt) {
  auto y = empty_in_layout_of(has_z ? z : u);
  auto hT = torch::empty_like(h0);
  const int64_t n_chunks = (u.size(2) + chunk - 1) / chunk;
  auto ckpt = save_ckpt ? torch::empty({u.size(0), u.size(1), n_chunks, A.size(1)}, u.options())
                        : torch::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    const auto a = make_args<scalar_t>(u, delta, A, Bm, Cm, D, z, bias, h0, softplus, has_z, chunk);
    const auto ys = seq_of<scalar_t>(y);
    scalar_t* hp = hT.data_ptr<scalar_t>();
    scalar_t* cp = save_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr;
    const int64_t blocks = a.batch * a.groups * a.blocks_per_group();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) forward_block(a, block_of(a, i), ys, hp, cp);
    });
  });
  return {y, hT, ckpt};
}

// Sum of x (B, rest...) over its first dimension, batch by batch in order.
template <typename T>
torch::Tensor sum_over_batch(const torch::Tensor& x) {
  auto out = x[0].clone();
  T* o = out.data_ptr<T>();
  const int64_t n = out.numel();
  for (int64_t b = 1; b < x.size(0); ++b) {
    const T* src = x.data_ptr<T>() + b * n;
    for (int64_t i = 0; i < n; ++i) o[i] += src[i];
  }
  return out;
}

// Scratch for the backward's dB/dC partial sums, kept by the calling thread between calls
// (2 x partial_budget elements of each dtype, or one chunk's partials if larger): fresh
// buffers cost a page fault per 4 KiB on every call, ~10% of a backward at (B 8, E 128,
// L 1024).
template <typename T>
T* partial_scratch(int64_t elements) {
  thread_local std::vector<T> scratch;
  if (static_cast<int64_t>(scratch.size()) < elements) scratch.resize(elements);
  return scratch.data();
}

std::vector<torch::Tensor> scan_bwd(torch::Tensor dy, torch::Tensor dhT, torch::Tensor u,
                                    torch::Tensor delta, torch::Tensor A, torch::Tensor Bm,
                                    torch::Tensor Cm, torch::Tensor D, torch::Tensor z,
                                    torch::Tensor bias, torch::Tensor h0, torch::Tensor ckpt,
                                    bool softplus, bool has_z, int64_t chunk,
                                    int64_t partial_budget) {
  const int64_t batch = u.size(0), d_inner = u.size(1), length = u.size(2);
  const int64_t d_state = A.size(1), groups = Bm.size(1);
  auto du = empty_in_layout_of(u);
  auto ddelta = empty_in_layout_of(delta);
  auto dz = has_z ? empty_in_layout_of(z) : torch::empty({0}, u.options());
  auto grad_h = dhT.clone();
  auto dA = torch::zeros({batch, d_inner, d_state}, u.options());
  auto dD = torch::zeros({batch, d_inner}, u.options());
  auto dbias = torch::zeros({batch, d_inner}, u.options());
  auto dB = torch::empty({batch, groups, length, d_state}, u.options());
  auto dC = torch::empty_like(dB);
  torch::Tensor dA_sum, dD_sum, dbias_sum;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    const auto a = make_args<scalar_t>(u, delta, A, Bm, Cm, D, z, bias, h0, softplus, has_z, chunk);
    const int64_t blocks = batch * groups * a.blocks_per_group();
    // Steps per segment: a multiple of the chunk, with partials within partial_budget.
    const int64_t per_step = blocks * d_state;
    const int64_t segment = std::min(
        a.n_chunks * chunk, std::max<int64_t>(1, partial_budget / (per_step * chunk)) * chunk);
    const int64_t part_size = a.blocks_per_group() * batch * groups * segment * d_state;
    scalar_t* dB_part = partial_scratch<scalar_t>(2 * part_size);
    Grads<scalar_t> g{seq_of<scalar_t>(du), seq_of<scalar_t>(ddelta),
                      has_z ? seq_of<scalar_t>(dz) : Seq<scalar_t>{nullptr, 0, 0, 0},
                      seq_of<const scalar_t>(dy), dB_part, dB_part + part_size, segment};
    Carry<scalar_t> carry{grad_h.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
                          dD.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>()};
    const scalar_t* cp = ckpt.data_ptr<scalar_t>();
    const int64_t n_segments = (length + segment - 1) / segment;
    for (int64_t sgm = n_segments - 1; sgm >= 0; --sgm) {
      const int64_t seg0 = sgm * segment, seg1 = std::min(length, seg0 + segment);
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        ChunkBuffers<scalar_t> buf(chunk, d_state);
        for (int64_t i = begin; i < end; ++i) {
          backward_block(a, block_of(a, i), cp, g, carry, seg0, seg1, buf);
        }
      });
      reduce_partials(a, g.dB_part, segment, seg0, seg1 - seg0, dB.data_ptr<scalar_t>());
      reduce_partials(a, g.dC_part, segment, seg0, seg1 - seg0, dC.data_ptr<scalar_t>());
    }
    dA_sum = sum_over_batch<scalar_t>(dA);
    dD_sum = sum_over_batch<scalar_t>(dD);
    dbias_sum = sum_over_batch<scalar_t>(dbias);
  });
  return {du, ddelta, dz, dA_sum, dB, dC, dD_sum, dbias_sum, grad_h};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (CPU)");
}
