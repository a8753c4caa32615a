// Products of quantized weights with many activation rows (a prompt, the vision tower's 729 tokens,
// the projector's 81): the weight is turned back into floats by vector loops (AVX-512 where the CPU
// has it, plain loops otherwise) into a buffer the calling thread keeps, and multiplied in one float
// matrix product on torch's own path (oneDNN; AMX where the CPU has it).
//
// Why this file exists: many rows are compute-bound, so the fastest product is the float one, and
// the cost that matters is the dequantisation in front of it. Done with torch operators (unpack,
// widen to fp32, multiply-add, round to bf16: five passes over memory) it took 4.3 ms for a 4864x896
// int4 weight against 1.0 ms for the bf16 product itself, on the AMX Xeon (2 threads, torch 2.13);
// and cutting the product into 512-row slices to bound those temporaries cost oneDNN up to 3x on
// top (4864x896 on 140 rows: 1.0 ms whole, 2.9 ms in 256-row slices). Here one pass writes the
// weight in the product's dtype, and a weight is cut only where it is larger than the buffer
// (`kBufferBytes`: every layer of the 968M model but the projector's first fits whole).
//
// Ops (x fp32 or bf16; the weight dequantised to x's dtype; the result in x's dtype, bias added
// after the product as the Python path does):
//   omnivision::q4_dequantized_linear(x [M, K], packed [N, K/2] uint8, scales [N, K/G] fp32,
//       zeros [N, K/G] fp32, G, bias [N]?) -> [M, N]; either layout of `quantize/int4_packing.py`
//       (64-row blocked where N % 64 == 0, rows otherwise), w = (q - 8) * scale + zero;
//   omnivision::q8_dequantized_linear(x [M, K], q [N, K] int8, scales [N, K/G] fp16 or fp32,
//       bias [N]?) -> [M, N], w = q * scale, G = K / scales.size(1) (one column: one scale a row);
//   omnivision::q4_dequantize(packed, scales, zeros, G, like) / q8_dequantize(q, scales, like)
//       -> the weight [N, K] in like's dtype, as the products see it (for the tests).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlockRows = 64;                     // rows per block of the int4 layout
constexpr int64_t kBufferBytes = int64_t{10} << 20;  // the dequantised weight's buffer, per thread
// 10 MiB holds the largest layers of the 968M model whole in bf16 (4304x1152: 9.9 MB; 4864x896:
// 8.7 MB); the projector's 10368-wide first layer goes in slices.

inline float to_float(float v) { return v; }
inline float to_float(at::Half v) { return static_cast<float>(v); }

// fp32 -> the product's dtype: itself, or bf16 rounded to nearest even like torch (NaN stays NaN).
inline void store(float v, float* out) { *out = v; }
inline void store(float v, uint16_t* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  *out = v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
// The compiler vectorises the plain loops poorly (a 512x896 int8 weight dequantised and multiplied by
// one row: 2.9 billion values a second on the AMX Xeon's 2 threads, against 4.5 with these), so on
// AVX-512 they run on explicit 16-wide vectors: codes widened to fp32, one multiply-add, and
// the rounding to bf16 by the CPU's own instruction where it has AVX512-BF16.
inline void store16(__m512 v, float* out) { _mm512_storeu_ps(out, v); }
inline void store16(__m512 v, uint16_t* out) {
#if defined(__AVX512BF16__)
  const __m256i half = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#else  // nearest even by integer arithmetic, NaN kept quiet, as `store` above
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  const __m256i half = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
#endif
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), half);
}

inline __m512 widen_u8(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }
inline __m512 widen_i8(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)); }
#endif

// One column of a 64-row block of int4 codes (32 bytes: row i in the low nibble of byte i, row
// i + 32 in the high one) into out[0, 64): w = q * scale + shift, with `scale_shift` the block's 64
// scales then 64 shifts (z - 8 s) of the column's group.
template <typename T>
inline void q4_column(const uint8_t* col, const float* scale_shift, T* out) {
  const float* scale = scale_shift;
  const float* shift = scale_shift + kBlockRows;
#if defined(__AVX512F__)
  const __m128i nibble = _mm_set1_epi8(15);
  for (int half = 0; half < 2; ++half) {  // bytes 0-15 hold rows 0-15 and 32-47; bytes 16-31 the rest
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col + 16 * half));
    const __m128i low = _mm_and_si128(bytes, nibble), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
    const int64_t r = 16 * half;
    store16(_mm512_fmadd_ps(widen_u8(low), _mm512_loadu_ps(scale + r), _mm512_loadu_ps(shift + r)), out + r);
    store16(_mm512_fmadd_ps(widen_u8(high), _mm512_loadu_ps(scale + r + 32), _mm512_loadu_ps(shift + r + 32)),
            out + r + 32);
  }
