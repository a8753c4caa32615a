// Few-row products with `Int4Linear`'s group-wise int4 weights, read in the layout they are stored
// in, for a decode step: the job llama.cpp's Q4 kernels do.
//
// Why this file exists: torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) turns every code
// into a float before multiplying, so decoding streams the weights at about 40 % of the memory
// bound (README, Speed and memory: 0.68x llama.cpp's Q4_0 on the AVX-512 EPYC, 0.37x on the AVX2
// stand-in). Here, as in `q8_dot.cpp`, each 32-block of the activation row is rounded to int8 once
// and the codes are multiplied in int32 by the CPU's int8 multiply-add (AVX512-VNNI or AVX-VNNI
// `dpbusd`, or AVX2's `maddubs`), then scaled per block and group. The codes stay where they are:
// no second copy of the weights.
//
// The layout (`quantize/int4_packing.py`, blocked): rows in blocks of 64; for each input column k,
// 32 bytes, byte i holding row i in its low nibble and row i + 32 in its high one. Four columns'
// 32-byte strips are interleaved byte-wise (unpack) so that each 32-bit lane holds one row's four
// consecutive codes, which is what `dpbusd` multiplies with four activation bytes broadcast.
// Weights: w = (q - 8) * scale + zero per group, so sum_k w x = scale * sum q x + (zero - 8 scale) * sum x.
//
// Op: omnivision::q4_linear(x [M, K] fp32/bf16, packed [N, K/2] uint8, table [N/64, K/G, 2, 64]
//     fp32/bf16 (each block's scales, then zeros, of each group: `quantize.int4_few_rows.q4_table`),
//     G, bias [N]?) -> [M, N] in x's dtype, summed in fp32; N % 64 == 0, G % 32 == 0.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kRows = 64;   // rows per block of the layout
constexpr int64_t kBlock = 32;  // activation columns rounded together

struct Activation {            // one activation row, rounded
  std::vector<int8_t> q;       // [K]
  std::vector<float> scale;    // [K/32]
  std::vector<float> group_sum;  // [K/G]: sum of the rounded values of each weight group
};

template <typename T>
Activation round_row(const T* x, int64_t k, int64_t group) {
  Activation a;
  a.q.resize(k);
  a.scale.resize(k / kBlock);
  a.group_sum.assign(k / group, 0.f);
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
    int32_t sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      const int8_t c = static_cast<int8_t>(std::nearbyint(v[i] * inv));
      a.q[b * kBlock + i] = c;
      sum += c;
    }
    a.scale[b] = s;
    a.group_sum[b * kBlock / group] += s * static_cast<float>(sum);
  }
  return a;
}

#if defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
constexpr int64_t kPath = 5;  // AVX512-VBMI and VNNI
// Two byte permutes (vpermt2b) take four columns' strips (128 bytes) to four bytes per row for 32
// rows, each byte holding row r's code and row r + 32's: the 256-bit path below needs eight unpacks
// for the same.

template <typename S>
inline __m512 load16(const S* v) {
  if constexpr (std::is_same_v<S, float>) {
    return _mm512_loadu_ps(v);
  } else {  // bf16: the top half of an fp32
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// One block of 64 rows ([K][32] bytes at p; its table [G][2][64] at t) times one rounded activation
// row -> out[64].
template <typename S>
void block_dot(const uint8_t* p, const S* t, int64_t k, int64_t group, const Activation& a, float* out) {
  const int64_t groups = k / group;
  alignas(64) uint8_t order[2][64];  // output byte 4r + i <- column i's byte of row r (+16 in the second)
  for (int half = 0; half < 2; ++half)
    for (int r = 0; r < 16; ++r)
      for (int i = 0; i < 4; ++i) order[half][4 * r + i] = static_cast<uint8_t>(i * 32 + half * 16 + r);
  const __m512i first = _mm512_load_si512(order[0]), second = _mm512_load_si512(order[1]);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512 total[4];  // rows 0-15, 16-31, 32-47, 48-63
  for (auto& t : total) t = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 part[4];
    for (auto& t : part) t = _mm512_setzero_ps();
    for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += kBlock) {
      __m512i acc[4];
      for (auto& t : acc) t = _mm512_setzero_si512();
      for (int64_t c = k0; c < k0 + kBlock; c += 4) {
        const __m512i w01 = _mm512_loadu_si512(p + c * 32), w23 = _mm512_loadu_si512(p + c * 32 + 64);
        int32_t four;  // the activation's codes of these four columns, in every lane
        std::memcpy(&four, a.q.data() + c, sizeof four);
        const __m512i x = _mm512_set1_epi32(four);
        const __m512i lo = _mm512_permutex2var_epi8(w01, first, w23), hi = _mm512_permutex2var_epi8(w01, second, w23);
        acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_and_si512(lo, nibble), x);
        acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_and_si512(hi, nibble), x);
        acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_and_si512(_mm512_srli_epi16(lo, 4), nibble), x);
        acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_and_si512(_mm512_srli_epi16(hi, 4), nibble), x);
      }
      const __m512 step = _mm512_set1_ps(a.scale[k0 / kBlock]);
      for (int j = 0; j < 4; ++j) part[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j]), step, part[j]);
    }
    const __m512 sum = _mm512_set1_ps(a.group_sum[g]);
    for (int j = 0; j < 4; ++j) {
      const __m512 scale = load16(t + g * 2 * kRows + 16 * j);
      const __m512 offset = _mm512_fnmadd_ps(_mm512_set1_ps(8.f), scale, load16(t + g * 2 * kRows + kRows + 16 * j));
      total[j] = _mm512_fmadd_ps(offset, sum, _mm512_fmadd_ps(part[j], scale, total[j]));
    }
  }
  for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + 16 * j, total[j]);
}

