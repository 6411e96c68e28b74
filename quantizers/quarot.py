"""
QuaRot (Ashkboos et al. 2024, arXiv:2404.00456): rotate the model so that no activation channel stands out, then
quantize weights and activations (W4A4 is the point). In float the rotated model computes exactly the same function:
  1. fold each RMSNorm's weight into the Linears it feeds (q/k/v, gate/up, the head), leaving weightless norms;
  2. rotate the residual stream by a random Hadamard Q (an RMSNorm commutes with Q): embedding E Q; q/k/v, gate/up
     and head W Q (inputs); o and down Q^T W (outputs);
  3. rotate each attention head's values by a Hadamard H: v's output rows (and bias) and o's input columns;
  4. rotate the down projection's input online, x -> x H_F (it is a product, silu(gate) * up, nothing to fold into),
     with W_down H_F fused into the weight.
Then the weights are rounded by RTN (`--method quarot`, RTN appended) or by GPTQ (`--method quarot,gptq`), and the
activations quantized per token.

    python calibrate.py --method quarot --bits 4                       # W4A4, RTN weights
    python calibrate.py --method quarot,gptq --bits 4 --a_clip 0.9

Hadamard matrices are built in code (quantizers/hadamard.py): Sylvester's for powers of two, times a Paley factor
(12 for LLaDA's 12288, 28 and 148 for Dream's 3584 and 18944, orders QuaRot's own code does not cover). The online
one is kept as its Kronecker factors (H_m (x) H_b, see core.Rotation), so even 18944 channels cost two small
matrices, and the activation quantizer fuses it (kernels/act_quant.py). A width with no construction gets a random
orthogonal matrix instead, said in the log; it is exact too, only slower online (dense).
"""
import copy

import torch

from quantizers.core import Rotation, RotLinear, swap
from quantizers.hadamard import hadamard_factors, orthogonal
from quantizers.walk import walk_blocks

KIND = "transform"  # rotates the float weights (and one input online); the float function is unchanged
ACTIVATIONS = True  # --bits N means W{N}A{N}, weights per output channel


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


def quantize(model, calib, args, round_block=None):
    """Rotate the whole model (it reads no calibration data); round_block(block, inputs, args), when given, then
    rounds each block, walking the calibration data only to log each block's output error."""
    rotate_model(model, torch.Generator().manual_seed(args.seed), args.device)
    for _, block, inputs in walk_blocks(model, calib, args.device) if round_block is not None else ():
        round_block(block, inputs, args)
