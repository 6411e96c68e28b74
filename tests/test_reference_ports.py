"""Independent oracles for two methods: each reference's algorithm written out again here, plainly and in float64,
from its paper and the conventions of its released code (IST-DASLab/gptq, mit-han-lab/llm-awq), and compared with
quantizers/ on the same layer."""
import pytest
import torch

from quantizers.awq import search_scale
from quantizers.gptq import gptq


def reference_grid(w, bits):
    """The asymmetric grid of both references for one group w (N, g): scale from the range widened to include 0,
    zero point round(-min / scale)."""
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-lo / scale)


def reference_gptq(W, H, bits, g, damp=0.01, block=128):
    """GPTQ (arXiv:2210.17323, Algorithm 1 with lazy batches), float64: dead inputs pinned, damping of damp x the mean
    diagonal, the upper Cholesky factor of H^-1, each group's grid fitted to the weights as updated when its first
    column comes up."""
    W, H = W.double().clone(), H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    H += damp * H.diagonal().mean() * torch.eye(len(H), dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    N, K = W.shape
    Q = torch.zeros(N, K, dtype=torch.long)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        Err = torch.zeros(N, b1 - b0, dtype=torch.float64)
        for j in range(b0, b1):
            if j % g == 0:
                scale, zero = reference_grid(W[:, j:j + g], bits)
            q = torch.clamp(torch.round(W[:, j] / scale) + zero, 0, 2 ** bits - 1)
            Q[:, j] = q.long()
            err = (W[:, j] - (q - zero) * scale) / U[j, j]
            W[:, j:b1] -= err[:, None] * U[j, j:b1][None, :]
            Err[:, j - b0] = err
        W[:, b1:] -= Err @ U[b0:b1, b1:]
    return Q


@pytest.mark.parametrize("bits,g", [(4, 128), (3, 128), (4, 64)])
def test_gptq_codes_equal_a_float64_port_of_the_reference(bits, g):
    gen = torch.Generator().manual_seed(bits * g)
    N, K, T = 96, 384, 2048
    X = torch.randn(T, K, generator=gen) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=gen) / K ** 0.5)
    X[:, :4] *= 20  # outlier channels, and one dead input
    X[:, 7] = 0
    W, H = torch.randn(N, K, generator=gen) * 0.05, X.T @ X
    q, _, _, _ = gptq(W, H, bits, g)
    ref = reference_gptq(W, H, bits, g)
    assert (q.long() == ref).float().mean().item() >= 0.999  # fp32 against fp64: a rare tie moves by one code


def reference_awq_ratio(W, X, bits, g, n_grid=20):
    """llm-awq's auto_scale for one Linear judged by its own output, float64: s = mean|x|^a clamped at 1e-4 and
    divided by sqrt(max s min s), W -> Q(W s) / s, the a of the smallest mean squared output error."""
    W, X = W.double(), X.double()
    x_mean, best = X.abs().mean(0), (float("inf"), None)
    for i in range(n_grid):
        s = x_mean.pow(i / n_grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        Ws = (W * s).reshape(len(W), -1, g)
        Wq = torch.empty_like(Ws)
        for k in range(Ws.shape[1]):
            scale, zero = reference_grid(Ws[:, k], bits)
            q = torch.clamp(torch.round(Ws[:, k] / scale[:, None]) + zero[:, None], 0, 2 ** bits - 1)
            Wq[:, k] = (q - zero[:, None]) * scale[:, None]
        err = (X @ (Wq.reshape(W.shape) / s).T - X @ W.T).pow(2).mean().item()
        best = min(best, (err, s), key=lambda t: t[0])
    return best[1]


def test_awq_scale_search_equals_llm_awqs_objective():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(4, 64, 256, generator=gen) * (1 + 30 * (torch.rand(256, generator=gen) < 0.03))
    lin = torch.nn.Linear(256, 48, bias=False)
    lin.weight.data = torch.randn(48, 256, generator=gen) * 0.05
    W = lin.weight.data.clone()
    s = search_scale([lin], X, lambda x: lin(x), 4, 128, False)
    ref = reference_awq_ratio(W, X.reshape(-1, 256), 4, 128)
    assert torch.allclose(s.double(), ref, rtol=1e-5)
    assert torch.equal(lin.weight.data, W)  # the search leaves the weight as it found it
