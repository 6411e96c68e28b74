"""
Look inside a dLLM: where its activation outliers sit, and how a quantized copy drifts along the denoising steps.

    python analyze.py                                        # tiny-llada: outliers on clean and on masked text
    python analyze.py --method quarot                        # ... and again after QuaRot's (exact) transform
    python analyze.py --quantized out/quantized --out report.md   # + the checkpoint's error step by step

Outliers. For the input of every group of Linears of every block (attn_in = q/k/v, o_in, mlp_in = gate/up,
down_in), on calibration windows both clean and masked as in Quant-dLLM's simulation (calibrate.py --calib_mode
masked): max |x|; the ratio of the largest channel's max |x| to the median channel's; the kurtosis of the values
(3 for a Gaussian); the channels with the largest max |x|; and the tokens carrying "massive" activations, any
|x| > --massive x the median |x| of that input, split into masked and visible tokens. The study of PTQ on dLLMs
(arXiv:2508.14896) finds the massive outliers at the input of the MLP's down projection, on more tokens than in
autoregressive models; `--method` shows the same statistics after SmoothQuant / QuaRot / DuQuant's transform.

Error across steps (DLLMQuant, arXiv:2508.14090: the error accumulates as decoding proceeds). The float model
decodes prompts cut from held-out text; at every step the quantized checkpoint reads the same canvas, and we report
the KL divergence of its token distributions from the float ones at the masked positions, their top-1 agreement,
and the relative error of the logits (not of the final hidden state, which a rotation method turns into another
basis). Then the quantized model decodes on its own from the same
prompts; we report the first step where its canvas differs from the float model's.

Prints a markdown report (and writes it to --out). With matplotlib installed (optional, not a requirement), also
writes PNG figures next to --out (figures() says what each shows): max |x| per block and input, the per-channel
profile of the worst input, and the error against the step.
"""
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import calibrate as C
from cli import InputError, check_output_file, opt, parse, run_cli, write_text
from model import load, load_tokenizer, read_args
from quantizers.walk import BlockInputs, input_stats
from sample import DEFAULT_MODEL, generate

OUTLIER_TRANSFORMS = [n for n in C.TRANSFORMS if C.METHODS[n].ACTIVATIONS]  # smoothquant, quarot, duquant
INPUTS = {"attn_in": "attn.q_proj", "o_in": "attn.o_proj", "mlp_in": "mlp.gate_proj", "down_in": "mlp.down_proj"}


@dataclass
class Args:
    model: str = opt(DEFAULT_MODEL, "float checkpoint to look at")
    quantized: str = opt("", "quantized checkpoint of the same model: adds the error-across-steps report")
    method: str = opt("", f"also show the outliers after this transform: {', '.join(OUTLIER_TRANSFORMS)}")
    nsamples: int = opt(16, "calibration windows for the outlier statistics")
    seqlen: int = opt(256, "tokens per window")
    calib_data: str = opt(C.Args.calib_data, "text the windows come from")
    massive: float = opt(100.0, "a 'massive' activation is |x| > this x the median |x| of its input")
    top: int = opt(4, "channels listed per input")
    prompts: int = opt(4, "error across steps: prompts (the first --prompt_length tokens of the first windows)")
    prompt_length: int = opt(32, "error across steps: tokens per prompt")
    gen_length: int = opt(32, "error across steps: tokens generated (steps = gen_length, blocks of 32)")
    out: str = opt("", "also write the markdown report here (figures beside it when matplotlib is installed)")
    seed: int = opt(0, "seed of the windows and masks")


# ------------------------------------------------------------------------------------------------- outliers
def channel_stats(X, masked, massive=100.0, top=4):
    """Statistics of one Linear input X (tokens, K); masked (tokens,) bool says which tokens were [MASK]."""
    X = X.double()
    absX, col = X.abs(), X.abs().amax(0)
    z = (X - X.mean()) / X.std()
    heavy = (absX > massive * absX.median()).any(1)
    return {"max": absX.max().item(), "ratio": (col.max() / col.median().clamp(min=1e-12)).item(),
            "kurtosis": z.pow(4).mean().item(), "channels": col.topk(min(top, len(col))).indices.tolist(),
            "massive_masked": int((heavy & masked).sum()), "massive_visible": int((heavy & ~masked).sum()),
            "tokens_masked": int(masked.sum()), "tokens_visible": int((~masked).sum()),
            "profile": col.float(), "median": absX.median().item()}


@torch.no_grad()
def outlier_table(model, calib, args):
    """{(block, input name): channel_stats} over every block, the inputs computed through the model (each with its
    per-channel max |x|, the profile the figures draw)."""
    x, rope, _ = model.block_inputs(calib.tokens)
    inputs, stats = BlockInputs(x, rope), {}
    keep = lambda acc, X, w: (X, w) if acc is None else (torch.cat([acc[0], X]), torch.cat([acc[1], w]))  # noqa: E731
    for i, block in enumerate(model.blocks):
        seen = input_stats(block, inputs, list(INPUTS.values()), keep, calib.masked.float())
        for short, name in INPUTS.items():
            X, m = seen[name]
            stats[i, short] = channel_stats(X, m.bool(), args.massive, args.top)
        inputs.x = inputs.run(block)
    return stats


