"""
Masked-diffusion training of a LLaDA- or Dream-layout model: the bundled tiny models are made with it, and
--init_from continues from (or adapts) an existing checkpoint.

The objective is LLaDA's pre-training loss (Nie et al. 2025, arXiv:2502.09992; ML-GSAI/LLaDA GUIDELINES.md):
for each sequence draw t ~ U(0, 1), mask every token independently with p = (1 - eps) t + eps, and minimise
    L = sum over masked positions of CE(logits, token) / p, divided by the number of tokens,
an upper bound on the negative log-likelihood. Rows of the arithmetic task use LLaDA's SFT variant: only the
answer may be masked, and L is divided by the answer length. The model's logits are aligned (position i predicts
token i) for both families, so one loop serves both; for Dream, position 0 is never masked, since after the shift
it has no logit of its own.

    python data/prepare.py                                    # token files and tokenizers in data/tokens
    python train.py --family llada --out assets/tiny-llada    # see assets/*/README.md for the exact commands
    python train.py --init_from out/qwen-ar --data data/tokens-qwen ...   # mini-Dream-0.5B: results/mini-dream
"""
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cli import InputError, InRepo, opt, parse, run_cli
from model import Model, ModelArgs, load, save, special_ids


@dataclass
class Args:
    family: str = opt("llada", "llada or dream: checkpoint layout and config keys of a model made from scratch")
    out: str = opt(InRepo("out/tiny"), "output checkpoint folder (config.json, model.safetensors, tokenizer files)")
    data: str = opt(InRepo("data/tokens"), "folder written by data/prepare.py (train/val/arith .bin, "
                                              "<family>/tokenizer)")
    init_from: str = opt("", "start from this checkpoint folder instead of random weights")
    dim: int = opt(256, "model width (from scratch)")
    n_layers: int = opt(8, "blocks (from scratch)")
    n_heads: int = opt(8, "attention heads (from scratch)")
    n_kv_heads: int = opt(8, "key/value heads; fewer than n_heads = grouped-query attention (from scratch)")
    hidden_dim: int = opt(768, "SwiGLU width (from scratch)")
    vocab_size: int = opt(4096, "embedding rows (from scratch; >= the tokenizer's size)")
    seq_len: int = opt(256, "tokens per training sequence")
    batch_size: int = opt(128, "sequences per step")
    arith_frac: float = opt(0.2, "fraction of the sequences drawn from arith.bin (the arithmetic task, answers only "
                                  "masked)")
    prefix_frac: float = opt(0.0, "fraction of the text rows whose prefix (of uniform random length) is never "
                                   "masked: the prompt-then-completion shape of code generation")
    block_frac: float = opt(0.0, "fraction of the text rows in the shape the semi-autoregressive sampler meets: a "
                                  "clean prefix, one block of --block_length tokens masked at rate t (the only "
                                  "scored part), and every later token shown as [MASK]")
    block_length: int = opt(32, "block of the --block_frac rows (the sampler's --block_length)")
    distill: float = opt(0.0, "share of the target at a masked token taken from the --init_from model run causally "
                              "(an autoregressive teacher's next-token distribution given the clean prefix); 0 = the "
                              "one-hot token only")
    steps: int = opt(10000, "optimizer steps")
    minutes: float = opt(0.0, "if > 0, reset --steps at step 30 from the measured step time so that training takes "
                              "about this long; needs --warmup >= 30 (the steps are saved with the checkpoint: "
                              "rerun with --steps N)")
    lr: float = opt(2e-3, "peak learning rate (AdamW), after linear warmup, cosine decay to lr/10")
    warmup: int = opt(300, "warmup steps")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices (not on norms and biases)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this")
    eps: float = opt(1e-3, "smallest mask probability of the objective")
    eval_every: int = opt(500, "print the validation loss and save the checkpoint every this many steps")
    eval_batches: int = opt(20, "validation batches (fixed masks, so the numbers are comparable)")
    seed: int = opt(0, "seed of the initialisation, the batches and the masks")
    device: str = opt("auto", "cuda or cpu (auto: cuda when available); bf16 autocast on cuda")
    save_dtype: str = opt("bfloat16", "dtype of the saved weights (bfloat16 keeps the tiny models under 20 MB)")
    compile: bool = opt(False, "torch.compile each block (on a GPU small models are launch-bound without it)")


