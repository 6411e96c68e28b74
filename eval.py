"""
Score checkpoints (float or quantized) with dllmq's own lightweight scorers; no lm-eval dependency.

  wiki_nll      masked-diffusion NLL, nats/token, on data/wiki_heldout.txt.gz: the training objective (LLaDA's ELBO)
                averaged over `mc` mask draws per window, standard error over windows; the same masks for a
                seed at any --batch_size
  arithmetic    exact match on the tiny models' held-out synthetic problems (data/prepare.py)
  arc_easy, arc_challenge, openbookqa, piqa
                multiple choice by Monte Carlo log-likelihood of each answer given the question: LLaDA's estimator
                (stratified mask counts on the answer, loss / (count / L)) for LLaDA, Dream's (p = (1-eps) t + eps
                with stratified t, i.i.d. masks on the answer, EOS appended and never masked) for Dream; exact for
                one-token answers; acc and length-normalised acc_norm as in lm-eval
  gsm8k         k-shot generation (train-split shots), exact match with lm-eval's strict (#### N) and flexible
                (last number) filters
  humaneval, mbpp
                pass@1 of greedy completions, the task's tests run by sandbox.py (needs --allow_code_exec)
Sampler settings per task follow the study (arXiv:2508.14896 scripts): gsm8k 4-shot gen/steps/block 256/256/32,
humaneval 0-shot 512/512/32, mbpp 3-shot 512/512/32; --gen_length/--steps/--block_length/--fewshot override.
Task files live in --data_dir (data/tasks holds small samples; see its README for the full sets).

Comparisons are paired: --out keeps every item's outcome (pass/fail, exact match, each answer's log-likelihood,
each window's NLL) with the item's id, and each generated completion's decoding path (when each position was
unmasked, to what). With several --model, or a --reference result file, each model's score is compared with the
reference's on the same items: the difference with its 95% paired-bootstrap interval, and p (McNemar's exact test for
pass/fail metrics, the bootstrap's for the rest; stats.py), in bold when p < 0.05; generation tasks add two rows of
decoding-path agreement: how often the output is the reference's token for token, and the share of the denoising
steps the canvases stay identical (1 = the same path throughout). --compare does the same from result files alone.

    python eval.py --tasks arithmetic,wiki_nll
    python eval.py --model assets/tiny-llada,out/quantized --tasks arc_easy,gsm8k --data_dir TASKS --limit 50
    python eval.py --compare float.json,quantized.json     # two earlier --out files, paired
(TASKS: a folder with the full sets in the layout of data/tasks, whose README says where each comes from.)
"""
import functools
import gzip
import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cli import InputError, InRepo, check_output_file, opt, parse, resolve_device, run_cli, write_text
from data.prepare import ANSWER_WIDTH, arithmetic
from model import load, load_tokenizer, read_args
from quantizers.core import cache_weights, fuse_projections
from sample import DEFAULT_MODEL, Graphed, generate, pad_left
from stats import comparisons, pack_path, rate, table
from train import diffusion_loss

ROOT = os.path.dirname(os.path.abspath(__file__))
GEN = {"gsm8k": (4, 256, 256, 32), "humaneval": (0, 512, 512, 32), "mbpp": (3, 512, 512, 32),
       "arithmetic": (0, ANSWER_WIDTH, ANSWER_WIDTH, ANSWER_WIDTH)}  # task: few-shot, gen_length, steps, block
STOP = {"gsm8k": ["Question:"], "humaneval": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],  # lm-eval's
        "mbpp": ["[DONE]"], "arithmetic": ["\n"]}