#elif defined(__AVX2__) && defined(__FMA__)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
constexpr int64_t kPath = 4;  // AVX512-VNNI (on 256-bit registers)
inline __m256i dot4(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_epi32(acc, w, x); }
#elif defined(__AVXVNNI__)
constexpr int64_t kPath = 3;  // AVX-VNNI
inline __m256i dot4(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
#else
constexpr int64_t kPath = 2;  // AVX2: codes <= 15 and |x| <= 127 keep maddubs's int16 pairs from saturating
inline __m256i dot4(__m256i acc, __m256i w, __m256i x) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}
#endif

// Row (within the 64-row block) of lane i % 8 of accumulator j = i / 8: the unpacks below leave
// accumulator j (0-3 low nibbles, 4-7 high) with rows 4j..4j+3 in lanes 0-3 and 16 more in lanes 4-7.
inline int row_of(int i) {
  const int j = i / 8, l = i % 8;
  return (j / 4) * 32 + (j % 4) * 4 + (l / 4) * 16 + l % 4;
}

// Four columns' strips a-d of 32 bytes (byte i: row i's code in its low nibble, row i + 32's in
// its high one) -> 8 accumulators of 8 rows, each lane one row's four codes times the four
// activation bytes in x. The bytes are interleaved before the nibbles are split (a byte permutation
// commutes with the split), so both halves share one set of unpacks.
inline void dot_columns(__m256i a, __m256i b, __m256i c, __m256i d, __m256i x, __m256i* acc) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
  const __m256i cd_lo = _mm256_unpacklo_epi8(c, d), cd_hi = _mm256_unpackhi_epi8(c, d);
  const __m256i rows[4] = {_mm256_unpacklo_epi16(ab_lo, cd_lo), _mm256_unpackhi_epi16(ab_lo, cd_lo),
                           _mm256_unpacklo_epi16(ab_hi, cd_hi), _mm256_unpackhi_epi16(ab_hi, cd_hi)};
  for (int j = 0; j < 4; ++j) {
    acc[j] = dot4(acc[j], _mm256_and_si256(rows[j], nibble), x);
    acc[j + 4] = dot4(acc[j + 4], _mm256_and_si256(_mm256_srli_epi16(rows[j], 4), nibble), x);
  }
}

template <typename S>
inline __m128 load4(const S* v) {
  if constexpr (std::is_same_v<S, float>) {
    return _mm_loadu_ps(v);
  } else {  // bf16: the top half of an fp32
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v));
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
  }
}

// Accumulator j's 8 values of one of the table's rows of 64 (see row_of).
template <typename S>
inline __m256 lanes_of(const S* v, int j) {
  const int base = (j / 4) * 32 + (j % 4) * 4;
  return _mm256_set_m128(load4(v + base + 16), load4(v + base));
}

