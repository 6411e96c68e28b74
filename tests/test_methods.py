"""Every method says what it is, and each kind has its test: a transform keeps the float64 logits; a rounder is no
worse than RTN with the same settings and calibration. calibrate.py runs and validates a chain of them. A new method
is its file plus one line in TRANSFORMS or ROUNDERS below (the README's "Add a method", followed to the letter by
test_a_new_method_is_one_file_and_one_line)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import calibrate as C
import model as M
from cli import InputError
from test_model import random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}

# name: the flags each is checked with (the cheap end of its settings)
TRANSFORMS = {"smoothquant": {}, "quarot": {}, "duquant": {"rotation_steps": 8}, "awq": {"awq_clip": False}}
ROUNDERS = {"rtn": {"wbits": 3}, "gptq": {"wbits": 3}, "quantdllm": {"wbits": 2, "daq_iters": 2},
            "dllmquant": {"wbits": 4, "abits": 4, "group_size": -1, "v_bits": 4}}


def test_every_method_declares_its_kind_and_has_its_test():
    for name, m in C.METHODS.items():
        assert m.KIND in ("transform", "rounder") and isinstance(getattr(m, "ACTIVATIONS", False), bool), name
    assert set(TRANSFORMS) == set(C.TRANSFORMS) and set(ROUNDERS) == set(C.ROUNDERS)


def test_a_chain_is_transforms_then_one_rounder():
    assert C.chain_of("quarot,gptq") == ["quarot", "gptq"] and C.chain_of("awq,gptq") == ["awq", "gptq"]
    assert C.chain_of("smoothquant") == ["smoothquant", "rtn"] and C.chain_of("awq,quarot") == ["awq", "quarot", "rtn"]
    for chain, rounder in (("rtn,gptq", "rtn"), ("gptq,quarot", "gptq"), ("quantdllm,dllmquant", "quantdllm")):
        with pytest.raises(InputError, match=f"--method {chain}: {rounder} is a rounder, so it must come last"):
            C.chain_of(chain)
    with pytest.raises(InputError, match="--method 'yours' is unknown"):
        C.chain_of("quarot,yours")


@pytest.mark.slow
def test_a_method_owns_its_flags():
    """Each method's Flags become calibrate.py's flags, listed under the method in --help."""
    r = subprocess.run([sys.executable, "calibrate.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    for name, m in C.METHODS.items():
        for flag in getattr(m, "Flags", type("none", (), {"__dataclass_fields__": {}})).__dataclass_fields__:
            section = r.stdout.split(f"{name} (quantizers/{name}.py):", 1)[1].split("\n\n", 1)[0]
            assert f"--{flag}" in section, (name, flag)
    r = subprocess.run([sys.executable, "calibrate.py", "--method", "rtn,gptq"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "rtn is a rounder" in r.stderr


def resolved(method, model, **kw):
    args = C.Args(**{"model": model, "method": method, "bits": 4, "nsamples": 4, "seqlen": 48, "device": "cpu",
                     **kw})
    C.resolve(args)
    return args


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("which", ["random-gqa", *(pytest.param(f, marks=pytest.mark.slow) for f in TINY)])
def test_a_transform_keeps_the_float64_logits(name, which):
    """The transform alone (no rounder after it) on a float64 model: the logits move by rounding only."""
    m = random_model("dream", 64, 4, 2, hidden=48) if which == "random-gqa" else M.load(TINY[which]).double()
    args = resolved(name, TINY["dream" if which == "random-gqa" else which], **TRANSFORMS[name])
    ids = torch.randint(0, m.args.vocab_size - 1, (4, 48))
    with torch.no_grad():
        before = m(ids[:2, :30])
        C.METHODS[name].quantize(m, C.Calib(ids, torch.zeros_like(ids, dtype=torch.bool)), args)
        after = m(ids[:2, :30])
    assert (after - before).abs().max() <= 1e-8 * before.abs().max()


def logit_error(tmp_path, name, **kw):
    """Relative error of tiny-llada's logits on held-out text after calibrate.py --method name."""
    model = C.calibrate(C.Args(**{"model": TINY["llada"], "method": name, "nsamples": 16, "seqlen": 64,
                                  "nll_windows": 0, "device": "cpu", "out": str(tmp_path / name), "overwrite": True,
                                  **kw}))
    tok = M.load_tokenizer(TINY["llada"])
    text = C.read_texts(os.path.join(ROOT, "data", "wiki_heldout.txt.gz"))[:40]
    ids = torch.tensor([e.ids[:64] for e in tok.encode_batch(text) if len(e.ids) >= 64][:8])
    with torch.no_grad():
        ref = M.load(TINY["llada"])(ids)
        return ((model(ids) - ref).norm() / ref.norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUNDERS)