@dataclass
class Args:
    model: str = opt(DEFAULT_MODEL, "checkpoint folder(s), comma-separated: scored side by side")
    tasks: str = opt("arithmetic,wiki_nll", "comma-separated task names (see above)")
    data_dir: str = opt(InRepo("data/tasks"), "folder with the task files (layout of data/tasks)")
    limit: int = opt(0, "score only the first N items of each task (0 = all; arithmetic: 500)")
    batch_size: int = opt(32, "sequences per forward")
    mc_num: int = opt(128, "multiple choice: Monte Carlo samples per answer")
    exact_counts: bool = opt(False, "LLaDA's likelihood: mask counts rounded halves up, so each is uniform and the "
                                    "estimate unbiased (default: torch.round, halves to even, as LLaDA's code)")
    fewshot: int = opt(-1, "few-shot examples (-1 = the task's default)")
    gen_length: int = opt(0, "generation tasks: tokens to generate (0 = the task's default)")
    steps: int = opt(0, "generation tasks: denoising steps (0 = the task's default)")
    block_length: int = opt(0, "generation tasks: block length (0 = the task's default)")
    alg: str = opt("", "remasking algorithm (empty: low_confidence for LLaDA, entropy for Dream)")
    seq_len: int = opt(256, "wiki_nll: tokens per window")
    mc: int = opt(8, "wiki_nll: mask draws per window")
    allow_code_exec: bool = opt(False, "run model-written code for humaneval/mbpp (sandboxed: sandbox.py)")
    workers: int = opt(4, "code tasks: programs run in parallel")
    code_timeout: float = opt(10.0, "code tasks: seconds each program may run")
    seed: int = opt(0, "seed of every random draw (masks, sampler noise)")
    cache_weights: bool = opt(False, "quantized checkpoints: dequantize each weight-only layer's weight once, not "
                              "every call (faster on a GPU; the same numbers up to rounding order)")
    fuse: bool = opt(True, "on a GPU, quantized q/k/v and gate/up run as one GEMM each (quantizers.core."
                           "fuse_projections: the same numbers up to rounding order, fewer and fuller GEMMs)")
    out: str = opt("", "write the results as JSON here too, with every item's outcome (and decoding path)")
    reference: str = opt("", "a result file (--out) of the reference model on the same tasks: each model scored here "
                             "is paired with it item by item (otherwise the first --model is the reference)")
    compare: str = opt("", "result files (--out), comma-separated: print their paired table, the first as the "
                           "reference, and score nothing")
    compile: bool = opt(False, "torch.compile each block (GPU: fewer kernel launches; the first forwards compile). "
                               "Quantized models: add --cuda_graph, without which each quantized Linear's launch "
                               "waits on Python (an FP8 LLaDA-8B step at batch 1: 23.2 ms, against 8.1 ms with it; "
                               "H100)")
    cuda_graph: bool = opt(False, "generation tasks: replay each denoising step's forward from a CUDA graph "
                                  "(sample.Graphed, one capture per batch; no per-launch host cost)")
    device: str = opt("auto", "cpu or cuda (auto: cuda when available)")
    dtype: str = opt("auto", "float32 or bfloat16 (auto: bfloat16 on cuda, float32 on cpu)")


