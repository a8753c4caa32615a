"""`kernels.cpp_build`, `q8_dot.cpp`, `q4_dot.cpp`, `dense_dot.cpp`, `dequantized_products.cpp` and
`opaque_products.cpp`: every code path of the
group-wise int8 kernel (AVX512-VNNI, AVX-VNNI, AVX2, portable, as far as this CPU runs them) gives the
dequantised product within the rounding of its int8 activations, on odd shapes; every path of the
int4 kernel (those and AVX512-VBMI) gives the dequantised weights times the rounded activations, for
fp32 and bf16 scales, one to several 64-row blocks and each group size; every path of the dense
fp32 / bf16 kernel (AVX512-BF16, AVX-512, AVX2, portable) gives the product within fp32 summation
error, on every tail length; every path of the dequantised products (AVX-512 with and without
AVX512-BF16, the plain loops) gives the weights' definition, rounds to bf16 as torch does, and
multiplies within fp32 summation error; the opaque products are
F.linear's, also inside `torch.compile`; a process that must not or cannot build gets None, with a
warning for a failure."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from omnivision.kernels import cpp_build
from omnivision.kernels.machine import cpu_description

# run in a child process: one process can load only one library that defines the `omnivision` ops
CHECK = r"""
import json, sys, torch
from omnivision.kernels import cpp_build
flags = json.loads(sys.argv[1])
if flags is not None:
    cpp_build.compiler_flags = lambda: flags
