"""
Speed and memory of dllmq models at real scale, with random weights (no checkpoint download needed).

    python bench.py --forward                 # GPU: forward tokens/s, TFLOP/s and peak memory at LLaDA-8B and
                                              # Dream-7B shapes, against the bf16 matmul peak measured in the run
    python bench.py --load_memory --dir /tmp/llada8b   # peak host memory of model.load() for an LLaDA-8B-shaped
                                              # bf16 checkpoint in 6 shards (written there first if absent)
    python bench.py --gptq                    # GPU: GPTQ W4 g128 of an LLaDA-8B-shaped model, 128 x 2048 tokens
    python bench.py --quantized               # GPU: bf16 vs every format of FORMATS (W4A16, W8A8-FP8 / INT8, W4A8,
                                              # W4A8-FP8, W4A4) through the Triton
                                              # kernels: forward at 512/1024/2048 tokens and a 256-token generation,
                                              # eager and with compiled blocks (--models, --formats: some of them)
    python bench.py --eval                    # GPU: eval.py's HumanEval generation and ARC-Easy likelihood, bf16 and
                                              # FP8, eager / compiled / CUDA graph: tokens/s and MFU
    python bench.py --calibrate               # every method's calibrate.py at its headline setting on random
                                              # LLaDA-8B / Dream-7B-shaped checkpoints (written once in --dir): wall
                                              # time, time per block, peak GPU and host memory, output size
                                              # (--models, --cells: some of them)
    python bench.py --step_profile            # GPU: a 256-token LLaDA-8B generation's step, per format, split into
                                              # GPU kernel categories (quantized GEMM, attention, ...) and idle time
FLOPs of a forward: ModelArgs.flops (model.py), 2 per weight per token plus full attention's QK^T and PV.
"""
import argparse
import collections
import dataclasses
import functools
import gc
import gzip
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import torch

from model import Model, ModelArgs, load, name_map, rename

SHAPES = {"LLaDA-8B": ModelArgs("llada", 4096, 32, 32, 32, 12288, 126464, 1e-5, 5e5, False, 4096, 126336, 126080,
                                126081, 126081, 126348),
          "Dream-7B": ModelArgs("dream", 3584, 28, 28, 4, 18944, 152064, 1e-6, 1e6, True, 131072, 151666, 151665,
                                151643, 151643, 151645)}


@torch.no_grad()
def random_model(args, device, dtype=torch.bfloat16):
    """A model of the given shape with random weights, built in place (never zeros: zeros time faster)."""
    with torch.device("meta"):
        model = Model(args).to(dtype)
    model = model.to_empty(device=device).eval()
    for p in model.parameters():
        p.normal_(0.0 if p.dim() > 1 else 1.0, 0.02)
    return model


def forward_bench():
    from triton.testing import do_bench
    dev = torch.device("cuda")
    a, b = (torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16) for _ in range(2))
    peak = 2 * 8192**3 / do_bench(lambda: a @ b, return_mode="median") / 1e9
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  bf16 matmul 8192^3: {peak:.0f} TFLOP/s")
    print(f"{'model':10} {'mode':9} {'tokens':>6} {'ms':>8} {'tok/s':>8} {'TFLOP/s':>8} {'% peak':>7} "
          f"{'peak GiB':>9} {'1st call s':>8}")
    for name, args in SHAPES.items():
        torch.manual_seed(0)
        model = random_model(args, dev)
        for mode in ("eager", "compiled"):
            if mode == "compiled":  # one graph for the Block code, shared by every block (sample.py --compile)
                for block in model.blocks:
                    block.compile()
            for T in (512, 1024, 2048):
                ids = torch.randint(0, args.vocab_size, (1, T), device=dev)
                with torch.no_grad():
                    t0 = time.time()
                    model(ids)  # compile (if needed) outside the timed region
                    torch.cuda.synchronize()
                    first = time.time() - t0
                    torch.cuda.reset_peak_memory_stats()
                    ms = do_bench(functools.partial(model, ids), return_mode="median")
                tflops = args.flops(1, T) / ms / 1e9
                print(f"{name:10} {mode:9} {T:6d} {ms:8.2f} {T / ms * 1e3:8.0f} {tflops:8.0f} "
                      f"{100 * tflops / peak:6.1f}% {torch.cuda.max_memory_allocated() / 2**30:9.2f} "
                      f"{first:8.1f}", flush=True)
        model = None  # free this model's weights before building the next; compiled code holds references too
        release()


# format: QLinear settings of every block Linear (RTN of the random weights); W4A4 rotates down_proj online (QuaRot)
FORMATS = {"bf16": None, "W4A16 g128": dict(bits=4, group_size=128), "W8A8-FP8": dict(bits=8, act_bits=8, fp8=True),
           "W8A8-INT8": dict(bits=8, act_bits=8, sym=True), "W4A8": dict(bits=4, act_bits=8, sym=True),
           "W4A8-FP8": dict(bits=4, act_bits=8, sym=True, fp8=True),
           "W4A4 + Hadamard": dict(bits=4, act_bits=4, sym=True)}


