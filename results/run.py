"""
The results tables, cell by cell: each cell quantizes a model with calibrate.py, scores it with eval.py and writes
results/tiny/<model>/<cell>.json (or results/mini-dream/<run>/<cell>.json) with the numbers, the commands, the bits
per weight of the Linear layers counted from the checkpoint's bytes and the checkpoint's size. The bundled tiny
models are scored on arithmetic (500) + wiki_nll (299 windows x 8 masks); mini-Dream-0.5B (not bundled:
results/mini-dream/README.md) on HumanEval (164, gen/steps/block 256/256/32, entropy) + wiki_nll (211 windows x 8
masks). One HumanEval run keeps an H100 busy for ~90 s, so parallel mini-Dream cells only share the GPU: --jobs 2
overlaps calibration with scoring, and --nll_only measures the whole grid's NLL first (~1 min a cell); a later run
without it redoes those cells with HumanEval (calibration included). --run names an adaptation's folder
(results/mini-dream/<run>: a, b, c hold runs A, B, C); --cache_weights scores weight-only layers through their
dequantized weight (eval.py --cache_weights).

    python results/run.py --device cuda --jobs 12          # every missing tiny-model cell (one H100: ~8 min)
    python results/run.py --only w4a4 --redo               # the cells whose name contains w4a4, again
    python results/run.py --models mini-dream --mini_dream /tmp/mini-dream --run d --nll_only --jobs 3
    python results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --jobs 2 \
        --run c --cache_weights
    python results/run.py --table tiny                     # the tables of results/tiny/README.md, from the JSON
    python results/run.py --table mini-dream               # ... of results/mini-dream/README.md
    python results/run.py --table headline                 # ... of the README's results
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import stats  # noqa: E402  (the project's root, added just above)

MODELS = ("tiny-llada", "tiny-dream")
# mini-Dream's cells: the study's grid at W4/W3 weight-only, W8A8 and W4A4, DLLMQuant, and W2; masked or trajectory
# calibration where the papers say it matters.
MINI = ("float", "w4-rtn", "w4-gptq", "w4-awq", "w3-rtn", "w3-gptq", "w3-awq", "w3-gptq-masked", "w8a8-rtn",
        "w8a8-smoothquant-clean", "w8a8-quarot-clean", "w8a8-duquant-clean", "w4a4-rtn", "w4a4-smoothquant-clean",
        "w4a4-quarot-clean", "w4a4-duquant-clean", "w4a4-quarot-masked", "w4a4-quarot-gptq-clean",
        "w4a4-quarot-dllmquant-trajectory", "w2-gptq-clean", "w2-quantdllm-clean", "w2-quantdllm-masked")
SAME = {"w4a4-quarot-masked": "w4a4-quarot-clean"}  # QuaRot with RTN weights reads no calibration data
WA = "--group_size -1"  # weights per channel with activations (what integer GEMMs need), as the WA methods default


def cells():
    """Cell name -> calibrate.py flags (None: the float model). Slow cells first, so a parallel run ends sooner."""
    c = {}
    for m in ("duquant", "smoothquant", "quarot"):
        for b in (8, 4):
            for mode in ("clean", "masked"):
                c[f"w{b}a{b}-{m}-{mode}"] = f"--method {m} --bits {b} --calib_mode {mode}"
    # side by side with the defaults: QuaRot's rotation of o_proj's input within each head only (no online head mix),
    # and statistics through the quantized blocks instead of the float ones
    c["w4a4-quarot-perhead-clean"] = "--method quarot --bits 4 --no-online_heads --calib_mode clean"
    c["w4a4-quarot-gptq-perhead-clean"] = "--method quarot,gptq --bits 4 --no-online_heads --calib_mode clean"
    c["w4a4-smoothquant-quantstats-clean"] = "--method smoothquant --bits 4 --no-float_stats --calib_mode clean"
    c["w3-awq-quantstats"] = "--method awq --wbits 3 --no-float_stats"
    for mode in ("clean", "masked"):
        c[f"w2-quantdllm-{mode}"] = f"--method quantdllm --wbits 2 --calib_mode {mode}"
        c[f"w2-gptq-{mode}"] = f"--method gptq --wbits 2 --calib_mode {mode}"
    for mode in ("clean", "trajectory"):
        c[f"w4a4-quarot-dllmquant-{mode}"] = f"--method quarot,dllmquant --bits 4 --calib_mode {mode}"
        c[f"w4a4-awq-dllmquant-{mode}"] = f"--method awq,dllmquant --bits 4 --calib_mode {mode}"
        c[f"w4a4-quarot-gptq-v4-{mode}"] = f"--method quarot,gptq --bits 4 --v_bits 4 --calib_mode {mode}"
        c[f"w4a4-quarot-gptq-{mode}"] = f"--method quarot,gptq --bits 4 --calib_mode {mode}"
        c[f"w4a4-awq-{mode}"] = f"--method awq --wbits 4 --abits 4 {WA} --calib_mode {mode}"
    for mode in ("masked", "trajectory"):
        c[f"w3-gptq-{mode}"] = f"--method gptq --wbits 3 --calib_mode {mode}"
    for b in (4, 3):
        for m in ("awq", "gptq", "rtn"):
            c[f"w{b}-{m}"] = f"--method {m} --wbits {b}"
    c["w2-rtn"] = "--method rtn --wbits 2"
    for m in ("rtn", "gptq", "awq"):  # W4A8: 4-bit weights per channel, 8-bit activations per token (wa_gemm's w4a8)
        c[f"w4a8-{m}"] = f"--method {m} --wbits 4 --abits 8 {WA}"
    c["w4a8-quarot-clean"] = "--method quarot --wbits 4 --abits 8 --calib_mode clean"
    for m in ("rtn", "gptq", "awq"):  # W4A8 in groups of 128 (the W4A8 kernels do not take it: what groups would buy)
        c[f"w4a8g128-{m}"] = f"--method {m} --wbits 4 --abits 8 --group_size 128"
    for m in ("rtn", "gptq"):  # W4A8 with W4A8-FP8's symmetric grid, int8 activations: what e4m3 ones cost
        c[f"w4a8sym-{m}"] = f"--method {m} --wbits 4 --abits 8 --sym {WA}"
    for m in ("rtn", "gptq", "awq"):  # W4A8-FP8: symmetric 4-bit weights -7..7, e4m3 activations (wa_gemm's w4f8)
        c[f"w4a8fp8-{m}"] = f"--method {m} --wbits 4 --abits 8 --fp8 --sym {WA}"
    c["w4a8fp8-quarot-clean"] = "--method quarot --wbits 4 --abits 8 --fp8 --sym --calib_mode clean"
    for b in (8, 4):
        c[f"w{b}a{b}-rtn"] = f"--method rtn --wbits {b} --abits {b} {WA}"
    c["float"] = None
    return c


def linear_bits(ckpt):
    """Bits per weight of the quantized Linears: every tensor they need (codes or sign planes, scales, zeros, and
    their online rotations, each shared one once, as the checkpoint stores it; not bias) over their weight count."""
    import torch

    import model as M
    from quantizers.core import BinaryLinear, QLinear
    floats = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    with M._open(next(iter(M.tensor_files(ckpt).values()))) as f:  # load in the stored float dtype (from the header)
        dtype = next(floats[d] for d in (f.get_slice(k).get_dtype() for k in f.keys()) if d in floats)
    layers = [m for m in M.load(ckpt, dtype).modules() if isinstance(m, (QLinear, BinaryLinear))]
    tensors = {b.data_ptr(): b for m in layers for b in m.buffers()}  # tied rotations: one tensor
    stored = sum(b.numel() * b.element_size() for b in tensors.values())
    return 8 * stored / sum(m.in_features * m.out_features for m in layers) if layers else None


def commands(model, flags, ckpt, args):
    """calibrate.py (unless float) and eval.py command lines of a cell. The tiny models run in float32 throughout;
    mini-Dream runs in bfloat16, as it was trained and as its float baseline is stored and scored."""
    common = f"--device {args.device} --dtype float32"
    if model == "mini-dream":
        src, common = args.mini_dream, f"--device {args.device} --dtype bfloat16"
        score = f"{common} --tasks wiki_nll" if args.nll_only else (
            f"{common} --tasks humaneval,wiki_nll --data_dir {args.tasks_dir} --gen_length 256 --steps 256 "
            "--block_length 32 --batch_size 41 --allow_code_exec --workers 4")
        score += " --cache_weights" if flags is not None and args.cache_weights else ""
    else:
        src, score = f"assets/{model}", common
    cmds = [] if flags is None else [f"python calibrate.py --model {src} {flags} {common} --nll_windows 0 --overwrite "
                                     f"--out {ckpt}"]
    return cmds + [f"python eval.py --model {src if flags is None else ckpt} {score} --out {ckpt}.eval.json"]


def checkpoint_mib(path):
    return round(sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))
                 / 2 ** 20, 1)


def folder_of(model, run=""):
    """Where a model's cells live, under results/."""
    return os.path.join("mini-dream", run) if model == "mini-dream" else os.path.join("tiny", model)


