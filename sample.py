"""
Masked-diffusion decoding for LLaDA and Dream: start from a canvas of [MASK] tokens after the prompt and, at
every step, predict all masked tokens with one full forward, then commit ("unmask") a few of them.

Two samplers share one loop, which differs only in how many tokens a step commits and which ones:
  - LLaDA (Nie et al. 2025, `generate.py`): semi-autoregressive blocks of `block_length`; within a block the
    masked count is split evenly over the steps (linear schedule); commit the most confident predictions
    (`low_confidence`: softmax probability of the predicted token) or random ones (`random`); temperature by
    Gumbel-max in float64; classifier-free guidance (`cfg_scale`) against a copy with the prompt masked.
  - Dream (Ye et al. 2025, `generation_utils.py`): timesteps t = linspace(1, eps, steps+1); a step from t to s
    commits int(n_masked * (1 - s/t)) tokens chosen by `maskgit_plus` (top-1 prob), `topk_margin` (top-1 minus
    top-2), `entropy` (negative entropy), or `origin` (each masked token revealed with probability 1 - s/t);
    tokens drawn after temperature / top_p / top_k; `alg_temp > 0` samples positions instead of taking top-k.
Both run on any model here (logits come aligned from model.py); Dream's algorithms also accept blocks.

    python sample.py --prompt "Q: 347+86= A: " --gen_length 6 --steps 6 --show_steps   # the bundled tiny-llada
    python sample.py --model DIR --prompt "Why is the sky blue?" --chat
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cli import InputError, InRepo, opt, parse, resolve_device, run_cli
from model import load, load_tokenizer
from quantizers.core import fuse_projections

DEFAULT_MODEL = InRepo("assets/tiny-llada")  # bundled
LLADA_ALGS = ("low_confidence", "random")
DREAM_ALGS = ("maskgit_plus", "topk_margin", "entropy", "origin")
# Instruct models' chat formats: LLaDA uses the LLaMA-3 header format, Dream the Qwen <|im_start|> format.
CHAT = {
    "llada": "{bos}<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "dream": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
             "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
}


@dataclass
class Args:
    model: str = opt(DEFAULT_MODEL, "checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    prompt: str = opt("", "the prompt text (needs the checkpoint's tokenizer.json)")
    prompt_file: str = opt("", "a text file with one prompt per line, decoded as one padded batch")
    prompt_ids: str = opt("", "comma-separated token ids instead of text (checkpoints without a tokenizer)")
    chat: bool = opt(False, "wrap the prompt in the family's chat template (Instruct models)")
    gen_length: int = opt(128, "tokens to generate")
    steps: int = opt(128, "denoising steps (forwards) in all; a multiple of the number of blocks")
    block_length: int = opt(0, "semi-autoregressive block length; 0 = 32 for LLaDA, gen_length for Dream")
    alg: str = opt("", f"remasking: LLaDA {'/'.join(LLADA_ALGS)}, Dream {'/'.join(DREAM_ALGS)}; "
                       "empty = low_confidence for LLaDA, entropy for Dream")
    temperature: float = opt(0.0, "sampling temperature; 0 = greedy")
    top_p: float | None = opt(None, "Dream algorithms: nucleus filter before sampling (none = off)")
    top_k: int | None = opt(None, "Dream algorithms: keep the k largest logits (none = off)")
    alg_temp: float = opt(0.0, "Dream algorithms: > 0 samples the positions to commit from softmax(conf/alg_temp)")
    eps: float = opt(1e-3, "Dream algorithms: the final timestep of linspace(1, eps, steps+1)")
    cfg_scale: float = opt(0.0, "classifier-free guidance scale (0 = off; doubles the batch)")
    logits_eos_inf: bool = opt(False, "never predict EOS (LLaDA paper, Appendix B.4)")
    confidence_eos_eot_inf: bool = opt(False, "commit EOS/EoT predictions only when nothing else is left (B.4)")
    show_steps: bool = opt(False, "print the canvas after every step, masks shown as _")
    compile: bool = opt(False, "torch.compile each block (GPU: fewer kernel launches; the first step compiles); "
                               "with quantized layers, add --cuda_graph (without it an FP8 step at batch 1 is "
                               "slower than bf16's)")
    cuda_graph: bool = opt(False, "replay each step's forward from a CUDA graph (GPU: no launch cost on the host, "
                                  "most of a quantized model's step time; the first step captures it)")
    fuse: bool = opt(True, "on a GPU, quantized q/k/v and gate/up run as one GEMM each (quantizers.core."
                           "fuse_projections: the same numbers up to rounding order, fewer and fuller GEMMs)")
    seed: int = opt(0, "random seed (temperature, random remasking, origin, alg_temp)")
    device: str = opt("auto", "cpu, cuda, ... (auto: cuda when available)")
    dtype: str = opt("auto", "float32, bfloat16 or float16 (auto: bfloat16 on cuda, float32 on cpu)")


SAMPLING_RANGES = [  # flag, valid, what is expected
    ("temperature", lambda v: v >= 0, ">= 0; 0 = greedy"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("top_k", lambda v: v >= 1, ">= 1, or none"), ("alg_temp", lambda v: v >= 0, ">= 0"),
    ("eps", lambda v: 0 < v < 1, "in (0, 1)"), ("cfg_scale", lambda v: v >= 0, ">= 0")]


def check(model, prompt_len, gen_length, steps, block_length, alg, dream_only=(), sampling=None):
    """One clear error per bad setting, naming the flag."""
    for flag, ok, expected in SAMPLING_RANGES:
        value = (sampling or {}).get(flag)
        if value is not None and not ok(value):
            raise InputError(f"--{flag} {value} is out of range (expected {expected})")
    if alg not in LLADA_ALGS + DREAM_ALGS:
        raise InputError(f"--alg {alg!r} is unknown (expected one of {', '.join(LLADA_ALGS + DREAM_ALGS)})")
    for flag in dream_only if alg in LLADA_ALGS else ():
        raise InputError(f"--{flag} applies to Dream's algorithms ({', '.join(DREAM_ALGS)}), not --alg {alg}")
    if gen_length <= 0 or block_length <= 0 or gen_length % block_length:
        raise InputError(f"--gen_length {gen_length} must be a positive multiple of --block_length {block_length}")
    if steps <= 0 or steps % (gen_length // block_length):
        raise InputError(f"--steps {steps} must be a positive multiple of the number of blocks "
                         f"({gen_length // block_length} = gen_length / block_length)")
    if prompt_len + gen_length > model.args.max_seq_len:
        raise InputError(f"prompt ({prompt_len} tokens) + --gen_length {gen_length} exceeds the model's context "
                         f"of {model.args.max_seq_len} tokens")


def cfg_logits(model, x, attn_mask, prompt_len, cfg_scale, select):
    """Logits at the rows `select` picks only (a 150k-vocab head is a quarter of a 0.5B model's FLOPs and its (B, T, V)
    logits the largest tensor of a step): the sampler's block, (slice(None), block) -> (B, w, V), or a (B, T) bool
    mask -> (n, V). With LLaDA's unsupervised classifier-free guidance when cfg_scale > 0: un + (cfg+1)(cond - un),
    where the unconditional input is x with the prompt replaced by [MASK]."""
    if cfg_scale == 0:
        return model(x, attn_mask, select=select)
    un = x.clone()
    un[:, :prompt_len] = model.args.mask_id
    mask2 = None if attn_mask is None else attn_mask.repeat(2, 1)
    both = select.repeat(2, 1) if isinstance(select, torch.Tensor) else select  # a slice spans both halves
    cond, un = model(torch.cat([x, un]), mask2, select=both).chunk(2)  # rows of x, then of un
    return un + (cfg_scale + 1) * (cond - un)


class Graphed:
    """The model with its trunk (model.hidden: embeddings, blocks, final norm) replayed from a CUDA graph, captured
    once per input shape (a padded batch, cfg's doubled one). Every step of generate runs the whole canvas at one
    shape, so after the first a forward is one replay instead of thousands of kernel launches from Python, which at
    these sizes cost more host time than the kernels take (a quantized layer launches two Triton kernels; bench.py).
    The LM head runs eagerly on the current block's rows, which move with the block. Inputs are copied into the
    captured buffers; the hidden states live in the graph's memory, overwritten by the next replay."""

    def __init__(self, model):
        self.model, self.args, self.graphs, self.pool = model, model.args, {}, None

    @torch.no_grad()
    def __call__(self, ids, attn_mask=None, select=None):
        key = (tuple(ids.shape), attn_mask is None)
        if key not in self.graphs:
            self.graphs[key] = self.capture(ids.clone(), None if attn_mask is None else attn_mask.clone())
        graph, inputs, h = self.graphs[key]
        for buffer, new in zip(inputs, (ids, attn_mask), strict=True):
            if new is not None:
                buffer.copy_(new)
        graph.replay()
        return self.model.head(h, select)

    def capture(self, *inputs):
        side = torch.cuda.Stream()  # warm up off the capturing stream: Triton's autotuning, torch.compile and the
        side.wait_stream(torch.cuda.current_stream())  # kernels' first-call set-up must not run inside the capture
        with torch.cuda.stream(side):
            self.model.hidden(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.pool = self.pool or torch.cuda.graph_pool_handle()  # one memory pool shared by every shape's graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            h = self.model.hidden(*inputs)
        return graph, inputs, h


def filter_logits(logits, temperature, top_p, top_k):
    """Dream's order: temperature, then nucleus (top_p), then top_k; removed entries get the dtype's minimum."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        ranked, order = torch.sort(logits, descending=True)
        cum = ranked.softmax(-1).cumsum(-1)  # keep the smallest prefix whose mass reaches top_p (>= 1 token)
        drop = torch.cat([torch.zeros_like(cum[:, :1], dtype=torch.bool), cum[:, :-1] > top_p], dim=1)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    return logits


def propose(logits, alg, temperature, top_p, top_k, generator):
    """logits (n, V) at the candidate positions -> predicted tokens x0 (n,) and their confidence (n,)."""
    if alg in LLADA_ALGS:
        if temperature > 0:  # Gumbel-max in float64: exp(l) / (-log u)^T, argmax samples softmax(l / T)
            u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
            x0 = (logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)
        else:
            x0 = logits.argmax(-1)
        if alg == "random":
            return x0, torch.rand(x0.shape, device=x0.device, generator=generator)
        return x0, logits.float().softmax(-1).gather(-1, x0[:, None])[:, 0]
    probs = filter_logits(logits, temperature, top_p, top_k).softmax(-1)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator)[:, 0]
    else:
        x0 = probs.argmax(-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return x0, top2[:, 0] - top2[:, 1]
    if alg == "entropy":
        return x0, (probs * torch.log(probs + 1e-10)).sum(-1)  # negative entropy: higher = more certain
    return x0, probs.gather(-1, x0[:, None])[:, 0]  # maskgit_plus (and origin, which ignores it)


def n_commit(alg, n_start, n_now, i, steps, t):
    """How many tokens each row commits at step i of a block: (B,) counts, or for `origin` a probability."""
    if alg in LLADA_ALGS:  # linear schedule: n_start split evenly, the remainder to the first steps
        return n_start // steps + (i < n_start % steps).long()
    if i == steps - 1:
        return n_now if alg != "origin" else 1.0
    frac = 1 - t[i + 1] / t[i]  # float32, as in Dream
    return frac if alg == "origin" else (n_now.float() * frac).long()


def commit(x, cand, x0, conf, count, alg, alg_temp, generator, noise):
    """Write x0 at the chosen candidates of the block x (B, w), in place. conf (B, w) is -inf off the candidates.
    The top-`count` choice is made by rank, without a host sync (ties, which the samplers leave to torch.topk's
    order, go to the earlier position); sampling positions (alg_temp > 0) takes a row's count to the host.
    noise: `origin`'s uniform draws for the block."""
    if alg == "origin":  # each candidate is revealed independently with probability `count`
        x.copy_(torch.where(cand & (noise < count), x0, x))
        return
    if alg_temp > 0:
        for r in range(x.shape[0]):
            k = int(count[r])
            if k:
                idx = torch.multinomial((conf[r] / alg_temp).softmax(-1), k, generator=generator)
                x[r, idx] = x0[r, idx]
        return
    rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0 = the most confident
    x.copy_(torch.where(cand & (rank < count.view(-1, 1)), x0, x))


@torch.no_grad()
def generate(model, prompt, attn_mask=None, gen_length=128, steps=128, block_length=None, alg="low_confidence",
             temperature=0.0, top_p=None, top_k=None, alg_temp=0.0, eps=1e-3, cfg_scale=0.0,
             logits_eos_inf=False, confidence_eos_eot_inf=False, generator=None, on_step=None):
    """prompt (B, P) token ids, left-padded with attn_mask (B, P) 1/0 -> (B, P + gen_length) final canvas.

    on_step(i, x, conf), if given, sees the canvas after every step and the confidence used to rank."""
    a, (B, P) = model.args, prompt.shape
    block_length = block_length or gen_length
    dream_only = [k for k, v in (("top_p", top_p), ("top_k", top_k), ("alg_temp", alg_temp)) if v]
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "alg_temp": alg_temp, "eps": eps,
                "cfg_scale": cfg_scale}
    check(model, P, gen_length, steps, block_length, alg, dream_only, sampling)
    if (prompt == a.mask_id).any():
        raise InputError(f"the prompt contains the mask token id {a.mask_id}")
    if ((prompt < 0) | (prompt >= a.vocab_size)).any():
        raise InputError(f"the prompt has token ids outside the vocabulary of {a.vocab_size}: "
                         f"{prompt[(prompt < 0) | (prompt >= a.vocab_size)][0].item()}")
    x = torch.cat([prompt, torch.full((B, gen_length), a.mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    if attn_mask is not None:
        attn_mask = None if attn_mask.all() else F.pad(attn_mask, (0, gen_length), value=1)
    n_blocks = gen_length // block_length
    per_block, step = steps // n_blocks, 0
    t = torch.linspace(1, eps, per_block + 1, device=x.device)
    for b in range(n_blocks):
        rows = slice(P + b * block_length, P + (b + 1) * block_length)
        block = x[:, rows]  # a view: commits write into x
        n_start = (block == a.mask_id).sum(1)
        for i in range(per_block):
            cand = block == a.mask_id
            # the head at the whole block, masked or not: a fixed shape, where finding the masked positions
            # would make the host wait for the GPU every step
            logits = cfg_logits(model, x, attn_mask, P, cfg_scale, (slice(None), rows)).flatten(0, 1)
            if logits_eos_inf and a.eos_id is not None:
                logits[:, a.eos_id] = -torch.inf
            x0, c = (v.view(B, -1) for v in propose(logits, alg, temperature, top_p, top_k, generator))
            if confidence_eos_eot_inf:  # rank EOS/EoT predictions last (but above non-candidates at -inf)
                ends = torch.tensor([e for e in (a.eos_id, a.eot_id) if e is not None], device=x0.device)
                c = c.masked_fill(torch.isin(x0, ends), torch.finfo(c.dtype).min)
            conf = torch.where(cand, c, -torch.inf)
            count = n_commit(alg, n_start, cand.sum(1), i, per_block, t)
            noise = torch.rand(x.shape, device=x.device, generator=generator)[:, rows] if alg == "origin" else None
            commit(block, cand, x0, conf, count, alg, alg_temp, generator, noise)
            if on_step:
                full = torch.full(x.shape, -torch.inf, device=x.device, dtype=conf.dtype)
                full[:, rows] = conf
                on_step(step, x, full)
            step += 1
    return x


# ----------------------------------------------------------------------------------------------- command line
def encode_prompts(args, family, tok, bos_id):
    """Token-id lists from exactly one of --prompt, --prompt_file, --prompt_ids."""
    if sum(map(bool, (args.prompt, args.prompt_file, args.prompt_ids))) != 1:
        raise InputError("give exactly one of --prompt, --prompt_file, --prompt_ids")
    if args.prompt_ids:
        try:
            return [[int(s) for s in args.prompt_ids.split(",")]]
        except ValueError:
            raise InputError(f"--prompt_ids {args.prompt_ids!r}: expected comma-separated integers") from None
    if tok is None:
        raise InputError(f"{args.model}: no tokenizer.json, so give --prompt_ids instead of text")
    if args.prompt_file and not os.path.isfile(args.prompt_file):
        raise InputError(f"--prompt_file {args.prompt_file}: not found")
    try:
        texts = [args.prompt] if args.prompt else [s for s in Path(args.prompt_file).read_text(encoding="utf-8")
                                                   .splitlines() if s.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"--prompt_file {args.prompt_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not texts or not texts[0].strip():
        raise InputError(f"--{'prompt_file ' + args.prompt_file if args.prompt_file else 'prompt'}: no text in it")
    if args.chat:  # the template carries its own special tokens, so the tokenizer must not add any
        bos = tok.id_to_token(bos_id) if bos_id is not None else ""
        return [tok.encode(CHAT[family].format(bos=bos, prompt=t.strip()), add_special_tokens=False).ids
                for t in texts]
    return [tok.encode(t).ids for t in texts]


def pad_left(seqs, pad_id):
    """Left-pad a batch of id lists: ids (B, P) and attn_mask (B, P), 0 on padding."""
    P = max(map(len, seqs))
    ids, mask = torch.full((len(seqs), P), pad_id), torch.zeros(len(seqs), P, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, P - len(s):], mask[r, P - len(s):] = torch.tensor(s), 1
    return ids, mask


def render(tok, ids, mask_id, stop_ids=()):
    """Generated ids -> text up to the first stop token; masks as _ (ids as numbers without a tokenizer)."""
    ids = ids.tolist()
    cut = next((j for j, t in enumerate(ids) if t in stop_ids), len(ids))
    if tok is None:
        return " ".join("_" if t == mask_id else str(t) for t in ids[:cut])
    text, run = "", []
    for t in ids[:cut] + [mask_id]:  # decode maximal runs of real tokens, so multi-byte characters survive
        if t == mask_id:
            text, run = text + tok.decode(run, skip_special_tokens=True) + "_", []
        else:
            run.append(t)
    return text[:-1]


def main():
    args = parse(Args, doc=__doc__)
    device = resolve_device(args.device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype_name not in dtypes:
        raise InputError(f"--dtype {args.dtype!r} is unknown (expected auto, {', '.join(dtypes)})")
    if args.cuda_graph and not device.startswith("cuda"):
        raise InputError(f"--cuda_graph needs a CUDA device, not --device {device}")
    model, tok = load(args.model, dtypes[dtype_name], device), load_tokenizer(args.model)
    if args.fuse and device.startswith("cuda"):
        fuse_projections(model)
    for block in model.blocks if args.compile else []:
        block.compile()
    model = Graphed(model) if args.cuda_graph else model
    a = model.args
    pad = a.pad_id if a.pad_id is not None else a.eos_id
    seqs = encode_prompts(args, a.family, tok, a.bos_id)
    if len(seqs) > 1 and pad is None:
        raise InputError(f"{args.model}: config.json has no pad_token_id or eos_token_id to pad a batch with")
    prompt, mask = pad_left(seqs, pad if pad is not None else 0)
    P, stop = prompt.shape[1], {t for t in (a.eos_id, a.eot_id) if t is not None}
    alg = args.alg or ("low_confidence" if a.family == "llada" else "entropy")
    block = args.block_length or (min(32, args.gen_length) if a.family == "llada" else args.gen_length)

    def on_step(i, x, conf):
        if args.show_steps:
            print(f"step {i + 1:4d} | " + " || ".join(render(tok, row[P:], a.mask_id).replace("\n", "\\n")
                                                      for row in x))
    out = generate(model, prompt.to(device), mask.to(device), args.gen_length, args.steps, block, alg,
                   args.temperature, args.top_p, args.top_k, args.alg_temp, args.eps, args.cfg_scale,
                   args.logits_eos_inf, args.confidence_eos_eot_inf,
                   torch.Generator(device).manual_seed(args.seed), on_step)
    for row in out:
        print(render(tok, row[P:], a.mask_id, stop))


if __name__ == "__main__":
    run_cli(main)
