"""
DuQuant (Lin et al. 2024, arXiv:2406.01721): distribute activation outliers with a dual transformation, after
SmoothQuant-style smoothing. For the input X of each group of Linears (q/k/v, o, gate/up, down), with the channels
cut into blocks of `block_size`:
  1. a greedy rotation per block: repeatedly take the block's channel with the largest |x|, swap it to position 0 and
     spread it evenly over the block (a Householder reflection mapping e_1 to the uniform vector, times a random
     orthogonal matrix on the other channels); keep the prefix of up to `rotation_steps` steps with the lowest peak;
  2. a zigzag permutation: channels sorted by their largest |x| are dealt to the blocks 0, 1, .., B-1, B-1, .., 0,
     0, 1, .. so that every block gets a balanced share of outliers;
  3. a second greedy rotation per block.
T = R1 P R2 is orthogonal: the weights take W T offline and the activations x T online (core.Rotation, about
2 * block_size multiply-adds per channel), so in float the model is unchanged. The Linears of a group share one
Rotation, which the checkpoint stores once (2 * block_size values per channel in the model dtype, plus the
permutation): it counts in the bits per weight. Smoothing is folded into the RMSNorms,
v_proj (for o, when the widths allow) and up_proj (for down). The study's settings (QDLM scripts): block 128,
256 rotation steps, alpha 0.5, activation clip 0.9 and weight clip 0.8:

    python calibrate.py --method duquant --bits 4 --a_clip 0.9 --w_clip 0.8

We read the paper's algorithm (the per-block largest channel) rather than the reference code, whose step picks the
swap index from the row of the maximum; the reference also uses one rotation for all blocks, we fit one per block.
A block size that does not divide a width is lowered to the largest divisor of it (tiny-dream's 592 gets 74). The
smoothing and rotations are fitted on each block's float inputs, as the reference takes its act_scales from the
float model (--no-float_stats: through the blocks already quantized).
"""
from dataclasses import dataclass

import torch

from cli import InputError, opt
from quantizers.core import Rotation, RotLinear, swap
from quantizers.smoothquant import (
    GROUPS as SMOOTH_GROUPS,  # DuQuant's first step is SmoothQuant's
    smooth_block,
)
from quantizers.walk import INPUT_GROUPS, inputs_of, walk_blocks

KIND = "transform"  # smooths, then rotates the float weights and their inputs online; the float function is unchanged
ACTIVATIONS = True  # --bits N means W{N}A{N}, weights per output channel
TOKENS = 2048  # calibration tokens the rotations are fitted on


@dataclass
class Flags:
    block_size: int = opt(128, "channels per rotation block (lowered to a divisor of the width)")
    rotation_steps: int = opt(256, "greedy rotation steps per block")


def resolve(args):
    if args.block_size < 2 or args.rotation_steps < 0:
        raise InputError(f"--block_size {args.block_size} / --rotation_steps {args.rotation_steps} are out of range "
                         "(expected >= 2 and >= 0)")
    if not 0 <= args.alpha <= 1:  # DuQuant smooths with SmoothQuant's --alpha
        raise InputError(f"--alpha {args.alpha} is out of range (expected in [0, 1])")


def spread(b):
    """The Householder reflection I - 2 v v^T / v^T v with v = e_1 - u, u uniform: it maps e_1 to u (and back)."""
    v = -torch.full((b,), b ** -0.5, dtype=torch.float64)
    v[0] += 1.0
    return torch.eye(b, dtype=torch.float64) - 2 * torch.outer(v, v) / (v @ v)