def run_cell(model, name, flags, args):
    folder = folder_of(model, args.run)
    out, task = os.path.join(HERE, folder, f"{name}.json"), "humaneval" if model == "mini-dream" else "arithmetic"
    if os.path.isfile(out) and not args.redo and (args.nll_only or load(folder, name)[task] is not None):
        return f"{model}/{name}: kept"
    ckpt = os.path.join(args.scratch, model, name)
    cmds, score = commands(model, flags, ckpt, args), f"{ckpt}.eval.json"
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)  # the float cell calibrates nothing that would make it
    src = args.mini_dream if model == "mini-dream" else os.path.join(ROOT, "assets", model)
    t0, log = time.time(), []
    for cmd in cmds:
        p = subprocess.run(cmd.replace("python ", f"{sys.executable} ", 1).split(), cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        log.append(p.stdout + p.stderr)
        if p.returncode:
            return f"{model}/{name}: FAILED ({cmd})\n{p.stderr[-2000:]}"
    with open(score) as f:
        scored = [{**r, "model": f"{model}/{name}"} for r in json.load(f)]  # with every item's outcome (and path)
    records = {r["task"]: r for r in scored}
    result = {"model": model, "cell": name, "flags": flags, "device": args.device_name,
              "date": time.strftime("%Y-%m-%d"),
              task: records[task]["value"] if task in records else None, "wiki_nll": records["wiki_nll"]["value"],
              "wiki_nll_stderr": records["wiki_nll"]["stderr"], "seconds": round(time.time() - t0, 1),
              "bits_per_weight": None if flags is None else linear_bits(ckpt),
              "checkpoint_mib": checkpoint_mib(src if flags is None else ckpt),
              "commands": [c.replace(args.scratch, "$SCRATCH").replace(args.mini_dream, "$MINI_DREAM")
                           .replace(args.tasks_dir, "$TASKS") for c in cmds],
              "calibrate_log": log[0][-3000:] if flags is not None else "", "records": scored}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    score = "n/m" if result[task] is None else f"{result[task]:.1%}"
    return f"{model}/{name}: {score} / {result['wiki_nll']:.4f} ({result['seconds']:.0f} s)"


def load(model, name):
    path = os.path.join(HERE, model, f"{name}.json")
    return json.load(open(path)) if os.path.isfile(path) else None


# What the code computes differently since the tiny grid's run of 2026-11-22 (on the H100): QuaRot's head mix, the
# float statistics of AWQ / SmoothQuant / DuQuant, TMAS's prompt pool, CGQ's weights. A cell of that run whose
# command involves one of them is marked: today's command gives another model.
CHANGED = ("quarot", "awq", "smoothquant", "duquant", "trajectory", "dllmquant")


def earlier(r):
    """True for a tiny-model cell measured before those changes that they affect."""
    return "H100" in r.get("device", "") and any(c in (r["flags"] or "") for c in CHANGED)


@functools.lru_cache(maxsize=None)
def versus_float(model, name):
    """{task: True where the cell differs from its model's float cell significantly at 5%} (paired on the same items:
    McNemar for arithmetic, bootstrap for NLL; stats.py), empty where either cell has no per-item outcomes."""
    r, f = load(folder_of(model), name), load(folder_of(model), "float")
    if name == "float" or r is None or f is None or "records" not in r or "records" not in f:
        return {}
    ref = {x["metric"]: x for x in f["records"]}
    pairs = {x["task"]: stats.paired(ref[x["metric"]], x) for x in r["records"] if x["metric"] in ref}
    return {task: bool(d and d["significant"]) for task, d in pairs.items()}


def cell(model, name, bits=False):
    if name is None:  # a setting the table has no cell for
        return "n/a"
    r = load(folder_of(model), name)
    if r is None:
        return "n/m"
    sig = versus_float(model, name)
    arith, nll = f"{r['arithmetic']:.1%}", f"{r['wiki_nll']:.3f}"
    arith, nll = (f"**{s}**" if sig.get(task) else s for s, task in ((arith, "arithmetic"), (nll, "wiki_nll")))
    text = f"{arith} / {nll}" + (" ‡" if model in MODELS and earlier(r) else "")
    return text + (f" | {r['bits_per_weight']:.2f}" if bits and r["bits_per_weight"] else (" | 32" if bits else ""))


def tables():
    """The tables of results/tiny/README.md, from the JSON files (n/m: not measured)."""
    rows = ["| model | method | W4 | W3 |", "|---|---|---|---|"]
    for model in MODELS:
        rows.append(f"| {model} | float | {cell(model, 'float')} | {cell(model, 'float')} |")
        rows += [f"| | {m.upper()} | {cell(model, f'w4-{m}')} | {cell(model, f'w3-{m}')} |"
                 for m in ("rtn", "gptq", "awq")]
    rows += ["", "| model | GPTQ W3, calibration: clean | masked | trajectory |", "|---|---|---|---|"]
    rows += [f"| {m} | {cell(m, 'w3-gptq')} | {cell(m, 'w3-gptq-masked')} | {cell(m, 'w3-gptq-trajectory')} |"
             for m in MODELS]
    rows += ["", "| model | method | W8A8 clean | W8A8 masked | W4A4 clean | W4A4 masked |", "|---" * 6 + "|"]
    for model in MODELS:
        f = cell(model, "float")
        rows.append(f"| {model} | float | {f} | {f} | {f} | {f} |")
        rows.append(f"| | RTN | {cell(model, 'w8a8-rtn')} | (same) | {cell(model, 'w4a4-rtn')} | (same) |")
        for m, label in (("smoothquant", "SmoothQuant"), ("quarot", "QuaRot"), ("duquant", "DuQuant")):
            rows.append(f"| | {label} | " + " | ".join(
                "(same)" if m == "quarot" and mode == "masked" else cell(model, f"w{b}a{b}-{m}-{mode}")
                for b in (8, 4) for mode in ("clean", "masked")) + " |")  # QuaRot with RTN reads no data
    rows += ["", "| model | setting | method | calibration | arith. / NLL | bits / weight |", "|---" * 6 + "|"]
    for model in MODELS:
        rows.append(f"| {model} | | float | | {cell(model, 'float', True)} |")
        rows.append(f"| | W2 g128 | RTN | (none) | {cell(model, 'w2-rtn', True)} |")
        for m, label in (("gptq", "GPTQ"), ("quantdllm", "Quant-dLLM")):
            rows += [f"| | | {label} | {mode} | {cell(model, f'w2-{m}-{mode}', True)} |"
                     for mode in ("clean", "masked")]
        for i, (m, label) in enumerate((("awq", "AWQ"), ("awq-dllmquant", "AWQ + DLLMQuant"),
                                        ("quarot", "QuaRot (RTN)"), ("quarot-gptq", "QuaRot + GPTQ"),
                                        ("quarot-gptq-v4", "QuaRot + GPTQ, V at 4 bits"),
                                        ("quarot-dllmquant", "QuaRot + DLLMQuant"))):
            for mode in ("clean", "trajectory"):
                name = f"w4a4-{m}-{mode}" if m != "quarot" else "w4a4-quarot-clean"
                if m == "quarot" and mode == "trajectory":
                    continue  # QuaRot with RTN reads no calibration data
                rows.append(f"| | {'W4A4' if i == 0 and mode == 'clean' else ''} | {label} | {mode} | "
                            f"{cell(model, name, True)} |")
    rows += ["", "| model | method | W4 g128 (weight-only) | W4A8 (weights per channel) | W4A8, weights in groups of "
             "128 | W4A8, symmetric weights | W4A8-FP8 (symmetric weights, e4m3 activations) | W8A8 |",
             "|---" * 8 + "|"]
    for model in MODELS:
        rows.append(f"| {model} | float | " + " | ".join([cell(model, "float")] * 6) + " |")
        rows += [f"| | {label} | " + " | ".join(cell(model, n) for n in names) + " |"
                 for label, *names in (("RTN", "w4-rtn", "w4a8-rtn", "w4a8g128-rtn", "w4a8sym-rtn", "w4a8fp8-rtn",
                                        "w8a8-rtn"),
                                       ("GPTQ", "w4-gptq", "w4a8-gptq", "w4a8g128-gptq", "w4a8sym-gptq", "w4a8fp8-gptq",
                                        None),
                                       ("AWQ", "w4-awq", "w4a8-awq", "w4a8g128-awq", None, "w4a8fp8-awq", None),
                                       ("QuaRot", None, "w4a8-quarot-clean", None, None, "w4a8fp8-quarot-clean",
                                        "w8a8-quarot-clean"))]
    rows += ["", "| model | QuaRot W4A4, o_proj rotated within heads | across heads (QuaRot's) | "
             "trajectory calibration: QuaRot + GPTQ | QuaRot + DLLMQuant (CGQ) |", "|---" * 5 + "|"]
    names = ("w4a4-quarot-perhead-clean", "w4a4-quarot-clean", "w4a4-quarot-gptq-trajectory",
             "w4a4-quarot-dllmquant-trajectory")
    rows += [f"| {model} | " + " | ".join(cell(model, n) for n in names) + " |" for model in MODELS]
    return "\n".join(rows)


RUNS = tuple((r.upper(), folder_of("mini-dream", r)) for r in ("a", "b", "c"))


def mini_table(runs=RUNS[:2]):
    """mini-Dream-0.5B, adaptations by one recipe (A, B, C: results/mini-dream/a, b, c): HumanEval pass@1
    (164) and wiki NLL of each, bits per Linear weight, checkpoint MiB. A HumanEval scored in a separate run of the
    cell sits in <cell>.humaneval.json; a dagger marks an NLL scored under other masks (the JSON says why). Where the
    run's float NLL shares the cells' masks, each NLL also gets its change against it."""
    rows = ["| setting | method | calibration | bits / weight | MiB | " +
            " | ".join(f"{r}: HumanEval | {r}: wiki NLL" for r, _ in runs) + " |", "|---" * (5 + 2 * len(runs)) + "|"]
    floats = [load(sub, "float") for _, sub in runs]
    for name in MINI:
        parts, got = name.split("-"), [load(sub, name) for _, sub in runs]
        setting, method = (parts[0].upper(), "-".join(parts[1:])) if name != "float" else ("BF16", "float")
        mode = parts[-1] if parts[-1] in ("clean", "masked", "trajectory") else ""
        method = method.removesuffix(f"-{mode}") if mode else method
        known = next((r for r in got if r is not None), None)
        bits = "16" if name == "float" else f"{known['bits_per_weight']:.2f}" if known else ""
        cols = [bits, f"{known['checkpoint_mib']:.0f}" if known else ""]
        for (_, sub), r, f in zip(runs, got, floats, strict=True):
            if r is None and name in SAME and load(sub, SAME[name]) is not None:
                cols += ["= clean", "= clean"]
                continue
            he = (r or {}).get("humaneval")
            if r is not None and he is None:
                he = (load(sub, f"{name}.humaneval") or {}).get("humaneval")
            nll = "n/m" if r is None else f"{r['wiki_nll']:.3f}" + (" †" if "wiki_nll_masks" in r else "")
            if r is not None and name != "float" and f is not None and "wiki_nll_masks" not in f:
                nll += f" ({r['wiki_nll'] / f['wiki_nll'] - 1:+.1%})"
            cols += ["n/m" if he is None else f"{he:.1%}", nll]
        rows.append(f"| {setting} | {method} | {mode} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


HEADLINE_TINY = [("float", "", "float"), ("W3 g128", "RTN", "w3-rtn"), ("", "GPTQ", "w3-gptq"), ("", "AWQ", "w3-awq"),
                 ("W4A4", "RTN", "w4a4-rtn"), ("", "SmoothQuant", "w4a4-smoothquant-clean"),
                 ("", "QuaRot", "w4a4-quarot-clean"), ("", "DuQuant", "w4a4-duquant-clean"),
                 ("", "QuaRot + GPTQ", "w4a4-quarot-gptq-clean"),
                 ("", "QuaRot + DLLMQuant, trajectory calibration", "w4a4-quarot-dllmquant-trajectory"),
                 ("W2 g128", "RTN", "w2-rtn"), ("", "GPTQ", "w2-gptq-clean"),
                 ("", "Quant-dLLM, masked calibration", "w2-quantdllm-masked")]
HEADLINE_MINI = [("BF16", "float", "float"), ("W4 g128", "RTN", "w4-rtn"), ("", "GPTQ", "w4-gptq"),
                 ("W3 g128", "GPTQ", "w3-gptq"), ("W8A8", "RTN", "w8a8-rtn"), ("W4A4", "RTN", "w4a4-rtn"),
                 ("", "SmoothQuant", "w4a4-smoothquant-clean"), ("", "QuaRot", "w4a4-quarot-clean"),
                 ("", "DuQuant", "w4a4-duquant-clean"), ("", "QuaRot + GPTQ", "w4a4-quarot-gptq-clean"),
                 ("", "QuaRot + DLLMQuant, trajectory calibration", "w4a4-quarot-dllmquant-trajectory"),
                 ("W2 g128", "GPTQ", "w2-gptq-clean"), ("", "Quant-dLLM, masked calibration", "w2-quantdllm-masked")]


def headline():
    """The README's two results tables: a row per method at the settings where methods differ."""
    rows = ["| setting | method | tiny-llada: arithmetic / NLL | tiny-dream: arithmetic / NLL |", "|---|---|---|---|"]
    rows += [f"| {s} | {m} | {cell('tiny-llada', c)} | {cell('tiny-dream', c)} |" for s, m, c in HEADLINE_TINY]
    c_dir, f = RUNS[2][1], load(RUNS[2][1], "float")
    rows += ["", "| setting | method | HumanEval pass@1 | wiki NLL (change) |", "|---|---|---|---|"]
    for s, m, name in HEADLINE_MINI:
        r = load(c_dir, name)
        change = "" if name == "float" else f" ({r['wiki_nll'] / f['wiki_nll'] - 1:+.1%})"
        rows.append(f"| {s} | {m} | {r['humaneval']:.1%} | {r['wiki_nll']:.3f}{change} |")
    return "\n".join(rows)


TABLES = {"tiny": tables, "mini-dream": lambda: mini_table(RUNS[2:]) + "\n\n" + mini_table(RUNS[:2]),
          "headline": headline}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="where calibrate.py and eval.py run (cuda or cpu)")
    p.add_argument("--jobs", type=int, default=4, help="cells run at the same time")
    p.add_argument("--only", default="", help="run only the cells whose name contains one of these (comma-separated)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: bundled models, or mini-dream")
    p.add_argument("--mini_dream", default="/tmp/mini-dream", help="the adapted mini-Dream-0.5B checkpoint folder")
    p.add_argument("--nll_only", action="store_true", help="mini-dream: score wiki_nll only (HumanEval: n/m)")
    p.add_argument("--tasks_dir", default=os.path.join(ROOT, "data", "tasks"),
                   help="mini-dream: eval.py --data_dir holding the full HumanEval (data/tasks has a sample)")
    p.add_argument("--cache_weights", action="store_true",
                   help="mini-dream: eval.py --cache_weights (weight-only layers dequantized once, not every call)")
    p.add_argument("--run", default="", help="mini-dream: the adaptation's results folder under results/mini-dream "
                   "(a, b, c hold runs A, B, C; a new adaptation gets a new name)")
    p.add_argument("--redo", action="store_true", help="run cells whose JSON already exists again")
    p.add_argument("--scratch", default="/tmp/dllmq-cells", help="where the quantized checkpoints go")
    p.add_argument("--table", choices=TABLES, help="print these tables from the JSON files and stop")
    args = p.parse_args()
    if args.table:
        print(TABLES[args.table]())
        return
    models = args.models.split(",")
    for m in models:
        if m not in MODELS + ("mini-dream",):
            sys.exit(f"--models: unknown model {m!r} (expected {', '.join(MODELS)} or mini-dream)")
    if "mini-dream" in models and not os.path.isfile(os.path.join(args.mini_dream, "config.json")):
        sys.exit(f"--mini_dream {args.mini_dream}: no checkpoint there (config.json missing)")
    if "mini-dream" in models and not args.run:
        sys.exit("--run: name the adaptation's results folder under results/mini-dream (a, b, c are taken)")
    import torch
    args.device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    work = [(m, n, f) for n, f in cells().items() for m in models
            if any(o in n for o in args.only.split(",")) and (n in MINI if m == "mini-dream" else m in MODELS)]
    print(f"{len(work)} cells on {args.device_name}, {args.jobs} at a time", flush=True)
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:  # a line per cell as it finishes
        for done in as_completed([pool.submit(run_cell, *w, args) for w in work]):
            print(f"[{time.time() - t0:5.0f} s] {done.result()}", flush=True)


if __name__ == "__main__":
    main()