#else
  for (int64_t i = 0; i < kBlockRows / 2; ++i) store(static_cast<float>(col[i] & 15) * scale[i] + shift[i], out + i);
  for (int64_t i = 0; i < kBlockRows / 2; ++i) {
    const int64_t r = i + kBlockRows / 2;
    store(static_cast<float>(col[i] >> 4) * scale[r] + shift[r], out + r);
  }
#endif
}

// Rows [0, rows) of int4 codes in the row layout (N not a multiple of 64: byte j of a row holds
// column 2j in its high nibble, 2j + 1 in its low one) into out [rows, K].
template <typename T>
void q4_rows(const uint8_t* p, const float* s, const float* z, int64_t rows, int64_t k, int64_t group, T* out) {
  const int64_t groups = k / group;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = s[r * groups + g], shift = z[r * groups + g] - 8.f * scale;
      const uint8_t* src = p + (r * k + g * group) / 2;
      T* o = out + r * k + g * group;
      int64_t j = 0;
#if defined(__AVX512F__)
      const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(shift);
      const __m128i nibble = _mm_set1_epi8(15);
      for (; j + 16 <= group / 2; j += 16) {  // 16 bytes: columns 2j .. 2j + 31
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
        const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), low = _mm_and_si128(bytes, nibble);
        store16(_mm512_fmadd_ps(widen_u8(_mm_unpacklo_epi8(high, low)), vs, vz), o + 2 * j);
        store16(_mm512_fmadd_ps(widen_u8(_mm_unpackhi_epi8(high, low)), vs, vz), o + 2 * j + 16);
      }
#endif
      for (; j < group / 2; ++j) {
        store(static_cast<float>(src[j] >> 4) * scale + shift, o + 2 * j);
        store(static_cast<float>(src[j] & 15) * scale + shift, o + 2 * j + 1);
      }
    }
  }
}

// Rows [0, rows) of int8 codes, row-major, into out [rows, K]: w = q * scale of the row's group.
template <typename S, typename T>
void q8_rows(const int8_t* q, const S* s, int64_t rows, int64_t k, int64_t group, T* out) {
  const int64_t groups = k / group;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = to_float(s[r * groups + g]);
      const int8_t* src = q + r * k + g * group;
      T* o = out + r * k + g * group;
      int64_t j = 0;
#if defined(__AVX512F__)
      const __m512 vs = _mm512_set1_ps(scale);
      for (; j + 16 <= group; j += 16) {
        store16(_mm512_mul_ps(widen_i8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))), vs), o + j);
      }
#endif
      for (; j < group; ++j) store(static_cast<float>(src[j]) * scale, o + j);
    }
  }
}

// The thread's buffer, at least `bytes` long (kept: a fresh allocation of this size per product
// costs its page faults every time).
void* buffer(int64_t bytes) {
  thread_local std::vector<float> kept;
  const size_t floats = static_cast<size_t>((bytes + 3) / 4);
  if (kept.size() < floats) kept.resize(floats);
  return kept.data();
}

// Weight rows in slices of at most kBufferBytes (a multiple of `step` rows), each dequantised by
// fill(start, stop, buffer) and multiplied: product(slice, start, stop) -> [M, stop - start].
template <typename Fill, typename Product>
at::Tensor sliced(const at::Tensor& x, int64_t n, int64_t k, int64_t step, const std::optional<at::Tensor>& bias,
                  Fill fill, Product product) {
  if (n == 0) return at::empty({x.size(0), 0}, x.options());
  const int64_t item = x.element_size();
  const int64_t slice = std::max(step, std::min(n, kBufferBytes / (k * item)) / step * step);
  void* data = buffer(std::min(n, slice) * k * item);
  at::Tensor out;
  for (int64_t start = 0; start < n; start += slice) {
    const int64_t stop = std::min(n, start + slice);
    fill(start, stop, data);
    at::Tensor part = product(data, start, stop);
    if (stop - start == n) {
      out = part;
    } else {
      if (!out.defined()) out = at::empty({x.size(0), n}, x.options());
      out.narrow(1, start, stop - start).copy_(part);
    }
  }
  if (bias.has_value()) out.add_(bias->to(x.scalar_type()));
  return out;
}