def greedy_rotations(X, steps, gen):
    """X (m, tokens, b), m blocks -> orthogonal R (m, b, b) lowering each block's max |X R|, by DuQuant's greedy
    steps (module docstring), all blocks at once and without a host sync per step. As in the reference (get_rot),
    one random orthogonal factor is drawn per block and reused by every step."""
    m, _, b = X.shape
    rest = torch.eye(b, dtype=torch.float64).repeat(m, 1, 1)
    for i in range(m):
        rest[i, 1:, 1:] = torch.linalg.qr(torch.randn(b - 1, b - 1, generator=gen, dtype=torch.float64))[0]
    spread_rest = (spread(b) @ rest).to(X)
    R = torch.eye(b, dtype=X.dtype, device=X.device).repeat(m, 1, 1)
    best, best_R = X.abs().amax((1, 2)), R
    for _ in range(steps):
        c = X.abs().amax(1).argmax(1)  # each block's largest channel
        swap = torch.arange(b, device=X.device).repeat(m, 1)
        swap[:, 0] = c
        swap.scatter_(1, c[:, None], 0)  # channel c to position 0, then spread it over the block
        X = X.gather(2, swap[:, None, :].expand_as(X)) @ spread_rest
        R = R.gather(2, swap[:, None, :].expand_as(R)) @ spread_rest
        peak = X.abs().amax((1, 2))
        better = peak < best
        best, best_R = torch.where(better, peak, best), torch.where(better[:, None, None], R, best_R)
    return best_R


def zigzag(col_max, m, b):
    """perm with x[..., perm] dealing the channels, largest first, to blocks 0..m-1, m-1..0, 0.. (b each)."""
    order, slots = torch.argsort(col_max, descending=True).tolist(), [[] for _ in range(m)]
    for rank, channel in enumerate(order):
        turn, pos = divmod(rank, m)
        slots[pos if turn % 2 == 0 else m - 1 - pos].append(channel)
    return torch.tensor([c for s in slots for c in s])


def dual_transform(X, block_size, steps, gen):
    """X (tokens, K) -> the Rotation R1 P R2 of DuQuant fitted on X."""
    K = X.shape[1]
    b = max(d for d in range(1, min(block_size, K) + 1) if K % d == 0)
    m, X = K // b, X.double()
    rot = Rotation(m, b, perm=True, second=True, dtype=torch.float64).to(X.device)
    rot.r1.copy_(greedy_rotations(X.view(-1, m, b).transpose(0, 1), steps, gen))
    X1 = torch.einsum("tmb,mbc->tmc", X.view(-1, m, b), rot.r1).reshape(-1, K)
    rot.perm.copy_(zigzag(X1.abs().amax(0), m, b))
    X2 = X1[:, rot.perm]
    rot.r2.copy_(greedy_rotations(X2.view(-1, m, b).transpose(0, 1), steps, gen))
    return rot


def sample_tokens(block, inputs, name, gen):
    """Up to TOKENS rows of the named Linear's input over the calibration set."""
    X = inputs_of(block, inputs, name)
    return X[torch.randperm(len(X), generator=gen)[:TOKENS].to(X.device)]


@torch.no_grad()
def transform_block(block, inputs, args, gen):
    """Smooth, then rotate-permute-rotate every input group of one block (in float: exact)."""
    smooth_block(block, inputs, SMOOTH_GROUPS + [("mlp.up_proj", ("mlp.down_proj",))], args.alpha)
    for names in INPUT_GROUPS:
        rot = dual_transform(sample_tokens(block, inputs, names[0], gen), args.block_size, args.rotation_steps, gen)
        first = block.get_submodule(names[0]).weight
        rot = rot.to(first.device, torch.promote_types(first.dtype, torch.float32))
        for name in names:
            lin = block.get_submodule(name)
            lin.weight.data = rot(lin.weight.data.to(rot.r1.dtype)).to(lin.weight.dtype)
        shared = rot.to(first.dtype)  # one module for the group: applied online to each, stored once
        for name in names:
            swap(block, name, RotLinear.wrap(block.get_submodule(name), shared))


def quantize(model, calib, args, round_block=None):
    """Transform block by block (smoothing with SmoothQuant's --alpha); round_block(block, inputs, args), when given,
    rounds each block right after."""
    gen = torch.Generator().manual_seed(args.seed)
    for _, block, inputs in walk_blocks(model, calib, args.device, args.float_stats):
        transform_block(block, inputs, args, gen)
        if round_block is not None:
            round_block(block, inputs, args)
