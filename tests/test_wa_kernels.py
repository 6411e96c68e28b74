"""kernels/act_quant.py and kernels/wa_gemm.py (W8A8 FP8 / INT8, W4A8, W4A8-FP8, W4A4) against their pure-torch twins
and float64.
On the CPU they run in Triton's interpreter (conftest.py) on small odd shapes; tests marked gpu run the real shapes."""
import os

import pytest
import torch
import triton
from triton.runtime.errors import OutOfResources

import calibrate as C
from kernels import act_quant, wa_gemm
from quantizers import core
from quantizers.core import QLinear, build_layer, cache_weights, code_path, wa_format
from quantizers.format import fit_grid, fp8_grid, fp8_tokens, quantize, quantize_tokens
from quantizers.hadamard import orthogonal
from quantizers.quarot import head_mix, online_hadamard

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}
TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}  # of max |y|: the output's own rounding; the H100's fp8 tensor
FP8_TOL = 2e-2  # cores add with fewer bits than fp32 (1.0e-2 seen at K = 12288), so fp8 gets more
ODD = [(1, 100, 160), (7, 72, 200), (33, 40, 592), (5, 130, 256)]  # M N K


@pytest.fixture
def as_if_cuda(monkeypatch):
    """core.code_path deciding as on a GPU, so a CPU test runs the Triton paths (in the interpreter) through the
    same dispatch a GPU would take."""
    decide = core.code_path
    monkeypatch.setattr(core, "code_path", lambda layer, device, dtype: decide(layer, torch.device("cuda"), dtype))


def codes(q, fmt):
    return q.view(torch.uint8) if fmt == "fp8" else q


def value_sums(q, fmt, K):
    """Each token's sum of its integer values, read back from its codes (what the GEMM's zero point needs)."""
    return act_quant.dequantize(q, torch.ones(q.shape[0], device=q.device), fmt, K).sum(-1).to(torch.int32)


@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantizer_equals_the_twin_bit_for_bit(fmt, dtype):
    for K in (100, 200, 592, 1024, act_quant.CHUNK + 452):  # the last: two chunks, the second one part full
        x = (torch.randn(6, K, device=DEVICE) * torch.rand(6, 1, device=DEVICE) * 5).to(dtype)
        x[3] = 0  # an all-zero token gets scale 1
        for clip in (1.0, 0.8):
            q, s, sums = act_quant.quantize(x, fmt, clip)
            ref_q, ref_s, ref_sums = act_quant.reference(x, fmt, clip)
            assert torch.equal(s, ref_s) and torch.equal(codes(q, fmt), codes(ref_q, fmt)), (K, clip)
            assert sums is ref_sums is None if fmt == "fp8" else torch.equal(sums, ref_sums)
            assert fmt == "fp8" or torch.equal(ref_sums, value_sums(ref_q, fmt, K))


def test_integer_grids_are_the_fake_quantization_of_the_torch_model():
    x = torch.randn(9, 200) * 3
    for fmt, bits in (("int8", 8), ("int4", 4)):
        for clip in (1.0, 0.7):
            q, s, _ = act_quant.reference(x, fmt, clip)
            assert torch.equal(act_quant.dequantize(q, s, fmt, 200), quantize_tokens(x, bits, True, clip))
    q, s, _ = act_quant.reference(x, "fp8", 0.9)
    assert torch.equal(act_quant.dequantize(q, s, "fp8", 200), fp8_tokens(x, 0.9))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4"])