def transformed(model, calib, method, seed):
    """The model after `method`'s float transform only (no rounder follows: the function is unchanged)."""
    a = C.Args(method=method, bits=4, device="cpu", seed=seed)
    C.resolve(a)
    C.METHODS[method].quantize(model, calib, a)
    return model


def outlier_report(tables, args):
    """Markdown: one row per block and input, one column group per condition (clean, masked, ...)."""
    names = list(tables)
    head = "| block | input | " + " | ".join(f"{n}: max / ratio / kurtosis / massive tokens (masked, visible)"
                                            for n in names) + " | top channels |"
    rows = [head, "|" + "---|" * (len(names) + 3)]
    for key in tables[names[0]]:
        cells = [f"{s['max']:.1f} / {s['ratio']:.1f} / {s['kurtosis']:.1f} / "
                 f"{s['massive_masked']}, {s['massive_visible']}" for s in (tables[n][key] for n in names)]
        rows.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + f" | {tables[names[0]][key]['channels']} |")
    worst = {n: max(t.items(), key=lambda kv: kv[1]["max"]) for n, t in tables.items()}
    summary = [f"- {n}: largest |x| {s['max']:.1f} at block {k[0]} {k[1]}; massive tokens there: "
               f"{s['massive_masked']} of {s['tokens_masked']} masked, {s['massive_visible']} of "
               f"{s['tokens_visible']} visible" for n, (k, s) in worst.items()]
    return "\n".join(summary + ["", *rows])


