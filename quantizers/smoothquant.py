"""
SmoothQuant (Xiao et al. 2023, arXiv:2211.10438): migrate the difficulty of quantizing activations into the weights.
For each input channel j of a group of Linears sharing one input X, with every W of the group stacked,
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),
the input is divided by s (folded into the RMSNorm weight, or into v_proj's output rows for o_proj) and the weights'
columns multiplied by s, which in float leaves every output unchanged. alpha = 0.5 balances the two ranges
(mit-han-lab/smoothquant; the study's scripts use 0.5). The weights are then rounded by RTN, each block right after
it is smoothed, or by a later rounder (`--method smoothquant,gptq`), and the activations quantized per token.

    python calibrate.py --method smoothquant --bits 8 --alpha 0.5     # W8A8

Groups: attn_norm -> q, k, v; mlp_norm -> gate, up; v -> o where v's output width equals o's input width (not under
grouped-query attention). down_proj is not smoothed, as in SmoothQuant. v -> o is our addition: SmoothQuant's Llama
path smooths only the two norm groups (its OPT path smooths v -> o too); o_proj's input is quantized per token like
the others, so we give it the same treatment. The statistics max|X| are taken on each block's float inputs, as
SmoothQuant takes its act_scales from the float model (--no-float_stats: through the blocks already quantized).
"""
from dataclasses import dataclass

import torch

from cli import InputError, opt
from quantizers.core import apply_scale
from quantizers.walk import input_stats, walk_blocks

KIND = "transform"  # moves scales between the norms / v_proj and the Linears; the float function is unchanged
ACTIVATIONS = True  # --bits N means W{N}A{N}, weights per output channel


@dataclass
class Flags:
    alpha: float = opt(0.5, "migration strength: s = max|X|^alpha / max|W|^(1-alpha) (DuQuant's smoothing too)")


GROUPS = [("attn_norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj")), ("attn.v_proj", ("attn.o_proj",)),
          ("mlp_norm", ("mlp.gate_proj", "mlp.up_proj"))]


def resolve(args):
    if not 0 <= args.alpha <= 1:
        raise InputError(f"--alpha {args.alpha} is out of range (expected in [0, 1])")


def smooth_scales(x_max, w_max, alpha):
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (both clamped away from 0)."""
    return (x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


def absmax(acc, X, w=None):
    """Per-channel max |x| over the calibration tokens."""
    m = X.abs().amax(0).float()
    return m if acc is None else torch.maximum(acc, m)


def smooth_block(block, inputs, groups, alpha):
    """Smooth every group of one block whose widths allow it; returns the number of groups smoothed."""
    done = 0
    for prev, names in groups:
        linears = [block.get_submodule(n) for n in names]
        if block.get_submodule(prev).weight.shape[0] != linears[0].weight.shape[1]:
            continue
        x_max = input_stats(block, inputs, names[:1], absmax)[names[0]]
        w_max = torch.cat([lin.weight for lin in linears]).abs().amax(0).float()
        apply_scale(block, prev, names, smooth_scales(x_max, w_max, alpha))
        done += 1
    return done


def quantize(model, calib, args, round_block=None):
    """Smooth block by block; round_block(block, inputs, args), when given, rounds each block right after."""
    for _, block, inputs in walk_blocks(model, calib, args.device, args.float_stats):
        smooth_block(block, inputs, GROUPS, args.alpha)
        if round_block is not None:
            round_block(block, inputs, args)