def test_a_rounder_is_no_worse_than_rtn(tmp_path, name):
    err, rtn = logit_error(tmp_path, name, **ROUNDERS[name]), logit_error(tmp_path, "rtn", **ROUNDERS[name])
    print(f"{name}: logit error {err:.4f}, RTN with the same settings {rtn:.4f}")
    assert err <= rtn


YOURS = '''def yours(W, bits, group_size=128, sym=False, clip=1.0, lo=0):
    """RTN with each group's range also tried 10% narrower, keeping the one with the smaller weight error."""
    best = None
    for c in (clip, 0.9 * clip):
        s, z = fit_grid(W, bits, group_size, sym, c)
        q = to_grid(W, s, z, bits, lo)
        err = (dequantize(q, s, z) - W.float()).pow(2).reshape(len(s), s.shape[1], -1).sum(-1)
        best = (s, z, err) if best is None else tuple(torch.where(err < best[2], new, old)
                                                      for new, old in zip((s, z, err), best))
    return to_grid(W, best[0], best[1], bits, lo), best[0], best[1]


'''
COPY = ["cli.py", "model.py", "sample.py", "calibrate.py", "eval.py", "train.py", "pytest.ini", "quantizers",
        "kernels", "data", "tests/conftest.py", "tests/test_model.py", "tests/test_methods.py"]


def run(tree, *cmd, check=True):
    r = subprocess.run([sys.executable, *cmd], cwd=tree, capture_output=True, text=True)
    assert r.returncode == 0 or not check, r.stdout + r.stderr
    return r


@pytest.mark.slow
def test_a_new_method_is_one_file_and_one_line(tmp_path):
    """The README's "Add a method", step by step, in a copy of the project: a rounder copied from rtn.py and a
    transform copied from smoothquant.py, each with its own math and flag, found by calibrate.py, composed, refused
    where a chain cannot hold them, and tested by the line added for it."""
    tree = tmp_path / "dllmq"
    (tree / "tests").mkdir(parents=True)
    for path in COPY:
        if os.path.isdir(os.path.join(ROOT, path)):
            shutil.copytree(os.path.join(ROOT, path), tree / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(os.path.join(ROOT, path), tree / path)
    os.symlink(os.path.join(ROOT, "assets"), tree / "assets")
    q = tree / "quantizers"
    rtn = (q / "rtn.py").read_text()
    math = rtn[rtn.index("def rtn("):rtn.index("def round_block(")]
    rounder = rtn.replace(math, YOURS).replace("else rtn(lin.weight", "else yours(lin.weight").replace(
        "from quantizers.core import", "import torch\n\nfrom quantizers.core import").replace(
        "import fit_grid, fp8_grid,", "import dequantize, fit_grid, fp8_grid,")
    (q / "yours.py").write_text(rounder)  # steps 1-2: the copy, with its own math
    transform = (q / "smoothquant.py").read_text().replace("args.alpha", "args.mine_alpha").replace(
        "    alpha: float = opt(0.5,", "    mine_alpha: float = opt(0.4,")
    (q / "mine.py").write_text(transform)
    tests = (tree / "tests" / "test_methods.py").read_text()
    tests = tests.replace('ROUNDERS = {"rtn": {"wbits": 3},', 'ROUNDERS = {"yours": {"wbits": 3}, "rtn": {"wbits": 3},')
    tests = tests.replace('TRANSFORMS = {"smoothquant": {},', 'TRANSFORMS = {"mine": {}, "smoothquant": {},')
    (tree / "tests" / "test_methods.py").write_text(tests)  # step 3: one line each
    fast = ["--nsamples", "4", "--seqlen", "32", "--nll_windows", "0", "--device", "cpu"]
    for chain, flags in (("yours", ["--wbits", "4"]), ("quarot,yours", ["--bits", "4"]),
                         ("mine", ["--bits", "8", "--mine_alpha", "0.6"]), ("mine,gptq", ["--bits", "4"])):
        out = run(tree, "calibrate.py", "--method", chain, *flags, *fast, "--out", f"out/{chain}").stdout
        assert f"saved out/{chain}" in out and f"--- {chain.split(',')[0]}" in out
    assert "--- mine, then rtn block by block" in run(tree, "calibrate.py", "--method", "mine", *fast).stdout
    r = run(tree, "calibrate.py", "--method", "yours,gptq", *fast, check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: --method yours,gptq: yours is a rounder")
    r = run(tree, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_methods.py",
            "-k", "yours or mine or declares")  # its kind's test (3 models for a transform), and the roll call
    assert "5 passed" in r.stdout and "failed" not in r.stdout, r.stdout
