// Scalar math shared by the C++ CPU kernels (selective_scan_cpu.cpp, step_cpu.cpp), so that
// the recurrent step and the scan round alike. kernels/cpu_build.py hashes this header into
// the build key of every source that includes it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mambaseq {

// exp(x), relative error ~1e-7, written so that loops over lanes vectorize (no libm call):
// x = (i + f) ln 2 with i integer and |f| <= 1/2; 2^f by a degree-6 polynomial fitted on
// Chebyshev nodes of [-1/2, 1/2]; 2^i by adding i to the float's exponent bits.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);            // one max and one min instruction
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

}  // namespace mambaseq