def diffusion_loss(model, x, eps=1e-3, generator=None, maskable=None, blank=None, teacher=None, distill=0.0,
                   noise=None):
    """LLaDA's masked-diffusion loss on clean token ids x (B, T), one value per sequence (B,): the sum over masked
    positions of CE / p, divided by the number of positions that can be masked. maskable (B, T) restricts the
    masking (LLaDA's SFT objective: the prompt is never masked, the loss is normalised by the answer length);
    for Dream, position 0 is never maskable (after the shift it has no logit of its own). blank (B, T) marks
    positions always shown as [MASK] and never scored: the not-yet-decoded blocks after the current one.
    With a teacher (the autoregressive source model, run causally on the clean x), the target at a masked token is
    (1 - distill) one-hot + distill teacher softmax: CE becomes (1 - distill) CE + distill H(teacher, model).
    noise: the uniform draws (t (B, 1), u (B, T)) that set the masks, drawn here from generator if not given."""
    B, T = x.shape
    maskable = torch.ones_like(x, dtype=torch.bool) if maskable is None else maskable.clone()
    if model.args.family == "dream":
        maskable[:, 0] = False
    if noise is None:  # a CPU generator: the same masks on any device
        where = generator.device if generator is not None else x.device
        noise = torch.rand(B, 1, device=where, generator=generator), torch.rand(B, T, device=where, generator=generator)
    t, u = (n.to(x.device) for n in noise)
    p = ((1 - eps) * t + eps).expand(B, T)
    masked = (u < p) & maskable
    hidden = masked if blank is None else masked | blank
    logits = model(torch.where(hidden, model.args.mask_id, x), select=masked)
    if teacher is None:
        ce = F.cross_entropy(logits.float(), x[masked], reduction="none")
    else:  # one log-softmax serves both terms
        with torch.no_grad():
            soft = teacher(x, select=masked).float().softmax(-1)
        logp = logits.float().log_softmax(-1)
        ce = -(1 - distill) * logp.gather(-1, x[masked][:, None])[:, 0] - distill * (soft * logp).sum(-1)
    weighted = torch.zeros(B, T, device=x.device)
    weighted[masked] = ce / p[masked]
    return weighted.sum(1) / maskable.sum(1).clamp(min=1)


def windows(streams, n, seq_len, gen):
    """The same n random windows of seq_len tokens from each of the aligned arrays -> (n, seq_len) int64 each."""
    starts = torch.randint(0, len(streams[0]) - seq_len, (n,), generator=gen).tolist()
    return [torch.from_numpy(np.stack([s[i:i + seq_len] for i in starts]).astype(np.int64)) for s in streams]


def learning_rate(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def read_stream(args, name, dtype=None):
    """A token file as a memmap: uint16 ids, or the dtype the folder's meta.json names (data/prepare_code.py)."""
    path, meta = os.path.join(args.data, f"{name}.bin"), os.path.join(args.data, "meta.json")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found (run python data/prepare.py first, or give --data)")
    if dtype is None and os.path.isfile(meta):
        with open(meta) as f:
            dtype = json.load(f).get("dtype")
    return np.memmap(path, dtype=np.dtype(dtype or np.uint16), mode="r")


def build_model(args, tok_dir, device):
    """From --init_from, or from scratch with the family's special ids taken from the tokenizer files."""
    if args.init_from:
        return load(args.init_from, torch.float32, device).train()
    if args.family not in ("llada", "dream"):
        raise InputError(f"--family {args.family!r} is unknown (expected llada or dream)")
    llada = args.family == "llada"
    margs = special_ids(tok_dir, ModelArgs(
        args.family, args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.hidden_dim, args.vocab_size,
        norm_eps=1e-5 if llada else 1e-6, rope_theta=5e5 if llada else 1e6, qkv_bias=not llada, max_seq_len=4096,
        mask_id=None))  # the norm eps and RoPE theta of LLaDA-8B / Dream-7B
    if margs.mask_id is None:
        raise InputError(f"{tok_dir}: tokenizer_config.json names no mask_token found in tokenizer.json")
    torch.manual_seed(args.seed)
    model = Model(margs).to(device)
    with torch.no_grad():  # GPT-2 style: N(0, 0.02), the projections into the residual stream scaled by depth
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, 0.02 / math.sqrt(2 * margs.n_layers))
            elif p.dim() > 1:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
    return model.train()