@pytest.mark.parametrize("n,fused", [(768, True), (3072, True), (2048, True), (2368, True), (592, False), (96, False)])
def test_online_hadamard_in_the_quantizer_equals_the_dense_matrix(fmt, n, fused):
    """768 = 12 x 64 (tiny-llada's MLP: 24 x 32 tiles, rows 16 + 8), 3072 = 12 x 256, 2048 (no mix) and
    2368 = 148 x 16 (Dream's Paley mix: rows 128 + 20) run in the kernel, with every config (tokens per program) and
    bf16, fp16, fp32 inputs: the codes of x (H_m (x) H_b) / sqrt(n), against a float64 dense product. 96 = 12 x 8
    and 592 = 148 x 4 (tiny-dream; blocks below 16) are rotated by torch first: the codes of that, exactly."""
    rot = online_hadamard(n, torch.float32).to(DEVICE)
    assert (rot.kernel_form(torch.device(DEVICE)) is not None) == fused
    runs = [(torch.bfloat16, c) for c in act_quant.CONFIGS] + [(torch.float16, None), (torch.float32, None)]
    for dtype, config in runs if fused else runs[:1]:  # (torch rotates: the config does not matter)
        try:
            check_hadamard(n, fmt, fused, rot, torch.randn(5, n, device=DEVICE).to(dtype), config)
        except OutOfResources:  # this config's tiles at this width outgrow the GPU's shared memory (Dream's 18944 with
            assert DEVICE == "cuda" and config is not None  # some): the autotuner leaves it out too


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("heads,head_dim,fused", [(8, 32, True), (28, 64, True), (14, 64, False), (4, 16, False)])
def test_quarot_head_mix_in_the_quantizer_equals_the_dense_matrix(fmt, heads, head_dim, fused):
    """QuaRot's online mix of o_proj's input across heads, x (H_n (x) I_d): tiny models' 8 heads of 32, Dream-7B's
    Paley 28 heads (rows 16 + 16 of the tile) in the kernel; mini-Dream's 14 heads (no Hadamard: a random orthogonal
    mix) and 4 x 16 (a tile under 16 rows) rotated by torch first."""
    rot = head_mix(heads, head_dim, torch.Generator().manual_seed(0), torch.float32).to(DEVICE)
    assert (rot.kernel_form(torch.device(DEVICE)) is not None) == fused
    dense = torch.kron(rot.mix.double(), torch.eye(head_dim, dtype=torch.float64))
    x = torch.randn(5, heads * head_dim, device=DEVICE)
    assert torch.allclose(rot(x.double()), x.double() @ dense.to(DEVICE), atol=1e-12)
    check_hadamard(heads * head_dim, fmt, fused, rot, x.bfloat16(), None, dense)


def check_hadamard(n, fmt, fused, rot, x, config, dense=None):
    """fused: the rotation in the kernel (its Form); else rotated by torch first, as core's dispatch does. dense:
    the rotation as a matrix (default: orthogonal(n), QuaRot's online Hadamard)."""
    form = rot.kernel_form(x.device)
    q, s, sums = act_quant.quantize(x, fmt, 1.0, form, config) if fused else act_quant.quantize(rot(x), fmt, 1.0)
    assert fmt == "fp8" or torch.equal(sums, value_sums(q, fmt, n))
    if fused:  # the twin rounds X H_C to bf16 as the kernel does; fp32 sums in another order may move a rare code
        ref_q, ref_s, _ = act_quant.reference(x, fmt, 1.0, form)
        assert torch.allclose(s, ref_s, rtol=1e-5)
        assert (codes(q, fmt) != codes(ref_q, fmt)).float().mean().item() < 0.01
    else:
        ref_q, ref_s, _ = act_quant.reference(rot(x), fmt, 1.0)
        assert torch.equal(s, ref_s) and torch.equal(codes(q, fmt), codes(ref_q, fmt))
    dense = x.double() @ (orthogonal(n, None) if dense is None else dense).to(DEVICE)
    ref_q, ref_s, _ = act_quant.reference(dense.float(), fmt, 1.0)
    assert torch.allclose(s, ref_s, rtol=1e-2)  # (the rounding to bf16 before the second product, or torch's own)
    d, ref_d = act_quant.dequantize(q, s, fmt, n), act_quant.dequantize(ref_q, ref_s, fmt, n)
    step = (32.0 if fmt == "fp8" else 1.0) * torch.maximum(s, ref_s)[:, None]  # one code apart (e4m3: its widest
    step = step if fused else 2 * step  # step; two after a rotation in x's dtype, which moves values by up to a
    slack = ref_d.abs() * ((s - ref_s).abs() / ref_s)[:, None]  # code), plus what the scale's own difference moves
    assert ((d - ref_d).abs() <= (step + slack) * 1.001).all()


