// torch's own few-row products, as ops `torch.compile` cannot see into.
//
// Why this file exists: inside the compiled decode step (`model/one_row_step.py`) inductor rewrites
// a one-row `mm` or `mv` into a multiply-and-sum loop of its own, which streams the weight slower
// than torch's kernel: on the AMX Xeon (2 threads, torch 2.13, weights from memory) `torch.mv` on a
// 4864x896 bf16 weight took 382 us eager and 487 us compiled, 343 against 667 us on 896x4864. Called
// through these ops, the compiled step runs torch's kernels themselves (bf16 decoding of the 968M:
// 15.4 -> 17.9 tok/s there). Built with `q8_dot.cpp` by `kernels/cpp_build.py`.
//
// Ops: omnivision::linear(x [M, K], w [N, K], bias [N]?) -> [M, N], as F.linear;
//      omnivision::weight_major(x, w, bias?) -> the same, reading w in its stored order (mv / mm).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

namespace {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  return at::linear(x, w, bias);
}

at::Tensor weight_major(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "weight_major: x [M, K], w [N, K]");
  if (x.size(0) == 1) {
    const at::Tensor row = x.select(0, 0);
    return (bias.has_value() ? at::addmv(*bias, w, row) : at::mv(w, row)).unsqueeze(0);
  }
  const at::Tensor out = at::mm(w, x.t()).t().contiguous();  // [N, M] -> [M, N]
  return bias.has_value() ? out + *bias : out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(omnivision, lib) {
  lib.def("linear(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  lib.def("weight_major(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(omnivision, CPU, lib) {
  lib.impl("linear", &linear);
  lib.impl("weight_major", &weight_major);
}
