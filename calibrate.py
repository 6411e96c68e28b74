"""
Quantize a dLLM checkpoint: build calibration data, run the methods in order, save a packed checkpoint that
model.load(), sample.py and eval.py read like any other.

    python calibrate.py --method gptq --wbits 4                      # the bundled tiny-llada, W4 g128
    python calibrate.py --model DIR --method awq,gptq --wbits 4 --calib_mode masked --out out/llada-w4

Calibration data is where dLLMs differ from autoregressive models: at inference they read canvases full of [MASK].
  clean       fully visible text windows: what the study of GPTQ/AWQ/... on dLLMs calibrated on (arXiv:2508.14896).
  masked      Quant-dLLM's masked calibration simulation (arXiv:2510.03274): the first gamma = 25% of each window
              stays visible; every other token is visible with probability t/T for a timestep t on a grid of T = 20
              (t = 0 .. T-1, the fully visible endpoint dropped), otherwise replaced by the model's mask id.
              One timestep per window (--mcs_all_steps: every window at every timestep, as its reproduction).
  trajectory  DLLMQuant's temporal-mask adaptive sampling (arXiv:2508.14090): run the model's own sampler on a
              prompt cut from each window and keep one canvas of each trajectory, drawn from the mask-ratio bucket
              the sample is assigned: [0, .25) [.25, .5) [.5, .75) [.75, 1] in proportions 0.3 / 0.2 / 0.2 / 0.3.
Each sample keeps which tokens are masked, and (trajectory) the model's confidence in each token.
Blocks are quantized one at a time on --device while the rest of the model waits on the host.
"""
import gzip
import importlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, make_dataclass

import torch

from cli import InputError, InRepo, opt, parse, publish, resolve_device, run_cli
from model import load, load_tokenizer, save
from quantizers.core import LINEARS, BinaryLinear, QLinear, model_bytes
from quantizers.format import group_width
from quantizers.walk import Calib
from sample import DEFAULT_MODEL, generate

ROOT = os.path.dirname(os.path.abspath(__file__))
BUCKETS = [(0.0, 0.25, 0.3), (0.25, 0.5, 0.2), (0.5, 0.75, 0.2), (0.75, 1.01, 0.3)]  # TMAS: mask ratio, share
TRAJECTORY_BATCH = 32  # prompts decoded at once: bounds the logits of a big vocabulary


def find_methods():
    """Every quantizers/<name>.py that declares its KIND, by name: a new method is found by adding its file.
    A method declares KIND ("transform": changes the float weights, the float function kept; "rounder": replaces
    the Linears) and ACTIVATIONS (whether --bits N means W{N}A{N}), and may own flags (a dataclass Flags) and a
    resolve(args) that fills their automatic values and checks them."""
    names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "quantizers")) if f.endswith(".py"))
    methods = {}
    for name in names:
        module = importlib.import_module(f"quantizers.{name}")
        kind = getattr(module, "KIND", None)
        if kind not in (None, "transform", "rounder"):
            raise ValueError(f"quantizers/{name}.py: KIND = {kind!r}, expected 'transform' or 'rounder'")
        if kind is not None:
            methods[name] = module
    return methods


METHODS = find_methods()
TRANSFORMS, ROUNDERS = ([n for n, m in METHODS.items() if m.KIND == k] for k in ("transform", "rounder"))