@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4"])
def test_fused_rotation_moves_fewer_codes_than_torch_in_bf16(fmt, n=3072, tokens=32):
    """Against the codes of an exact (float64) rotation, the kernel's (X H_C rounded to bf16) must move fewer than
    torch's rotation of bf16 x, which QLinear runs off the kernels and which rounds after H_b and again after the
    mix H_m (H100, LLaDA / Dream widths: 4-6% against 7%). (Without a mix, m = 1, torch rounds once: 2.4% at 4096.)"""
    rot = online_hadamard(n, torch.float32).to(DEVICE)
    assert rot.mix is not None
    x = torch.randn(tokens, n, device=DEVICE)
    x[:, torch.randperm(n)[:4]] *= 30  # a few outlier channels, as down_proj's inputs have
    x = x.bfloat16()
    exact, _, _ = act_quant.reference(x.double() @ orthogonal(n, None).to(DEVICE), fmt)
    moved = lambda q: (codes(q, fmt) != codes(exact, fmt)).float().mean().item()  # noqa: E731
    kernel = moved(act_quant.quantize(x, fmt, 1.0, rot.kernel_form(x.device))[0])
    torch_bf16 = moved(act_quant.reference(rot(x), fmt)[0])
    print(f"{fmt}: codes moved from the exact rotation's: kernel {kernel:.2%}, torch in bf16 {torch_bf16:.2%}")
    assert 0 < kernel < torch_bf16


def layer(N, K, fmt, sym, dtype, bias=True):
    W = torch.randn(N, K, device=DEVICE) * torch.rand(N, 1, device=DEVICE)
    bits = wa_gemm.W_BITS[fmt]
    q, s, z = fp8_grid(W) if fmt == "fp8" else (lambda s, z: (quantize(W, s, z, bits), s, z))(*fit_grid(W, bits, -1,
                                                                                                            sym))
    b = torch.randn(N, device=DEVICE).to(dtype) if bias else None
    return QLinear.from_codes(q, s, z, b, bits=bits, group_size=-1, sym=sym, act_bits=4 if fmt == "int4" else 8,
                              fp8=wa_gemm.ACT[fmt] == "fp8", dtype=dtype)


def check(M, N, K, fmt, sym, dtype, config=None, bias=True):
    lin = layer(N, K, fmt, sym, dtype, bias)
    assert wa_format(lin) == fmt
    x = torch.randn(M, K, device=DEVICE).to(dtype)
    y = wa_gemm.linear(x, lin.qweight, lin.scales, lin.zeros, lin.bias, fmt, 1.0, None, config)
    xq, sx, _ = act_quant.reference(x, wa_gemm.ACT[fmt], 1.0)
    w = wa_gemm.weight_operand(lin.qweight, fmt)
    ref = wa_gemm.reference(xq, sx, w, lin.scales.double(), lin.zeros, fmt, K, lin.bias, torch.float64)
    err = (y.double() - ref).abs().max().item() / ref.abs().max().item()
    assert y.dtype == dtype and y.shape == (M, N) and err < max(TOL[dtype], FP8_TOL * (wa_gemm.ACT[fmt] == "fp8")), \
        f"{M}x{N}x{K} {fmt}: {err:.2e}"


EVERY = [(fmt, sym, c) for fmt, sym in [("fp8", False), ("int8", False), ("int8", True), ("int4", False),
                                        ("int4", True), ("w4a8", False), ("w4a8", True), ("w4f8", True)]
         for c in wa_gemm.configs(fmt, False) + wa_gemm.configs(fmt, True)]


@pytest.mark.parametrize("fmt,sym,config", EVERY, ids=lambda v: "x".join(str(v.kwargs[k]) for k in (
    "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K")) if isinstance(v, triton.Config) else str(v))
def test_every_config_matches_float64(fmt, sym, config):
    """Every config of both paths (configs(fmt, True): K split, the partial sums added by the tile's last program; the
    zero-point correction and bias once) on odd shapes, K ragged against the tiles and the splits."""
    for M, N, K in ODD:
        check(M, N, K, fmt, sym, torch.bfloat16, config, bias=M != 5)