# ---------------------------------------------------------------------------------------------------- data
def read_jsonl(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found (give --data_dir; data/tasks/README.md says where the sets come from)")
    with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
        return [json.loads(line) for line in f if line.strip()]


def first(items, args, task=""):
    """The first --limit items; a --limit beyond the data is said on stderr."""
    if args.limit > len(items):
        print(f"  {task}: --limit {args.limit} exceeds the {len(items)} items in {args.data_dir}; scoring {len(items)}",
              file=sys.stderr, flush=True)
    return items[:args.limit] if args.limit else items


def progress(task, done, total, t0, every=2.0):
    """Progress with an ETA on stderr (the table goes to stdout): at most every `every` seconds, and at the end."""
    now = time.time()
    if done < total and now - progress.last.get(task, 0.0) < every:
        return
    progress.last[task] = now
    rate = done / max(now - t0, 1e-9)
    print(f"  {task}: {done}/{total} | {rate:.2f} /s | {now - t0:.0f} s, ETA {(total - done) / rate:.0f} s",
          file=sys.stderr, flush=True)


progress.last = {}


# ----------------------------------------------------------------------------------------- likelihood
def round_loss(model, seq, masked, p, prompt_len):
    """One Monte Carlo round: rows of seq with the answer positions `masked` (b, L) replaced by [MASK];
    sum over masked answer tokens of CE / p, divided by the rows (the loss LLaDA's and Dream's code compute)."""
    x = seq.repeat(len(masked), 1)
    x[:, prompt_len:][masked] = model.args.mask_id
    select = torch.zeros_like(x, dtype=torch.bool)
    select[:, prompt_len:] = masked
    logits = model(x, select=select)  # the head at the masked rows only, in the order target[masked] takes
    target = seq[prompt_len:].expand_as(masked)
    return (F.cross_entropy(logits.float(), target[masked], reduction="none") / p[masked]).sum() / len(masked)


def llada_masks(b, L, gen, exact=False):
    """LLaDA (get_log_likelihood.py): stratified counts k, k + L/b, ... (mod L, in 1..L), that many answer tokens
    masked at random per row, p = count / L. LLaDA rounds the counts with torch.round, halves to even: where
    i L / b has a half, row i's count is then not uniform over 1..L (L = 2, b = 4: row 1's is always 2), which biases
    the estimate off the bound it estimates (by -0.07 / -0.47 nats at answers of 2 / 8 tokens on a tiny model,
    found by exact enumeration). exact: round halves up, a pure shift of the uniform k, so every row's count is
    uniform and the estimate's expectation is the bound (eval.py --exact_counts)."""
    counts = llada_counts(int(torch.randint(1, L + 1, (), generator=gen)), b, L, exact)
    order = torch.rand(b, L, generator=gen).argsort(1)
    masked = order < counts[:, None]
    return masked, (counts / L)[:, None].expand(b, L)


def llada_counts(k, b, L, exact=False):
    """The b stratified mask counts in 1..L that start at k (llada_masks)."""
    if exact:  # k + floor(i L / b + 1/2), in integers
        return ((k + (2 * torch.arange(b) * L + b) // (2 * b) - 1) % L) + 1
    return ((torch.round(torch.linspace(k, k + (b - 1) * (L / b), b)).long() - 1) % L) + 1


def dream_masks(b, L, gen, eps=1e-3):
    """Dream (eval/eval.py): t = (u + i/b) mod 1, p = (1 - eps) t + eps, each answer token masked with probability p;
    the last token (the EOS Dream appends) is never masked."""
    t = (torch.rand(1, generator=gen) + torch.arange(b) / b) % 1
    p = ((1 - eps) * t + eps)[:, None].expand(b, L)
    masked = torch.rand(b, L, generator=gen) < p
    masked[:, -1] = False
    return masked, p


@torch.no_grad()
def loglikelihood(model, prefix, target, args, gen):
    """log p(target | prefix): Monte Carlo with the family's estimator, exact for a one-token target."""
    dream = model.args.family == "dream"
    target = target + [model.args.eos_id] if dream else target
    dev = next(model.parameters()).device
    seq = torch.tensor(prefix + target, device=dev)
    L = len(target) - dream  # Dream's appended EOS is never scored
    if L == 1:  # the single answer token masked: one forward gives its exact conditional log-probability
        return -round_loss(model, seq, torch.tensor([[True] + [False] * dream], device=dev),
                           torch.ones(1, 1 + dream, device=dev), len(prefix)).item()
    b = min(args.batch_size, args.mc_num)
    losses = []
    for _ in range(max(1, args.mc_num // b)):
        masked, p = dream_masks(b, L + dream, gen) if dream else llada_masks(b, L, gen, args.exact_counts)
        losses.append(round_loss(model, seq, masked.to(dev), p.to(dev), len(prefix)).item())
    return -sum(losses) / len(losses)


def encode_pair(model, tok, context, continuation):
    """Token ids of (context, continuation) as both references make them: lm-eval moves the context's trailing
    spaces to the continuation; LLaDA's tokenizer adds its own special tokens, Dream's eval prepends the bos text."""
    n = len(context) - len(context.rstrip())
    context, continuation = context[:len(context) - n], context[len(context) - n:] + continuation
    if model.args.family == "dream" and model.args.bos_id is not None:
        context = tok.id_to_token(model.args.bos_id) + context
    whole, ctx = tok.encode(context + continuation).ids, tok.encode(context).ids
    return ctx, whole[len(ctx):]


def mc_items(task, args):
    """(context, choices, gold) for each multiple-choice item, in lm-eval's formats."""
    if task == "piqa":
        rows = read_jsonl(os.path.join(args.data_dir, "piqa", "valid.jsonl"))
        with open(os.path.join(args.data_dir, "piqa", "valid-labels.lst")) as f:
            labels = [int(s) for s in f.read().split()]
        return [(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], g)
                for r, g in zip(rows, labels, strict=True)]
    rows = read_jsonl(os.path.join(args.data_dir, "mc", f"{task}_test.jsonl"))
    suffix = "\nAnswer:" if task.startswith("arc") else ""
    return [(r["query"] + suffix, r["choices"], r["gold"]) for r in rows]


def multiple_choice(task):
    def score(model, tok, args, device):
        items, gen = first(mc_items(task, args), args, task), torch.Generator().manual_seed(args.seed)
        acc, acc_norm, choice_lls, t0 = [], [], [], time.time()
        for i, (context, choices, gold) in enumerate(items):
            lls = [loglikelihood(model, *encode_pair(model, tok, context, " " + c), args, gen) for c in choices]
            acc.append(max(range(len(lls)), key=lls.__getitem__) == gold)
            norm = [ll / len(" " + c) for ll, c in zip(lls, choices, strict=True)]  # lm-eval: per answer character
            acc_norm.append(max(range(len(norm)), key=norm.__getitem__) == gold)
            choice_lls.append(lls)
            progress(task, i + 1, len(items), t0)
        chance, ids = sum(1 / len(c) for _, c, _ in items) / len(items), [f"{task}/{i}" for i in range(len(items))]
        out = {"acc": {**rate(acc, ids), "chance": chance}, "acc_norm": {**rate(acc_norm, ids), "chance": chance}}
        out["acc"]["items"]["choice_loglikelihoods"] = choice_lls  # each answer's log-likelihood, in file order
        return out
    return score


# ----------------------------------------------------------------------------------------- generation
def path_recorder(rows, gen_length, P, mask_id, device):
    """An on_step for generate() noting the step (1-based) at which each generated position was unmasked, and a
    flag raised if a shown position is masked again (no sampler here does); no host sync per step."""
    unmasked = torch.zeros(rows, gen_length, dtype=torch.int32, device=device)
    remasked = torch.zeros((), dtype=torch.bool, device=device)

    def on_step(s, x, conf):
        shown = x[:, P:] != mask_id
        remasked.logical_or_(((unmasked > 0) & ~shown).any())
        unmasked.masked_fill_(shown & (unmasked == 0), s + 1)
    return on_step, unmasked, remasked


def completions(model, tok, prompts, task, args, device):
    """Greedy completions of the prompts, batched by prompt length (returned in prompt order), cut at the task's stop
    strings and at EOS / end of turn; and each one's decoding path (pack_path: when each position was unmasked, to
    what), from which stats.divergence finds where two models' canvases part."""
    shots, gen_length, steps, block = GEN[task]
    gen_length, steps, block = args.gen_length or gen_length, args.steps or steps, args.block_length or block
    alg = args.alg or ("low_confidence" if model.args.family == "llada" else "entropy")
    stop_ids = {t for t in (model.args.eos_id, model.args.eot_id) if t is not None}
    pad = model.args.pad_id if model.args.pad_id is not None else model.args.eos_id
    encoded = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda j: len(encoded[j]))  # batch similar lengths: less padding
    texts, paths, t0, flops = [None] * len(prompts), [None] * len(prompts), time.time(), 0
    for i in range(0, len(prompts), args.batch_size):
        rows = order[i:i + args.batch_size]
        ids, mask = pad_left([encoded[j] for j in rows], pad)
        on_step, unmasked, remasked = path_recorder(len(rows), gen_length, ids.shape[1], model.args.mask_id, device)
        runner = Graphed(model) if args.cuda_graph else model  # captured at this batch's shape, freed after it
        out = generate(runner, ids.to(device), mask.to(device), gen_length, steps, block, alg,
                       generator=torch.Generator(device).manual_seed(args.seed), on_step=on_step)
        if remasked.item() or (unmasked == 0).any():  # the paths' premise: a position, once shown, stays
            raise RuntimeError(f"{task}: the sampler re-masked a position or left one masked; paths not recorded")
        flops += generation_flops(model.args, ids.shape[1], gen_length, steps, block, len(rows))
        for j, row, when in zip(rows, out[:, ids.shape[1]:].tolist(), unmasked.tolist(), strict=True):
            text = tok.decode(row[:next((k for k, t in enumerate(row) if t in stop_ids), len(row))])
            texts[j] = min((text[:text.find(s)] for s in STOP[task] if s in text), key=len, default=text)
            paths[j] = pack_path(when, row)
        progress(task, i + len(rows), len(prompts), t0)
    seconds = time.time() - t0
    speed = {"seconds": seconds, "tokens_per_s": len(prompts) * gen_length / seconds, "tflops": flops / seconds / 1e12}
    print(f"  {task}: generated {len(prompts)} x {gen_length} tokens ({steps} steps, blocks of {block}) in "
          f"{seconds:.1f} s: {speed['tokens_per_s']:.1f} tokens/s, {speed['tflops']:.1f} TFLOP/s of model FLOPs "
          "(ModelArgs.flops)", file=sys.stderr, flush=True)
    return texts, paths, speed


def generation_flops(a, P, gen_length, steps, block, B):
    """Model FLOPs of one batch's decode of B rows: every step runs the whole canvas (P + gen_length) through the
    trunk, and the head at every position of the current block (sample.cfg_logits)."""
    return steps * a.flops(B, P + gen_length, head_rows=B * block)


def arithmetic_em(model, tok, args, device):
    """Exact match of the answer field written after 'Q: a+b= A: ' (held-out problems only)."""
    problems = arithmetic(args.limit or 500, seed=1, heldout=True)
    answers, paths, speed = completions(model, tok, [q for q, _ in problems], "arithmetic", args, device)
    hits = [a.strip() == gold for a, (_, gold) in zip(answers, problems, strict=True)]
    return with_paths({"exact_match": rate(hits, [q.strip() for q, _ in problems])}, paths, speed)


def with_paths(metrics, paths, speed):
    """The decoding paths and the generation's speed go with the task's first metric (once per task)."""
    first_metric = next(iter(metrics.values()))
    first_metric["items"]["paths"], first_metric["generation"] = paths, speed
    return metrics


def number(text):
    return text.replace(",", "").replace("$", "").rstrip(".").strip()


def gsm8k_extract(text):
    """lm-eval's filters: strict = the number after '#### '; flexible = the last number in the text."""
    strict = re.search(r"#### (\-?[0-9\.\,]+)", text)
    flexible = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)
    return (number(strict.group(1)) if strict else None,
            number(next(g for g in flexible[-1] if g)) if flexible else None)


def gsm8k(model, tok, args, device):
    k = GEN["gsm8k"][0] if args.fewshot < 0 else args.fewshot
    train = read_jsonl(os.path.join(args.data_dir, "gsm8k", "train.jsonl"))[:k]
    test = first(read_jsonl(os.path.join(args.data_dir, "gsm8k", "test.jsonl")), args, "gsm8k")
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train)
    outputs, paths, speed = completions(model, tok, [f"{shots}Question: {r['question']}\nAnswer:" for r in test],
                                        "gsm8k", args, device)
    gold, ids = [gsm8k_extract(r["answer"])[0] for r in test], [f"gsm8k/{i}" for i in range(len(test))]
    found = [gsm8k_extract(o) for o in outputs]
    return with_paths({"exact_match,strict-match": rate([s == g for (s, _), g in zip(found, gold, strict=True)], ids),
                       "exact_match,flexible-extract": rate([f == g for (_, f), g in zip(found, gold, strict=True)],
                                                            ids)}, paths, speed)


# ---------------------------------------------------------------------------------------------------- code
def humaneval_programs(args):
    """(id, prompt, programs(completion)) per HumanEval task: the program the sandbox's jail loads (prompt +
    completion) and the tests its judge runs against it (the task's check())."""
    tasks = first(read_jsonl(os.path.join(args.data_dir, "humaneval", "HumanEval.jsonl.gz")), args, "humaneval")
    return [(t["task_id"], t["prompt"],
             lambda c, t=t: (f"{t['prompt']}{c}\n", f"{t['test']}\n\ncheck({t['entry_point']})\n")) for t in tasks]


def mbpp_programs(args):
    """(id, prompt, programs(completion)) per MBPP test task (ids 11-510), with lm-eval's prompt and 3 shots (ids 1-3):
    the program is the completion, the tests the task's setup code and asserts."""
    rows = {r["task_id"]: r for r in read_jsonl(os.path.join(args.data_dir, "mbpp", "mbpp.jsonl"))}
    k = GEN["mbpp"][0] if args.fewshot < 0 else args.fewshot

    def ask(r):
        tests = "\n".join(r["test_list"])
        return f"You are an expert Python programmer, and here is your task: {r['text']} Your code should pass " \
               f"these tests:\n\n{tests}\n[BEGIN]\n"
    shots = "".join(ask(rows[i]) + rows[i]["code"] + "\n[DONE]\n\n" for i in range(1, k + 1))
    tasks = first([rows[i] for i in range(11, 511) if i in rows], args, "mbpp")
    return [(f"mbpp/{r['task_id']}", shots + ask(r),
             lambda c, r=r: (f"{c}\n", f"{r['test_setup_code']}\n" + "\n".join(r["test_list"]) + "\n")) for r in tasks]


def code_task(task):
    def score(model, tok, args, device):
        if not args.allow_code_exec:
            raise InputError(f"--tasks {task} runs model-written code: add --allow_code_exec (sandboxed, sandbox.py)")
        import sandbox
        if sandbox.unavailable():  # before any completion is generated
            raise InputError(sandbox.unavailable())
        items = humaneval_programs(args) if task == "humaneval" else mbpp_programs(args)
        texts, paths, speed = completions(model, tok, [p for _, p, _ in items], task, args, device)
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda pc: sandbox.run(*pc[0][2](pc[1]), args.code_timeout),
                                    zip(items, texts, strict=True)))
        return with_paths({"pass@1": rate([r.passed for r in results], [i for i, _, _ in items])}, paths, speed)
    return score