@dataclass
class Shared:
    """The flags every method reads. Args below adds each method's own flags (its Flags dataclass)."""
    model: str = opt(DEFAULT_MODEL, "checkpoint folder to quantize")
    out: str = opt(InRepo("out/quantized"), "output checkpoint folder: written complete beside it (OUT.partial), "
                                            "then swapped in at once")
    overwrite: bool = opt(False, "replace the checkpoint already in --out (refused without it)")
    method: str = opt("rtn", f"comma-separated, applied in order: transforms ({', '.join(TRANSFORMS)}), then at most "
                             f"one rounder ({', '.join(ROUNDERS)}); a chain that ends in a transform is rounded by rtn")
    bits: int = opt(0, "shorthand: W{bits}A{bits} when a method of the chain quantizes activations (smoothquant, "
                       "quarot, duquant, dllmquant), else W{bits}A16; 0 = use --wbits / --abits")
    wbits: int = opt(4, "weight bits, 2-8; 16 leaves the weights in float")
    abits: int = opt(16, "activation bits (per-token dynamic), 4-8; 16 = no activation quantization")
    group_size: int = opt(0, "input channels per weight scale; -1 = one per output channel; 0 = 128 for weight-only "
                             "methods, -1 for smoothquant/quarot/duquant (what integer GEMMs need); a width it does "
                             "not divide gets its largest divisor below it (printed)")
    sym: bool = opt(False, "symmetric weight grid (zero point fixed at 2^(bits-1)); default asymmetric")
    a_sym: bool = opt(True, "symmetric activation grid")
    fp8: bool = opt(False, "FP8. With --wbits 8: e4m3 weights per output channel, with --abits 8 e4m3 activations "
                           "per token too (W8A8-FP8; a chain that rounds by RTN: rtn, or transforms only). With "
                           "--wbits 4 --abits 8 --sym: W4A8-FP8, symmetric 4-bit weights -7..7 per output channel "
                           "by any integer rounder, e4m3 activations per token")
    a_clip: float = opt(1.0, "activation clipping ratio of each token's range")
    w_clip: float = opt(1.0, "weight clipping ratio of each group's range (DuQuant used 0.8)")
    v_bits: int = opt(0, "bits of the attention values V, per channel over the tokens (the V of softmax(P) V); "
                         "0 = --abits with dllmquant, else 16 (off)")
    damp: float = opt(0.01, "GPTQ, DLLMQuant, Quant-dLLM: damping of the Hessian as a fraction of mean(diag H)")
    nsamples: int = opt(128, "calibration sequences")
    seqlen: int = opt(256, "tokens per calibration sequence (the study used 2048 for GPTQ, 512 for AWQ)")
    calib_data: str = opt(InRepo("data/wiki_calib.txt.gz"),
                          "text: .txt or .txt.gz (documents separated by blank lines) or .jsonl with a 'text' field")
    calib_mode: str = opt("clean", "clean, masked (Quant-dLLM MCS) or trajectory (DLLMQuant TMAS)")
    mcs_gamma: float = opt(0.25, "masked: visible prefix fraction")
    mcs_steps: int = opt(20, "masked: timesteps T of the visibility grid")
    mcs_all_steps: bool = opt(False, "masked: every window at every timestep (nsamples x mcs_steps canvases, as "
                                     "Quant-dLLM's reproduction does) instead of one timestep per window")
    float_stats: bool = opt(True, "awq, smoothquant, duquant: statistics through the float blocks before each block, "
                                  "as their reference code takes them (--no-float_stats: through the quantized ones)")
    nll_windows: int = opt(32, "held-out windows for the before/after NLL line, same masks both times (0 = skip)")
    seed: int = opt(0, "seed of the calibration windows, masks and trajectories")
    device: str = opt("auto", "where blocks are quantized: cuda or cpu (auto: cuda when available)")
    dtype: str = opt("auto", "model dtype: float32, bfloat16 (auto: bfloat16 on cuda, float32 on cpu)")
    gpu_memory_gib: float = opt(0.0, "cuda: let torch's allocator hold at most this many GiB, to check that a run fits "
                                     "a smaller card (the CUDA context, about 0.5 GiB, comes on top; 0 = no cap)")


def with_method_flags(shared):
    """The dataclass of every flag: the shared ones, then each method's own, listed under its name in --help."""
    specs, owner = [], {}
    for name, cls in [(None, shared)] + [(n, m.Flags) for n, m in METHODS.items() if hasattr(m, "Flags")]:
        for f in fields(cls):
            if f.name in owner:
                raise ValueError(f"quantizers/{name}.py: flag --{f.name} is already defined by {owner[f.name]}")
            owner[f.name] = "calibrate.py" if name is None else f"quantizers/{name}.py"
            group = None if name is None else f"{name} (quantizers/{name}.py)"
            specs.append((f.name, f.type, opt(f.default, f.metadata.get("help", ""), group)))
    return make_dataclass("Args", specs, namespace={"__doc__": "calibrate.py's settings: every flag, by name."})


