"""
Paired statistics for comparing two models on the same items (eval.py's table and --compare): a quantized model and
its float reference answer the same problems, so each item is its own control.

  mcnemar(a, b)            exact McNemar test for pass/fail outcomes: under H0 (no difference) each discordant
                           item is a fair coin, so the two-sided p-value is the binomial tail of min(b, c) among
                           the b + c discordant items, doubled (McNemar 1947; the exact form of Agresti,
                           Categorical Data Analysis, sec. 10.1)
  bootstrap(a, b)          paired bootstrap of the mean difference mean(b - a): items resampled with replacement,
                           a 95% percentile interval (Efron & Tibshirani 1993, ch. 13), fixed seed
  divergence(p, q)         the first denoising step at which two decoding paths' canvases differ
and, on eval.py's result records (per-item outcomes: rate; paths: pack_path), the paired comparison of each model with
a reference (comparisons) and the markdown table that shows it (table).
"""
import base64
import math
import os
import zlib

import numpy as np

RESAMPLES = 10_000


def mcnemar(a, b):
    """Exact two-sided McNemar p-value of paired 0/1 outcomes a (reference) and b; 1.0 when no item differs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(lost, gained) + 1))  # exact integers, then one division
    return min(1.0, 2 * tail / 2 ** n)


def bootstrap(a, b, resamples=RESAMPLES, seed=0):
    """(mean difference, low, high, p): mean(b - a) over paired items, its 95% percentile interval from
    `resamples` resamplings of the items, and the two-sided bootstrap p-value (twice the smaller share of resampled
    means on either side of zero, at most 1)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired items")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(0, resamples, 1000):  # chunks bound the memory of the index matrix
        k = min(1000, resamples - i)
        means[i:i + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())) if d.any() else 1.0
    return float(d.mean()), float(low), float(high), float(p)


def divergence(p, q):
    """First step (1-based) at which two decoding paths' canvases differ, or None if they never do. A path is
    (steps, tokens) per generated position: the step that unmasked it and the token it got; the samplers never
    re-mask, so the canvas after step s is every position with steps <= s showing its token."""
    (sp, tp), (sq, tq) = p, q
    first = None
    for a, b, x, y in zip(sp, sq, tp, tq, strict=True):
        at = min(a, b) if a != b else (a if x != y else None)
        if at is not None and (first is None or at < first):
            first = at
    return first


# ------------------------------------------------------------------------------------- eval.py's records
def rate(hits, ids):
    """A pass/fail metric with its per-item outcomes, so two result files pair up later (eval.py --compare)."""
    p = sum(hits) / len(hits)
    return {"value": p, "stderr": math.sqrt(p * (1 - p) / len(hits)), "n": len(hits),
            "items": {"ids": list(ids), "outcomes": [int(h) for h in hits]}}


def pack_path(steps, tokens):
    """A decoding path as one short string: the step (1-based) that unmasked each generated position, then each
    position's final token, as int32, zlib-compressed, base64."""
    return base64.b64encode(zlib.compress(np.asarray(list(steps) + list(tokens), np.int32).tobytes(), 9)).decode()


def unpack_path(text):
    """pack_path's (steps, tokens) back as two lists."""
    values = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.int32).tolist()
    return values[:len(values) // 2], values[len(values) // 2:]


SAMPLER = ("gen_length", "steps", "block_length", "alg", "seed", "fewshot")  # what decides a decoding path


def paired(ref, r):
    """r against ref on the items both scored: the difference of the means with its 95% paired-bootstrap interval
    and p-value, or for pass/fail outcomes McNemar's exact p. None when the items differ."""
    a, b = ref["items"], r["items"]
    if a["ids"] != b["ids"]:
        return None
    diff, low, high, p = bootstrap(a["outcomes"], b["outcomes"])
    binary = set(a["outcomes"]) | set(b["outcomes"]) <= {0, 1} and r["metric"] != "nll"
    test, p = ("mcnemar", mcnemar(a["outcomes"], b["outcomes"])) if binary else ("bootstrap", p)
    return {"diff": diff, "low": low, "high": high, "p": p, "test": test, "significant": p < 0.05}


def path_agreement(ref, r):
    """Two records of one generation task (the first metric, which carries the paths): per item, the first step at
    which the canvases differ (divergence; None = never) and whether the outputs are the same tokens."""
    if ref["items"]["ids"] != r["items"]["ids"] or any(ref["settings"][k] != r["settings"][k] for k in SAMPLER):
        return []
    first, same, shared = [], [], []
    for p, q in zip(ref["items"]["paths"], r["items"]["paths"], strict=True):
        p, q = unpack_path(p), unpack_path(q)
        step, total = divergence(p, q), max(p[0] + q[0])
        first.append(step)
        same.append(p[1] == q[1])
        shared.append(1.0 if step is None else (step - 1) / total)
    ids, n = r["items"]["ids"], len(same)
    mean = sum(shared) / n
    sd = math.sqrt(sum((s - mean) ** 2 for s in shared) / max(n - 1, 1))
    base = {"model": r["model"], "model_hash": r["model_hash"], "task": r["task"], "reference": ref["model"],
            "settings": r["settings"]}
    return [{**base, "metric": "path: same output", **rate(same, ids)},
            {**base, "metric": "path: steps before divergence", "value": mean, "stderr": sd / math.sqrt(n), "n": n,
             "items": {"ids": ids, "outcomes": shared, "first_divergence": first}}]


def comparisons(records, reference):
    """Each record of another model paired with the reference model's record of the same task and metric; path
    agreement for each generation task."""
    ref = {(r["task"], r["metric"]): r for r in records if r["model"] == reference}
    out = []
    for r in records:
        if r["model"] == reference or (r["task"], r["metric"]) not in ref or r["metric"].startswith("path"):
            continue
        r["paired"] = paired(ref[(r["task"], r["metric"])], r)
        if "paths" in r["items"] and "paths" in ref[(r["task"], r["metric"])]["items"]:
            out += path_agreement(ref[(r["task"], r["metric"])], r)
    return records + out


def cell(r):
    """A table cell: value ± stderr, a multiple-choice score within two standard errors of guessing marked, and
    against the reference the difference, its 95% interval and p (bold where p < 0.05)."""
    at_chance = "chance" in r and abs(r["value"] - r["chance"]) <= 2 * r["stderr"]
    text = f"{r['value']:.4f} ± {r['stderr']:.4f}" + (f" (chance {r['chance']:.2f})" if at_chance else "")
    d = r.get("paired")
    if d:
        p = f"p < {1 / RESAMPLES:g}" if d["p"] < 1 / RESAMPLES else f"p {d['p']:.2g}"
        diff = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], {p}"
        text += f" ({'**' + diff + '**' if d['significant'] else diff})"
    return text


def table(records, models):
    """Markdown: one row per task and metric, one column per model; the first column is the reference of the
    paired differences (eval.py's docstring)."""
    rows = {}
    for r in records:
        rows.setdefault((r["task"], r["metric"]), {})[r["model"]] = cell(r)
    names = [os.path.basename(m.rstrip("/")) + (" (reference)" if k == 0 and len(models) > 1 else "")
             for k, m in enumerate(models)]
    head = "| task | metric | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    lines += [f"| {t} | {m} | " + " | ".join(v.get(x, "") for x in models) + " |" for (t, m), v in rows.items()]
    return "\n".join(lines)
