// Every decoder layer of a Qwen2 decode step (one new position of one sequence) in one call, for
// decoders whose products are all this library's ops (`model/one_row_step.py` decides).
//
// Why this file exists: the compiled layer step spends about 150 us per layer outside its seven
// products (profiled on the 2-core AMD EPYC, 968M shapes, int8-g32, torch 2.13: the graph's Python
// wrapper with its size asserts and op calls 80 us, guard evaluation 35-50 us, entering the
// compiled region 25-40 us): 3.5 ms of a 22 ms token, where llama.cpp's whole step costs 2.4 ms
// beyond reading its weights. Here the layers run from C++: the products through the dispatcher,
// attention through torch's SDPA, the norms, rotary positions, cache writes, activation and
// residual sums as plain loops over one row, a few microseconds each.
//
// The maths is `Qwen2DecoderLayer`'s, rounded where the eager layer rounds (every elementwise
// result stored in x's dtype, fp32 or bf16; the norm's root mean square in fp32).
//
// Op: omnivision::decode_layers(x [1, D], norms [2L] of [D], eps, heads, kinds [7L], groups [7L],
//     weights [21L], cos [hd], sin [hd], keys [L] of [1, Hkv, S, hd], values [L] (the same),
//     position) -> [1, D], writing each layer's new key and value at `position`.
//     Product p of layer l is kinds[7l + p] with weights[21l + 3p .. 21l + 3p + 2]:
//     0: q8_linear(x, a, b, bias), 1: q4_linear(x, a, b, groups[7l + p], bias),
//     2: linear(x, a, bias), 3: weight_major(x, a, bias), 4: dense_linear(x, a, bias); the products
//     are, in order, q, k, v, o, gate, up, down.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kProducts = 7;
enum Kind : int64_t { kQ8 = 0, kQ4 = 1, kLinear = 2, kWeightMajor = 3, kDense = 4 };

using MaybeTensor = std::optional<at::Tensor>;