@pytest.mark.parametrize("fmt,order", [("w4a8", "pairs"), ("w4f8", "signs")])
@pytest.mark.parametrize("M,K", [(5, 200), (70, 512)])
def test_w4a8_layer_computes_its_codes_product(M, K, fmt, order):
    """The W4A8 / W4A8-FP8 layer against its codes (N, K) as the calibration made them, not as packed: x's int8 /
    e4m3 values times (q - z) s in float64, so the packing order and the GEMM's reading of it are checked together
    (W4A8-FP8: symmetric codes, clipped to 0.8 of the range so that -7 and 7 come up, with the lowest code 1)."""
    W = torch.randn(24, K, device=DEVICE)
    fp8 = fmt == "w4f8"
    s, z = fit_grid(W, 4, -1, sym=fp8, clip=0.8 if fp8 else 1.0)
    q = quantize(W, s, z, 4, lo=int(fp8))
    assert not fp8 or (q.min() == 1 and q.max() == 15)
    lin = QLinear.from_codes(q, s, z, bits=4, group_size=-1, sym=fp8, act_bits=8, fp8=fp8, dtype=torch.bfloat16)
    assert lin.order == order and torch.equal(lin.weight(), ((q.float() - z) * lin.scales.float()).bfloat16())
    x = torch.randn(M, K, device=DEVICE).bfloat16()
    xq, sx, _ = act_quant.reference(x, wa_gemm.ACT[fmt])
    ref = (xq.double() * sx.double()[:, None]) @ ((q.double() - z.double()) * lin.scales.double()).T
    for config in (wa_gemm.configs(fmt, False)[0], wa_gemm.configs(fmt, True)[0]):
        y = wa_gemm.linear(x, lin.qweight, lin.scales, lin.zeros, None, fmt, config=config)
        assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < TOL[torch.bfloat16]


@pytest.mark.parametrize("fmt", ["fp8", "w4a8", "w4f8"])
def test_split_k_counters_return_to_zero(fmt):
    """The split-K tile counters are shared by every call: each call must leave them 0, or the next call's tiles
    would never be stored. Two calls in a row give the same output, and every counter reads 0 after each."""
    lin = layer(200, 512, fmt, fmt == "w4f8", torch.bfloat16)
    x = torch.randn(7, 512, device=DEVICE).bfloat16()
    for config in wa_gemm.configs(fmt, True):
        ys = [wa_gemm.linear(x, lin.qweight, lin.scales, lin.zeros, lin.bias, fmt, config=config) for _ in range(2)]
        assert torch.equal(*ys) and not wa_gemm._COUNTERS[x.device].any()


def test_integer_formats_need_the_token_sums():
    lin, x = layer(8, 64, "int8", False, torch.bfloat16), torch.randn(3, 64, device=DEVICE).bfloat16()
    xq, sx, _ = act_quant.quantize(x, "int8")
    with pytest.raises(ValueError, match="int8 needs the token sums"):
        wa_gemm.matmul(xq, sx, None, wa_gemm.weight_operand(lin.qweight, "int8"), lin.scales, lin.zeros, "int8", 64)


@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4", "w4a8", "w4f8"])
def test_fp16_activations(fmt):
    for M, N, K in ODD[:2]:
        check(M, N, K, fmt, fmt == "w4f8", torch.float16, wa_gemm.configs(fmt, False)[2])


def test_which_layers_the_kernels_take():
    assert wa_format(QLinear(64, 32, 8, -1, act_bits=8)) == "int8"
    assert wa_format(QLinear(64, 32, 8, -1, act_bits=8, fp8=True)) == "fp8"
    assert wa_format(QLinear(64, 32, 4, -1, act_bits=4)) == "int4"
    assert wa_format(QLinear(64, 32, 4, -1, act_bits=8)) == "w4a8"
    assert wa_format(QLinear(64, 32, 4, -1, sym=True, act_bits=8, fp8=True)) == "w4f8"
    for other in (QLinear(64, 32, 4, 32, act_bits=4), QLinear(64, 32, 4, 32, act_bits=8), QLinear(64, 32, 8, -1,
                  act_bits=4), QLinear(64, 32, 4, -1), QLinear(64, 32, 4, -1, act_bits=4, act_sym=False)):
        assert wa_format(other) is None  # groups, W8A4, weight-only, asymmetric activations
    again = build_layer(QLinear(64, 32, 8, -1, act_bits=8, fp8=True).config())
    assert again.fp8 and wa_format(again) == "fp8"
    for bad in ({}, {"act_bits": 8}, {"act_bits": 8, "sym": True, "group_size": 32}):  # W4A16, asymmetric, groups
        with pytest.raises(ValueError, match="fp8 weights are 8 bits, or 4 bits symmetric per channel"):
            QLinear(64, 32, 4, **{"group_size": -1, **bad}, fp8=True)


