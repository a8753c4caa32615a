// Few-row products with group-wise int8 weights (Q8_0's layout: 32 consecutive weights of a row
// share one fp16 scale), the job llama.cpp's Q8_0 kernels do, for a decode step.
//
// Why this file exists: torch has no group-wise int8 kernel, and its per-row one
// (`_weight_int8pack_mm`) converts every weight to float before multiplying, which bounds it by
// arithmetic, not by memory (about 12 GB/s with 2 threads on the AMX Xeon and the EPYC, where a
// plain read reaches twice that). Here the activation row is rounded to int8 once per 32-block too,
// as llama.cpp does, and each block's dot product is summed in int32 by the CPU's int8
// multiply-add (AVX512-VNNI, AVX-VNNI, or AVX2's maddubs), then scaled by the two blocks' scales.
//
// Built at first use by `kernels/cpp_build.py` for the CPU it runs on (-march=native, or the
// instruction sets `ATEN_CPU_CAPABILITY` allows); each code path below is chosen at compile time.
// Op: omnivision::q8_linear(x [M, K] fp32/bf16, q [N, K] int8, d [N, K/32] fp16, bias [N]?) -> [M, N]\n// in x's dtype, summed in fp32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;

// One activation row rounded to int8 per 32-block: xq = round(x / s), s = max|x| / 127.
template <typename T>
void quantize_row(const T* x, int64_t k, int8_t* xq, float* xs) {
  float v[kBlock];
  for (int64_t b = 0; b < k / kBlock; ++b) {
    float amax = 0.f;
    for (int i = 0; i < kBlock; ++i) {
      v[i] = static_cast<float>(x[b * kBlock + i]);
      const float size = std::fabs(v[i]);
      amax = size > amax ? size : amax;  // not std::fmax: a library call per element here
    }
    const float s = amax / 127.f;
    const float inv = s > 0.f ? 1.f / s : 0.f;
    for (int i = 0; i < kBlock; ++i) xq[b * kBlock + i] = static_cast<int8_t>(std::nearbyint(v[i] * inv));
    xs[b] = s;
  }
}

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
constexpr int64_t kPath = 4;  // AVX512-VNNI
// One weight row against one activation row: 2 blocks (64 bytes) per step. The unsigned-by-signed
// multiply-add needs an unsigned operand: |x| is, and x's sign moves onto the weight.
float row_dot(const int8_t* w, const uint16_t* wd, const uint8_t* ax, const __mmask64* neg,
              const float* xs, int64_t blocks) {
  __m512 acc = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  // lanes 0-7 take the first block's scale, lanes 8-15 the second's
  const __m512i low = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const __m512i wv = _mm512_loadu_si512(w + b * kBlock);
    const __m512i sw = _mm512_mask_sub_epi8(wv, neg[b / 2], zero, wv);
    const __m512i av = _mm512_loadu_si512(ax + b * kBlock);
    const __m512i sums = _mm512_dpbusd_epi32(zero, av, sw);  // [16] int32, 8 per block
    int32_t two_scales;
    std::memcpy(&two_scales, wd + b, sizeof two_scales);
    const __m128i d16 = _mm_cvtsi32_si128(two_scales);
    const __m512 d2 = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(d16), _mm_loadl_pi(_mm_setzero_ps(),
                                             reinterpret_cast<const __m64*>(xs + b))));
    const __m512 scale = _mm512_permutexvar_ps(low, d2);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
  }
  float total = _mm512_reduce_add_ps(acc);
  if (b < blocks) {  // an odd last block
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
    const __m256i sw = _mm256_mask_sub_epi8(wv, static_cast<__mmask32>(neg[b / 2]), _mm256_setzero_si256(), wv);
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ax + b * kBlock));
    const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), av, sw);
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    const int32_t s = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
    total += static_cast<float>(s) * half_to_float(wd[b]) * xs[b];
  }
  return total;
}

struct Prepared {  // one activation row, ready for row_dot
  std::vector<uint8_t> ax;
  std::vector<__mmask64> neg;
  std::vector<float> xs;
};

Prepared prepare(const int8_t* xq, const float* xs, int64_t k) {
  Prepared p;
  p.ax.resize(k);
  p.neg.assign((k / kBlock + 1) / 2, 0);
  for (int64_t i = 0; i < k; ++i) {
    p.ax[i] = static_cast<uint8_t>(xq[i] < 0 ? -xq[i] : xq[i]);
    if (xq[i] < 0) p.neg[i / 64] |= __mmask64(1) << (i % 64);
  }
  p.xs.assign(xs, xs + k / kBlock);
  return p;
}

