"""
QuaRot (Ashkboos et al. 2024, arXiv:2404.00456): rotate the model so that no activation channel stands out, then
quantize weights and activations (W4A4 is the point). In float the rotated model computes exactly the same function:
  1. fold each RMSNorm's weight into the Linears it feeds (q/k/v, gate/up, the head), leaving weightless norms;
  2. rotate the residual stream by a random Hadamard Q (an RMSNorm commutes with Q): embedding E Q; q/k/v, gate/up
     and head W Q (inputs); o and down Q^T W (outputs);
  3. rotate each attention head's values by a Hadamard H: v's output rows (and bias) and o's input columns;
  4. rotate the down projection's input online, x -> x H_F (it is a product, silu(gate) * up, nothing to fold into),
     with W_down H_F fused into the weight.
Then the weights are rounded by RTN (`--method quarot`) or by GPTQ (`--method quarot,gptq`), activations per token.

    python calibrate.py --method quarot --bits 4                       # W4A4, RTN weights
    python calibrate.py --method quarot,gptq --bits 4 --a_clip 0.9

Hadamard matrices are built in code: Sylvester's for powers of two, times a Paley factor for m * 2^k with
m = q + 1 (Paley I, q prime = 3 mod 4: 12 for LLaDA's 12288 and tiny-llada's 768) or m = 2(q + 1) (Paley II,
q prime = 1 mod 4: 28 for Dream's 3584 = 28 * 128, 148 for Dream's 18944 = 148 * 128 and tiny-dream's 592 = 148 * 4,
sizes QuaRot's own code does not cover). The online one is kept as its Kronecker factors (H_m (x) H_b, see
core.Rotation), so even 18944 channels cost two small matrices. A width with no construction gets a random
orthogonal matrix instead, said in the log; it is exact too, only slower online (dense).
"""
import copy

import torch

from quantizers.core import RotLinear, Rotation, swap, walk_blocks
from quantizers.rtn import round_block


def is_prime(n):
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def jacobsthal(q):
    """Q_ij = chi(j - i), chi the quadratic character mod the prime q."""
    squares = {i * i % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if i in squares else -1.0 for i in range(1, q)], dtype=torch.float64)
    return chi[(torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q]


def paley(m):
    """A +-1 Hadamard matrix of order m from Paley's constructions, or None if neither applies."""
    if is_prime(m - 1) and (m - 1) % 4 == 3:  # Paley I: I + [[0, 1^T], [-1, Q]]
        q = m - 1
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + S
    if m % 2 == 0 and is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:  # Paley II, from the conference matrix C:
        # C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]
        q = m // 2 - 1
        C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        C[0, 1:], C[1:, 0], C[1:, 1:] = 1, 1, jacobsthal(q)
        one, two = torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
        return torch.kron(C, one.double()) + torch.kron(torch.eye(q + 1, dtype=torch.float64), two.double())
    return None


def sylvester(n):
    H = torch.ones(1, 1, dtype=torch.float64)
    while len(H) < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)])
    return H


def hadamard_factors(n):
    """(A, B) with A (m, m) and B (2^k, 2^k) +-1 Hadamard matrices, m * 2^k = n, the power of two as large as
    possible; None when no construction here covers n."""
    k = (n & -n).bit_length() - 1  # the largest power of two dividing n
    for j in range(k, -1, -1):
        m = n >> j
        A = torch.ones(1, 1, dtype=torch.float64) if m == 1 else paley(m)
        if A is not None:
            return A, sylvester(1 << j)
    return None


def orthogonal(n, gen):
    """A normalised Hadamard matrix of order n (dense), or a random orthogonal one when none can be built."""
    factors = hadamard_factors(n)
    if factors is None:
        print(f"quarot: no Hadamard construction for {n}; using a random orthogonal matrix")
        return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    return torch.kron(*factors) / n ** 0.5


def online_hadamard(n, dtype):
    """x -> x H_n as a Rotation holding the Kronecker factors (dense random orthogonal if no construction)."""
    factors = hadamard_factors(n)
    if factors is None:
        print(f"quarot: no Hadamard construction for {n}; the online rotation is a dense random orthogonal matrix")
        rot = Rotation(1, n, dtype=dtype)
        rot.r1.copy_(orthogonal(n, torch.Generator().manual_seed(0))[None])
        return rot
    A, B = factors
    rot = Rotation(len(A), len(B), shared=True, mix=len(A) > 1, dtype=dtype)
    rot.r1.copy_((B / len(B) ** 0.5)[None])
    if rot.mix is not None:
        rot.mix.copy_(A / len(A) ** 0.5)
    return rot


def transform(W, M, side):
    """W (out, in) times M on its input side (W M) or its output side (M^T W), computed in at least fp32."""
    wide = torch.promote_types(W.dtype, torch.float32)
    M = M.to(W.device, wide)
    return (W.to(wide) @ M if side == "in" else M.T @ W.to(wide)).to(W.dtype)


@torch.no_grad()
def rotate_model(model, gen, device):
    """Steps 1-4 of the module docstring, in place, one block at a time on `device`."""
    a = model.args
    Q = orthogonal(a.dim, gen) * torch.where(torch.rand(a.dim, generator=gen) < 0.5, -1.0, 1.0).double()
    Hh = orthogonal(a.head_dim, gen)
    model.lm_head.weight.data = transform(model.lm_head.weight * model.norm.weight, Q, "in")
    model.norm.weight.data.fill_(1.0)
    model.embed.weight.data = transform(model.embed.weight, Q, "in")  # rows of E are residual vectors: E Q
    home = next(model.parameters()).device
    for block in model.blocks:
        block.to(device)
        for norm, names in (("attn_norm", ("q", "k", "v")), ("mlp_norm", ("gate", "up"))):
            prefix, gamma = "attn." if norm == "attn_norm" else "mlp.", block.get_submodule(norm).weight
            for n in names:
                lin = block.get_submodule(f"{prefix}{n}_proj")
                lin.weight.data = transform(lin.weight * gamma, Q, "in")
            gamma.data.fill_(1.0)
        for name in ("attn.o_proj", "mlp.down_proj"):
            block.get_submodule(name).weight.data = transform(block.get_submodule(name).weight, Q, "out")
        v, o = block.attn.v_proj, block.attn.o_proj
        per_kv, per_q = (torch.block_diag(*[Hh] * k) for k in (a.n_kv_heads, a.n_heads))
        v.weight.data = transform(v.weight, per_kv, "out")
        if v.bias is not None:
            v.bias.data = transform(v.bias[None], per_kv, "in")[0]
        o.weight.data = transform(o.weight, per_q, "in")
        down = block.mlp.down_proj
        rot = online_hadamard(down.in_features, down.weight.dtype).to(device)
        down.weight.data = rot(down.weight.data)  # W H_F: the rows rotated like inputs
        swap(block, "mlp.down_proj", RotLinear.wrap(down, copy.deepcopy(rot)))
        block.to(home)


def quantize(model, calib, args):
    rotate_model(model, torch.Generator().manual_seed(args.seed), args.device)
    if args.method.split(",")[-1] == "quarot":  # followed by another rounder (quarot,gptq), QuaRot only rotates
        for _, block, _ in walk_blocks(model, calib, args.device):
            round_block(block, args)