# -------------------------------------------------------------------------------------- error across steps
def step_error(ref, other, canvas, mask_id):
    """KL(p_ref || p_other) and top-1 agreement at the masked positions of canvas; relative error of the logits.
    The logits, not the final hidden state: QuaRot rotates the residual stream (and the head with it), so a
    rotated model's hidden states live in another basis while its logits are comparable."""
    with torch.no_grad():
        lr, lo = ref(canvas).float(), other(canvas).float()
    m = canvas == mask_id
    logp, logq = F.log_softmax(lr[m], -1), F.log_softmax(lo[m], -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item() if m.any() else 0.0
    agree = (lr[m].argmax(-1) == lo[m].argmax(-1)).float().mean().item() if m.any() else 1.0
    return {"kl": kl, "top1": agree, "logits": ((lo - lr).norm() / lr.norm()).item()}


def trajectory(model, prompts, gen_length):
    canvases = []
    generate(model, prompts, None, gen_length, gen_length, min(32, gen_length),
             on_step=lambda i, x, c: canvases.append(x.clone()))
    return canvases


@torch.no_grad()
def error_report(ref, quant, prompts, gen_length):
    """Per step: the quantized model on the float model's canvases; then the first step where its own decoding
    differs. Returns (markdown, per-step records)."""
    ours, theirs = trajectory(ref, prompts, gen_length), trajectory(quant, prompts, gen_length)
    start = torch.cat([prompts, torch.full((len(prompts), gen_length), ref.args.mask_id)], 1)
    records, canvases, t0 = [], [start, *ours[:-1]], time.time()
    for i, x in enumerate(canvases):
        records.append(step_error(ref, quant, x, ref.args.mask_id))
        if (i + 1) % 8 == 0 or i + 1 == len(canvases):
            spent, left = time.time() - t0, len(canvases) - i - 1
            print(f"  step errors: {i + 1}/{len(canvases)} | {spent:.0f} s, ETA {spent / (i + 1) * left:.0f} s",
                  file=sys.stderr, flush=True)
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if not torch.equal(a, b)]
    rows = ["| step | KL at masked positions | top-1 agreement | logits rel. error |", "|---|---|---|---|"]
    every = max(1, len(records) // 16)
    rows += [f"| {i + 1} | {r['kl']:.4f} | {r['top1']:.1%} | {r['logits']:.4f} |"
             for i, r in enumerate(records) if i % every == 0 or i == len(records) - 1]
    same = sum(torch.equal(a, b) for a, b in zip(ours[-1], theirs[-1], strict=True))
    free = (f"Free-running: the quantized model's canvas first differs from the float model's after step "
            f"{differ[0] + 1} of {len(ours)}" if differ else "Free-running: identical canvases at every step")
    return "\n".join(rows + ["", f"{free}; {same} of {len(prompts)} final outputs are identical."]), records


# ------------------------------------------------------------------------------------------------- figures
def figures(tables, records, path, title):
    """PNG figures beside path (matplotlib, a tool dependency); returns the files written, [] without matplotlib.
      outliers  max |x| per block: colour = the Linear input, line style = the condition (clean, masked, transform)
      channels  the input with the largest |x|: max |x| of every channel, per condition, log scale, its top
                channels named, the median |x| as a line, so the outlier channels stand out
      steps     the quantized model on the float model's canvases, steps numbered as in the table: KL at the masked
                positions (left axis) and the logits' relative error (right axis)"""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("figures: not drawn, matplotlib is missing (pip install -r requirements-tools.txt)", file=sys.stderr)
        return []
    stem, written, styles = os.path.splitext(path)[0], [], ["-", "--", ":", "-."]
    colours = dict(zip(INPUTS, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=True))

    def save(fig, name):
        written.append(f"{stem}-{name}.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    for style, (cond, table) in zip(styles, tables.items(), strict=False):
        for short in INPUTS:
            ys = [s["max"] for (b, name), s in table.items() if name == short]
            ax.plot(range(len(ys)), ys, style, marker="o", ms=3, color=colours[short], label=f"{short}, {cond}")
    ax.set(yscale="log", xlabel="block (numbered as in the table, from 0)", ylabel="max |x| (calibration tokens)",
           title=f"{title}: the largest activation at each Linear input")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    save(fig, "outliers")
    (b, short), worst = max(tables["clean"].items(), key=lambda kv: kv[1]["max"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for style, (cond, table) in zip(styles, tables.items(), strict=False):
        ax.plot(range(len(table[b, short]["profile"])), table[b, short]["profile"].numpy(), style, lw=0.8, label=cond)
    ax.axhline(worst["median"], color="grey", lw=0.8, label="median |x| of all its values (clean)")
    for c in worst["channels"]:
        ax.annotate(f"channel {c}", (c, worst["profile"][c].item()), fontsize=7, textcoords="offset points",
                    xytext=(4, 2))
    ax.set(yscale="log", xlabel="channel", ylabel="max |x| of the channel",
           title=f"{title}: block {b} {short}, where the largest activation is")
    ax.legend(fontsize=7)
    save(fig, "channels")
    if records:
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = range(1, len(records) + 1)
        ax.plot(steps, [r["kl"] for r in records], color="tab:blue", marker="o", ms=3)
        ax.set(xlabel="denoising step", ylabel="KL at the masked positions (nats)",
               title=f"{title}: on the float model's canvases")
        ax.yaxis.label.set_color("tab:blue")
        right = ax.twinx()
        right.plot(steps, [r["logits"] for r in records], color="tab:red", ls="--", marker="s", ms=3)
        right.set_ylabel("logits' relative error", color="tab:red")
        save(fig, "steps")
    return written


def analyze(args):
    for flag in ("nsamples", "seqlen", "top", "prompts", "prompt_length", "gen_length"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} {getattr(args, flag)} is out of range (expected >= 1)")
    if args.out:
        check_output_file(args.out, "--out")
    for path in [args.model] + ([args.quantized] if args.quantized else []):
        read_args(path)  # a missing or broken checkpoint is refused before the work
    if args.method and args.method not in OUTLIER_TRANSFORMS:
        raise InputError(f"--method {args.method!r}: expected {', '.join(OUTLIER_TRANSFORMS)}")
    model, tok = load(args.model), load_tokenizer(args.model)
    cargs = C.Args(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, calib_data=args.calib_data,
                   seed=args.seed)
    windows = C.text_windows(cargs, model, tok)
    clean = C.Calib(windows, torch.zeros_like(windows, dtype=torch.bool))
    masked = C.masked_simulation(windows, model.args.mask_id, 0.25, 20, args.seed)
    tables = {"clean": outlier_table(model, clean, args), "masked": outlier_table(model, masked, args)}
    print(f"outliers: {len(model.blocks)} blocks x {len(INPUTS)} inputs, {windows.numel()} tokens", file=sys.stderr)
    if args.method:
        t = transformed(load(args.model), clean, args.method, args.seed)
        tables[f"{args.method} clean"] = outlier_table(t, clean, args)
    parts = [f"# {os.path.relpath(args.model)}: activation outliers", "", outlier_report(tables, args)]
    records = []
    if args.quantized:
        quant = load(args.quantized)
        prompts = windows[:args.prompts, :args.prompt_length]
        print(f"error across steps: {len(prompts)} prompts, {args.gen_length} steps", file=sys.stderr)
        text, records = error_report(model, quant, prompts, args.gen_length)
        parts += ["", f"# {os.path.relpath(args.quantized)} against the float model, step by step", "", text]
    report = "\n".join(parts)
    print(report)
    if args.out:
        write_text(args.out, report + "\n")
        name = os.path.basename(os.path.normpath(args.model))
        title = name + (f" (and after {args.method})" if args.method else "") + \
            (f", quantized: {os.path.basename(os.path.normpath(args.quantized))}" if args.quantized else "")
        for png in figures(tables, records, args.out, title):
            print(f"wrote {png}", file=sys.stderr)
    return tables, records


def main():
    analyze(parse(Args, doc=__doc__))


if __name__ == "__main__":
    run_cli(main)
