"""export.py against the format owners' own code (tests/engine_oracle.py: compressed-tensors' compressors and
auto-round's GPTQ v1 QuantLinear, in a process of their own), model.load reading the exports back, and the refusals."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import calibrate as C
import export as X
import model as M
from quantizers.core import QLinear
from quantizers.engines import export_layer, import_layer, quantization_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}
ORACLE = os.path.join(ROOT, "tests", "engine_oracle.py")
FAST = dict(nsamples=2, seqlen=32, nll_windows=0, device="cpu", method="rtn")
# (name, calibrate.py flags, formats that hold it); tiny-dream's MLP width 592 takes groups of 16, not 128
SETTINGS = [("w4-g128-asym", dict(wbits=4, group_size=128), ("gptq", "compressed-tensors")),
            ("w4-g128-sym", dict(wbits=4, group_size=128, sym=True), ("gptq", "compressed-tensors")),
            ("w4-channel", dict(wbits=4, group_size=-1), ("gptq", "compressed-tensors")),
            ("w8-g128", dict(wbits=8, group_size=128), ("gptq", "compressed-tensors")),
            ("w8a8-int8", dict(wbits=8, abits=8, group_size=-1, sym=True), ("compressed-tensors",)),
            ("w8a8-fp8", dict(wbits=8, abits=8, group_size=-1, fp8=True), ("compressed-tensors",))]


def oracles(jobs):
    """Run the owners' libraries on exported folders, with nothing of dllmq importable, in one process for all the
    jobs (their imports take seconds): [(format, folder, dest, inputs or None)] -> [dest's tensors]."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, ORACLE, "--jobs", json.dumps(jobs)], cwd=os.path.dirname(jobs[0][2]), env=env,
                   check=True, capture_output=True)
    out = []
    for _, _, dest, _ in jobs:
        with safe_open(dest, "pt") as f:
            out.append({k: f.get_tensor(k) for k in f.keys()})
    return out


