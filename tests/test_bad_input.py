"""Every bad input is one line on stderr, `error: ...` naming the flag, file or key, exit status 2, and nothing left
behind: broken checkpoints (config, tensors, quantization metadata, tokenizer), out-of-range flags of every script,
unreadable prompt and calibration files, non-finite weights, bad output paths."""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors import safe_open

import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "assets", "tiny-llada")
Q_WEIGHT = "model.transformer.blocks.0.q_proj.weight"


def rewrite(folder, tensors=None, metadata=None):
    """Rewrite folder/model.safetensors with its tensors and metadata edited."""
    file = os.path.join(folder, "model.safetensors")
    with safe_open(file, "pt") as f:
        sd, meta = {k: f.get_tensor(k).clone() for k in f.keys()}, f.metadata() or {}
    (tensors or (lambda sd: None))(sd)
    M.write_safetensors(sd, file + ".new", metadata(meta) if metadata else meta)
    os.replace(file + ".new", file)


def edit_config(key, value):
    return lambda d: json.dump({**json.load(open(f"{d}/config.json")), key: value}, open(f"{d}/config.json.x", "w")) \
        or os.replace(f"{d}/config.json.x", f"{d}/config.json")


def layer_setting(key, value):
    def edit(meta):
        quant = json.loads(meta["quant"])
        quant["layers"]["blocks.0.attn.q_proj"][key] = value
        return {**meta, "quant": json.dumps(quant)}
    return edit


def poke(key, value):
    return lambda sd: sd[key].view(-1).__setitem__(0, value)