Args = with_method_flags(Shared)


def chain_of(method):
    """--method as the list of methods to run: transforms, then at most one rounder, last; a chain that ends in a
    transform gets rtn appended. Anything else is refused in one line."""
    names = method.split(",")
    for name in names:
        if name not in METHODS:
            raise InputError(f"--method {name!r} is unknown (available: {', '.join(METHODS)})")
    for name in names[:-1]:
        if METHODS[name].KIND == "rounder":
            raise InputError(f"--method {method}: {name} is a rounder, so it must come last (a chain is transforms, "
                             f"{', '.join(TRANSFORMS)}, then at most one rounder, {', '.join(ROUNDERS)})")
    return names if METHODS[names[-1]].KIND == "rounder" else names + ["rtn"]


RANGES = [("bits", lambda v: v >= 0, ">= 0; 0 = use --wbits / --abits"), ("damp", lambda v: v > 0, "> 0"),
          ("a_clip", lambda v: 0 < v <= 1, "in (0, 1]"), ("w_clip", lambda v: 0 < v <= 1, "in (0, 1]"),
          ("nll_windows", lambda v: v >= 0, ">= 0; 0 = skip"), ("mcs_gamma", lambda v: 0 <= v < 1, "in [0, 1)"),
          ("mcs_steps", lambda v: v >= 1, ">= 1"),
          ("gpu_memory_gib", lambda v: v >= 0, ">= 0; 0 = no cap")]  # shared flags; each method checks its own


def resolve(args):
    """Resolve --bits and the auto values; refuse bad flags with one line naming the flag."""
    for flag, ok, expected in RANGES:
        if not ok(getattr(args, flag)):
            raise InputError(f"--{flag} {getattr(args, flag)} is out of range (expected {expected})")
    chain = chain_of(args.method)
    activations = any(getattr(METHODS[m], "ACTIVATIONS", False) for m in chain)
    if args.bits:
        args.wbits, args.abits = args.bits, args.bits if activations else 16
    if args.group_size == 0:
        args.group_size = -1 if activations or args.fp8 else 128
    if not (2 <= args.wbits <= 8 or args.wbits == 16):
        raise InputError(f"--wbits {args.wbits} is out of range (2-8, or 16 to leave the weights in float)")
    if not (4 <= args.abits <= 8 or args.abits == 16):
        raise InputError(f"--abits {args.abits} is out of range (4-8, or 16 for no activation quantization)")
    for name in dict.fromkeys(chain):  # each method fills its own automatic values and checks its own flags
        if hasattr(METHODS[name], "resolve"):
            METHODS[name].resolve(args)
    if args.v_bits == 0:
        args.v_bits = 16
    if not (4 <= args.v_bits <= 8 or args.v_bits == 16):
        raise InputError(f"--v_bits {args.v_bits} is out of range (4-8, or 16 to leave V in float)")
    if args.wbits == 16 and args.abits < 16:
        raise InputError(f"--abits {args.abits} with --wbits 16: activation-only quantization is not supported")
    if args.fp8 and args.wbits == 4:
        if args.abits != 8 or args.group_size != -1 or not args.sym or not args.a_sym or "quantdllm" in chain:
            raise InputError(f"--fp8 with --wbits 4 (W4A8-FP8) needs --abits 8, --group_size -1, --sym, symmetric "
                             f"activations and integer codes (not quantdllm), not W4A{args.abits} g{args.group_size} "
                             f"sym={args.sym} a_sym={args.a_sym} {args.method}")
    elif args.fp8 and (args.wbits != 8 or args.abits not in (8, 16) or args.group_size != -1 or chain[-1] != "rtn"):
        raise InputError(f"--fp8 needs --wbits 8 (or 4: W4A8-FP8), --abits 8 or 16, --group_size -1 and a chain that "
                         f"rounds by RTN, not W{args.wbits}A{args.abits} g{args.group_size} {args.method}")
    if args.calib_mode not in ("clean", "masked", "trajectory"):
        raise InputError(f"--calib_mode {args.calib_mode!r} is unknown (expected clean, masked or trajectory)")
    args.device = resolve_device(args.device)
    if args.gpu_memory_gib and not args.device.startswith("cuda"):
        raise InputError(f"--gpu_memory_gib {args.gpu_memory_gib:g}: caps a CUDA device's memory, not {args.device}")
    args.dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    if args.dtype not in ("float32", "bfloat16"):
        raise InputError(f"--dtype {args.dtype!r} is unknown (expected float32 or bfloat16)")