@torch.no_grad()
def quantize_random(model, cfg):
    """Swap every Linear of the blocks for a QLinear with settings cfg, one layer at a time on the GPU."""
    from quantizers.core import LINEARS, QLinear, swap
    from quantizers.format import fit_grid, fp8_grid, quantize
    from quantizers.quarot import online_hadamard
    cfg = {"group_size": -1, "sym": False, "act_bits": 16, "fp8": False, **cfg}
    for block in model.blocks:
        for name in LINEARS:
            lin, rot = block.get_submodule(name), None
            W = lin.weight.float()
            if cfg["act_bits"] == 4 and name == "mlp.down_proj":
                rot = online_hadamard(W.shape[1], torch.float32).to(W.device)
                W = rot(W)  # W H: the input is rotated online by the same H
            if cfg["fp8"] and cfg["bits"] == 8:
                q, s, z = fp8_grid(W)
            else:
                s, z = fit_grid(W, cfg["bits"], cfg["group_size"], cfg["sym"])
                q = quantize(W, s, z, cfg["bits"])
            swap(block, name, QLinear.from_codes(q, s, z, lin.bias, rot, dtype=torch.bfloat16, **cfg))
    torch.cuda.empty_cache()


FUSE = {"apart": None, "quantized": False, "all": True}  # --fuse: fuse_projections' `dense`, or no fusing


def format_model(args, fmt, device, fuse="apart"):
    """A random model of this shape (seed 0), its block Linears in format fmt (FORMATS; bf16: as built), with q/k/v
    and gate/up fused as eval.py and sample.py run them (fuse, a key of FUSE). On a CPU (tests) the model is in
    float32, as eval.py runs it there: CPUs without bf16 instructions emulate its matmuls slowly."""
    from quantizers.core import fuse_projections
    torch.manual_seed(0)
    model = random_model(args, device, torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    if FORMATS[fmt] is not None:
        quantize_random(model, FORMATS[fmt])
    if FUSE[fuse] is not None:
        fuse_projections(model, dense=FUSE[fuse])
    return model


def release(device="cuda"):
    """After the caller dropped its last reference to a model: compiled code, then the cached GPU memory, let go of
    its weights before the next one is built."""
    torch._dynamo.reset()
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def quantized_bench(models=tuple(SHAPES), formats=tuple(FORMATS), gen_length=256, prompt=64, fuse="quantized"):
    """Forward at 512/1024/2048 tokens and one LLaDA generation (gen 256, steps 256, block 32) per format at 8B
    shapes with random weights, every quantized layer through the Triton kernels (QLinear on CUDA): eagerly, then
    with each block compiled (sample.py --compile; kernels/ops.py), each against bf16 run the same way; the
    generation both launched from Python and replayed from CUDA graphs (sample.py --cuda_graph)."""
    from triton.testing import do_bench, do_bench_cudagraph

    from quantizers.core import model_bytes
    from sample import Graphed, generate
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}; batch 1; forward: median in a CUDA graph (GPU "
          "time) of the eager model and of the compiled one, and eager (with Python's launch overhead); LLaDA "
          f"generation: prompt {prompt}, gen {gen_length}, steps {gen_length}, block 32, low confidence (wall time)\n")
    print("| model | format | weights GiB | tokens | graph ms | vs bf16 | compiled ms | tokens/s | vs bf16 compiled | "
          "eager ms | eager vs bf16 | peak GiB |\n" + "|---" * 12 + "|")
    base = {}
    for name in models:
        args = SHAPES[name]
        for fmt in dict.fromkeys(("bf16", *formats)):  # bf16 first: the baseline of every ratio
            model, rows = format_model(args, fmt, dev, fuse), {}
            gib = model_bytes(model) / 2**30
            tokens = {T: torch.randint(0, args.vocab_size - 1, (1, T), device=dev) for T in (512, 1024, 2048)}
            gen_ids = torch.randint(0, args.vocab_size - 1, (1, prompt), device=dev)
            for mode in ("eager", "compiled"):
                if mode == "compiled":  # static shapes: one graph per length, shared by every block
                    torch._dynamo.reset()
                    for block in model.blocks:
                        block.compile(dynamic=False)
                for T, ids in tokens.items():
                    with torch.no_grad():
                        model(ids)  # autotuning and compilation outside the timed region
                        torch.cuda.reset_peak_memory_stats()
                        eager = do_bench(functools.partial(model, ids), return_mode="median") if mode == "eager" else 0
                        peak = torch.cuda.max_memory_allocated() / 2**30
                        rows[mode, T] = do_bench_cudagraph(functools.partial(model, ids)), eager, peak
                for graph in (False, True) if name == "LLaDA-8B" else ():  # launched from Python / replayed
                    with torch.no_grad():
                        model(torch.cat([gen_ids, gen_ids[:, :1].expand(1, gen_length)], 1))  # tune at this length
                        torch.cuda.synchronize()
                        t0 = time.time()
                        generate(Graphed(model) if graph else model, gen_ids, gen_length=gen_length,
                                 steps=gen_length, block_length=32)
                        torch.cuda.synchronize()
                    rows[mode, graph] = time.time() - t0
            for T in tokens:
                (ms, eager, peak), (comp, _, _) = rows["eager", T], rows["compiled", T]
                b = base.setdefault((name, T), (ms, comp, eager))
                print(f"| {name} | {fmt} | {gib:.2f} | {T} | {ms:.1f} | {b[0] / ms:.2f}x | {comp:.1f} | "
                      f"{T / comp * 1e3:.0f} | {b[1] / comp:.2f}x | {eager:.1f} | {b[2] / eager:.2f}x | {peak:.1f} |",
                      flush=True)
            if ("eager", False) in rows:  # each against bf16 run the same way
                g = base.setdefault("gen", dict(rows))
                print(f"| {name} generation | {fmt} | " + " | ".join(
                    f"{m}{' + CUDA graph' * gr} {rows[m, gr]:.2f} s, {g[m, gr] / rows[m, gr]:.2f}x"
                    for m in ("eager", "compiled") for gr in (False, True)) + " |", flush=True)
            model = None
            release()