kernel = cpp_build.q8_linear()
torch.manual_seed(0)
worst = 0.0
for n, k in [(1, 32), (70, 96), (130, 896), (64, 160)]:  # 1, 3, 28 and 5 blocks: odd and even counts
    for rows in (1, 2, 5):
        for dtype in (torch.float32, torch.bfloat16):
            for bias in (None, torch.randn(n)):
                q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
                d = (torch.rand(n, k // 32) * 0.02 + 1e-4).half()
                x = (torch.randn(rows, k) * torch.logspace(-2, 1, k)).to(dtype)  # uneven magnitudes
                w = (q.float().view(n, -1, 32) * d.float()[..., None]).view(n, k)
                want = x.float() @ w.t() + (0 if bias is None else bias)
                got = kernel(x, q, d, bias)
                assert got.dtype == dtype and got.shape == (rows, n), (got.dtype, got.shape)
                # rounding x to its block's step (max|x| / 127) moves each term by at most half a step
                # times |w|; a bf16 result adds its own rounding
                step = x.float().view(rows, -1, 32).abs().amax(-1) / 127  # [rows, K/32]
                bound = (step[:, None, :] / 2 * w.abs().view(n, -1, 32).sum(-1)).sum(-1)  # [rows, N]
                bound = bound * 1.001 + want.abs() * (2 ** -8 if dtype == torch.bfloat16 else 1e-6) + 1e-6
                worst = max(worst, ((got.float() - want).abs() / bound).max().item())
from omnivision.quantize.int4_linear import Int4Linear
from omnivision.quantize.int4_few_rows import q4_table
q4 = cpp_build.q4_linear()
worst4 = 0.0
for n, k, group in [(64, 32, 32), (128, 896, 128), (192, 256, 64), (64, 512, 256), (320, 96, 32)]:
    layer = Int4Linear.from_linear(torch.nn.Linear(k, n), group)
    for table_dtype in (torch.float32, torch.bfloat16):
        scales, zeros = layer.scales.to(table_dtype).float(), layer.zeros.to(table_dtype).float()
        codes = (layer.dequantize().view(n, -1, group) - layer.zeros[..., None]) / layer.scales[..., None] + 8
        w = ((codes.round() - 8) * scales[..., None] + zeros[..., None]).view(n, k)  # with the table's scales
        # the kernel sums scale * sum(code * x) and (zero - 8 scale) * sum(x): their sizes bound its rounding
        parts = (codes.round() * scales[..., None] + (zeros - 8 * scales).abs()[..., None]).view(n, k)
        for rows in (1, 3):
            for dtype in (torch.float32, torch.bfloat16):
                bias = torch.randn(n) if rows == 3 else None
                x = (torch.randn(rows, k) * torch.logspace(-2, 1, k)).to(dtype)
                step = x.float().view(rows, -1, 32).abs().amax(-1, keepdim=True) / 127
                # as the kernel rounds: times the reciprocal of the step, in fp32
                rounded = (torch.round(x.float().view(rows, -1, 32) * (1 / step)) * step).view(rows, k)
                want = rounded.double() @ w.double().t() + (0 if bias is None else bias.double())
                got = q4(x, layer.qweight, q4_table(layer.scales.to(table_dtype), layer.zeros.to(table_dtype)),
                         group, bias)
                assert got.dtype == dtype and got.shape == (rows, n), (got.dtype, got.shape)
                # the same products summed in another order: fp32 rounding, and a bf16 result's own
                size = rounded.double().abs() @ parts.double().t()
                bound = size * 1e-5 + want.abs() * (2 ** -8 if dtype == torch.bfloat16 else 0) + 1e-6
                worst4 = max(worst4, ((got.double() - want).abs() / bound).max().item())
dense = cpp_build.ops().dense_linear
worst_dense = 0.0
for n, k in [(1, 7), (70, 96), (130, 896), (65, 1000)]:  # tails of every vector width
    for rows in (1, 2, 5):
        for dtype in (torch.float32, torch.bfloat16):
            for bias in (None, torch.randn(n).to(dtype)):
                w, x = torch.randn(n, k).to(dtype), (torch.randn(rows, k) * torch.logspace(-2, 1, k)).to(dtype)
                want = x.double() @ w.double().t() + (0 if bias is None else bias.double())
                got = dense(x, w, bias)
                assert got.dtype == dtype and got.shape == (rows, n), (got.dtype, got.shape)
                # exact products summed in fp32 in some order, then one rounding to the result's dtype
                size = x.double().abs() @ w.double().abs().t()
                bound = size * k * 2 ** -24 + want.abs() * (2 ** -8 if dtype == torch.bfloat16 else 2 ** -24) + 1e-6
                worst_dense = max(worst_dense, ((got.double() - want).abs() / bound).max().item())
built = cpp_build.ops()
worst_dequantised = 0.0
eps = 2 ** -24
for n, k, group in [(64, 32, 32), (192, 256, 64), (100, 96, 32), (40, 288, 32)]:  # both int4 layouts
    layer = Int4Linear.from_linear(torch.nn.Linear(k, n), group)
    args = (layer.qweight, layer.scales, layer.zeros, group)
    wide = built.q4_dequantize(*args, torch.empty(0))
    assert torch.equal(built.q4_dequantize(*args, torch.empty(0, dtype=torch.bfloat16)), wide.bfloat16())
    codes = (layer.dequantize().view(n, -1, group) - layer.zeros[..., None]) / layer.scales[..., None] + 8
    s, z = layer.scales.double()[..., None], layer.zeros.double()[..., None]
    want = ((codes.round().double() - 8) * s + z).view(n, k)
    terms = (codes.round().double() * s + (z - 8 * s).abs()).view(n, k)
    worst_dequantised = max(worst_dequantised, ((wide.double() - want).abs() / (4 * eps * terms + 1e-30)).max().item())
for n, k, columns in [(70, 96, 3), (24, 40, 1), (33, 1000, 1)]:  # group-wise fp16 scales, a row's fp32 scale
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scales = torch.rand(n, columns) * 0.01 + 1e-4
    scales = scales.half() if columns > 1 else scales
    wide = built.q8_dequantize(q, scales, torch.empty(0))
    assert torch.equal(wide, (q.float().view(n, columns, -1) * scales.float()[..., None]).view(n, k))
    assert torch.equal(built.q8_dequantize(q, scales, torch.empty(0, dtype=torch.bfloat16)), wide.bfloat16())
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (1, 70):
            x = (torch.randn(rows, k) * torch.logspace(-2, 1, k)).to(dtype)
            bias = torch.randn(n).to(dtype)
            w = wide.to(dtype).double()
            want = x.double() @ w.t()
            got = built.q8_dequantized_linear(x, q, scales, bias)
            assert got.dtype == dtype and got.shape == (rows, n), (got.dtype, got.shape)
            # a float product of the dtype's weights, summed in fp32; the bias added after one rounding
            size = x.double().abs() @ w.abs().t()
            unit = 2 ** -8 if dtype == torch.bfloat16 else eps
            bound = size * k * eps + (want.abs() + bias.double().abs()) * 2 * unit + 1e-6
            error = (got.double() - want - bias.double()).abs()
            worst_dequantised = max(worst_dequantised, (error / bound).max().item())
print(json.dumps({"path": cpp_build.compiled_path(), "q4_path": cpp_build.compiled_path("q4"), "worst": worst,
                  "worst_q4": worst4, "dense_path": cpp_build.compiled_path("dense"), "worst_dense": worst_dense,
                  "worst_dequantised": worst_dequantised}))
"""


def _flags() -> list[list[str] | None]:
    flags = cpu_description()[1].split()
    out: list[list[str] | None] = [None]  # this machine's own build
    if cpp_build._is_x86():
        if "avx512vbmi" in flags and "avx512_vnni" in flags:
            out.append(["-O3", "-march=native", "-mno-avx512vbmi"])  # the int4 kernel's 256-bit AVX512-VNNI path
        if "avx512_vnni" in flags:
            out.append(["-O3", "-march=native", "-mno-avx512f"])  # AVX-VNNI where the CPU has it, else AVX2
        if "avx512_bf16" in flags:
            out.append(["-O3", "-march=native", "-mno-avx512bf16"])  # the dense kernel's widening AVX-512 path
        if "avx2" in flags:
            out.append(["-O3", "-march=native", "-mno-avx512f", "-mno-avxvnni"])
        out.append(["-O3", "-march=x86-64"])  # the portable loops
    return out


@pytest.mark.long
@pytest.mark.parametrize("flags", _flags(), ids=lambda f: "native" if f is None else " ".join(f[2:]))
def test_each_code_path_gives_the_dequantised_product(flags, tmp_path):
    env = {**__import__("os").environ, cpp_build.BUILD_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(flags)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if flags is not None and "-march=x86-64" in flags:
        assert result["path"] == result["q4_path"] == result["dense_path"] == "portable"
    if flags is not None and "-mno-avxvnni" in flags:
        assert result["path"] == result["q4_path"] == result["dense_path"] == "AVX2"
    if flags is not None and "-mno-avx512bf16" in flags:
        assert result["dense_path"] == "AVX-512"
    if flags is None and "avx512_bf16" in cpu_description()[1].split():
        assert result["dense_path"] == "AVX512-BF16"
    if flags is not None and "-mno-avx512vbmi" in flags:
        assert result["q4_path"] == "AVX512-VNNI"
    if flags is None and "avx512vbmi" in cpu_description()[1].split() and "avx512_vnni" in cpu_description()[1].split():
        assert result["q4_path"] == "AVX512-VBMI-VNNI"
    # within the rounding bound everywhere
    assert result["worst"] <= 1.0 and result["worst_q4"] <= 1.0 and result["worst_dense"] <= 1.0, result
    assert result["worst_dequantised"] <= 1.0, result


def test_build_names_change_with_the_flags():
    assert cpp_build.build_name(["-O3", "-march=native"]) != cpp_build.build_name(["-O3", "-march=x86-64"])
    assert cpp_build.build_name(["-O3"]) == cpp_build.build_name(["-O3"])


def test_held_to_avx2_the_build_leaves_avx512_out(monkeypatch):
    if not cpp_build._is_x86():
        pytest.skip("x86 flags")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "-mno-avx512f" in cpp_build.compiler_flags()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert "-mno-avx512f" not in cpp_build.compiler_flags()


def test_no_kernel_when_compiling_is_off_or_the_build_fails(monkeypatch):
    monkeypatch.setattr(cpp_build, "_state", {})
    monkeypatch.setenv(cpp_build.SWITCH_ENV, "off")
    assert cpp_build.q8_linear() is None and cpp_build.compiled_path() is None
    assert cpp_build.q4_linear() is None and cpp_build.compiled_path("q4") is None

    monkeypatch.setattr(cpp_build, "_state", {})
    monkeypatch.delenv(cpp_build.SWITCH_ENV)

    def no_compiler(**_):
        raise RuntimeError("Error building extension 'omnivision_q8': g++: not found")

    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cpp_build.q8_linear() is None
    assert any("building them failed" in str(w.message) and "g++: not found" in str(w.message)
               for w in seen)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_opaque_and_dense_products_are_f_linear_also_compiled(rows, bias, dtype):
    import torch.nn.functional as F

    ops = cpp_build.ops()
    assert ops is not None
    x, w = torch.randn(rows, 48, dtype=dtype), torch.randn(40, 48, dtype=dtype)
    b = torch.randn(40, dtype=dtype) if bias else None
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for op in (ops.linear, ops.weight_major, ops.dense_linear):
        compiled = torch.compile(lambda x, w, b, op=op: op(x, w, b) * 2, dynamic=True)
        for got in (op(x, w, b), compiled(x, w, b) / 2):
            assert got.dtype == dtype and got.shape == (rows, 40)
            assert torch.allclose(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