def run_methods(model, calib, args):
    """Apply the chain in order. A transform followed by RTN (written or appended) rounds each block by RTN as soon
    as it has transformed it (one walk); its statistics come from the float blocks before it with --float_stats
    (the default, as the reference code of AWQ, SmoothQuant and DuQuant), else from the quantized ones. Before
    another rounder, a transform walks every block in float first."""
    chain, i = chain_of(args.method), 0
    while i < len(chain):
        method = METHODS[chain[i]]
        fused = method.KIND == "transform" and chain[i + 1:] == ["rtn"]
        print(f"--- {chain[i]}" + (", then rtn block by block" if fused else ""), flush=True)
        if fused:
            method.quantize(model, calib, args, round_block=METHODS["rtn"].round_block)
        else:
            method.quantize(model, calib, args)
        i += 2 if fused else 1


def describe(args):
    """The format in words, as the log header and config.json state it."""
    if args.wbits == 16:
        return "weights left in float (--wbits 16)"
    if args.fp8 and args.wbits == 4:
        return "W4A8-FP8: 4-bit symmetric weights (-7..7) per output channel, e4m3 activations per token"
    if args.fp8:
        acts = ", e4m3 activations per token" if args.abits == 8 else ""
        return f"W8A{args.abits if args.abits < 16 else 16}-FP8: e4m3 weights per output channel{acts}"
    groups = "per output channel" if args.group_size == -1 else f"in groups of {args.group_size} inputs"
    weights = f"{args.wbits}-bit {'symmetric' if args.sym else 'asymmetric'} weights {groups}"
    if "quantdllm" in args.method.split(","):
        weights = f"{args.wbits}-bit binary-residual weights (DAQ, ABMP orders), column groups of {args.group_size}"
    acts = "" if args.abits == 16 else f", {args.abits}-bit {'symmetric' if args.a_sym else 'asymmetric'} " \
                                       "activations per token"
    values = "" if args.v_bits == 16 else f", V at {args.v_bits} bits per channel"
    return f"W{args.wbits}A{args.abits}: {weights}{acts}{values}"


def check(args, model):
    """Settings that depend on the model: group size against every Linear's width, sequence length."""
    if args.wbits < 16 and args.group_size < 1 and args.group_size != -1:
        raise InputError(f"--group_size {args.group_size} must be positive or -1 (one scale per output channel)")
    for K in sorted({block.get_submodule(name).in_features for block in model.blocks for name in LINEARS}):
        if args.wbits < 16 and args.group_size != -1 and K % args.group_size:
            print(f"groups of {group_width(K, args.group_size)} for the inputs {K} wide (--group_size "
                  f"{args.group_size} does not divide {K})", flush=True)
    if args.nsamples <= 0 or not 2 <= args.seqlen <= model.args.max_seq_len:
        raise InputError(f"--nsamples {args.nsamples} must be positive and --seqlen {args.seqlen} within 2.."
                         f"{model.args.max_seq_len} (the model's context)")


def jsonl_text(line, path, number):
    """The 'text' field of one .jsonl line."""
    try:
        text = json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"--calib_data {path}: line {number} is not a JSON object with a 'text' field") from None
    if not isinstance(text, str):
        raise InputError(f"--calib_data {path}: line {number}: 'text' is not a string")
    return text