def quantized(tmp_path, family, flags, name):
    out = str(tmp_path / f"{family}-{name}")
    kw = dict(flags)
    if family == "dream" and kw.get("group_size") == 128:
        kw["group_size"] = 16
    C.calibrate(C.Args(**{**FAST, "model": TINY[family], "out": out, **kw}))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every (family, setting) calibrated and exported to each format that holds it (or refused: the InputError's
    line), with random inputs of every layer width, and what the owners' libraries read from each export, all the
    exports read in one oracle process."""
    tmp, cases, jobs = tmp_path_factory.mktemp("export"), {}, []
    for family in ("llada", "dream"):
        for name, flags, formats in SETTINGS:
            folder = tmp / f"{family}-{name}"
            folder.mkdir()
            src = quantized(folder, family, flags, name)
            widths = {m.in_features for m in M.load(src).modules() if isinstance(m, QLinear)}
            x = {str(k): torch.randn(5, k) for k in widths}
            save_file(x, str(folder / "x.safetensors"))
            case = cases[family, name] = {"src": src, "x": x, "out": {}, "refused": {}, "theirs": {}}
            for fmt in formats:
                out = case["out"][fmt] = str(folder / f"{fmt}-{name}")
                try:
                    X.export(X.Args(model=src, format=fmt, out=out))
                except M.InputError as e:
                    case["refused"][fmt] = str(e)
                    continue
                job = (fmt, out, str(folder / f"{fmt}.safetensors"), str(folder / "x.safetensors"))
                jobs.append((case, job))
    for (case, job), theirs in zip(jobs, oracles([job for _, job in jobs]), strict=True):
        case["theirs"][job[0]] = theirs
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("name,flags,formats", SETTINGS)
def test_every_mapped_setting_round_trips_through_the_owners_library(exported, family, name, flags, formats):
    case = exported[family, name]
    ours, x = M.load(case["src"]), case["x"]
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, QLinear)}
    names = M.name_map(ours.args)
    ids = torch.randint(0, 4000, (2, 24))
    for fmt in formats:
        out = case["out"][fmt]
        at_zero = any((m.zeros == 0).any() for m in layers.values()) and not flags.get("sym")
        if fmt == "gptq" and at_zero:  # tiny-dream's groups of 16: some hold no negative weight, so z = 0
            assert "zero point 0" in case["refused"].get(fmt, "") and not os.path.exists(out)
            continue
        assert fmt not in case["refused"], case["refused"]
        theirs = case["theirs"][fmt]
        back = M.load(out, torch.float16 if fmt == "gptq" else torch.float32)
        for canon, layer in layers.items():
            prefix, mine = names[canon], back.get_submodule(canon)
            W = theirs[f"{prefix}.weight"]
            assert torch.equal(W.to(mine.weight().dtype), mine.weight()), (fmt, canon)  # bit for bit
            if fmt == "compressed-tensors":  # the exported weight is ours exactly
                assert torch.equal(W.float(), layer.weight().float()), canon
                if layer.act_bits == 16:  # (W8A8 layers also round their input: the weight says it all)
                    assert torch.allclose(theirs[f"{prefix}.out"], layer(x[str(layer.in_features)]), atol=1e-5)
            else:  # scales in fp16: the weight moves by at most fp16's rounding of a scale
                with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
                    g_idx = f.get_tensor(f"{prefix}.g_idx")
                assert torch.equal(g_idx.long(), torch.arange(layer.in_features) // (layer.in_features //
                                                                                       layer.scales.shape[1]))
                step = layer.scales.float().abs().repeat_interleave(layer.in_features // layer.scales.shape[1], 1)
                assert ((W.float() - layer.weight().float()).abs() <= step * 2 ** (layer.bits - 10)).all()
                y, ref = theirs[f"{prefix}.out"].float(), layer(x[str(layer.in_features)]).float()
                assert (y - ref).abs().max() <= 2e-3 * ref.abs().max(), canon
        with torch.no_grad():
            a, b = ours(ids), back.float()(ids)
        assert torch.equal(a, b) if fmt == "compressed-tensors" else (a - b).abs().max() < 2e-2 * a.abs().max()


@pytest.mark.slow
def test_an_8b_shaped_layer_round_trips(tmp_path):
    """LLaDA-8B's down projection (12288 -> 4096), W4 g128 asymmetric, random codes: compressed-tensors gives our
    weight exactly; auto-round's GPTQ layer gives our outputs within fp16 rounding."""
    gen = torch.Generator().manual_seed(0)
    N, K, G = 4096, 12288, 12288 // 128
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    s, z = torch.rand(N, G, generator=gen) * 0.01 + 1e-3, torch.randint(1, 16, (N, G), generator=gen).float()
    layer = QLinear.from_codes(q, s.half().float(), z, bits=4, group_size=128)
    t = {"qweight": layer.qweight, "scales": layer.scales, "zeros": layer.zeros}
    x, cfg, fmts = torch.randn(4, K, generator=gen), layer.config(), ("compressed-tensors", "gptq")
    save_file({str(K): x}, str(tmp_path / "x.safetensors"))
    for fmt in fmts:
        folder = tmp_path / fmt
        folder.mkdir()
        save_file({f"l.{k}": v.contiguous() for k, v in export_layer(t, cfg, fmt).items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"quantization_config": quantization_config(fmt, cfg, "h")}))
    read = oracles([(f, str(tmp_path / f), str(tmp_path / f"{f}.safetensors"), str(tmp_path / "x.safetensors"))
                    for f in fmts])
    for fmt, theirs in zip(fmts, read, strict=True):
        folder = tmp_path / fmt
        if fmt == "compressed-tensors":
            assert torch.equal(theirs["l.weight"], layer.weight())
        y = theirs["l.out"].float()
        ref = x @ layer.weight().t()
        assert (y - ref).abs().max() <= 2e-3 * ref.abs().max()
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            stored = {k[2:]: f.get_tensor(k) for k in f.keys()}
        back, _ = import_layer(stored, quantization_config(fmt, cfg, "h"), N, K)  # and read back
        assert torch.equal(back["qweight"], layer.qweight) and torch.equal(back["zeros"], layer.zeros)
        assert torch.equal(back["scales"].float(), layer.scales)