FLOAT = {  # broken float checkpoint -> the line it must give (a copy of tiny-llada, then the edit)
    "config list": (lambda d: json.dump([1], open(f"{d}/config.json", "w")), "expected a JSON object, found a list"),
    "n_heads 0": (edit_config("n_heads", 0), "n_heads=0 must be a positive integer"),
    "n_heads text": (edit_config("n_heads", "8"), "n_heads='8' must be a positive integer"),
    "negative width": (edit_config("d_model", -64), "d_model=-64 must be a positive integer"),
    "mask id outside": (edit_config("mask_token_id", 10**6), "mask_token_id 1000000 is outside the vocabulary"),
    "integer weight": (lambda d: rewrite(d, lambda sd: sd.__setitem__(Q_WEIGHT, sd[Q_WEIGHT].to(torch.int32))),
                       "is int32, expected a floating type"),
    "NaN weight": (lambda d: rewrite(d, poke(Q_WEIGHT, float("nan"))), "holds NaN or infinite values"),
    "infinite weight": (lambda d: rewrite(d, poke(Q_WEIGHT, float("inf"))), "holds NaN or infinite values"),
    "tokenizer empty": (lambda d: open(f"{d}/tokenizer.json", "w").write("{}"), "not a tokenizers file"),
}
QUANT = {  # broken quantized checkpoint (tiny-llada, RTN W4)
    "metadata not JSON": (lambda meta: {**meta, "quant": "{not json"}, None, "quantization metadata is not the JSON"),
    "act_bits 3": (layer_setting("act_bits", 3), None, "'blocks.0.attn.q_proj': act_bits=3 is not a valid setting"),
    "bits as text": (layer_setting("bits", "4"), None, "bits='4' is not a valid setting"),
    "float qweight": (None, lambda sd: sd.__setitem__(Q_WEIGHT[:-6] + "qweight", sd[Q_WEIGHT[:-6] + "qweight"]
                                                      .float()), "is float32, expected int32"),
}
SAMPLE = ["sample.py", "--gen_length", "4", "--steps", "4", "--block_length", "4"]
DREAM = ["--model", os.path.join(ROOT, "assets", "tiny-dream"), "--prompt", "hi"]
CALIBRATE = ["calibrate.py", "--nsamples", "2", "--seqlen", "32", "--nll_windows", "0"]
EVAL = ["eval.py", "--tasks", "arithmetic", "--limit", "2"]
FLAGS = {  # command -> the line it must give
    "prompt ids outside": (SAMPLE + ["--prompt_ids", "99999"], "token ids outside the vocabulary of 4096: 99999"),
    "top_k 0": (SAMPLE + DREAM + ["--top_k", "0"], "--top_k 0 is out of range"),
    "cuda without CUDA": (SAMPLE + ["--prompt", "hi", "--device", "cuda"], "--device cuda: no CUDA device"),
    "blank prompt file": (SAMPLE + ["--prompt_file", "{tmp}/blank.txt"], "blank.txt: no text in it"),
    "latin-1 prompt file": (SAMPLE + ["--prompt_file", "{tmp}/latin1.txt"], "latin1.txt: not UTF-8 text"),
    "temperature -1": (SAMPLE + ["--prompt", "hi", "--temperature", "-1"], "--temperature -1.0 is out of range"),
    "top_p -0.5": (SAMPLE + DREAM + ["--top_p", "-0.5"], "--top_p -0.5 is out of range"),
    "eps 2": (SAMPLE + DREAM + ["--eps", "2"], "--eps 2.0 is out of range"),
    "alg_temp -1": (SAMPLE + DREAM + ["--alg_temp", "-1"], "--alg_temp -1.0 is out of range"),
    "calibration without text": (CALIBRATE + ["--calib_data", "{tmp}/notext.jsonl"], "line 1 is not a JSON object"),
    "calibration bad line": (CALIBRATE + ["--calib_data", "{tmp}/badline.jsonl"], "line 2 is not a JSON object"),
    "damp -1": (CALIBRATE + ["--method", "gptq", "--damp", "-1"], "--damp -1.0 is out of range"),
    "damp 0": (CALIBRATE + ["--method", "gptq", "--damp", "0"], "--damp 0.0 is out of range"),
    "bits -1": (CALIBRATE + ["--bits", "-1"], "--bits -1 is out of range"),
    "nll_windows -1": (CALIBRATE + ["--nll_windows", "-1"], "--nll_windows -1 is out of range"),
    "w_clip 0": (CALIBRATE + ["--w_clip", "0"], "--w_clip 0.0 is out of range"),
    "a_clip 2": (CALIBRATE + ["--a_clip", "2"], "--a_clip 2.0 is out of range"),
    "fp8 W4 asymmetric": (CALIBRATE + ["--wbits", "4", "--abits", "8", "--fp8"],
                          "--fp8 with --wbits 4 (W4A8-FP8) needs --abits 8, --group_size -1, --sym"),
    "alpha 2": (CALIBRATE + ["--method", "smoothquant", "--bits", "8", "--alpha", "2"], "--alpha 2.0 is out of range"),
    "eval batch 0": (EVAL + ["--batch_size", "0"], "--batch_size 0 is out of range"),
    "eval seq_len 0": (EVAL + ["--tasks", "wiki_nll", "--seq_len", "0"], "--seq_len 0 is out of range"),
    "eval limit -1": (EVAL + ["--limit", "-1"], "--limit -1 is out of range"),
    "eval workers 0": (EVAL + ["--workers", "0"], "--workers 0 is out of range"),
    "eval good then missing": (EVAL + ["--model", f"{TINY},{{tmp}}/missing"], "missing: no such checkpoint directory"),
    "eval out a folder": (EVAL + ["--out", "{tmp}"], "is a folder; give a file name"),
    "GGUF bad magic": (["tools/gguf_to_dream.py", "--gguf", "{tmp}/bad.gguf", "--sha256", "", "--out", "{tmp}/g"],
                       "not a GGUF file the gguf package can read"),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The broken checkpoints and files, made once."""
    tmp = tmp_path_factory.mktemp("bad")
    for name, (edit, _) in FLOAT.items():
        shutil.copytree(TINY, tmp / name)
        edit(str(tmp / name))
    quant = tmp / "quant"
    subprocess.run([sys.executable, *CALIBRATE, "--method", "rtn", "--out", str(quant)], cwd=ROOT, check=True,
                   capture_output=True)
    for name, (meta, tensors, _) in QUANT.items():
        shutil.copytree(quant, tmp / name)
        rewrite(str(tmp / name), tensors, meta)
    (tmp / "blank.txt").write_text("\n\n")
    (tmp / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp / "notext.jsonl").write_text('{"t": "x"}\n')
    (tmp / "badline.jsonl").write_text('{"text": "hello world"}\n{bad\n')
    (tmp / "bad.gguf").write_bytes(b"NOPE" + b"\0" * 100)
    return tmp


def one_line(cases, tmp):
    """Runs the command lines (tests/run_clis.py: one process for all, one torch import) -> [(status, stderr)], and
    checks that none left its --out (or its .partial) behind."""
    outs = [tmp / "out" / f"{i}_{args[0]}" for i, args in enumerate(cases)]
    argvs = [[a.format(tmp=tmp) for a in args] + (["--out", str(out)] if args[0] == "calibrate.py" else [])
             for args, out in zip(cases, outs, strict=True)]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "run_clis.py")], input=json.dumps(argvs),
                       cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    left = [str(o) for o in outs if os.path.exists(o) or os.path.exists(f"{o}.partial")]
    assert left == [], "a failed run left output behind"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_bad_input_is_one_line(broken):
    cases = {**{f"checkpoint: {n}": (SAMPLE + ["--model", str(broken / n), "--prompt", "hi"], m)
                for n, (_, m) in FLOAT.items()},
             **{f"quantized: {n}": (SAMPLE + ["--model", str(broken / n), "--prompt", "hi"], m)
                for n, (_, _, m) in QUANT.items()},
             "calibrate a NaN model": (CALIBRATE + ["--model", str(broken / "NaN weight")], "holds NaN"),
             "eval a NaN model": (EVAL + ["--model", str(broken / "NaN weight")], "holds NaN"), **FLAGS}
    halves = [list(cases.values())[i::2] for i in (0, 1)]  # two processes, one per core
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda half: one_line([args for args, _ in half], broken), halves)
    results = dict(zip(list(cases)[0::2] + list(cases)[1::2], a + b, strict=True))
    wrong = []
    for name, (status, stderr) in results.items():
        lines = stderr.strip().splitlines()
        if status != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or cases[name][1] not in lines[0]:
            wrong.append(f"{name}: exit {status}, {lines[-3:]}")
    assert wrong == []


def test_the_shared_process_reads_exits_as_the_interpreter_does(tmp_path):
    """tests/run_clis.py: a script's sys.exit(2), sys.exit("text"), an escaping exception and a normal end give the
    status and stderr that running it alone would give."""
    scripts = {"two.py": "import sys\nprint('error: x', file=sys.stderr)\nsys.exit(2)\n",
               "text.py": "import sys\nsys.exit('bad thing')\n", "boom.py": "raise RuntimeError('boom')\n",
               "fine.py": "print('hello')\n"}
    for name, code in scripts.items():
        (tmp_path / name).write_text(code)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "run_clis.py")], capture_output=True, text=True,
                       input=json.dumps([[str(tmp_path / n)] for n in scripts]), check=True)
    (s2, e2), (s_text, e_text), (s_boom, e_boom), (s_fine, e_fine) = json.loads(r.stdout)
    assert (s2, e2) == (2, "error: x\n") and (s_text, e_text) == (1, "bad thing\n") and (s_fine, e_fine) == (0, "")
    assert s_boom == 1 and e_boom.startswith("Traceback") and "RuntimeError: boom" in e_boom