float dot(const int8_t* w, const uint16_t* wd, const Prepared& p, int64_t blocks) {
  return row_dot(w, wd, p.ax.data(), p.neg.data(), p.xs.data(), blocks);
}

#else
// Below AVX-512: the int8 row and its block scales as they are, one block per step.
struct Prepared {
  std::vector<int8_t> xq;
  std::vector<float> xs;
};

Prepared prepare(const int8_t* xq, const float* xs, int64_t k) {
  return Prepared{std::vector<int8_t>(xq, xq + k), std::vector<float>(xs, xs + k / kBlock)};
}

#if defined(__AVX2__) && defined(__FMA__)
#if defined(__AVXVNNI__)
constexpr int64_t kPath = 3;  // AVX-VNNI
#else
constexpr int64_t kPath = 2;  // AVX2
#endif
// 256 bits: maddubs (u8 x s8 -> pairs of int16) and madd (-> int32), or one AVX-VNNI dpbusd where
// the CPU has it.
float dot(const int8_t* w, const uint16_t* wd, const Prepared& p, int64_t blocks) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq.data() + b * kBlock));
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
    const __m256i ax = _mm256_sign_epi8(xv, xv);
    const __m256i sw = _mm256_sign_epi8(wv, xv);
#if defined(__AVXVNNI__)
    const __m256i sums = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sw);
#else
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), _mm256_set1_epi16(1));
#endif
    const __m256 scale = _mm256_set1_ps(half_to_float(wd[b]) * p.xs[b]);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
  }
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

#else
constexpr int64_t kPath = 1;  // portable
// Portable loops (ARM and older x86): the compiler vectorises what it can.
float dot(const int8_t* w, const uint16_t* wd, const Prepared& p, int64_t blocks) {
  float total = 0.f;
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t s = 0;
    for (int i = 0; i < kBlock; ++i) s += int32_t(w[b * kBlock + i]) * int32_t(p.xq[b * kBlock + i]);
    total += static_cast<float>(s) * half_to_float(wd[b]) * p.xs[b];
  }
  return total;
}
#endif  // AVX2 or portable
#endif  // below AVX-512

template <typename T>
void product(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d, const std::optional<at::Tensor>& bias,
             at::Tensor& out) {
  const int64_t m = x.size(0), k = x.size(1), n = q.size(0), blocks = k / kBlock;
  std::vector<int8_t> xq(m * k);
  std::vector<float> xs(m * blocks);
  std::vector<Prepared> rows;
  rows.reserve(m);
  const T* xp = x.data_ptr<T>();
  for (int64_t r = 0; r < m; ++r) {
    quantize_row(xp + r * k, k, xq.data() + r * k, xs.data() + r * blocks);
    rows.push_back(prepare(xq.data() + r * k, xs.data() + r * blocks, k));
  }
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  T* o = out.data_ptr<T>();
  const int8_t* w = q.data_ptr<int8_t>();
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  // each weight row is read from memory once and reused from L1 for every activation row
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float add = bp ? bp[j] : 0.f;
      for (int64_t r = 0; r < m; ++r) o[r * n + j] = static_cast<T>(dot(w + j * k, wd + j * blocks, rows[r], blocks) + add);
    }
  });
}

at::Tensor q8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d,
                     const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && d.dim() == 2, "q8_linear: x, q and d must be 2-d");
  TORCH_CHECK(q.scalar_type() == at::kChar && d.scalar_type() == at::kHalf, "q8_linear: q int8, d fp16");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "q8_linear: x fp32 or bf16");
  const int64_t k = x.size(1), n = q.size(0);
  TORCH_CHECK(k % kBlock == 0 && q.size(1) == k && d.size(0) == n && d.size(1) == k / kBlock,
              "q8_linear: shapes x [M, K], q [N, K], d [N, K/32] with K a multiple of 32");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), "q8_linear: bias [N]");
  const at::Tensor xc = x.contiguous(), qc = q.contiguous(), dc = d.contiguous();
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  if (x.scalar_type() == at::kFloat) {
    product<float>(xc, qc, dc, bias, out);
  } else {
    product<at::BFloat16>(xc, qc, dc, bias, out);
  }
  return out;
}

int64_t q8_path() { return kPath; }

}  // namespace

TORCH_LIBRARY(omnivision, lib) {
  lib.def("q8_linear(Tensor x, Tensor q, Tensor d, Tensor? bias=None) -> Tensor");
  lib.def("q8_path() -> int", &q8_path);  // which code path was compiled: see PATHS in cpp_build.py
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("q8_linear", &q8_linear);
}