// One block of 64 rows ([K][32] bytes at p; its table [G][2][64] at t) times one rounded activation
// row -> out[64], in row order.
template <typename S>
void block_dot(const uint8_t* p, const S* t, int64_t k, int64_t group, const Activation& a, float* out) {
  const int64_t groups = k / group;
  __m256 total[8];
  for (auto& t : total) t = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256 part[8];
    for (auto& t : part) t = _mm256_setzero_ps();
    for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += kBlock) {
      __m256i acc[8];
      for (auto& t : acc) t = _mm256_setzero_si256();
      for (int64_t c = k0; c < k0 + kBlock; c += 4) {
        const uint8_t* src = p + c * 32;
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
        const __m256i w2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64));
        const __m256i w3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 96));
        int32_t four;  // the activation's codes of these four columns, in every lane
        std::memcpy(&four, a.q.data() + c, sizeof four);
        const __m256i x = _mm256_set1_epi32(four);
        dot_columns(w0, w1, w2, w3, x, acc);
      }
      const __m256 step = _mm256_set1_ps(a.scale[k0 / kBlock]);
      for (int j = 0; j < 8; ++j) part[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), step, part[j]);
    }
    const __m256 sum = _mm256_set1_ps(a.group_sum[g]);
    for (int j = 0; j < 8; ++j) {
      const __m256 scale = lanes_of(t + g * 2 * kRows, j);
      const __m256 offset = _mm256_fnmadd_ps(_mm256_set1_ps(8.f), scale, lanes_of(t + g * 2 * kRows + kRows, j));
      total[j] = _mm256_fmadd_ps(offset, sum, _mm256_fmadd_ps(part[j], scale, total[j]));
    }
  }
  for (int j = 0; j < 8; ++j) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, total[j]);
    for (int l = 0; l < 8; ++l) out[row_of(j * 8 + l)] = lanes[l];
  }
}

#else
constexpr int64_t kPath = 1;  // portable loops (ARM and older x86)

template <typename S>
void block_dot(const uint8_t* p, const S* t, int64_t k, int64_t group, const Activation& a, float* out) {
  const int64_t groups = k / group;
  for (int64_t r = 0; r < kRows; ++r) {
    const int shift = r < 32 ? 0 : 4;
    const int64_t byte = r % 32;
    float total = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      float part = 0.f;
      for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += kBlock) {
        int32_t acc = 0;
        for (int64_t c = k0; c < k0 + kBlock; ++c) acc += ((p[c * 32 + byte] >> shift) & 15) * a.q[c];
        part += static_cast<float>(acc) * a.scale[k0 / kBlock];
      }
      const float scale = static_cast<float>(t[g * 2 * kRows + r]);
      total += part * scale + (static_cast<float>(t[g * 2 * kRows + kRows + r]) - 8.f * scale) * a.group_sum[g];
    }
    out[r] = total;
  }
}
#endif

template <typename T, typename S>
void product(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& table, int64_t group,
             const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0), groups = k / group;
  std::vector<Activation> rows;
  rows.reserve(m);
  for (int64_t r = 0; r < m; ++r) rows.push_back(round_row(x.data_ptr<T>() + r * k, k, group));
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const S* tp = table.data_ptr<S>();
  T* o = out.data_ptr<T>();
  // each block's codes are read from memory once and reused from the caches for every activation row
  at::parallel_for(0, n / kRows, 1, [&](int64_t begin, int64_t end) {
    float block[kRows];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t first = blk * kRows;
      for (int64_t r = 0; r < m; ++r) {
        block_dot(p + first * (k / 2), tp + first * groups * 2, k, group, rows[r], block);
        for (int64_t i = 0; i < kRows; ++i) {
          o[r * n + first + i] = static_cast<T>(block[i] + (bp ? bp[first + i] : 0.f));
        }
      }
    }
  });
}

at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& table, int64_t group,
                     const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2 && table.dim() == 4, "q4_linear: x and packed 2-d, table 4-d");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "q4_linear: packed uint8");
  TORCH_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kBFloat16,
              "q4_linear: table fp32 or bf16");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "q4_linear: x fp32 or bf16");
  const int64_t k = x.size(1), n = packed.size(0);
  TORCH_CHECK(group > 0 && group % kBlock == 0 && k % group == 0,
              "q4_linear: the group size must be a multiple of 32 dividing K");
  TORCH_CHECK(n % kRows == 0 && packed.size(1) * 2 == k &&
                  table.sizes() == at::IntArrayRef({n / kRows, k / group, 2, kRows}),
              "q4_linear: shapes x [M, K], packed [N, K/2], table [N/64, K/G, 2, 64] with N a multiple of 64");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), "q4_linear: bias [N]");
  const at::Tensor xc = x.contiguous(), pc = packed.contiguous(), tc = table.contiguous();
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  const bool wide = table.scalar_type() == at::kFloat;
  if (x.scalar_type() == at::kFloat) {
    wide ? product<float, float>(xc, pc, tc, group, bias, out)
         : product<float, at::BFloat16>(xc, pc, tc, group, bias, out);
  } else {
    wide ? product<at::BFloat16, float>(xc, pc, tc, group, bias, out)
         : product<at::BFloat16, at::BFloat16>(xc, pc, tc, group, bias, out);
  }
  return out;
}

int64_t q4_path() { return kPath; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(omnivision, lib) {
  lib.def("q4_linear(Tensor x, Tensor packed, Tensor table, int group, Tensor? bias=None) -> Tensor");
  lib.def("q4_path() -> int", &q4_path);  // which code path was compiled: see PATHS in cpp_build.py
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("q4_linear", &q4_linear);
}
