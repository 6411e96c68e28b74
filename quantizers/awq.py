"""
AWQ, activation-aware weight quantization (Lin et al. 2024, arXiv:2306.00978). Input channels that carry large
activations matter most, so before rounding each channel j of a Linear's input is scaled up, W' = W diag(s), and the
operation feeding it is scaled down by the same s (an RMSNorm's weight, or the output rows of a previous Linear);
in float the model computes exactly the same function. The scales are s = mean|x_j|^a, normalised by
sqrt(max s * min s), with the exponent a searched on a grid of 20 values in [0, 1) for the smallest output error
of the module the scaled Linears feed. Then each group's weight range is clipped, shrinking it by up to half in
steps of 1/20, for the smallest output error of the Linear (q and k are not clipped). Both searches follow
mit-han-lab/llm-awq (auto_scale.py, auto_clip.py), and like it we feed each block the float outputs of the blocks
before it (--no-float_stats: the quantized ones).

    python calibrate.py --method awq --wbits 4 --group_size 128       # scale, clip, then round by RTN
    python calibrate.py --method awq,gptq --wbits 4                    # scale and clip, then round by GPTQ

A transform: its scaling leaves the float function unchanged (tests/test_methods.py checks it in float64 with
--no-awq_clip); its clip search then shrinks weight ranges for the grid that follows, which changes it. Scale
groups (both families): attn_norm -> q, k, v (judged on the attention output); v -> o (only when v's output width
equals o's input width, i.e. not with grouped-query attention); mlp_norm -> gate, up (judged on the MLP output);
up -> down.
"""
from dataclasses import dataclass

import torch

from cli import opt
from quantizers.core import LINEARS, apply_scale
from quantizers.format import fake_quant, group_width
from quantizers.walk import inputs_of, walk_blocks

KIND = "transform"  # rescales (and clips) the float weights; a rounder follows
ACTIVATIONS = False  # --bits N means W{N}A16


@dataclass
class Flags:
    awq_clip: bool = opt(True, "after scaling, search each weight group's clipping range (llm-awq's auto_clip)")


# (the operation scaled down, the Linears scaled up, the module whose output judges the scales)
SCALE_GROUPS = [("attn_norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), "attn"),
                ("attn.v_proj", ("attn.o_proj",), "attn.o_proj"),
                ("mlp_norm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
                ("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")]
N_GRID, MAX_SHRINK, CLIP_TOKENS = 20, 0.5, 512


def candidate_scales(x_mean, ratio):
    """s = x_mean^ratio, normalised so that max(s) * min(s) = 1."""
    s = x_mean.pow(ratio).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(linears, X, judge, bits, group_size, sym):
    """The scale vector s (K,) minimising ||judge(X) - judge with W -> Q(W s) / s|| for every W of `linears`.
    X (N, T, K): the Linears' common input; judge(X): the output of the module they feed."""
    x_mean = X.abs().reshape(-1, X.shape[-1]).float().mean(0)
    reference = judge(X).float()
    originals = [lin.weight.data.clone() for lin in linears]
    best = (float("inf"), torch.ones_like(x_mean))
    for ratio in torch.arange(N_GRID) / N_GRID:
        s = candidate_scales(x_mean, ratio.item())
        for lin, W in zip(linears, originals, strict=True):
            lin.weight.data = (fake_quant(W.float() * s, bits, group_size, sym) / s).to(W.dtype)
        err = (judge(X).float() - reference).pow(2).mean().item()
        best = min(best, (err, s), key=lambda t: t[0])
    for lin, W in zip(linears, originals, strict=True):
        lin.weight.data = W
    return best[1]


@torch.no_grad()
def search_clip(W, X, bits, group_size, sym):
    """Per (row, group) clip of the range to max|W| * (1 - i/20), i < 10, minimising the error of X W^T.
    W (N, K), X (tokens, K) -> the clipped W."""
    N, K = W.shape
    g = group_width(K, group_size)
    Xg = X.float().reshape(len(X), K // g, g)
    out = torch.empty_like(W, dtype=torch.float32)
    for r in range(0, N, 1024):  # row chunks bound the (tokens, rows, groups) error tensor
        Wg = W[r:r + 1024].float().reshape(-1, K // g, g)
        top = Wg.abs().amax(-1, keepdim=True)
        best_err, best = torch.full(Wg.shape[:2], float("inf"), device=W.device), top.clone()
        for i in range(int(MAX_SHRINK * N_GRID)):
            m = top * (1 - i / N_GRID)
            Wc = torch.clamp(Wg, -m, m)
            Q = fake_quant(Wc.reshape(-1, K), bits, group_size, sym).reshape(Wg.shape)
            err = torch.einsum("tgk,ngk->tng", Xg, Q - Wg).pow(2).mean(0)  # (rows, groups)
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better[..., None], m, best)
        out[r:r + 1024] = torch.clamp(Wg, -best, best).reshape(-1, K)
    return out.to(W.dtype)


def judge_fn(block, name, inputs):
    """X (N, T, K) -> the output of the named module of block, evaluated a few sequences at a time."""
    module, c = block.get_submodule(name), inputs.chunk
    run = (lambda X: module(X, inputs.rope)) if name == "attn" else module  # noqa: E731
    return lambda X: torch.cat([run(X[i:i + c]) for i in range(0, len(X), c)])


def capture(block, inputs, name):
    """The input (N, T, K) of the named Linear over all calibration sequences."""
    X = inputs_of(block, inputs, name)
    return X.view(len(inputs.x), -1, X.shape[-1])


def quantize(model, calib, args, round_block=None):
    """Scale (and clip) block by block; round_block(block, inputs, args), when given, rounds each block right after
    (calibrate.py passes RTN's when AWQ ends the chain)."""
    for _, block, inputs in walk_blocks(model, calib, args.device, args.float_stats):
        for prev, names, judge in SCALE_GROUPS:
            linears = [block.get_submodule(n) for n in names]
            if block.get_submodule(prev).weight.shape[0] != linears[0].weight.shape[1]:
                continue  # v -> o under grouped-query attention: the widths differ, no per-channel scale
            X = capture(block, inputs, names[0])
            s = search_scale(linears, X, judge_fn(block, judge, inputs), args.wbits, args.group_size, args.sym)
            apply_scale(block, prev, names, s)
        for name in LINEARS if args.awq_clip else ():
            if name not in ("attn.q_proj", "attn.k_proj"):
                X = capture(block, inputs, name).reshape(-1, block.get_submodule(name).weight.shape[1])
                pick = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:CLIP_TOKENS]
                lin = block.get_submodule(name)
                lin.weight.data = search_clip(lin.weight.data, X[pick.to(X.device)], args.wbits, args.group_size,
                                              args.sym)
        if round_block is not None:
            round_block(block, inputs, args)
