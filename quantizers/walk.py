"""
The calibration walker and the statistics methods take from it. Blocks are quantized one at a time: walk_blocks
gives a method each block with its calibration inputs, computed through the blocks already quantized before it, and
logs the block's output error; input_stats folds what each Linear reads into a statistic (a Gram matrix, a
per-channel maximum, the inputs themselves). Masking, the dLLM part, happens before: calibrate.py builds the batch,
and the mask status and confidences ride along in Calib for the methods that weight tokens.
"""
import math
import time
from dataclasses import dataclass

import torch

from cli import InputError

# Linears that read the same input, in data-flow order: they share one statistic (one Hessian, one transform)
INPUT_GROUPS = [("attn.q_proj", "attn.k_proj", "attn.v_proj"), ("attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"),
                ("mlp.down_proj",)]


@dataclass
class Calib:
    """Calibration batch: tokens (N, T) the model reads (masks included), which of them are [MASK], and for
    sampler trajectories the model's confidence in each token; quantizers that weight tokens use the last two."""
    tokens: torch.Tensor
    masked: torch.Tensor
    confidence: torch.Tensor | None = None


@dataclass
class BlockInputs:
    """The inputs x (N, T, C) of one block plus what a block forward needs; run() evaluates a block on them."""
    x: torch.Tensor
    rope: tuple
    chunk: int = 8  # sequences per forward: bounds the MLP activations of a big model

    @torch.no_grad()
    def run(self, block):
        return torch.cat([block(self.x[i:i + self.chunk], self.rope) for i in range(0, len(self.x), self.chunk)])


def rel_error(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@torch.no_grad()
def walk_blocks(model, calib, device, float_inputs=False, log=print):
    """Yield (i, block, inputs) for each block, on `device`, with inputs computed through the already-modified
    blocks 0..i-1 (float_inputs: through the float blocks, as they were before the walk changed them). The caller
    changes the block in place (swaps in QLinear, rescales); then the walker runs the changed block, logs its relative
    output error against the unchanged block on the same inputs, takes the changed block's output (or, float_inputs,
    the unchanged one's) as the next block's inputs, and moves the block back to where it was, so only one block's
    weights and inputs sit on the device. GPTQ feeds each block the quantized blocks' outputs; llm-awq,
    SmoothQuant and DuQuant take their statistics from the float model, hence the choice."""
    home = next(model.parameters()).device
    x, rope, _ = model.block_inputs(calib.tokens.to(home))
    inputs = BlockInputs(x.to(device), tuple(t.to(device) for t in rope))
    t0, n = time.time(), len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.to(device)
        reference = inputs.run(block)
        yield i, block, inputs
        out = inputs.run(block)
        err = rel_error(out, reference)
        inputs.x = reference if float_inputs else out
        if not math.isfinite(err):  # nothing is saved from a model that computes NaN or infinities
            raise InputError(f"block {i + 1}: the quantized block's output is not finite (relative error {err}); "
                             "nothing was saved")
        block.to(home)
        elapsed = time.time() - t0
        log(f"block {i + 1:3d}/{n} | output error {err:.4f} | {elapsed:6.1f} s | "
            f"ETA {elapsed / (i + 1) * (n - i - 1):6.1f} s")


@torch.no_grad()
def input_stats(block, inputs, names, fn, weights=None):
    """Run block on inputs and fold every named Linear's input through fn: acc[name] = fn(acc, X, w), where X
    (tokens, K) are the inputs of one chunk and w (tokens,) the matching token weights (or None)."""
    acc, hooks, rows = dict.fromkeys(names), [], {}

    def hook(name):
        def record(module, args, output):  # a rotated Linear's input is what its weight meets: x T
            x = module.rotation(args[0]) if getattr(module, "rotation", None) is not None else args[0]
            X = x.reshape(-1, x.shape[-1])
            w = None if weights is None else weights[rows["lo"]:rows["hi"]].reshape(-1).to(X.device)
            acc[name] = fn(acc[name], X, w)
        return record
    for name in names:
        hooks.append(block.get_submodule(name).register_forward_hook(hook(name)))
    try:
        for i in range(0, len(inputs.x), inputs.chunk):
            rows.update(lo=i, hi=i + inputs.chunk)
            block(inputs.x[i:i + inputs.chunk], inputs.rope)
    finally:
        for h in hooks:
            h.remove()
    return acc


def gram(acc, X, w=None):
    """Running Hessian proxy H = sum_j w_j x_j x_j^T (float32; w = 1 without token weights)."""
    X = X.float()
    H = (X * w[:, None].float() if w is not None else X).T @ X
    return H if acc is None else acc + H


def inputs_of(block, inputs, name):
    """The input (tokens, K) of the named Linear over all calibration sequences, as it meets the weight."""
    def keep(acc, X, w):
        return X if acc is None else torch.cat([acc, X])
    return input_stats(block, inputs, [name], keep)[name]


# ------------------------------------------------------------------------- the Hessian of GPTQ-style methods
def pin_dead(W, H):
    """float32 copies of W and H with the dead inputs (H_jj = 0) pinned: H_jj = 1, W[:, j] = 0."""
    W, H = W.float().clone(), H.float().clone()
    dead = H.diagonal() == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    return W, H


def inverse_hessian_factor(H, damp):
    """U with H^-1 = U^T U for H + damp * mean(diag H) * I, escalating damp x10 on failure -> (U, damp used)."""
    if not damp > 0:
        raise ValueError(f"damping {damp} must be > 0 (escalating a zero or negative damping never ends)")
    mean = H.diagonal().mean()
    while damp <= 10:
        L, info = torch.linalg.cholesky_ex(H + damp * mean * torch.eye(len(H), device=H.device))
        if info == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), damp
        damp *= 10
    raise ValueError("GPTQ: the Hessian stays singular with damping 10 x mean(diag H)")