def read_texts(path):
    if not os.path.isfile(path):
        raise InputError(f"--calib_data {path}: not found")
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
            raw = f.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise InputError(f"--calib_data {path}: not readable UTF-8 text ({e})") from None
    texts = [jsonl_text(line, path, i) for i, line in enumerate(raw.splitlines(), 1) if line.strip()] \
        if ".jsonl" in path else raw.strip().split("\n\n")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"--calib_data {path}: no text in it")
    return texts


def text_windows(args, model, tok):
    """nsamples random windows of seqlen tokens from the calibration text (documents joined by EOS)."""
    if tok is None:
        raise InputError(f"{args.model}: no tokenizer.json, so the calibration text cannot be tokenized")
    sep = [] if model.args.eos_id is None else [model.args.eos_id]
    ids = [t for e in tok.encode_batch(read_texts(args.calib_data), add_special_tokens=False) for t in e.ids + sep]
    if len(ids) <= args.seqlen:
        raise InputError(f"--calib_data {args.calib_data}: {len(ids)} tokens, fewer than --seqlen {args.seqlen}")
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, len(ids) - args.seqlen, (args.nsamples,), generator=gen).tolist()
    return torch.tensor([ids[s:s + args.seqlen] for s in starts])


def masked_simulation(tokens, mask_id, gamma, T, seed, all_steps=False):
    """Quant-dLLM MCS: sample i keeps its first floor(gamma L) tokens and shows each later token with probability
    t_i / T, t_i = i mod T (so the masked share of the rest runs 1, 1 - 1/T, ..., 1/T). One timestep per window has
    the expectation of Quant-dLLM's reproduction, which masks every window at every timestep; all_steps does that
    (T times the samples and the activations)."""
    if all_steps:
        tokens = tokens.repeat_interleave(T, 0)
    N, L = tokens.shape
    t = (torch.arange(N) % T).float()[:, None] / T
    masked = torch.rand(N, L, generator=torch.Generator().manual_seed(seed)) >= t
    masked[:, :int(gamma * L)] = False
    return Calib(torch.where(masked, mask_id, tokens), masked)