void check_x(const at::Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, op, ": x [M, K] with K = ", k, ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op, ": x fp32 or bf16");
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t n, const char* op) {
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), op, ": bias [N]");
}

int64_t q4_check(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& zeros, int64_t group,
                 const char* op) {
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte, op, ": packed [N, K/2] uint8");
  const int64_t n = packed.size(0), k = packed.size(1) * 2;
  TORCH_CHECK(k > 0, op, ": K must be positive");
  TORCH_CHECK(group > 0 && group % 2 == 0 && k % group == 0, op, ": the group size must divide K = ", k);
  for (const at::Tensor* t : {&scales, &zeros}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == n && t->size(1) == k / group && t->scalar_type() == at::kFloat,
                op, ": scales and zeros [N, K/G] fp32");
  }
  return k;
}

bool blocked(int64_t n) { return n % kBlockRows == 0; }  // the layout `quantize/int4_packing.py` gives N

// Rows [start, stop) of an int4 weight into data: K-major [K, stop - start] in the blocked layout,
// [stop - start, K] in the row layout.
template <typename T>
void q4_fill(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& zeros, int64_t group,
             int64_t start, int64_t stop, void* data) {
  const int64_t n = packed.size(0), k = packed.size(1) * 2, groups = k / group;
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  const float* z = zeros.data_ptr<float>();
  T* out = static_cast<T*>(data);
  if (!blocked(n)) {
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / k);
    at::parallel_for(start, stop, grain, [&](int64_t r0, int64_t r1) {
      q4_rows<T>(p + r0 * k / 2, s + r0 * groups, z + r0 * groups, r1 - r0, k, group, out + (r0 - start) * k);
    });
    return;
  }
  at::parallel_for(start / kBlockRows, stop / kBlockRows, 1, [&](int64_t b0, int64_t b1) {
    float scale_shift[2 * kBlockRows];  // the block's 64 scales, then 64 shifts, of one group
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b * kBlockRows;
      for (int64_t g = 0; g < groups; ++g) {
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const float scale = s[(row + r) * groups + g];
          scale_shift[r] = scale;
          scale_shift[kBlockRows + r] = z[(row + r) * groups + g] - 8.f * scale;  // (q - 8) s + z = q s + (z - 8 s)
        }
        for (int64_t c = g * group; c < (g + 1) * group; ++c) {  // K-major: column c is row c of the buffer
          q4_column<T>(p + row * k / 2 + c * (kBlockRows / 2), scale_shift, out + c * (stop - start) + (row - start));
        }
      }
    }
  });
}

// Rows [start, stop) of an int8 weight into data as [stop - start, K].
template <typename S, typename T>
void q8_fill(const at::Tensor& q, const at::Tensor& scales, int64_t start, int64_t stop, void* data) {
  const int64_t k = q.size(1), group = k / scales.size(1);
  const int8_t* qp = q.data_ptr<int8_t>() + start * k;
  const S* sp = scales.data_ptr<S>() + start * scales.size(1);
  T* out = static_cast<T*>(data);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / k);
  at::parallel_for(0, stop - start, grain, [&](int64_t r0, int64_t r1) {
    q8_rows<S, T>(qp + r0 * k, sp + r0 * scales.size(1), r1 - r0, k, group, out + r0 * k);
  });
}

void q8_check(const at::Tensor& q, const at::Tensor& scales, const char* op) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.size(1) > 0, op, ": q [N, K] int8, K > 0");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == q.size(0) && scales.size(1) > 0 &&
                  q.size(1) % scales.size(1) == 0 &&
                  (scales.scalar_type() == at::kHalf || scales.scalar_type() == at::kFloat),
              op, ": scales [N, K/G] fp16 or fp32 with G dividing K");
}

template <typename T>
void q8_fill_any(const at::Tensor& q, const at::Tensor& scales, int64_t start, int64_t stop, void* data) {
  if (scales.scalar_type() == at::kHalf) {
    q8_fill<at::Half, T>(q, scales, start, stop, data);
  } else {
    q8_fill<float, T>(q, scales, start, stop, data);
  }
}

// fill<float> or fill<uint16_t> (bf16 bits) by the dtype.
#define OV_BY_DTYPE(dtype, call)            \
  if ((dtype) == at::kFloat) {              \
    call(float);                            \
  } else {                                  \
    call(uint16_t);                         \
  }