at::Tensor product(int64_t kind, int64_t group, const MaybeTensor& a, const MaybeTensor& b,
                   const MaybeTensor& bias, const at::Tensor& x) {
  auto& dispatcher = c10::Dispatcher::singleton();
  switch (kind) {
    case kQ8: {
      static const auto op = dispatcher.findSchemaOrThrow("omnivision::q8_linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const MaybeTensor&)>();
      return op.call(x, *a, *b, bias);
    }
    case kQ4: {
      static const auto op = dispatcher.findSchemaOrThrow("omnivision::q4_linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const MaybeTensor&)>();
      return op.call(x, *a, *b, group, bias);
    }
    case kLinear:
      return at::linear(x, *a, bias);
    case kWeightMajor: {
      static const auto op = dispatcher.findSchemaOrThrow("omnivision::weight_major", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const MaybeTensor&)>();
      return op.call(x, *a, bias);
    }
    case kDense: {
      static const auto op = dispatcher.findSchemaOrThrow("omnivision::dense_linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const MaybeTensor&)>();
      return op.call(x, *a, bias);
    }
    default:
      TORCH_CHECK(false, "decode_layers: unknown product kind ", kind);
  }
}

// out = weight * (x / rms(x)) with the scaled row stored in T first, as `rms_norm` does.
template <typename T>
void rms_norm(const T* x, const T* weight, float eps, int64_t d, T* out) {
  float squares = 0.f;
  for (int64_t i = 0; i < d; ++i) {
    const float v = static_cast<float>(x[i]);
    squares += v * v;
  }
  const float r = 1.f / std::sqrt(squares / static_cast<float>(d) + eps);
  for (int64_t i = 0; i < d; ++i) {
    const T scaled = static_cast<T>(static_cast<float>(x[i]) * r);
    out[i] = static_cast<T>(static_cast<float>(weight[i]) * static_cast<float>(scaled));
  }
}

// Each head of x [heads, hd] rotated in place: x * cos + rotate_half(x) * sin, each term rounded to T.
template <typename T>
void rotate(T* x, const T* cos, const T* sin, int64_t heads, int64_t hd) {
  const int64_t half = hd / 2;
  std::vector<float> rotated(hd);
  for (int64_t h = 0; h < heads; ++h) {
    T* row = x + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      rotated[i] = -static_cast<float>(row[i + half]);
      rotated[i + half] = static_cast<float>(row[i]);
    }
    for (int64_t i = 0; i < hd; ++i) {
      const T direct = static_cast<T>(static_cast<float>(row[i]) * static_cast<float>(cos[i]));
      const T turned = static_cast<T>(rotated[i] * static_cast<float>(sin[i]));
      row[i] = static_cast<T>(static_cast<float>(direct) + static_cast<float>(turned));
    }
  }
}

// x += y, rounded to T.
template <typename T>
void add_into(T* x, const T* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) x[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(y[i]));
}

// gate = silu(gate) * up, the activation rounded to T before the product, as F.silu then `*` do.
template <typename T>
void silu_times(T* gate, const T* up, int64_t d) {
  for (int64_t i = 0; i < d; ++i) {
    const float g = static_cast<float>(gate[i]);
    const T activated = static_cast<T>(g / (1.f + std::exp(-g)));
    gate[i] = static_cast<T>(static_cast<float>(activated) * static_cast<float>(up[i]));
  }
}

// The new key (or value) of each key head, row [Hkv * hd], into buffer [1, Hkv, S, hd] at `position`.
template <typename T>
void write_position(const at::Tensor& buffer, const T* row, int64_t position) {
  const int64_t kv_heads = buffer.size(1), length = buffer.size(2), hd = buffer.size(3);
  T* base = buffer.data_ptr<T>();
  for (int64_t h = 0; h < kv_heads; ++h) {
    std::memcpy(base + (h * length + position) * hd, row + h * hd, hd * sizeof(T));
  }
}

template <typename T>
void layers(at::Tensor& x, at::TensorList norms, double eps, int64_t heads, at::IntArrayRef kinds,
            at::IntArrayRef groups, const c10::List<MaybeTensor>& weights, const at::Tensor& cos,
            const at::Tensor& sin, at::TensorList keys, at::TensorList values, int64_t position) {
  const int64_t d = x.size(1);
  at::Tensor h = at::empty_like(x);
  for (size_t l = 0; l < keys.size(); ++l) {
    const at::Tensor& cache_k = keys[l];
    const at::Tensor& cache_v = values[l];
    const int64_t kv_heads = cache_k.size(1), hd = cache_k.size(3);
    const auto run = [&](int64_t p, const at::Tensor& input) {
      const size_t index = l * kProducts + p, w = 3 * index;
      const at::Tensor y = product(kinds[index], groups[index], weights.get(w), weights.get(w + 1),
                                   weights.get(w + 2), input);
      TORCH_CHECK(y.dim() == 2 && y.size(0) == 1 && y.scalar_type() == input.scalar_type(),
                  "decode_layers: a product gave other than one row in x's dtype");
      return y.contiguous();
    };
    rms_norm(x.data_ptr<T>(), norms[2 * l].data_ptr<T>(), static_cast<float>(eps), d, h.data_ptr<T>());
    at::Tensor q = run(0, h), k = run(1, h), v = run(2, h);  // [1, H*hd], [1, Hkv*hd], [1, Hkv*hd]
    rotate(q.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(), heads, hd);
    rotate(k.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(), kv_heads, hd);
    write_position(cache_k, k.data_ptr<T>(), position);
    write_position(cache_v, v.data_ptr<T>(), position);
    // the query heads sharing a key/value head are its rows, as `one_query_attention` does
    const at::Tensor rows = q.view({1, kv_heads, heads / kv_heads, hd});
    const at::Tensor attended = at::scaled_dot_product_attention(
        rows, cache_k.narrow(2, 0, position + 1), cache_v.narrow(2, 0, position + 1));  // [1, Hkv, H/Hkv, hd]
    const at::Tensor o = run(3, attended.reshape({1, heads * hd}));
    add_into(x.data_ptr<T>(), o.data_ptr<T>(), d);
    rms_norm(x.data_ptr<T>(), norms[2 * l + 1].data_ptr<T>(), static_cast<float>(eps), d, h.data_ptr<T>());
    at::Tensor gate = run(4, h);
    const at::Tensor up = run(5, h);
    silu_times(gate.data_ptr<T>(), up.data_ptr<T>(), gate.size(1));
    const at::Tensor down = run(6, gate);
    add_into(x.data_ptr<T>(), down.data_ptr<T>(), d);
  }
}

at::Tensor decode_layers(const at::Tensor& x, at::TensorList norms, double eps, int64_t heads,
                         at::IntArrayRef kinds, at::IntArrayRef groups, const c10::List<MaybeTensor>& weights,
                         const at::Tensor& cos, const at::Tensor& sin, at::TensorList keys,
                         at::TensorList values, int64_t position) {
  const size_t count = keys.size();
  TORCH_CHECK(x.dim() == 2 && x.size(0) == 1, "decode_layers: x [1, D]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "decode_layers: x fp32 or bf16");
  TORCH_CHECK(values.size() == count && norms.size() == 2 * count && kinds.size() == kProducts * count &&
                  groups.size() == kProducts * count && weights.size() == 3 * kProducts * count,
              "decode_layers: per layer 2 norms, 7 kinds and groups, 21 weights, one key and value buffer");
  const int64_t d = x.size(1);
  for (size_t l = 0; l < count; ++l) {
    const at::Tensor& k = keys[l];
    TORCH_CHECK(k.dim() == 4 && k.size(0) == 1 && k.is_contiguous() && values[l].sizes() == k.sizes() &&
                    values[l].is_contiguous() && k.scalar_type() == x.scalar_type() &&
                    values[l].scalar_type() == x.scalar_type(),
                "decode_layers: key and value buffers [1, Hkv, S, hd], contiguous, in x's dtype");
    TORCH_CHECK(position >= 0 && position < k.size(2), "decode_layers: position ", position, " outside the cache");
    TORCH_CHECK(heads % k.size(1) == 0 && k.size(3) % 2 == 0, "decode_layers: heads a multiple of key heads");
    for (size_t n = 0; n < 2; ++n) {
      const at::Tensor& norm = norms[2 * l + n];
      TORCH_CHECK(norm.dim() == 1 && norm.size(0) == d && norm.is_contiguous() &&
                      norm.scalar_type() == x.scalar_type(), "decode_layers: norm weights [D] in x's dtype");
    }
  }
  if (count > 0) {
    const int64_t hd = keys[0].size(3);
    TORCH_CHECK(cos.numel() == hd && sin.numel() == hd && cos.is_contiguous() && sin.is_contiguous() &&
                    cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
                "decode_layers: cos and sin [hd] in x's dtype");
  }
  for (const int64_t kind : kinds) {
    TORCH_CHECK(kind >= kQ8 && kind <= kDense, "decode_layers: unknown product kind ", kind);
  }
  at::Tensor out = x.contiguous().clone();
  if (x.scalar_type() == at::kFloat) {
    layers<float>(out, norms, eps, heads, kinds, groups, weights, cos, sin, keys, values, position);
  } else {
    layers<at::BFloat16>(out, norms, eps, heads, kinds, groups, weights, cos, sin, keys, values, position);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(omnivision, lib) {
  lib.def("decode_layers(Tensor x, Tensor[] norms, float eps, int heads, int[] kinds, int[] groups, "
          "Tensor?[] weights, Tensor cos, Tensor sin, Tensor(a!)[] keys, Tensor(b!)[] values, int position) "
          "-> Tensor");
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("decode_layers", &decode_layers);
}
