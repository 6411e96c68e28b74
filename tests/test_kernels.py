"""kernels/: each Triton kernel against its pure-torch twin. On the CPU they run in Triton's interpreter (see
conftest.py) on small odd shapes, every configuration of the autotune lists; tests marked gpu run the real shapes."""
import pytest
import torch

from kernels import wq_factored, wq_gemm
from quantizers.core import QLinear
from quantizers.format import dequantize, fit_grid, pack, quantize, unpack

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}  # of max |y|: about one unit in the last place of the output
ODD = [(1, 100, 160, 32), (7, 72, 192, 64), (33, 40, 148, 74), (33, 96, 128, -1), (5, 64, 256, 128)]  # M N K g
CONFIGS = [(few, i) for few in (True, False) for i in range(len(wq_gemm.CONFIGS[few]))]


def layer(N, K, bits, group, dtype):
    """Packed codes, scales and zeros of a fresh random weight (N, K) on DEVICE."""
    W = torch.randn(N, K, device=DEVICE) * torch.rand(N, 1, device=DEVICE)
    s, z = fit_grid(W, bits, group)
    return pack(quantize(W, s, z, bits), bits), s.to(dtype), z.to(dtype)


def exact(x, qw, s, z, bits, K):
    """float64 product of x with the weights as the format defines them (dequantized in the activation dtype)."""
    return x.double() @ dequantize(unpack(qw, bits, K), s, z).double().T


def check(M, N, K, group, bits, dtype, config=None, path=None):
    qw, s, z = layer(N, K, bits, group, dtype)
    x = torch.randn(M, K, device=DEVICE).to(dtype)
    poison = torch.full((M, N), float("nan"), device=DEVICE, dtype=dtype)  # every element must be written
    y = wq_gemm.matmul(x, qw, s, z, bits, K, path=path, config=config, out=poison)
    ref = exact(x, qw, s, z, bits, K)
    err = (y.double() - ref).abs().max().item() / ref.abs().max().item()
    assert y.dtype == dtype and y.shape == (M, N) and err < TOL[dtype], f"{M}x{N}x{K} g{group} W{bits}: {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("few,i", CONFIGS)
