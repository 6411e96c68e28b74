"""
QuaRot (Ashkboos et al. 2024, arXiv:2404.00456): rotate the model so that no activation channel stands out, then
quantize weights and activations (W4A4 is the point). In float the rotated model computes exactly the same function:
  1. fold each RMSNorm's weight into the Linears it feeds (q/k/v, gate/up, the head), leaving weightless norms;
  2. rotate the residual stream by a random Hadamard Q (an RMSNorm commutes with Q): embedding E Q; q/k/v, gate/up
     and head W Q (inputs); o and down Q^T W (outputs);
  3. rotate each attention head's values by a Hadamard H: v's output rows (and bias) and o's input columns;
     then mix o's input across heads online, x -> x (H_n (x) I_d) for n heads of d channels, with the same fused
     into W_o: o's input is then the attention output times the full Hadamard H_n (x) H of its width, as QuaRot's
     own code does it (a full Hadamard fused into o_proj, the head mix applied online), so an outlier in one head is
     spread over all of them (--no-online_heads: within each head only);
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
from dataclasses import dataclass

import torch

from cli import opt
from quantizers.core import Rotation, RotLinear, swap
from quantizers.hadamard import hadamard_factors, orthogonal
from quantizers.walk import walk_blocks

KIND = "transform"  # rotates the float weights (and one input online); the float function is unchanged
ACTIVATIONS = True  # --bits N means W{N}A{N}, weights per output channel


@dataclass
class Flags:
    online_heads: bool = opt(True, "QuaRot: mix o_proj's input across heads online (H_heads (x) I), as QuaRot does; "
                                   "--no-online_heads rotates it within each head only")


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


def head_mix(n_heads, head_dim, gen, dtype):
    """x -> x (H_n (x) I_d) / sqrt(n) on n heads of d channels as a Rotation (a dense random orthogonal mix when
    n has no Hadamard construction)."""
    if hadamard_factors(n_heads) is None:
        print(f"quarot: no Hadamard construction for {n_heads} heads; the head mix is a random orthogonal matrix")
    rot = Rotation(n_heads, head_dim, shared=True, mix=True, dtype=dtype)
    rot.mix.copy_(orthogonal(n_heads, gen))
    return rot


def rotate_rows(W, rot):
    """W T for an online Rotation T: W's rows rotated like inputs, computed in at least fp32."""
    return rot(W.to(torch.promote_types(W.dtype, torch.float32))).to(W.dtype)


def transform(W, M, side):
    """W (out, in) times M on its input side (W M) or its output side (M^T W), computed in at least fp32."""
    wide = torch.promote_types(W.dtype, torch.float32)
    M = M.to(W.device, wide)
    return (W.to(wide) @ M if side == "in" else M.T @ W.to(wide)).to(W.dtype)


@torch.no_grad()
def rotate_model(model, gen, device, online_heads=True):
    """Steps 1-4 of the module docstring, in place, one block at a time on `device`."""
    a = model.args
    Q = orthogonal(a.dim, gen) * torch.where(torch.rand(a.dim, generator=gen) < 0.5, -1.0, 1.0).double()
    Hh = orthogonal(a.head_dim, gen)
    dtype = model.blocks[0].attn.o_proj.weight.dtype
    heads = head_mix(a.n_heads, a.head_dim, gen, dtype) if online_heads else None
    online = online_hadamard(a.hidden_dim, dtype)  # one module each for every block: the checkpoint stores them once
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
        if heads is not None:
            mix = heads.to(device)
            o.weight.data = rotate_rows(o.weight, mix)  # W_o blockdiag(H) (H_n (x) I) = W_o (H_n (x) H)
            swap(block, "attn.o_proj", RotLinear.wrap(o, mix))
        down = block.mlp.down_proj
        rot = online.to(device)
        down.weight.data = rotate_rows(down.weight, rot)  # W H_F
        swap(block, "mlp.down_proj", RotLinear.wrap(down, rot))
        block.to(home)


def quantize(model, calib, args, round_block=None):
    """Rotate the whole model (it reads no calibration data); round_block(block, inputs, args), when given, then
    rounds each block, walking the calibration data only to log each block's output error."""
    rotate_model(model, torch.Generator().manual_seed(args.seed), args.device, args.online_heads)
    for _, block, inputs in walk_blocks(model, calib, args.device) if round_block is not None else ():
        round_block(block, inputs, args)
