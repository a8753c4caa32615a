// Few-row products of fp32 or bf16 weights, written for a decode step: each weight row is read
// from memory once, multiplied with every activation row while it sits in L1, summed in fp32; four
// weight rows are read side by side (four streams from memory, each activation load used four times).
//
// Why this file exists: a one-row product is bound by reading the weight, and torch's kernels do
// not read it at the machine's bandwidth on every CPU: on the 2-core AMD EPYC its fp32 one-row
// products stream at half of it, and the compiled multiply-and-sum loop that beat them there
// (`kernels/compiled_dot.py`) is refused where inductor miscompiles it (under
// `ATEN_CPU_CAPABILITY=avx2`, the laptop stand-in), and keeps a decoder off the one-call C++ step
// (`decode_layers.cpp`), whose products must be this library's ops. This kernel is one of the
// candidates the per-machine choice times (`model/linear.py`); it is used only where it measures
// fastest. On the AMX Xeon (2 threads, torch 2.13, weights streamed, `omnivision tune`) it won six
// of the 968M's seven bf16 one-row shapes, 4864x896 in 252 us against 324 for `torch.mv`, 896x896
// in 45 against 94, and lost the 151936x896 head (14.4 against 13.3 ms); in fp32 it was level.
//
// Code paths, chosen at compile time: AVX512-BF16 (bf16 pairs multiplied and summed by `vdpbf16ps`),
// AVX-512 (bf16 widened to fp32 by a shift), AVX2 with FMA (the same on 256-bit registers),
// portable loops. Every path sums in fp32 and rounds once, after the bias, to x's dtype.
//
// Op: omnivision::dense_linear(x [M, K], w [N, K], bias [N]?) -> [M, N], x, w and bias in one
//     dtype (fp32 or bf16), as F.linear up to the order of the fp32 sums.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int kRows = 4;  // weight rows read side by side: four streams from memory, x loaded once for them

inline float widen(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
inline float as_float(float v) { return v; }
inline float as_float(uint16_t v) { return widen(v); }

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define DENSE_VECTORS 1
#if defined(__AVX512BF16__)
constexpr int64_t kPath = 4;  // AVX512-BF16
#else
constexpr int64_t kPath = 3;  // AVX-512
#endif
using Vec = __m512;
constexpr int64_t kLanes = 16;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload(const uint16_t* p) {  // 16 bf16 widened to fp32 by a shift
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }

#elif defined(__AVX2__) && defined(__FMA__)
#define DENSE_VECTORS 1
constexpr int64_t kPath = 2;  // AVX2
using Vec = __m256;
constexpr int64_t kLanes = 8;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload(const uint16_t* p) {  // 8 bf16 widened to fp32 by a shift
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(Vec v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

#else
constexpr int64_t kPath = 1;  // portable
#endif

// out[r] = w[r * k ..] . x for R consecutive weight rows (W fp32 or bf16 bits), x widened to fp32.
template <int R, typename W>
void dots(const W* w, int64_t k, const uint16_t* /*x as bf16*/, const float* x, float* out) {
  int64_t i = 0;
#if defined(DENSE_VECTORS)
  Vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  for (; i + kLanes <= k; i += kLanes) {
    const Vec xv = vload(x + i);
    for (int r = 0; r < R; ++r) acc[r] = vfma(vload(w + r * k + i), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = vsum(acc[r]);
#else
  for (int r = 0; r < R; ++r) out[r] = 0.f;
#endif
  for (; i < k; ++i) {
    for (int r = 0; r < R; ++r) out[r] += as_float(w[r * k + i]) * x[i];
  }
}

#if defined(__AVX512BF16__) && defined(DENSE_VECTORS)
// bf16 weights and x: 32 products per instruction (`vdpbf16ps`), summed in pairs into fp32 lanes
template <int R>
void dots(const uint16_t* w, int64_t k, const uint16_t* xb, const float* x, float* out) {
  Vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w + r * k + i), xv);
  }
  for (int r = 0; r < R; ++r) out[r] = vsum(acc[r]);
  for (; i < k; ++i) {
    for (int r = 0; r < R; ++r) out[r] += widen(w[r * k + i]) * x[i];
  }
}
#endif

// One product: out [m, n] = x [m, k] . w [n, k]^T (+ bias); each weight row is read from memory once,
// for all m rows of x. W is float or uint16_t (bf16 bits); xb: x's bf16 bits (bf16 only), xf: x in fp32.
template <typename T, typename W>
void product(int64_t m, int64_t n, int64_t k, const W* w, const uint16_t* xb, const float* xf, const float* bias,
             T* out) {
  at::parallel_for(0, (n + kRows - 1) / kRows, 16, [&](int64_t begin, int64_t end) {
    float sums[kRows];
    for (int64_t g = begin; g < end; ++g) {
      const int64_t j = g * kRows, rows = std::min<int64_t>(kRows, n - j);
      for (int64_t r = 0; r < m; ++r) {
        const uint16_t* xbr = xb ? xb + r * k : nullptr;
        if (rows == kRows) {
          dots<kRows>(w + j * k, k, xbr, xf + r * k, sums);
        } else {
          for (int64_t i = 0; i < rows; ++i) dots<1>(w + (j + i) * k, k, xbr, xf + r * k, sums + i);
        }
        for (int64_t i = 0; i < rows; ++i) out[r * n + j + i] = static_cast<T>(sums[i] + (bias ? bias[j + i] : 0.f));
      }
    }
  });
}

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "dense_linear: x [M, K], w [N, K]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "dense_linear: x and w both fp32 or both bf16");
  const int64_t m = x.size(0), n = w.size(0), k = x.size(1);
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), "dense_linear: bias [N]");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({m, n}, x.options());
  if (x.scalar_type() == at::kFloat) {
    product<float>(m, n, k, wc.data_ptr<float>(), nullptr, xc.data_ptr<float>(), bp, out.data_ptr<float>());
  } else {
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
    std::vector<float> xf(static_cast<size_t>(m * k));  // x widened once, for the paths that read it so
    for (int64_t i = 0; i < m * k; ++i) xf[i] = widen(xb[i]);
    product<at::BFloat16>(m, n, k, reinterpret_cast<const uint16_t*>(wc.data_ptr<at::BFloat16>()), xb, xf.data(),
                          bp, out.data_ptr<at::BFloat16>());
  }
  return out;
}

int64_t dense_path() { return kPath; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(omnivision, lib) {
  lib.def("dense_linear(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  lib.def("dense_path() -> int", &dense_path);  // 4 AVX512-BF16, 3 AVX-512, 2 AVX2, 1 portable
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("dense_linear", &dense_linear);
}