def test_one_function_picks_each_layers_code():
    """core.code_path, the dispatch: Triton on CUDA in bf16 / fp16 (wa for the W8A8 / W4A4 layouts, wq for the
    rest), custom operators when traced, the twin on the CPU, in fp32, for FP8 weight-only layers and cached weights."""
    cuda, cpu, bf16 = torch.device("cuda"), torch.device("cpu"), torch.bfloat16
    w8a8, w4, fp8_w = QLinear(64, 32, 8, -1, act_bits=8), QLinear(64, 32, 4, 32), QLinear(64, 32, 8, -1, fp8=True)
    assert [code_path(m, cuda, bf16) for m in (w8a8, w4, fp8_w)] == ["wa", "wq", "torch"]
    assert code_path(QLinear(64, 32, 4, -1, act_bits=8), cuda, torch.float16) == "wa"  # W4A8 per channel: the kernels
    assert code_path(QLinear(64, 32, 4, 32, act_bits=8), cuda, torch.float16) == "wq"  # in groups: torch rounds x
    assert {code_path(m, d, t) for m in (w8a8, w4) for d, t in ((cpu, bf16), (cuda, torch.float32))} == {"torch"}
    w4.dense = w4.weight()  # cache_weights: the dequantized weight, once
    assert code_path(w4, cuda, bf16) == "torch"
    rotated = QLinear(64, 32, 8, -1, act_bits=8, rotation={"m": 4, "b": 16, "shared": True, "mix": True})
    layers = (w8a8, rotated, QLinear(64, 32, 4, 32))
    traced = torch.compile(lambda: [code_path(m, cuda, bf16) for m in layers], backend="eager", fullgraph=True)
    assert traced() == ["wa_op", "wa_break", "wq_op"] and code_path(rotated, cuda, bf16) == "wa"


@pytest.mark.slow
@pytest.mark.parametrize("which,kw", [("llada", {"method": "quarot", "bits": 4}),
                                      ("dream", {"method": "quarot", "bits": 8}),
                                      ("dream", {"method": "quarot", "wbits": 4, "abits": 8}),
                                      ("dream", {"method": "gptq", "wbits": 4, "abits": 8, "fp8": True, "sym": True}),
                                      ("llada", {"method": "rtn", "wbits": 8, "abits": 8, "fp8": True})])
def test_tiny_models_give_the_same_logits_through_the_kernels(tmp_path, which, kw, as_if_cuda):
    """Every QLinear of a quantized tiny model through the dispatch's Triton path (act_quant + wa_gemm), eagerly and
    with compiled blocks, against the same model's torch twin, all in bf16, and all against the twin in float32."""
    m = C.calibrate(C.Args(model=TINY[which], out=str(tmp_path / "q"), nsamples=4, seqlen=32, nll_windows=0,
                           device="cpu", **kw)).to(DEVICE)
    ids = torch.randint(0, m.args.vocab_size - 1, (1, 16), device=DEVICE)
    layers = [mod for mod in m.modules() if isinstance(mod, QLinear)]
    assert all(core.code_path(mod, ids.device, torch.bfloat16) == "wa" for mod in layers)
    with torch.no_grad():
        exact = m(ids)  # float32: the twin
        for mod in layers:
            mod.forward = lambda x, mod=mod: QLinear.forward(mod, x, path="torch")
        twin = m.bfloat16()(ids).float()
        for mod in layers:
            del mod.forward  # the dispatch again
        kernel = m(ids).float()
        torch._dynamo.reset()
        for block in m.blocks:  # sample.py --compile (CPU: dynamo alone, the same ops, so the same logits)
            block.compile(backend="inductor" if DEVICE == "cuda" else "eager")
        compiled = m(ids).float()
    err_twin, err_kernel, err_compiled = ((t - exact).abs().mean() / exact.abs().mean() for t in (twin, kernel,
                                                                                                  compiled))
    print(f"mean error against float32: kernels {err_kernel:.4f}, compiled {err_compiled:.4f}, bf16 torch "
          f"{err_twin:.4f}")
    assert err_kernel < 1.5 * err_twin + 1e-3, (err_kernel, err_twin)  # exact integer products: often smaller
    assert err_compiled < 1.5 * err_twin + 1e-3 and (DEVICE == "cuda" or torch.equal(compiled, kernel))


@pytest.mark.parametrize("fmt,rotated", [("fp8", False), ("int8", False), ("int4", False), ("w4a8", False),
                                         ("w4a8", True), ("int8", True), ("w4f8", False), ("w4", False)])