def test_every_config_matches_the_twin_at_4_bits(few, i, dtype):
    for M, N, K, group in ODD:
        check(M, N, K, group, 4, dtype, wq_gemm.CONFIGS[few][i])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("few", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_other_widths_match_the_twin(bits, few, dtype):
    for M, N, K, group in ODD:
        check(M, N, K, group, bits, dtype, wq_gemm.CONFIGS[few][0])


FACTORED = {128: [(1, 100, 256, 128), (7, 72, 384, -1), (33, 40, 512, 256)], 64: [(7, 72, 192, 64)],
            32: [(33, 40, 160, 32)]}  # chunk: M N K g


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk,i", [(c, i) for c in FACTORED for i in range(len(wq_factored.CONFIGS[c]))])
def test_factored_kernel_every_config_matches_the_twin(chunk, i, dtype):
    for M, N, K, group in FACTORED[chunk]:
        assert wq_factored.chunk_of(4, K, K // group if group > 0 else 1, dtype) == chunk
        check(M, N, K, group, 4, dtype, wq_factored.CONFIGS[chunk][i], path="factored")


def test_factored_kernel_takes_only_its_layers():
    assert wq_factored.chunk_of(3, 256, 2, torch.bfloat16) is None  # 3 bits
    assert wq_factored.chunk_of(4, 148, 2, torch.bfloat16) is None  # groups of 74
    assert wq_factored.chunk_of(4, 256, 2, torch.float32) is None
    assert "factored" in wq_gemm.paths(16, 4, 4096, 32, torch.bfloat16)
    assert "factored" not in wq_gemm.paths(65, 4, 4096, 32, torch.bfloat16)
    qw, s, z = layer(40, 148, 4, 74, torch.bfloat16)
    with pytest.raises(ValueError, match="148 inputs in 2 groups"):
        wq_factored.matmul(torch.randn(3, 148).bfloat16(), qw, s, z, 4, 148)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dequantization_kernel_equals_the_twin_bit_for_bit(bits, dtype):
    for _, N, K, group in ODD:
        qw, s, z = layer(N, K, bits, group, dtype)
        assert torch.equal(wq_gemm.dequantize_weight(qw, s, z, bits, K), dequantize(unpack(qw, bits, K), s, z))


@pytest.mark.parametrize("bits", [3, 4])
def test_unfused_path_matches_the_twin(bits):
    for M, N, K, group in ODD:
        check(M, N, K, group, bits, torch.bfloat16, path="unfused")


def test_fp32_and_bad_shapes_are_refused():
    """fp32 layers never come here (core.code_path sends them to the twin: the tensor cores would round to tf32)."""
    qw, s, z = layer(48, 96, 4, 32, torch.float32)
    x = torch.randn(3, 96, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit a 4-bit layer of 96 inputs in bf16 or fp16"):
        wq_gemm.matmul(x, qw, s, z, 4, 96)
    with pytest.raises(ValueError, match="do not fit a 4-bit layer of 64 inputs"):
        wq_gemm.matmul(x[:, :64].bfloat16(), qw, s.bfloat16(), z.bfloat16(), 4, 64)


SHAPES = [(4096, 4096), (12288, 4096), (4096, 12288), (3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", SHAPES)
def test_real_shapes_autotuned(N, K):
    for M in (1, 65, 1024):  # both regimes; autotuning every check makes more of them slow
        check(M, N, K, 128, 4, torch.bfloat16, path="fused")
        check(M, N, K, 128, 4, torch.bfloat16, path="unfused")
    for M, group, dtype in ((1, 128, torch.bfloat16), (16, -1, torch.float16), (33, 64, torch.bfloat16)):
        check(M, N, K, group, 4, dtype, path="factored")
    for bits, group in ((4, -1), (8, 128), (3, 128), (2, 64)):
        check(16, N, K, group, bits, torch.bfloat16)
        check(600, N, K, group, bits, torch.float16)


@pytest.mark.gpu
def test_qlinear_on_cuda_runs_the_kernel_and_matches_the_twin():
    qw, s, z = layer(512, 1024, 4, 128, torch.bfloat16)
    lin = QLinear(1024, 512, 4, 128, dtype=torch.bfloat16).to(DEVICE)
    lin.qweight.copy_(qw), lin.scales.copy_(s), lin.zeros.copy_(z)
    x = torch.randn(2, 300, 1024, device=DEVICE, dtype=torch.bfloat16)
    ref = exact(x.view(-1, 1024), qw, s, z, 4, 1024).view(2, 300, 512)
    assert (lin(x).double() - ref).abs().max() / ref.abs().max() < TOL[torch.bfloat16]


# ------------------------------------------------------------------------------------------ GPTQ's column loop
def gptq_problem(N, K, seed=0):
    """A weight and the U factor of a real (correlated, damped) Hessian, as quantizers/gptq.py makes them."""
    from quantizers.walk import inverse_hessian_factor
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * K, K, generator=g) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=g) / K**0.5)
    W = torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g)
    return W.to(DEVICE), inverse_hessian_factor((X.T @ X).to(DEVICE), 0.01)[0]


@pytest.mark.parametrize("N,K,i1,i2,bits,sym,lo", [(37, 256, 0, 128, 4, False, 0), (37, 256, 128, 256, 3, True, 0),
                                                   (20, 200, 128, 200, 4, False, 0), (5, 96, 0, 96, 2, False, 0),
                                                   (37, 256, 0, 128, 4, True, 1)])
def test_gptq_kernel_matches_its_twin_loop(N, K, i1, i2, bits, sym, lo):
    """kernels/gptq_cols.columns against gptq.round_columns (the loop it replaces) on one block, grids fixed: the
    same codes, the same errors up to the order of float32 rounding (lo 1: W4A8-FP8's lowest code, format.py)."""
    from kernels import gptq_cols
    from quantizers.gptq import round_columns
    W, U = gptq_problem(N, K)
    S, Z = fit_grid(W, bits, 64, sym)
    group_of = torch.arange(K, device=DEVICE) // 64
    if lo:  # a grid clipped to 0.6 of the range: without the floor, codes of 0 would come up
        S = S * 0.6
    Q, E = gptq_cols.columns(W[:, i1:i2].contiguous(), U[i1:i2, i1:i2], S, Z, group_of[i1:i2], bits, lo)
    Qt, Et = round_columns(W, U, S.clone(), Z.clone(), group_of, i1, i2, 64, bits, sym, 1.0, None, act_order=True,
                           lo=lo)
    assert Q.min() >= lo
    assert (Q == Qt).float().mean() > 0.999 and torch.allclose(E, Et, rtol=1e-4, atol=1e-5 * Et.abs().max())


@pytest.mark.parametrize("group_size,act_order", [(128, False), (-1, False), (64, True)])
def test_gptq_with_the_kernel_equals_gptq_without(group_size, act_order, monkeypatch):
    """gptq() taking the kernel for every block it can (its grids fitted at the block's start, before the call)
    gives what its own loop gives."""
    from kernels import gptq_cols
    from quantizers import gptq as G
    W, _ = gptq_problem(24, 256, seed=1)
    X = torch.randn(512, 256, device=DEVICE)
    H = X.T @ X
    want = G.gptq(W, H, 4, group_size, act_order=act_order)
    calls = []
    monkeypatch.setattr(G, "gptq_columns", lambda *a: calls.append(1) or gptq_cols.columns(*a))
    got = G.gptq(W, H, 4, group_size, act_order=act_order)
    assert len(calls) == 2 and (got[0] == want[0]).float().mean() > 0.999
    assert torch.allclose(got[1], want[1]) and torch.equal(got[2], want[2])


# ------------------------------------------------------------------------------- Quant-dLLM's column loop
@pytest.mark.parametrize("N,width,K", [(37, 128, 2), (20, 74, 3), (5, 96, 1), (16, 64, 4)])
def test_binary_kernel_matches_its_twin_loop(N, width, K):
    """kernels/binary_cols.columns against quantdllm.round_columns (the loop it replaces) on one group with its DAQ
    fit: the same signs, the same errors up to the order of float32 rounding."""
    from kernels import binary_cols
    from quantizers import quantdllm as Q
    W, U = gptq_problem(N, width, seed=K)
    ar, ac, _, _ = Q.daq(W, K, torch.ones_like(W), 3)
    S, E = binary_cols.columns(W, ar, ac, U)
    St, Et = Q.round_columns(W, ar, ac, U)
    assert S.shape == (K, N, width) and set(S.unique().tolist()) <= {-1.0, 1.0}
    assert (S == St).float().mean() > 0.999 and torch.allclose(E, Et, rtol=1e-4, atol=1e-5 * Et.abs().max())


def test_quantdllm_with_the_kernel_equals_quantdllm_without(monkeypatch):
    """quantdllm() taking the kernel for every group (ABMP's orders 1 to 3 among them) gives what its own loop
    gives."""
    from kernels import binary_cols
    from quantizers import quantdllm as Q
    W, _ = gptq_problem(24, 512, seed=2)
    X = torch.randn(1024, 512, device=DEVICE)
    monkeypatch.setattr(Q, "binary_columns", lambda *a: None)
    want = Q.quantdllm(W, X.T @ X, 2, 64, k=0.25, iters=3)
    calls = []
    monkeypatch.setattr(Q, "binary_columns", lambda *a: calls.append(1) or binary_cols.columns(*a))
    got = Q.quantdllm(W, X.T @ X, 2, 64, k=0.25, iters=3)
    assert len(calls) == 8 and got[3] == want[3] and sorted(set(got[3])) == [1, 2, 3]
    assert (got[0] == want[0]).float().mean() > 0.999 and torch.allclose(got[1], want[1], rtol=1e-4)
