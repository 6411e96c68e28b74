"""
Score a checkpoint with dllmq's own lightweight scorers (no lm-eval dependency).

Tasks so far:
  arithmetic  exact match on held-out problems of the tiny models' synthetic task (data/prepare.py: a fixed tenth
              of all problems is never trained on), decoded with sample.py's sampler, greedy.
  wiki_nll    masked-diffusion NLL in nats per token on data/wiki_heldout.txt.gz: the training objective (an upper
              bound on the NLL, LLaDA's ELBO) averaged over `mc` mask draws per window, with a standard error over
              windows; deterministic for a seed.

    python eval.py --model assets/tiny-llada --tasks arithmetic,wiki_nll
"""
import gzip
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from data.prepare import ANSWER_WIDTH, arithmetic
from model import InputError, load, load_tokenizer, parse, run_cli
from sample import DEFAULT_MODEL, generate, pad_left
from train import diffusion_loss

ROOT = os.path.dirname(os.path.abspath(__file__))


def opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Args:
    model: str = opt(DEFAULT_MODEL, "checkpoint folder")
    tasks: str = opt("arithmetic,wiki_nll", "comma-separated: arithmetic, wiki_nll")
    limit: int = opt(500, "arithmetic: held-out problems; wiki_nll: windows (0 = all)")
    batch_size: int = opt(64, "sequences per forward")
    gen_length: int = opt(ANSWER_WIDTH, "arithmetic: tokens generated after each prompt (the answer field)")
    steps: int = opt(ANSWER_WIDTH, "arithmetic: denoising steps")
    block_length: int = opt(ANSWER_WIDTH, "arithmetic: semi-autoregressive block length")
    alg: str = opt("", "arithmetic: remasking algorithm (empty = low_confidence for LLaDA, entropy for Dream)")
    seq_len: int = opt(256, "wiki_nll: tokens per window")
    mc: int = opt(8, "wiki_nll: Monte Carlo mask draws per window")
    seed: int = opt(0, "seed of the arithmetic draw's sampler noise and of the NLL masks")
    out: str = opt("", "write the results as JSON to this file too")
    device: str = opt("auto", "cpu or cuda (auto: cuda when available)")


@torch.no_grad()
def arithmetic_em(model, tok, args, device):
    """Exact match of the answer the model writes after 'Q: a+b= A: ', up to its newline or EOS (held-out problems
    only; the canvas is one answer field, as in training)."""
    problems = arithmetic(args.limit or 500, seed=1, heldout=True)
    alg = args.alg or ("low_confidence" if model.args.family == "llada" else "entropy")
    stop = {t for t in (model.args.eos_id, model.args.eot_id) if t is not None}
    correct = []
    for i in range(0, len(problems), args.batch_size):
        chunk = problems[i:i + args.batch_size]
        ids, mask = pad_left([tok.encode(q, add_special_tokens=False).ids for q, _ in chunk], model.args.pad_id)
        out = generate(model, ids.to(device), mask.to(device), args.gen_length, args.steps, args.block_length, alg)
        for row, (_, answer) in zip(out[:, ids.shape[1]:].tolist(), chunk, strict=True):
            row = row[:next((j for j, t in enumerate(row) if t in stop), len(row))]
            correct.append(tok.decode(row).split("\n")[0].strip() == answer)
    return {"exact_match": sum(correct) / len(correct), "n": len(correct)}


@torch.no_grad()
def wiki_nll(model, tok, args, device):
    """Masked-diffusion NLL (nats/token) on the held-out Wikipedia text, windows of seq_len tokens."""
    with gzip.open(os.path.join(ROOT, "data", "wiki_heldout.txt.gz"), "rt", encoding="utf-8") as f:
        docs = f.read().strip().split("\n\n")
    ids = [t for enc in tok.encode_batch(docs, add_special_tokens=False) for t in enc.ids + [model.args.eos_id]]
    windows = torch.tensor(ids[:len(ids) // args.seq_len * args.seq_len]).view(-1, args.seq_len)
    windows = windows[:args.limit] if args.limit else windows
    gen = torch.Generator(device).manual_seed(args.seed)
    per_window = torch.zeros(len(windows))
    for i in range(0, len(windows), args.batch_size):
        x = windows[i:i + args.batch_size].to(device)
        for _ in range(args.mc):
            per_window[i:i + len(x)] += diffusion_loss(model, x, 1e-3, gen).float().cpu()
    per_window /= args.mc
    return {"nll": per_window.mean().item(), "stderr": (per_window.std() / math.sqrt(len(windows))).item(),
            "windows": len(windows), "tokens": windows.numel()}


TASKS = {"arithmetic": arithmetic_em, "wiki_nll": wiki_nll}


def main():
    args = parse(Args, doc=__doc__)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        raise InputError(f"--tasks: unknown task '{unknown[0]}' (expected {', '.join(TASKS)})")
    model, tok = load(args.model, device=device), load_tokenizer(args.model)
    if tok is None:
        raise InputError(f"{args.model}: no tokenizer.json (eval needs text)")
    results = {}
    for name in args.tasks.split(","):
        t = time.time()
        results[name] = TASKS[name](model, tok, args, device)
        print(f"{name}: {json.dumps(results[name])}  ({time.time() - t:.1f} s)", flush=True)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump({"args": asdict(args), "results": results}, f, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    run_cli(main)