def build_teacher(args, device):
    """--distill's teacher: the --init_from model, frozen and causal, i.e. the autoregressive model it still is."""
    if args.distill == 0:
        return None
    if not args.init_from or not 0 < args.distill <= 1:
        raise InputError(f"--distill {args.distill} needs --init_from (the model to learn from) and a share in (0, 1]")
    teacher = load(args.init_from, torch.bfloat16 if device == "cuda" else torch.float32, device).eval()
    if teacher.args.family != "dream":  # a causal LLaDA-layout row i would predict token i + 1, not i
        raise InputError(f"--distill needs a Dream-layout --init_from (shifted rows); {args.init_from} is llada")
    for block in teacher.blocks:
        block.attn.causal = True  # an instance attribute: the model being trained stays bidirectional
        if args.compile:
            block.compile()
    return teacher.requires_grad_(False)


@torch.no_grad()
def evaluate(model, stream, args, device):
    """Mean loss over fixed validation batches with fixed masks (the same numbers every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    mask_gen = torch.Generator(device).manual_seed(1234)
    losses = []
    for _ in range(args.eval_batches):
        x = windows([stream], args.batch_size, args.seq_len, gen)[0].to(device)
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            losses.append(diffusion_loss(model, x, args.eps, mask_gen).mean().item())
    model.train()
    return sum(losses) / len(losses)


def write_checkpoint(model, args, tok_dir, meta):
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.save_dtype]
    copy = Model(model.args)
    copy.load_state_dict({k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}, assign=True)
    save(copy, args.out, metadata={"train": json.dumps(meta, sort_keys=True)})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(tok_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(args.out, name)):
            shutil.copyfile(src, os.path.join(args.out, name))


def next_batch(text, arith, args, gen):
    """Text rows (pre-training objective, every position maskable; --prefix_frac of them with a clean prefix,
    --block_frac of them in the sampler's block shape) and arithmetic rows (answer fields only).
    -> token ids, maskable and blank (see diffusion_loss), (B, T) each."""
    n_arith = round(args.batch_size * args.arith_frac) if arith is not None else 0
    x = windows([text], args.batch_size - n_arith, args.seq_len, gen)[0]
    maskable, blank = torch.ones_like(x, dtype=torch.bool), torch.zeros_like(x, dtype=torch.bool)
    n_prefix, n_block = round(len(x) * args.prefix_frac), round(len(x) * args.block_frac)
    pos = torch.arange(args.seq_len)
    if n_prefix:  # tokens before the cut are context only, as a prompt is
        maskable[:n_prefix] = pos >= torch.randint(0, args.seq_len, (n_prefix, 1), generator=gen)
    if n_block:  # clean | block being decoded | blocks not reached yet
        cut = torch.randint(1, args.seq_len - args.block_length + 1, (n_block, 1), generator=gen)
        rows = slice(n_prefix, n_prefix + n_block)
        maskable[rows] = (pos >= cut) & (pos < cut + args.block_length)
        blank[rows] = pos >= cut + args.block_length
    if n_arith:
        ax, am = windows(arith, n_arith, args.seq_len, gen)
        x, maskable = torch.cat([x, ax]), torch.cat([maskable, am.bool()])
        blank = torch.cat([blank, torch.zeros_like(am, dtype=torch.bool)])
    return x, maskable, blank


def make_optimizer(model, args, device):
    """AdamW with weight decay on the matrices only."""
    groups = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": args.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device == "cuda")


def train(args):
    """Train and save to args.out (at every evaluation); returns the validation history."""
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.minutes > 0 and args.warmup < 30:
        raise InputError(f"--minutes needs --warmup >= 30 (got {args.warmup}): the steps it sets at step 30 must not "
                         f"have shaped the learning rate before")
    if args.prefix_frac + args.block_frac > 1 or (args.block_frac > 0 and not 0 < args.block_length < args.seq_len):
        raise InputError(f"--prefix_frac {args.prefix_frac} + --block_frac {args.block_frac} must be <= 1 and "
                         f"--block_length {args.block_length} within (0, --seq_len {args.seq_len})")
    tok_dir = args.init_from or os.path.join(args.data, args.family)
    text, val = read_stream(args, "train"), read_stream(args, "val")
    arith = [read_stream(args, "arith"), read_stream(args, "arith_mask", np.uint8)] if args.arith_frac > 0 else None
    model = build_model(args, tok_dir, device)
    top = int(max(text.max(), val.max(), arith[0].max() if arith else 0))
    if top >= model.args.vocab_size:
        raise InputError(f"{args.data}: token ids reach {top}, beyond the model's vocab {model.args.vocab_size}")
    for block in model.blocks if args.compile else []:
        block.compile()
    optimizer, teacher = make_optimizer(model, args, device), build_teacher(args, device)
    gen, mask_gen = torch.Generator().manual_seed(args.seed), torch.Generator(device).manual_seed(args.seed)
    print(f"{model.args.family}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(text):,} text + {len(arith[0]) if arith else 0:,} arithmetic tokens, {args.steps} steps of "
          f"{args.batch_size}x{args.seq_len} on {device}", flush=True)
    history = [{"step": 0, "val_loss": round(evaluate(model, val, args, device), 4)}]
    print(f"step      0 | val loss {history[0]['val_loss']:.4f}", flush=True)
    t0, tokens = time.time(), 0
    for step in itertools.count():
        if step == args.steps:  # --minutes may have reset args.steps
            break
        x, maskable, blank = next_batch(text, arith, args, gen)
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(step, args)
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            loss = diffusion_loss(model, x.to(device), args.eps, mask_gen, maskable.to(device), blank.to(device),
                                  teacher, args.distill).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += x.numel()
        if args.minutes > 0 and step == 10:
            t10 = time.time()
        if args.minutes > 0 and step == 30:  # steps 10-30 are compiled and warm
            per_step = (time.time() - t10) / 20
            args.steps = 31 + max(0, int((args.minutes * 60 - (time.time() - t0)) / per_step))
            print(f"--minutes {args.minutes}: {args.steps} steps of {per_step * 1e3:.0f} ms", flush=True)
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.time() - t0
            print(f"step {step:6d} | loss {loss.item():.4f} | lr {learning_rate(step, args):.2e} | grad {norm:.2f} | "
                  f"{tokens / elapsed:,.0f} tok/s | ETA {elapsed / (step + 1) * (args.steps - step - 1) / 60:.1f} min",
                  flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            history.append({"step": step + 1, "val_loss": round(evaluate(model, val, args, device), 4)})
            print(f"step {step + 1:6d} | val loss {history[-1]['val_loss']:.4f} | saved to {args.out}", flush=True)
            write_checkpoint(model, args, tok_dir, {"args": asdict(args), "tokens_seen": tokens, "val": history,
                                                    "minutes": round((time.time() - t0) / 60, 2)})
    return history


def main():
    train(parse(Args, doc=__doc__))


if __name__ == "__main__":
    run_cli(main)