@torch.no_grad()
def trajectories(model, windows, args):
    """DLLMQuant TMAS: canvases along the model's own denoising trajectories, drawn from mask-ratio buckets.
    Every calibration window gives a prompt (its first half) and one trajectory, and one canvas of it: sample i is
    assigned a bucket (shares 0.3 / 0.2 / 0.2 / 0.3 of the samples) and keeps a canvas drawn uniformly from those of
    its trajectory whose masked share lies in that bucket. So the samples are as many distinct texts as clean
    calibration reads, and no canvas is drawn twice. The confidence of a token is 1 in the prompt, the probability
    the sampler gave it when it was committed, and for a still-masked position the probability of the sampler's
    current guess; NaN where the sampler has not reached it yet (a later block), which CGQ treats as unknown.
    Probability-valued rankings are used for this: low_confidence for LLaDA, maskgit_plus for Dream."""
    gen_length = max(32, args.seqlen // 2 // 32 * 32)
    P, steps, N, mask = args.seqlen - gen_length, gen_length // 2, len(windows), model.args.mask_id
    shares = [round(N * w) for *_, w in BUCKETS]
    shares[-1] += N - sum(shares)
    edges = torch.tensor([(lo, hi) for lo, hi, _ in BUCKETS]).repeat_interleave(torch.tensor(shares), 0)
    gen = torch.Generator().manual_seed(args.seed)
    seen, tokens, conf_kept = torch.zeros(N), torch.empty(N, args.seqlen, dtype=torch.long), torch.empty(N, args.seqlen)

    def offer(rows, x, conf):  # reservoir sampling of one canvas per row among those in its bucket
        x, conf = x.cpu(), conf.cpu()
        ratio = (x[:, P:] == mask).float().mean(1)
        inside = (ratio >= edges[rows, 0]) & (ratio < edges[rows, 1])
        seen[rows] += inside.float()
        take = inside & (torch.rand(len(rows), generator=gen) * seen[rows] < 1)
        tokens[rows[take]], conf_kept[rows[take]] = x[take], conf[take]

    alg = "low_confidence" if model.args.family == "llada" else "maskgit_plus"
    model.to(args.device)
    t0 = time.time()
    for lo in range(0, N, TRAJECTORY_BATCH):
        rows = torch.arange(lo, min(lo + TRAJECTORY_BATCH, N))
        prompts = windows[rows, :P].to(args.device)
        conf = torch.cat([torch.ones(len(rows), P), torch.full((len(rows), gen_length), float("nan"))], 1)
        conf = conf.to(args.device)
        offer(rows, torch.cat([prompts, torch.full((len(rows), gen_length), mask, device=args.device)], 1), conf)

        def record(i, x, c, rows=rows, conf=conf):  # x after step i: the canvas the model reads at step i + 1
            conf[:] = torch.where(torch.isfinite(c), c.float(), conf)  # finite at this step's candidates
            if (x == mask).any():
                offer(rows, x, conf)
        generate(model, prompts, None, gen_length, steps, min(32, gen_length), alg, on_step=record)
        done = rows[-1].item() + 1
        print(f"trajectories {done}/{N} | {time.time() - t0:6.1f} s | "
              f"ETA {(time.time() - t0) / done * (N - done):6.1f} s", flush=True)
    send_home(model, "cpu", args.device)
    if (seen == 0).any():  # only when a decode is too short to pass through every bucket
        raise InputError(f"--seqlen {args.seqlen}: a {gen_length}-token decode has no canvas in some mask-ratio bucket")
    return Calib(tokens, tokens == mask, conf_kept)


def calibration(args, model, tok):
    windows = text_windows(args, model, tok)
    if args.calib_mode == "masked":
        return masked_simulation(windows, model.args.mask_id, args.mcs_gamma, args.mcs_steps, args.seed,
                                 args.mcs_all_steps)
    if args.calib_mode == "trajectory":
        return trajectories(model, windows, args)
    return Calib(windows, torch.zeros_like(windows, dtype=torch.bool))


def heldout_nll(model, tok, args):
    """Masked-diffusion NLL on held-out Wikipedia (eval.py's scorer, fixed masks), on args.device."""
    from eval import Args as EvalArgs, wiki_nll
    home = next(model.parameters()).device
    model.to(args.device)
    result = wiki_nll(model, tok, EvalArgs(limit=args.nll_windows, seq_len=min(256, model.args.max_seq_len), mc=2,
                                           seed=args.seed), args.device)
    send_home(model, home, args.device)
    return result["nll"]["value"]


def send_home(model, home, device):
    """Move the model back to `home` and return the GPU memory it held to the driver.

    Without the empty_cache, the freed weights stay in torch's cache in blocks cut to their sizes, and the walk (one
    block at a time, other sizes) grows the cache beside them: Dream-7B's device view was 6.6 GiB over what torch had
    allocated."""
    model.to(home)
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


CHECKPOINT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def check_out(args):
    """Refuse, before any work, an --out that would lose data: one line naming it and why."""
    out = args.out.rstrip("/")
    if not out:
        raise InputError("--out: the path is empty")
    real, model = os.path.realpath(out), os.path.realpath(args.model)
    if os.path.commonpath([real, model]) in (real, model):
        raise InputError(f"--out {args.out}: overlaps --model {args.model} (the float checkpoint would be lost)")
    if os.path.lexists(out):
        if os.path.islink(out) or not os.path.isdir(out):
            raise InputError(f"--out {out}: exists and is not a folder")
        stray = sorted(set(os.listdir(out)) - CHECKPOINT_FILES)
        if stray:
            raise InputError(f"--out {out}: holds {stray[0]}, which calibrate.py did not write; choose another folder")
        if not args.overwrite:
            raise InputError(f"--out {out}: a checkpoint is already there; add --overwrite to replace it")
    if os.path.lexists(out + ".partial") and not os.path.isdir(out + ".partial"):
        raise InputError(f"--out {out}: {out}.partial exists and is not a folder (the checkpoint is written there "
                         "first)")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot write in {parent}")


def recorded(args):
    """The settings a checkpoint records: every flag but where it was written, with folder and file names only (no
    absolute path), so the same calibration writes the same bytes wherever it runs."""
    settings = {k: v for k, v in asdict(args).items() if k not in ("out", "overwrite")}
    return {**settings, "model": os.path.basename(os.path.normpath(args.model)),
            "calib_data": os.path.basename(args.calib_data)}


def write(model, tok_dir, args, nll=(None, None)):
    """Write the checkpoint complete in OUT.partial, then swap it in (cli.publish): --out is a whole checkpoint at
    every instant, the old one until the new one is complete. config.json says what it holds and the NLL before
    and after (export.py's model card quotes them)."""
    out = args.out.rstrip("/")
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # what a run killed while writing left
    layers = {n: m.config() for n, m in model.named_modules() if isinstance(m, (QLinear, BinaryLinear))}
    save(model, partial, metadata={"quant": json.dumps({"args": recorded(args), "layers": layers}, sort_keys=True)},
         config={"dllmq_quantization": {"method": args.method, "format": describe(args), "wbits": args.wbits,
                                        "abits": args.abits, "group_size": args.group_size, "sym": args.sym,
                                        "fp8": args.fp8, "v_bits": args.v_bits, "calib_mode": args.calib_mode,
                                        "nll_windows": args.nll_windows, "nll_before": nll[0], "nll_after": nll[1]}})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copyfile(os.path.join(tok_dir, name), os.path.join(partial, name))
    publish(partial, out)


def cap_gpu_memory(gib, device):
    """Let torch's allocator hold at most `gib` GiB of the CUDA device, as a card of that size would: at the cap it
    frees its cache and retries before it raises out-of-memory. The device's index is resolved first: torch refuses
    a bare "cuda" there."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), index)
    return index


def calibrate(args):
    """Quantize args.model with args.method and save to args.out; returns the quantized model."""
    t0 = time.time()
    resolve(args)
    check_out(args)
    if args.gpu_memory_gib:
        cap_gpu_memory(args.gpu_memory_gib, args.device)
    # no autograd: a scale computed from a weight that requires grad would carry its graph into the saved buffer
    model = load(args.model, {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]).requires_grad_(False)
    tok = load_tokenizer(args.model)
    check(args, model)
    calib = calibration(args, model, tok)
    print(f"{os.path.relpath(args.model)}: {args.method}, {describe(args)}; on {args.device}, calibration "
          f"{args.calib_mode}, {calib.tokens.shape[0]} x {calib.tokens.shape[1]} tokens, "
          f"{calib.masked.float().mean().item():.0%} masked", flush=True)
    before = heldout_nll(model, tok, args) if args.nll_windows and tok else None
    float_bytes = model_bytes(model)
    if args.wbits < 16:  # --wbits 16: the weights stay as they are
        run_methods(model, calib, args)
    for block in model.blocks if args.v_bits < 16 else []:  # V at --v_bits for methods that leave it alone
        if isinstance(block.attn.v_proj, QLinear) and block.attn.v_proj.out_bits == 16:
            block.attn.v_proj.out_bits = args.v_bits
    after = None
    if before is not None:
        after = heldout_nll(model, tok, args)
        print(f"held-out masked-diffusion NLL ({args.nll_windows} windows x 2 masks): {before:.4f} -> {after:.4f} "
              f"nats/token ({after / before - 1:+.2%})")
    cuda = args.device.startswith("cuda")
    gpu = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (the allocator held "
           f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB)") if cuda else ""
    print(f"weights: {float_bytes / 2**20:.1f} MiB -> {model_bytes(model) / 2**20:.1f} MiB; "
          f"{time.time() - t0:.0f} s in all{gpu}")
    write(model, args.model, args, (before, after))
    print(f"saved {args.out}")
    return model


def main():
    calibrate(parse(Args, doc=__doc__))


if __name__ == "__main__":
    run_cli(main)