# ---------------------------------------------------------------------------------------------------- NLL
def wiki_windows(tok, model, seq_len):
    """The held-out Wikipedia text as whole windows of seq_len tokens, documents joined by EOS -> (n, seq_len)."""
    with gzip.open(os.path.join(ROOT, "data", "wiki_heldout.txt.gz"), "rt", encoding="utf-8") as f:
        docs = f.read().strip().split("\n\n")
    ids = [t for enc in tok.encode_batch(docs, add_special_tokens=False) for t in enc.ids + [model.args.eos_id]]
    return torch.tensor(ids[:len(ids) // seq_len * seq_len]).view(-1, seq_len)


def mask_draws(n, seq_len, mc, seed, chunk=32):
    """wiki_nll's masks as diffusion_loss's uniform draws t (mc, n, 1), u (mc, n, seq_len): drawn on the CPU (the
    same on every machine) in chunks of 32 windows whatever --batch_size is, so every batch size scores the same
    masks, and they are the draws the default --batch_size 32 made before (which scored the results in results/)."""
    gen, t, u = torch.Generator().manual_seed(seed), torch.empty(mc, n, 1), torch.empty(mc, n, seq_len)
    for i in range(0, n, chunk):
        for j in range(mc):
            b = min(chunk, n - i)
            t[j, i:i + b], u[j, i:i + b] = torch.rand(b, 1, generator=gen), torch.rand(b, seq_len, generator=gen)
    return t, u


@torch.no_grad()
def wiki_nll(model, tok, args, device):
    """Masked-diffusion NLL (nats/token) on the held-out Wikipedia text, windows of seq_len tokens."""
    windows = wiki_windows(tok, model, args.seq_len)
    windows = windows[:args.limit] if args.limit else windows
    t, u = mask_draws(len(windows), args.seq_len, args.mc, args.seed)
    per_window, t0 = torch.zeros(len(windows)), time.time()
    for i in range(0, len(windows), args.batch_size):
        x = windows[i:i + args.batch_size].to(device)
        for j in range(args.mc):
            noise = t[j, i:i + len(x)], u[j, i:i + len(x)]
            per_window[i:i + len(x)] += diffusion_loss(model, x, 1e-3, noise=noise).float().cpu()
        progress("wiki_nll", i + len(x), len(windows), t0)
    per_window /= args.mc
    return {"nll": {"value": per_window.mean().item(), "stderr": (per_window.std() / math.sqrt(len(windows))).item(),
                    "n": len(windows), "items": {"ids": [f"window/{i}" for i in range(len(windows))],
                                                 "outcomes": per_window.tolist()}}}


TASKS = {"wiki_nll": wiki_nll, "arithmetic": arithmetic_em, "gsm8k": gsm8k, "humaneval": code_task("humaneval"),
         "mbpp": code_task("mbpp"), **{t: multiple_choice(t) for t in ("arc_easy", "arc_challenge", "openbookqa",
                                                                        "piqa")}}


# ---------------------------------------------------------------------------------------------- reporting
def model_hash(path):
    """sha256 of the checkpoint's safetensors files, in name order: which weights were scored."""
    h = hashlib.sha256()
    for name in sorted(n for n in os.listdir(path) if n.endswith(".safetensors")):
        with open(os.path.join(path, name), "rb") as f:
            for chunk in iter(functools.partial(f.read, 1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


RANGES = [("limit", lambda v: v >= 0, ">= 0; 0 = all"), ("batch_size", lambda v: v >= 1, ">= 1"),
          ("mc_num", lambda v: v >= 1, ">= 1"), ("fewshot", lambda v: v >= -1, ">= 0, or -1"),
          ("gen_length", lambda v: v >= 0, ">= 0"), ("steps", lambda v: v >= 0, ">= 0"),
          ("block_length", lambda v: v >= 0, ">= 0"), ("seq_len", lambda v: v >= 2, ">= 2"),
          ("mc", lambda v: v >= 1, ">= 1"), ("workers", lambda v: v >= 1, ">= 1"),
          ("code_timeout", lambda v: v > 0, "> 0")]


def check(args):
    """Every flag, output path and checkpoint checked before any scoring: one line naming what is wrong."""
    for flag, ok, expected in RANGES:
        if not ok(getattr(args, flag)):
            raise InputError(f"--{flag} {getattr(args, flag)} is out of range (expected {expected})")
    if args.out:
        check_output_file(args.out, "--out")
    for path in args.model.split(","):
        read_args(path)


def read_results(paths, flag):
    """Records of eval.py result files, one model each or more; a model named in two files is refused."""
    records, seen = [], {}
    for k, path in enumerate(paths):
        if path in paths[:k]:
            raise InputError(f"{flag} {path}: given twice")
        try:
            with open(path) as f:
                rs = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{flag} {path}: not a readable eval.py result file ({e})") from None
        if not isinstance(rs, list) or not all(isinstance(r, dict) and "items" in r for r in rs):
            raise InputError(f"{flag} {path}: no per-item outcomes in it (written by an older eval.py?)")
        for r in rs:
            if seen.setdefault(r["model"], path) != path:
                raise InputError(f"{flag} {path}: model {r['model']} is in {seen[r['model']]} too")
        records += [r for r in rs if not r["metric"].startswith("path")]
    return records


def compare(args):
    """--compare: the paired table of result files, nothing scored."""
    records = read_results(args.compare.split(","), "--compare")
    models = list(dict.fromkeys(r["model"] for r in records))
    records = comparisons(records, models[0])
    print(table(records, models))
    return records


def evaluate(args):
    if args.compare:
        return compare(args)
    check(args)
    device = resolve_device(args.device)
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        raise InputError(f"--dtype {args.dtype!r} is unknown (expected auto, float32 or bfloat16)")
    if args.cuda_graph and not device.startswith("cuda"):
        raise InputError(f"--cuda_graph needs a CUDA device, not --device {device}")
    names = args.tasks.split(",")
    for name in names:
        if name not in TASKS:
            raise InputError(f"--tasks: unknown task '{name}' (expected {', '.join(TASKS)})")
    models, records, t_all = args.model.split(","), [], time.time()
    ref = read_results([args.reference], "--reference") if args.reference else []
    for k, path in enumerate(models):
        model, tok = load(path, dtype, device), load_tokenizer(path)
        if tok is None:
            raise InputError(f"{path}: no tokenizer.json (eval needs text)")
        if args.fuse and device.startswith("cuda"):
            fuse_projections(model)
        if args.cache_weights:
            cache_weights(model)
        for block in model.blocks if args.compile else []:
            block.compile()
        digest = model_hash(path)
        for n, name in enumerate(names):
            t0 = time.time()
            for metric, r in TASKS[name](model, tok, args, device).items():
                if not (math.isfinite(r["value"]) and math.isfinite(r["stderr"])):
                    raise InputError(f"{path}: {name} {metric} came out {r['value']} ± {r['stderr']}, not a score")
                records.append({"model": path, "model_hash": digest, "task": name, "metric": metric, **r,
                                "settings": {k: v for k, v in asdict(args).items() if k not in ("model", "out")}})
                print(f"{os.path.basename(path.rstrip('/'))} {name} {metric}: {r['value']:.4f} ± {r['stderr']:.4f} "
                      f"(n={r['n']}, {time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
            done, total = k * len(names) + n + 1, len(models) * len(names)
            spent = time.time() - t_all
            print(f"[{done}/{total} tasks] {spent:.0f} s, ETA {spent / done * (total - done):.0f} s (from the tasks "
                  "so far)", file=sys.stderr, flush=True)
    reference = ref[0]["model"] if ref else models[0]
    records = [r for r in comparisons(ref + records, reference) if r["model"] != reference or not ref]
    print(table(ref + records, ([reference] if ref else []) + models))
    if args.out:
        write_text(args.out, json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    run_cli(lambda: evaluate(parse(Args, doc=__doc__)))