at::Tensor q4_dequantized_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                                 const at::Tensor& zeros, int64_t group, const std::optional<at::Tensor>& bias) {
  const char* op = "q4_dequantized_linear";
  const int64_t k = q4_check(packed, scales, zeros, group, op), n = packed.size(0);
  check_x(x, k, op);
  check_bias(bias, n, op);
  const at::Tensor xc = x.contiguous(), pc = packed.contiguous(), sc = scales.contiguous(), zc = zeros.contiguous();
  const auto fill = [&](int64_t start, int64_t stop, void* data) {
#define OV_FILL(T) q4_fill<T>(pc, sc, zc, group, start, stop, data)
    OV_BY_DTYPE(x.scalar_type(), OV_FILL)
#undef OV_FILL
  };
  const auto product = [&](void* data, int64_t start, int64_t stop) {
    if (!blocked(n)) return at::linear(xc, at::from_blob(data, {stop - start, k}, x.options()));
    return at::mm(xc, at::from_blob(data, {k, stop - start}, x.options()));  // [M, K] @ [K, rows]
  };
  return sliced(xc, n, k, blocked(n) ? kBlockRows : 1, bias, fill, product);
}

at::Tensor q8_dequantized_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                                 const std::optional<at::Tensor>& bias) {
  const char* op = "q8_dequantized_linear";
  q8_check(q, scales, op);
  const int64_t n = q.size(0), k = q.size(1);
  check_x(x, k, op);
  check_bias(bias, n, op);
  const at::Tensor xc = x.contiguous(), qc = q.contiguous(), sc = scales.contiguous();
  const auto fill = [&](int64_t start, int64_t stop, void* data) {
#define OV_FILL(T) q8_fill_any<T>(qc, sc, start, stop, data)
    OV_BY_DTYPE(x.scalar_type(), OV_FILL)
#undef OV_FILL
  };
  const auto product = [&](void* data, int64_t start, int64_t stop) {
    return at::linear(xc, at::from_blob(data, {stop - start, k}, x.options()));  // [M, K] @ [rows, K]^T
  };
  return sliced(xc, n, k, 1, bias, fill, product);
}

at::Tensor q4_dequantize(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& zeros, int64_t group,
                         const at::Tensor& like) {
  const int64_t k = q4_check(packed, scales, zeros, group, "q4_dequantize"), n = packed.size(0);
  TORCH_CHECK(like.scalar_type() == at::kFloat || like.scalar_type() == at::kBFloat16, "q4_dequantize: fp32 or bf16");
  at::Tensor out = blocked(n) ? at::empty({k, n}, like.options()) : at::empty({n, k}, like.options());
  const at::Tensor pc = packed.contiguous(), sc = scales.contiguous(), zc = zeros.contiguous();
#define OV_FILL(T) q4_fill<T>(pc, sc, zc, group, 0, n, out.data_ptr())
  OV_BY_DTYPE(like.scalar_type(), OV_FILL)
#undef OV_FILL
  return blocked(n) ? out.t().contiguous() : out;
}

at::Tensor q8_dequantize(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& like) {
  q8_check(q, scales, "q8_dequantize");
  TORCH_CHECK(like.scalar_type() == at::kFloat || like.scalar_type() == at::kBFloat16, "q8_dequantize: fp32 or bf16");
  at::Tensor out = at::empty({q.size(0), q.size(1)}, like.options());
  const at::Tensor qc = q.contiguous(), sc = scales.contiguous();
#define OV_FILL(T) q8_fill_any<T>(qc, sc, 0, q.size(0), out.data_ptr())
  OV_BY_DTYPE(like.scalar_type(), OV_FILL)
#undef OV_FILL
  return out;
}

#undef OV_BY_DTYPE

}  // namespace

TORCH_LIBRARY_FRAGMENT(omnivision, lib) {
  lib.def("q4_dequantized_linear(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group, "
          "Tensor? bias=None) -> Tensor");
  lib.def("q8_dequantized_linear(Tensor x, Tensor q, Tensor scales, Tensor? bias=None) -> Tensor");
  lib.def("q4_dequantize(Tensor packed, Tensor scales, Tensor zeros, int group, Tensor like) -> Tensor");
  lib.def("q8_dequantize(Tensor q, Tensor scales, Tensor like) -> Tensor");
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("q4_dequantized_linear", &q4_dequantized_linear);
  lib.impl("q8_dequantized_linear", &q8_dequantized_linear);
  lib.impl("q4_dequantize", &q4_dequantize);
  lib.impl("q8_dequantize", &q8_dequantize);
}