def run(args):
    return subprocess.run([sys.executable, "export.py", *args], cwd=ROOT, capture_output=True, text=True)


def run_here(args, capsys, monkeypatch):
    """export.py's main in this process (the same code as `run`, without starting Python): (status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["export.py", *args])
    with pytest.raises(SystemExit) as e:
        X.main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_what_cannot_be_expressed_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    """The first refusal through a real process (status 2, one line on stderr), the rest through main() here."""
    cases = [("quarot", dict(method="quarot", bits=8, sym=True), "compressed-tensors", "rotates its input online"),
             ("w3", dict(wbits=3), "gptq", "3-bit codes"),
             ("binary", dict(method="quantdllm", wbits=2, group_size=128), "compressed-tensors", "binary-residual"),
             ("v4", dict(method="dllmquant", bits=8, v_bits=4), "compressed-tensors", "quantizes its output"),
             ("w8a8", dict(wbits=8, abits=8, group_size=-1, sym=True), "gptq", "integer weight-only"),
             ("dream-g128", dict(wbits=4, group_size=128, model=TINY["dream"]), "gptq", "groups of 74")]
    for name, flags, fmt, message in cases:
        src = str(tmp_path / name)
        C.calibrate(C.Args(**{**FAST, "model": TINY["llada"], "out": src, **flags}))
        args = ["--model", src, "--format", fmt, "--out", str(tmp_path / f"{name}-out")]
        if name == cases[0][0]:
            r = run(args)
            status, err = r.returncode, r.stderr
        else:
            status, err = run_here(args, capsys, monkeypatch)
        assert status == 2 and message in err and err.count("\n") == 1, (name, err)
        assert not os.path.exists(tmp_path / f"{name}-out") and not os.path.exists(tmp_path / f"{name}-out.partial")
    w4 = str(tmp_path / "w3")
    for args, message in ((["--model", TINY["llada"], "--out", str(tmp_path / "f")], "a float checkpoint"),
                          (["--model", w4, "--format", "awq", "--out", str(tmp_path / "a")], "--format 'awq'"),
                          (["--model", w4, "--out", w4], "exists"),
                          (["--model", w4, "--out", os.path.join(w4, "x")], "inside --model"),
                          (["--model", w4], "--out: name the folder")):
        status, err = run_here(args, capsys, monkeypatch)
        assert status == 2 and message in err and err.count("\n") == 1, (args, err)


def test_gptq_v1_stores_a_zero_point_of_zero_by_shifting_codes_or_refuses():
    """v1 stores z - 1: a group with z = 0 becomes codes q + 1 with z = 1 (the same weight) while no code is 15."""
    q = torch.randint(0, 15, (8, 64), dtype=torch.uint8)
    layer = QLinear.from_codes(q, torch.rand(8, 2) + 0.1, torch.tensor([[0.0, 3.0]] * 8), bits=4, group_size=32)
    t = {"qweight": layer.qweight, "scales": layer.scales, "zeros": layer.zeros}
    stored = export_layer(t, layer.config(), "gptq")
    back, _ = import_layer(stored, quantization_config("gptq", layer.config(), "h"), 8, 64)
    assert torch.equal(back["zeros"][:, 0], torch.ones(8)) and torch.equal(back["zeros"][:, 1], torch.full((8,), 3.0))
    again = QLinear.from_codes(torch.zeros(8, 64, dtype=torch.uint8), back["scales"].float(), back["zeros"], bits=4,
                               group_size=32)
    again.qweight.copy_(back["qweight"])
    assert torch.allclose(again.weight(), layer.weight(), rtol=1e-3)  # (scales went through fp16)
    q[0, 5] = 15  # a group at z = 0 that already uses the top code: nothing can hold it
    layer = QLinear.from_codes(q, torch.ones(8, 2), torch.tensor([[0.0, 3.0]] * 8), bits=4, group_size=32)
    with pytest.raises(ValueError, match="zero point 0 and a code"):
        export_layer({"qweight": layer.qweight, "scales": layer.scales, "zeros": layer.zeros}, layer.config(), "gptq")