def gptq_bench(nsamples=128, seqlen=2048):
    """GPTQ W4 g128 of an LLaDA-8B-shaped model with random bf16 weights, calibrated block by block on the GPU
    while the weights wait on the host (calibrate.py's path): wall time and peak GPU memory."""
    from calibrate import Args
    from quantizers import gptq
    from quantizers.walk import Calib
    args = SHAPES["LLaDA-8B"]
    torch.manual_seed(0)
    model = random_model(args, "cuda").to("cpu")  # random numbers are fast on the GPU; the weights live on the host
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tokens = torch.randint(0, args.vocab_size, (nsamples, seqlen))
    settings = Args(method="gptq", wbits=4, group_size=128, device="cuda")
    t0 = time.time()
    gptq.quantize(model, Calib(tokens, torch.zeros_like(tokens, dtype=torch.bool)), settings)
    minutes = (time.time() - t0) / 60
    print(f"GPTQ W4 g128, LLaDA-8B shape, {nsamples} x {seqlen} calibration tokens on {torch.cuda.get_device_name()}: "
          f"{minutes:.1f} min, peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def write_sharded(args, path, n_shards=6):
    """A random bf16 checkpoint in n_shards files plus model.safetensors.index.json, like the LLaDA release;
    tensors are made shard by shard, so writing it needs one shard of memory."""
    from safetensors.torch import save_file
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Model(args).state_dict().items()}
    names = name_map(args)
    keys, weight_map = sorted(shapes), {}
    os.makedirs(path, exist_ok=True)
    for s in range(n_shards):
        file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = keys[s * len(keys) // n_shards:(s + 1) * len(keys) // n_shards]
        dev = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers are much faster on a GPU
        shard = {rename(names, k): torch.randn(shapes[k], device=dev).mul_(0.02).bfloat16().cpu() for k in part}
        save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        print(f"wrote {file}", file=sys.stderr, flush=True)
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(args.to_config(), f)


# ------------------------------------------------------------------------------------------------ eval
def matmul_peak(device="cuda", n=8192):
    """bf16 dense matmul TFLOP/s measured here (n^3, median): the denominator of every utilisation figure."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    if device == "cuda":
        from triton.testing import do_bench
        return 2 * n**3 / do_bench(lambda: a @ b, return_mode="median") / 1e9
    t0 = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - t0) / 1e12


MODES = ("eager", "compiled", "graph")  # eval_bench: eval.py plain, with --compile, with --compile --cuda_graph


@torch.no_grad()
def eval_bench(shapes, formats=tuple(FORMATS), prompts=8, mc_items=50, device="cuda", modes=MODES, fuse="quantized"):
    """eval.py's own scorers on random models of the given shapes, in process: the HumanEval generation (its first
    `prompts` prompts in one batch; 512 tokens, 512 steps, blocks of 32; no code is run) and ARC-Easy's Monte Carlo
    likelihood (mc_items items, 128 samples per choice), per format eagerly, compiled (eval.py --compile) and
    compiled with each step replayed from a CUDA graph (--cuda_graph, generation only; on a GPU). Generation is
    reported as tokens/s and model FLOPs utilisation (eval.generation_flops over the bf16 matmul peak measured
    here), timed after a generation of one step per block at the same shapes (compilation, the kernels' autotuning
    and first calls; without it the first compiled mode of a format paid them); the likelihood the second time it
    scores the same items (its first pass compiles each new length); modes: which of MODES (graph: compiled, each
    generation step replayed from a CUDA graph). Returns the rows."""
    import eval as ev
    cuda = device == "cuda"
    peak = matmul_peak(device, 8192 if cuda else 512)
    where = f"{torch.cuda.get_device_name()}  torch {torch.__version__}" if cuda else f"CPU, torch {torch.__version__}"
    print(f"{where}; bf16 matmul peak {peak:.1f} TFLOP/s; HumanEval generation: {prompts} prompts in one batch, 512 "
          f"tokens, 512 steps, blocks of 32, timed after a warm-up; ARC-Easy: {mc_items} items x 128 Monte Carlo "
          "samples per choice, timed on a second pass\n")
    print("| model | format | mode | generation s | tokens/s | model TFLOP/s | MFU | vs bf16 | ARC-Easy s | "
          "items/s | peak GiB |\n" + "|---" * 11 + "|", flush=True)
    rows = []
    for name, args in shapes.items():
        tok = stand_in_tokenizer(args)
        texts = [p for _, p, _ in ev.humaneval_programs(ev.Args(limit=prompts))]
        base = {}  # mode: bf16's generation seconds, the baseline of every ratio
        for fmt in dict.fromkeys(("bf16", *formats)):
            model, compiled = format_model(args, fmt, device, fuse), False
            for mode in modes if cuda else ("eager",):
                if mode != "eager" and not compiled:
                    torch._dynamo.reset()
                    for block in model.blocks:
                        block.compile()
                    compiled = True
                run = ev.Args(limit=prompts, batch_size=prompts, device=device, cuda_graph=mode == "graph")
                _, gen_length, _, block = ev.GEN["humaneval"]  # compilation, autotuning and first calls at these
                ev.completions(model, tok, texts, "humaneval", dataclasses.replace(run, steps=gen_length // block),
                               device)  # shapes, untimed: one step per block, the same canvas
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                _, _, speed = ev.completions(model, tok, texts, "humaneval", run, device)
                mc = None
                if mode != "graph" and mc_items:
                    score = functools.partial(ev.multiple_choice("arc_easy"), model, tok,
                                              ev.Args(limit=mc_items, device=device), device)
                    score()  # its lengths' compilation and the GEMMs' autotuning, untimed: a full run amortises them
                    t0 = time.time()
                    score()
                    mc = time.time() - t0
                base.setdefault(mode, speed["seconds"])
                row = {"model": name, "format": fmt, "mode": mode, **speed, "mfu": speed["tflops"] / peak,
                       "mc_s": mc, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
                rows.append(row)
                print(f"| {name} | {fmt} | {mode} | {speed['seconds']:.1f} | {speed['tokens_per_s']:.0f} | "
                      f"{speed['tflops']:.1f} | {row['mfu']:.0%} | {base[mode] / speed['seconds']:.2f}x | "
                      + ("n/a | n/a" if mc is None else f"{mc:.1f} | {mc_items / mc:.1f}") +
                      (f" | {row['peak_gib']:.1f} |" if cuda else " | n/a |"), flush=True)
            model = None
            release(device)
    return rows


# ------------------------------------------------------------------------------------------------ calibrate
CALIBRATE = {  # cell: calibrate.py flags, each method at its headline setting (the papers' and the README's)
    "rtn-w4": "--method rtn --wbits 4 --group_size 128", "gptq-w4": "--method gptq --wbits 4 --group_size 128",
    "awq-w4": "--method awq --wbits 4 --group_size 128",
    "smoothquant-w8a8": "--method smoothquant --bits 8", "smoothquant-w4a4": "--method smoothquant --bits 4",
    "quarot-w8a8": "--method quarot --bits 8", "quarot-w4a4": "--method quarot --bits 4",
    "duquant-w8a8": "--method duquant --bits 8", "duquant-w4a4": "--method duquant --bits 4",
    "quarot-gptq-w4a4": "--method quarot,gptq --bits 4",
    "dllmquant-w4a4-trajectory": "--method dllmquant --bits 4 --calib_mode trajectory",
    "quantdllm-w2-masked": "--method quantdllm --wbits 2 --calib_mode masked",
    "gptq-w4-masked": "--method gptq --wbits 4 --group_size 128 --calib_mode masked",
    "gptq-w4-trajectory": "--method gptq --wbits 4 --group_size 128 --calib_mode trajectory"}
GOALS = {"wall_s": 600, "gpu_gib": 24, "rss_ratio": 1.6}  # per cell: 10 minutes, a 24 GB card, 1.6x the checkpoint
LLADA_SPECIALS = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>",
                  126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"}
ROOT = os.path.dirname(os.path.abspath(__file__))


def llada_tokenizer(qwen_json):
    """tokenizer.json text with LLaDA-8B's vocabulary size and special ids, for timing only (LLaDA's own tokenizer
    cannot be downloaded here): the Qwen2.5 byte-level BPE cut to its first 126,080 ids (every byte and the
    earliest merges, keeping the merges whose parts and result survive), LLaDA's special tokens at LLaDA's ids and
    a reserved token at every other id up to the vocabulary size (the tokenizers library numbers added tokens
    consecutively, so a gap would move the special ones)."""
    t = json.loads(qwen_json)
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < min(LLADA_SPECIALS)}
    pair = (lambda m: m.split(" ", 1)) if isinstance(t["model"]["merges"][0], str) else (lambda m: m)
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = [m for m in t["model"]["merges"]
                            if all(p in vocab for p in pair(m)) and "".join(pair(m)) in vocab]
    t["added_tokens"] = [{"id": i, "content": LLADA_SPECIALS.get(i, f"<|reserved_{i}|>"), "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                         for i in range(min(LLADA_SPECIALS), SHAPES["LLaDA-8B"].vocab_size)]
    return json.dumps(t, ensure_ascii=False)


def write_tokenizer(args, path):
    """The checkpoint's tokenizer: Dream's own (the Qwen2.5 BPE in data/qwen2.5), LLaDA's stand-in otherwise."""
    with gzip.open(os.path.join(ROOT, "data", "qwen2.5", "tokenizer.json.gz"), "rt", encoding="utf-8") as f:
        qwen = f.read()
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(qwen if args.family == "dream" else llada_tokenizer(qwen))
    config = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mdm_mask|>"}
    if args.family == "dream":
        with open(os.path.join(ROOT, "data", "qwen2.5", "tokenizer_config.json")) as f:
            config = json.load(f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def stand_in_tokenizer(args):
    """The tokenizer write_tokenizer gives a checkpoint of this family, as a tokenizers.Tokenizer."""
    from tokenizers import Tokenizer
    with gzip.open(os.path.join(ROOT, "data", "qwen2.5", "tokenizer.json.gz"), "rt", encoding="utf-8") as f:
        qwen = f.read()
    return Tokenizer.from_str(qwen if args.family == "dream" else llada_tokenizer(qwen))


def random_checkpoint(name, args, folder):
    """folder/<name>: a random bf16 checkpoint in the family's real layout with a tokenizer, written once (under
    a temporary name, renamed when complete) and reused."""
    path = os.path.join(folder, name)
    if not os.path.isfile(os.path.join(path, "config.json")):
        write_sharded(args, path + ".partial")
        write_tokenizer(args, path + ".partial")
        os.replace(path + ".partial", path)
    return path


class DeviceMemory:
    """The GPU memory nvidia-smi reports for one process (its CUDA context and the allocator's cache included),
    polled in a thread: peak() is its highest reading in GiB. Where nvidia-smi lists no process of that id (another
    PID namespace), the whole GPU's used memory above the reading at start stands in: right only while no other
    process uses the GPU."""

    def __init__(self, pid, every=0.5):
        self.pid, self.ok, self.stop = str(pid), shutil.which("nvidia-smi") is not None, threading.Event()
        self.own, self.whole = 0.0, 0.0
        self.base = self.read()[1] if self.ok else 0.0
        self.thread = threading.Thread(target=self.poll, args=(every,), daemon=True)
        self.thread.start()

    @staticmethod
    def query(what):
        """nvidia-smi's csv answer to one --query-* flag on GPU 0, line by line."""
        return subprocess.run(["nvidia-smi", what, "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True).stdout.split("\n")

    def read(self):
        """(this process's MiB, or None if nvidia-smi does not list it; the whole GPU's MiB)."""
        own = [float(r.split(",")[1]) for r in self.query("--query-compute-apps=pid,used_memory")
               if r.split(",")[0] == self.pid]
        whole = self.query("--query-gpu=memory.used")[0]
        return (own[0] if own else None), (float(whole) if whole.strip() else 0.0)

    def poll(self, every):
        while self.ok and not self.stop.wait(every):
            self.sample()

    def sample(self):
        """One reading folded into the peaks."""
        own, whole = self.read()
        self.own, self.whole = max(self.own, own or 0.0), max(self.whole, whole)

    def peak(self):
        self.stop.set()
        self.thread.join()
        if not self.ok:
            return None, False
        return (self.own if self.own else max(self.whole - self.base, 0.0)) / 1024, not self.own


def calibrate_cell(ckpt, flags, out, extra=(), limit_s=0):
    """Runs calibrate.py as a user would (its own process, its progress echoed to stderr) and measures it: wall
    seconds, seconds per block, peak GPU memory (torch's allocator, as calibrate.py prints it, and the device's
    view), the process's peak RSS (wait4's ru_maxrss: at least this small parent's RSS at the fork, well under the
    model's) and the output checkpoint's size. limit_s > 0 stops the run after that many seconds; the row then
    says how many blocks it finished and at what pace."""
    cmd = [sys.executable, os.path.join(ROOT, "calibrate.py"), "--model", ckpt, "--out", out, "--overwrite",
           *flags.split(), *extra]
    t0, lines = time.time(), []
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    device = DeviceMemory(p.pid)
    stopped = threading.Event()
    timer = threading.Timer(limit_s, lambda: stopped.set() or p.kill())
    if limit_s > 0:
        timer.start()
    for line in p.stdout:
        lines.append(line)
        print(f"    {line}", end="", file=sys.stderr, flush=True)
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode, wall, log = os.waitstatus_to_exitcode(status), time.time() - t0, "".join(lines)
    return {"ok": p.returncode == 0, "error": "" if p.returncode == 0 else lines[-1].strip() if lines else "",
            "stopped": stopped.is_set() and p.returncode != 0, "wall_s": wall, **read_log(log),
            **dict(zip(("device_gib", "device_whole"), device.peak(), strict=True)),
            "rss_gib": usage.ru_maxrss / 2**20, "out_gib": dir_gib(out) if p.returncode == 0 else None}


def read_log(log):
    """What calibrate.py's output says: blocks done of all, seconds a block, torch's peak GPU memory allocated and
    the most its allocator held (GiB; None where absent: on the CPU, or a run stopped before its last line)."""
    blocks = re.findall(r"block\s+(\d+)/(\d+) \|.*?\|\s+([\d.]+) s", log)  # done, total, seconds since the walk began
    gpu = re.search(r"peak GPU memory ([\d.]+) GiB(?: \(the allocator held ([\d.]+) GiB\))?", log)
    return {"blocks": (int(blocks[-1][0]), int(blocks[-1][1])) if blocks else None,
            "block_s": float(blocks[-1][2]) / int(blocks[-1][0]) if blocks else None,
            "gpu_gib": float(gpu.group(1)) if gpu else None,
            "held_gib": float(gpu.group(2)) if gpu and gpu.group(2) else None}


def dir_gib(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)) / 2**30


def calibrate_bench(shapes, cells, folder, extra=(), limit_s=0):
    """One markdown row per (model, cell) against GOALS; the random checkpoints are written once into folder. A
    cell stopped at limit_s seconds reads 'stopped' with the blocks it finished and their pace."""
    fmt = lambda v, spec, unit: "n/a" if v is None else format(v, spec) + unit  # noqa: E731
    print("| model | cell | flags | wall | per block | peak GPU, allocated (held) | peak GPU, device | peak host RSS "
          "(x checkpoint) | output | goals |\n" + "|---" * 10 + "|", flush=True)
    rows = []
    for name, args in shapes.items():
        ckpt = random_checkpoint(name, args, folder)
        size = sum(os.path.getsize(os.path.join(ckpt, n)) for n in os.listdir(ckpt) if n.endswith(".safetensors"))
        for cell in cells:
            r = calibrate_cell(ckpt, CALIBRATE[cell], os.path.join(folder, f"{name}-{cell}"), extra, limit_s)
            ratio = r["rss_gib"] / (size / 2**30)
            missed = [g for g, bad in (("time", r["wall_s"] > GOALS["wall_s"]), ("GPU", (r["gpu_gib"] or 0) > GOALS[
                "gpu_gib"]), ("host", ratio > GOALS["rss_ratio"])) if bad]
            goals = ("met" if not missed else "missed: " + ", ".join(missed)) if r["ok"] else f"FAILED: {r['error']}"
            if r["stopped"]:
                done = "before its first block" if not r["blocks"] else "at block {}/{}".format(*r["blocks"])
                goals = f"stopped after {limit_s:g} s {done}" + (", missed: " + ", ".join(missed) if missed else "")
            held = "" if r["held_gib"] is None else f" (held {r['held_gib']:.1f})"  # the allocator's reserve
            row = (f"| {name} | {cell} | `{CALIBRATE[cell]}` | {r['wall_s']:.0f} s | "
                   f"{fmt(r['block_s'], '.1f', ' s')} | {fmt(r['gpu_gib'], '.1f', ' GiB')}{held} | "
                   f"{fmt(r['device_gib'], '.1f', ' GiB')}{' (whole GPU)' * r['device_whole']} | "
                   f"{r['rss_gib']:.1f} GiB ({ratio:.2f}x) | {fmt(r['out_gib'], '.2f', ' GiB')} | {goals} |")
            print(row, flush=True)
            rows.append({"model": name, "cell": cell, **r, "rss_ratio": ratio})
            for done in (f"{name}-{cell}", f"{name}-{cell}.partial"):  # measured (or stopped): free the disk
                shutil.rmtree(os.path.join(folder, done), ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------------------------ step profile
KERNELS = (  # (category, pattern of the GPU kernel's name), first match wins
    ("quantized GEMM", r"_wa_gemm|_wq_gemm|_factored|_dequant"),  # kernels/wa_gemm.py, wq_gemm.py, wq_factored.py
    ("activation quantizer", r"_quant_rows|_rotate_quant"),  # kernels/act_quant.py
    ("attention", r"flash|fmha|attention|sdpa|efficient"),
    ("dense GEMM", r"gemm|gemv|splitKreduce|nvjet|cutlass|xmma|sm90_|ampere_"),  # bf16 Linears; the head in all
    ("compiled fusions", r"^triton_"),  # torch.compile's own: RMSNorm, RoPE, SwiGLU, residual adds
    ("other", r""))  # the sampler (argmax, top-k, masks), copies into the graph's buffers, eager elementwise


SYNCS = ("aten::_local_scalar_dense", "aten::nonzero")  # .item() / int(tensor), and boolean indexing: the host waits


def gpu_kernels(events):
    """(name, microseconds) of the work a profile saw on the GPU: kernels, copies and fills. The GPU rows also carry
    user annotations (ProfilerStep#n, compiled regions) spanning whole steps: counted, they made "other" larger
    than the step itself (H200, 2026-12-06), so they are left out."""
    return [(e.name, e.time_range.elapsed_us()) for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]


def kernel_category(name):
    return next(c for c, pattern in KERNELS if re.search(pattern, name, re.IGNORECASE))


def step_breakdown(kernels, steps, wall_s, ops=()):
    """kernels: (name, microseconds) of every GPU kernel in a generation of `steps` steps that took wall_s seconds
    unprofiled -> ms per step: the wall, each category's kernel time, their sum (busy) and wall - busy (idle: the
    GPU waits on the host). Kernels of one stream do not overlap, so their sum is the time the GPU was busy. ops:
    the names of the torch operators the host ran, of which SYNCS make it wait for the GPU (syncs: per step)."""
    ms = {c: 0.0 for c, _ in KERNELS}
    for name, us in kernels:
        ms[kernel_category(name)] += us / 1e3 / steps
    busy = sum(ms.values())
    return {"wall": wall_s * 1e3 / steps, **ms, "busy": busy, "idle": wall_s * 1e3 / steps - busy,
            "syncs": sum(op in SYNCS for op in ops) / steps}


PROFILE_MODES = {"compiled": "compiled", "graph": "compiled + CUDA graph"}
PROFILED = ("bf16", "W8A8-FP8", "W4A8", "W4A8-FP8", "W4A16 g128")  # --step_profile's, unless --formats names some


@torch.no_grad()
def profile_bench(formats=PROFILED, gen_length=256, prompt=64, block=32, args=SHAPES["LLaDA-8B"], device="cuda",
                  fuses=("quantized",), modes=("compiled", "graph"), top=8):
    """Where a denoising step's time goes: one generation of the LLaDA-8B shape (gen_length tokens, as many steps,
    blocks of `block`) per format with compiled blocks, launched from Python and replayed from CUDA graphs
    (sample.Graphed), timed, then run again with torch.profiler recording the steps of one block (from step
    block + 3 on: past the first block and two warm-up steps); every GPU kernel it records is put in a KERNELS
    category. The rows give ms per step; idle is the unprofiled wall per step minus the kernels' sum, the time the
    GPU waits on the host, and host syncs counts the operators per step that make the host wait for the GPU
    (SYNCS), after which it launches the next work. Each format runs once per fuses entry (q/k/v and gate/up apart
    or fused: FUSE). Then, per row with CUDA graphs, the `top` kernels that took longest. On the CPU (tests): eager
    only, and no kernel times."""
    from sample import Graphed, generate
    if gen_length < 2 * block + 2:  # the recorded window: a first block skipped, two warm-up steps, a block
        raise ValueError(f"profile_bench: gen_length {gen_length} < 2 x block {block} + 2 steps")
    cuda, cols = device == "cuda", [c for c, _ in KERNELS]
    acts = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    where = f"{torch.cuda.get_device_name()}  torch {torch.__version__}" if cuda else f"CPU, torch {torch.__version__}"
    shape = next((n for n, a in SHAPES.items() if a == args), f"a small {args.family}")
    print(f"{where}; {shape} shape, batch 1, prompt {prompt}, gen {gen_length}, {gen_length} steps, blocks of "
          f"{block}, low confidence; ms per step\n")
    print("| format | projections | mode | generation s | step | " + " | ".join(cols) + " | busy | idle | host syncs "
          "|\n" + "|---" * (len(cols) + 8) + "|", flush=True)
    ids, rows = torch.randint(0, args.vocab_size - 1, (1, prompt), device=device), []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fmt, fuse in itertools.product(formats, fuses):
        model = format_model(args, fmt, device, fuse)
        torch._dynamo.reset()
        for b in model.blocks if cuda else ():
            b.compile(dynamic=False)
        for mode in [PROFILE_MODES[m] for m in modes] if cuda else ["eager"]:
            runner = Graphed(model) if mode.endswith("CUDA graph") else model
            run = functools.partial(generate, runner, ids, gen_length=gen_length, steps=gen_length,
                                    block_length=block)
            run()  # compilation, autotuning and graph capture outside the timed region
            sync()
            t0 = time.time()
            run()
            sync()
            wall = time.time() - t0
            window = torch.profiler.schedule(wait=block, warmup=2, active=block, repeat=1)  # one token a step
            with torch.profiler.profile(activities=acts, schedule=window) as prof:
                run(on_step=lambda *_: prof.step())
                sync()
            events = prof.events()
            kernels = gpu_kernels(events)
            r = step_breakdown(kernels, block, wall / gen_length * block, [e.name for e in events])
            rows.append({"format": fmt, "projections": fuse, "mode": mode, "seconds": wall, **r,
                         "top": top_kernels(kernels, block, top)})
            cells = " | ".join(f"{r[c]:.2f}" for c in [*cols, "busy", "idle"]) if kernels else \
                " | ".join(["n/a"] * len(cols)) + " | n/a (the profiler recorded no kernels) | n/a"
            print(f"| {fmt} | {fuse} | {mode} | {wall:.2f} | {r['wall']:.2f} | {cells} | {r['syncs']:.1f} |",
                  flush=True)
        model = runner = run = None  # run and runner hold the model and its CUDA graphs
        release(device)
    for r in rows if cuda else ():
        if r["mode"] != "compiled":
            print(f"\n{r['format']}, projections {r['projections']}, {r['mode']}: the {top} longest kernels, ms "
                  "per step (calls per step)")
            for name, ms, calls in r["top"]:
                print(f"  {ms:6.3f}  ({calls:5.1f})  {name[:110]}")
    return rows


def top_kernels(kernels, steps, n):
    """The n GPU kernels of the longest total time: (name, ms per step, calls per step)."""
    total, calls = collections.Counter(), collections.Counter()
    for name, us in kernels:
        total[name] += us / 1e3 / steps
        calls[name] += 1 / steps
    return [(name, ms, calls[name]) for name, ms in total.most_common(n)]


def peak_rss_gib():
    """This process's high-water RSS (VmHWM): anonymous memory plus the mapped file pages the weights sit in.
    Unlike ru_maxrss, which Linux carries over from the parent across fork + exec, it starts fresh at exec."""
    return next(int(s.split()[1]) for s in open("/proc/self/status") if s.startswith("VmHWM")) / 2**20


def memory_probe(path, device):
    """(run in a fresh process) load(), touch every weight, print the peak host RSS as JSON."""
    base, t = peak_rss_gib(), time.time()
    model = load(path, torch.bfloat16, device)
    checksum = sum(float(p.sum()) for p in model.parameters())  # pages every weight in, without a copy
    seconds = time.time() - t
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    print(json.dumps({"device": device, "weights_gib": size, "base_gib": base, "peak_rss_gib": peak_rss_gib(),
                      "seconds": seconds, "checksum": checksum}))


def load_memory(path):
    if not os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        write_sharded(SHAPES["LLaDA-8B"], path)
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        out = subprocess.run([sys.executable, __file__, "--probe", path, "--device", device],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"load(bf16, {device}) + touch every weight: weights {r['weights_gib']:.2f} GiB, peak host RSS "
              f"{r['peak_rss_gib']:.2f} GiB ({r['peak_rss_gib'] / r['weights_gib']:.2f}x; python + torch alone "
              f"{r['base_gib']:.2f} GiB), {r['seconds']:.1f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Help", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    p.add_argument("--forward", action="store_true", help="forward throughput at 8B shapes (needs CUDA)")
    p.add_argument("--load_memory", action="store_true", help="peak host memory of load() for LLaDA-8B bf16 (writes "
                   "a 15 GiB random checkpoint in --dir first, if it is not there)")
    p.add_argument("--gptq", action="store_true", help="GPTQ W4 of an LLaDA-8B-shaped model, 128 x 2048 tokens (CUDA)")
    p.add_argument("--quantized", action="store_true", help="bf16 vs quantized formats end to end at 8B shapes (CUDA)")
    p.add_argument("--eval", action="store_true", help="eval.py's HumanEval generation and ARC-Easy likelihood at "
                   "8B shapes: bf16 and FP8, eager / compiled / CUDA graph, tokens/s and MFU (CUDA)")
    p.add_argument("--step_profile", action="store_true", help="where a 256-token LLaDA-8B generation step's time "
                   "goes, per --formats, by GPU kernel category (CUDA)")
    p.add_argument("--calibrate", action="store_true", help="every method's calibrate.py at its headline setting on "
                   "random 8B-shaped checkpoints: time, memory, size against the goals (CUDA; writes 31 GiB to "
                   "--ckpt_dir)")
    p.add_argument("--modes", default=",".join(MODES), help="--eval: which of " + ", ".join(MODES) + " (graph: "
                   "compiled, each generation step replayed from a CUDA graph); --step_profile: compiled and/or graph")
    p.add_argument("--prompts", type=int, default=8, help="--eval: HumanEval prompts generated in one batch")
    p.add_argument("--mc_items", type=int, default=50, help="--eval: ARC-Easy items scored by likelihood (0: none)")
    p.add_argument("--cells", default=",".join(CALIBRATE), help="--calibrate: which of " + ", ".join(CALIBRATE))
    p.add_argument("--cell_limit", type=float, default=0, help="--calibrate: stop a cell after this many seconds "
                   "and report the blocks it finished (0: no limit)")
    p.add_argument("--gpu_cap", type=float, default=0, help="--calibrate: run each cell under calibrate.py "
                   "--gpu_memory_gib GIB, as on a card of that size (0: the whole GPU)")
    p.add_argument("--ckpt_dir", default="/tmp/dllmq-bench", help="--calibrate: where the random checkpoints (written "
                   "once, about 15 GiB each) and each cell's output (removed once measured) go")
    p.add_argument("--models", default=",".join(SHAPES), help="--quantized, --calibrate: which of " +
                   ", ".join(SHAPES))
    p.add_argument("--formats", default="all", help="--quantized, --eval, --step_profile: which of " +
                   ", ".join(FORMATS) + "; all: every one for --quantized and --eval, " + ", ".join(PROFILED) +
                   " for --step_profile")
    p.add_argument("--fuse", default="quantized", help="--quantized, --eval, --step_profile: q/k/v and gate/up as "
                   "eval.py and sample.py run them, fused into one GEMM each for quantized layers (quantized), for "
                   "every layer (all), or apart; --step_profile takes several, comma-separated")
    p.add_argument("--dir", default="/tmp/llada8b-random", help="--load_memory: where the random LLaDA-8B checkpoint "
                   "lives (about 15 GiB; remove it when done)")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    opts = p.parse_args()
    formats = opts.formats.split(",") if opts.formats != "all" else list(FORMATS)
    if opts.probe:
        memory_probe(opts.probe, opts.device)
    elif not (opts.forward or opts.load_memory or opts.gptq or opts.quantized or opts.eval or opts.calibrate or
              opts.step_profile):
        p.error("give --forward, --load_memory, --gptq, --quantized, --eval, --step_profile and/or --calibrate")
    if opts.step_profile and not set(opts.modes.split(",")) & set(PROFILE_MODES):
        p.error(f"--modes {opts.modes}: --step_profile runs compiled and/or graph")
    if "," in opts.fuse and (opts.quantized or opts.eval):
        p.error(f"--fuse {opts.fuse}: --quantized and --eval take one of {', '.join(FUSE)}")
    if opts.gpu_cap < 0:
        p.error(f"--gpu_cap {opts.gpu_cap:g}: expected GiB > 0, or 0 for the whole GPU")
    for flag, given, known in (("--models", opts.models, SHAPES), ("--formats", ",".join(formats), FORMATS),
                               ("--cells", opts.cells, CALIBRATE), ("--modes", opts.modes, MODES),
                               ("--fuse", opts.fuse, FUSE)):
        if set(given.split(",")) - set(known):
            p.error(f"{flag}: {', '.join(sorted(set(given.split(',')) - set(known)))} not in {', '.join(known)}")
    if opts.forward:
        forward_bench()
    if opts.load_memory:
        load_memory(opts.dir)
    if opts.gptq:
        gptq_bench()
    if opts.quantized:
        quantized_bench(opts.models.split(","), formats, fuse=opts.fuse)
    if opts.eval:
        eval_bench({m: SHAPES[m] for m in opts.models.split(",")}, formats, opts.prompts,
                   opts.mc_items, modes=opts.modes.split(","), fuse=opts.fuse)
    if opts.step_profile:
        profile_bench(formats if opts.formats != "all" else PROFILED, fuses=opts.fuse.split(","),
                      modes=[m for m in opts.modes.split(",") if m != "eager"])
    if opts.calibrate:
        cap = ("--gpu_memory_gib", str(opts.gpu_cap)) if opts.gpu_cap else ()
        calibrate_bench({m: SHAPES[m] for m in opts.models.split(",")}, opts.cells.split(","), opts.ckpt_dir, cap,
                        limit_s=opts.cell_limit)
