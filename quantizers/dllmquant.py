"""
DLLMQuant (Xu, Chen and Yang 2025, arXiv:2508.14090): post-training quantization built for the way a dLLM decodes.
No code was released; what is known comes from the abstract and its public reviews (OpenReview), so each open
detail below is our reading, said as such, and a flag.
  TMAS  calibration canvases drawn from the model's own denoising trajectories in mask-ratio buckets
        0.3 / 0.2 / 0.2 / 0.3: calibrate.py --calib_mode trajectory.
  CGQ   certainty-guided quantization: GPTQ (quantizers/gptq.py) on a token-weighted Hessian
        H = sum_j c_j x_j x_j^T (the paper's Eq. 10). The paper weights masked tokens 1 and decoded ones 0.7,
        "modulated by confidence"; the exact term is not public. We keep those two class weights exactly: a visible
        token weighs 0.7 (--cgq_visible), and a masked one 1 on average, modulated by the model's confidence in its
        current guess there: c_j = (1 - beta) + 2 beta p_j (--cgq_beta, 0.5), p_j the percentile of that
        confidence among the masked tokens whose confidence is known (mid-ranks, ties averaged, so p averages 1/2).
        A masked position the sampler has not reached (a later block of its trajectory) has no confidence and
        weighs 1, as does every masked token without trajectory confidences (masked calibration). Percentiles
        rather than raw confidences: a trajectory's open positions are nearly all unsure (mean confidence ~0.015
        on the tiny models) with a long tail, so raw values would let a few tokens dominate H. Then c is
        normalised to mean 1. With all c_j equal (clean calibration) CGQ is GPTQ exactly.
  IA-AQ interaction-aware activation quantization of the attention's value path softmax(P) V (the paper's
        Eq. 7-9): V is quantized per channel over the tokens (--v_bits), and the clipping factor a of its range is
        searched per layer over a grid (--iaaq_grid points in [0.5, 1]) to minimise the attention output error
        weighted by token importance, sum_i w_i ||(P (V - Q_a(V)))_i||^2 with w_i = sum_q P_qi, the attention a
        token receives (averaged over heads), as the reviews describe. P itself stays in float.

    python calibrate.py --method quarot,dllmquant --bits 4 --calib_mode trajectory    # W4A4, V at 4 bits
    python calibrate.py --method awq,dllmquant --bits 4 --calib_mode trajectory

The method rounds, so it goes last; before it, AWQ or QuaRot transform the float model as the paper does.
"""
from dataclasses import dataclass

import torch

from cli import InputError, opt
from quantizers.format import quantize_channels
from quantizers.gptq import gptq_block  # CGQ is GPTQ on a token-weighted Hessian
from quantizers.walk import walk_blocks

KIND = "rounder"  # replaces each float Linear by a QLinear (GPTQ's), and quantizes V
ACTIVATIONS = True  # --bits N means W{N}A{N}, weights per output channel; V at N bits too (--v_bits)


@dataclass
class Flags:
    cgq_visible: float = opt(0.7, "CGQ: Hessian weight of a visible token (masked ones weigh 1 on average)")
    cgq_beta: float = opt(0.5, "CGQ: a masked token weighs (1 - beta) + 2 beta x the percentile of the model's "
                               "confidence among masked tokens (unreached positions: 1)")
    iaaq_grid: int = opt(11, "IA-AQ: clipping factors of V tried, evenly spaced in [0.5, 1]")


def resolve(args):
    """--v_bits 0 (auto) means V at the activations' bits: IA-AQ is part of the method."""
    if args.v_bits == 0:
        args.v_bits = args.abits
    if args.cgq_visible <= 0 or not 0 <= args.cgq_beta <= 1 or args.iaaq_grid < 2:
        raise InputError(f"--cgq_visible {args.cgq_visible}, --cgq_beta {args.cgq_beta}, --iaaq_grid {args.iaaq_grid}: "
                         "expected > 0, in [0, 1] and >= 2")


def certainty_weights(calib, visible=0.7, beta=0.5):
    """CGQ's token weights c (N, T), mean 1 (module docstring): visible `visible`, masked 1 on average, modulated
    within the masked ones by the percentile of the model's confidence; masked without a confidence: 1."""
    masked = calib.masked
    conf = calib.confidence if calib.confidence is not None else torch.full(masked.shape, float("nan"))
    known = masked & torch.isfinite(conf)
    c = torch.where(masked, 1.0, float(visible))
    if known.any():
        values = conf[known].double()
        ordered = values.sort().values
        mid_rank = torch.searchsorted(ordered, values) + torch.searchsorted(ordered, values, right=True)
        c[known] = ((1 - beta) + 2 * beta * mid_rank / (2 * len(values))).float()
    return torch.ones_like(c) if (c == c.flatten()[0]).all() else c / c.double().mean().float()


@torch.no_grad()
def attention_parts(block, x, rope):
    """Query-key probabilities P (B, H, T, T) and values V (B, T, C) of block's attention on the block input x."""
    attn = block.attn
    q, k, v = attn.qkv(block.attn_norm(x), rope)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
    P = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.head_dim ** -0.5, dim=-1)
    return P, v.transpose(1, 2).flatten(2).float()  # V as v_proj wrote it: (B, T, H_kv * hd)


def value_error(P, dV, n_kv_heads):
    """sum_i w_i ||(P dV)_i||^2 over heads and sequences, w_i = mean over heads of sum_q P_qi (IA-AQ's loss)."""
    B, H, T, _ = P.shape
    dV = dV.view(B, T, n_kv_heads, -1).transpose(1, 2).repeat_interleave(H // n_kv_heads, dim=1)
    w = P.sum(2).mean(1)  # (B, T): the attention each token receives
    return ((P @ dV).pow(2).sum(-1) * w[:, None, :]).sum().item()


@torch.no_grad()
def search_value_clip(block, inputs, bits, points):
    """The clipping factor a in [0.5, 1] of V's per-channel grid with the lowest importance-weighted error."""
    v_proj, grid = block.attn.v_proj, torch.linspace(1.0, 0.5, points).tolist()
    v_proj.out_bits, loss = 16, torch.zeros(len(grid))  # the search sees V before its own quantization
    for i in range(0, len(inputs.x), inputs.chunk):
        P, V = attention_parts(block, inputs.x[i:i + inputs.chunk], inputs.rope)
        for j, a in enumerate(grid):
            loss[j] += value_error(P, V - quantize_channels(V, bits, a), block.attn.n_kv_heads)
    v_proj.out_bits, v_proj.out_clip = bits, grid[int(loss.argmin())]
    return v_proj.out_clip, (loss.min() / loss[0]).item()


def quantize(model, calib, args):
    weights = certainty_weights(calib, args.cgq_visible, args.cgq_beta)
    for i, block, inputs in walk_blocks(model, calib, args.device):
        gptq_block(block, inputs, args, weights)
        if args.v_bits < 16:
            a, gain = search_value_clip(block, inputs, args.v_bits, args.iaaq_grid)
            print(f"block {i + 1:3d}: IA-AQ clip of V {a:.3f}, weighted error x{gain:.3f} of no clipping", flush=True)