def test_compiled_layers_equal_the_eager_kernels(fmt, rotated, as_if_cuda):
    """Traced by torch.compile (kernels/ops.py), a W8A8 layer quantizes x with the twin (W4A4: with act_quant's kernel
    as an operator) and runs the GEMM as one custom operator, with no graph break: the eager kernels' output bit for
    bit (on the GPU, Inductor's code for the twin, within a few codes). A rotated layer runs eagerly (one break); a
    weight-only one (w4) is one operator."""
    K = 768  # 12 x 64: the fused rotation
    lin = layer(40, K, "int4" if fmt == "w4" else fmt, fmt == "w4f8", torch.bfloat16)
    if rotated:
        lin.rotation = online_hadamard(K, torch.float32).to(DEVICE)
    if fmt == "w4":
        lin.act_bits = 16  # weight-only: wq_gemm
    f = lambda x: lin(x * 2)  # noqa: E731 (x * 2: a producer to fuse with)
    x = torch.randn(3, 5, K, device=DEVICE).to(torch.bfloat16)
    backend = "inductor" if DEVICE == "cuda" else "eager"  # (CPU: no C++ compiler needed, the ops run as they are)
    torch._dynamo.reset()
    with torch.no_grad():  # (the ops have no backward: QLinear is for inference)
        assert rotated or torch._dynamo.explain(f)(x).graph_break_count == 0
        y, ref = torch.compile(f, backend=backend)(x), f(x)
    if DEVICE == "cpu":
        assert torch.equal(y, ref)
    else:  # Inductor's fp32 division is the GPU's approximate one: a value near a rounding boundary may move a code
        assert ((y - ref).abs().mean() / ref.abs().mean()).item() < 1e-2


SHAPES = [(4096, 4096), (12288, 4096), (4096, 12288), (3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", SHAPES)
def test_real_shapes_autotuned(N, K):
    for fmt, sym in (("fp8", False), ("int8", False), ("int8", True), ("int4", False), ("w4a8", False),
                     ("w4a8", True), ("w4f8", True)):  # (w4f8's rotation of bytes in registers is checked here)
        for M in (16, 1024):
            check(M, N, K, fmt, sym, torch.bfloat16)
    check(300, N, K, "int8", True, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("n,fused", [(12288, True), (18944, True), (4096, True)])
def test_real_online_hadamards(n, fused):
    test_online_hadamard_in_the_quantizer_equals_the_dense_matrix("int8", n, fused)
    for fmt in ("fp8", "int8") if n != 4096 else ():  # (4096 = H_4096 alone: no mix)
        test_fused_rotation_moves_fewer_codes_than_torch_in_bf16(fmt, n, 64)


@pytest.mark.gpu
def test_qlinear_on_cuda_runs_the_kernels():
    lin = layer(512, 1024, "int8", False, torch.bfloat16).to(DEVICE)
    x = torch.randn(2, 300, 1024, device=DEVICE, dtype=torch.bfloat16)
    assert code_path(lin, x.device, x.dtype) == "wa"
    assert torch.equal(lin(x), wa_gemm.linear(x, lin.qweight, lin.scales, lin.zeros, lin.bias, "int8"))


@pytest.mark.gpu
def test_cached_weights_leave_the_kernels_in_charge():
    """eval.py --cache_weights: a W8A8 / W4A4 layer stays on the kernels (bit for bit); a weight-only one runs the
    cached dequantized weight, within bf16 rounding of the packed-code GEMM."""
    lin = layer(512, 1024, "int4", False, torch.bfloat16).to(DEVICE)
    x = torch.randn(300, 1024, device=DEVICE, dtype=torch.bfloat16)
    before = lin(x)
    cache_weights(lin)
    assert torch.equal(lin(x), before) and (lin.dense is None) == lin.qweight.is_cuda  # no dense copy it never reads
    W = torch.randn(512, 1024, device=DEVICE)
    s, z = fit_grid(W, 4, 128)
    wo = QLinear.from_codes(quantize(W, s, z, 4), s, z, bits=4, group_size=128, dtype=torch.bfloat16)
    before = wo(x).float()
    cache_weights(wo)
    assert ((wo(x).float() - before).abs().max() / before.abs().max()).item() < TOL[torch.bfloat16]
