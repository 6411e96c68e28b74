"""results/run.py: the mini-Dream grid is made of known cells, and its commands score what the table shows."""
import argparse
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("results_run", os.path.join(ROOT, "results", "run.py"))
R = importlib.util.module_from_spec(spec)
spec.loader.exec_module(R)


def args(nll_only, cache_weights=False):
    return argparse.Namespace(device="cuda", mini_dream="/m/mini", tasks_dir="/m/tasks", scratch="/s",
                              nll_only=nll_only, cache_weights=cache_weights)


def test_every_mini_dream_cell_has_calibrate_flags_or_is_the_float_model():
    known = R.cells()
    assert all(n in known for n in R.MINI) and known["float"] is None and len(set(R.MINI)) == len(R.MINI)


def test_mini_dream_commands_run_in_bfloat16_and_nll_only_skips_humaneval():
    full = R.commands("mini-dream", "--method gptq --wbits 3", "/s/mini-dream/w3-gptq", args(False))
    assert full[0].startswith("python calibrate.py --model /m/mini --method gptq --wbits 3 --device cuda "
                              "--dtype bfloat16")
    assert "--tasks humaneval,wiki_nll --data_dir /m/tasks" in full[1] and "--model /s/mini-dream/w3-gptq" in full[1]
    nll = R.commands("mini-dream", None, "/s/mini-dream/float", args(True))
    assert nll == ["python eval.py --model /m/mini --device cuda --dtype bfloat16 --tasks wiki_nll "
                   "--out /s/mini-dream/float.eval.json"]
    sim = R.commands("mini-dream", "--method quarot --bits 4", "/s/mini-dream/q", args(False, cache_weights=True))
    assert sim[1].endswith("--cache_weights --out /s/mini-dream/q.eval.json") and "--cache_weights" not in sim[0]
    assert "--cache_weights" not in R.commands("mini-dream", None, "/s/f", args(False, cache_weights=True))[0]
    tiny = R.commands("tiny-llada", "--method rtn --wbits 4", "/s/tiny-llada/w4-rtn", args(True))
    assert all("--dtype float32" in c for c in tiny) and "--tasks" not in tiny[1]


def test_mini_table_shows_unmeasured_humaneval_as_n_m(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "HERE", str(tmp_path))
    (tmp_path / "mini-dream" / "a").mkdir(parents=True)
    (tmp_path / "mini-dream" / "b").mkdir(parents=True)
    cell = {"humaneval": None, "wiki_nll": 4.7001, "bits_per_weight": 4.25, "checkpoint_mib": 700.0}
    (tmp_path / "mini-dream" / "a" / "w4-gptq.json").write_text(json.dumps(cell))
    (tmp_path / "mini-dream" / "b" / "w4-gptq.json").write_text(json.dumps({**cell, "wiki_nll": 4.6}))
    (tmp_path / "mini-dream" / "b" / "w4-gptq.humaneval.json").write_text(json.dumps({**cell, "humaneval": 0.061}))
    (tmp_path / "mini-dream" / "a" / "float.json").write_text(json.dumps({**cell, "humaneval": 0.1,
                                                                         "wiki_nll_masks": "x"}))
    rows = R.mini_table().splitlines()
    assert "| W4 | gptq |  | 4.25 | 700 | n/m | 4.700 | 6.1% | 4.600 |" in rows
    assert "| BF16 | float |  | 16 | 700 | 10.0% | 4.700 † | n/m | n/m |" in rows
    assert "| W3 | gptq |  |  |  | n/m | n/m | n/m | n/m |" in rows
    (tmp_path / "mini-dream" / "c").mkdir()  # a run whose float NLL shares the cells' masks: changes against it
    (tmp_path / "mini-dream" / "c" / "float.json").write_text(json.dumps({**cell, "humaneval": 0.1, "wiki_nll": 4.0}))
    (tmp_path / "mini-dream" / "c" / "w4-gptq.json").write_text(json.dumps({**cell, "humaneval": 0.05}))
    rows = R.mini_table(R.RUNS[2:]).splitlines()
    assert "| W4 | gptq |  | 4.25 | 700 | 5.0% | 4.700 (+17.5%) |" in rows
    assert "| BF16 | float |  | 16 | 700 | 10.0% | 4.000 |" in rows
    assert "| W4A4 | quarot | masked |  |  | n/m | n/m |" in rows
    (tmp_path / "mini-dream" / "c" / "w4a4-quarot-clean.json").write_text(json.dumps(cell))  # the same model
    assert "| W4A4 | quarot | masked |  |  | = clean | = clean |" in R.mini_table(R.RUNS[2:]).splitlines()


def test_bits_per_weight_counts_the_scales_in_the_dtype_they_are_stored_in(tmp_path):
    """4-bit codes + a scale and a zero per group of 32 (16 where 32 does not divide): in bfloat16 the scales and
    zeros cost half the bits they cost in float32 (the mini-Dream cells of 2026-11-22 were first counted as if
    their bfloat16 scales were float32)."""
    import calibrate as C
    bits = {}
    for dtype in ("bfloat16", "float32"):
        C.calibrate(C.Args(model=os.path.join(ROOT, "assets", "tiny-dream"), method="rtn", wbits=4, group_size=32,
                           dtype=dtype, nsamples=2, seqlen=32, nll_windows=0, device="cpu", out=str(tmp_path / dtype)))
        bits[dtype] = R.linear_bits(str(tmp_path / dtype))
    codes = 2 * bits["bfloat16"] - bits["float32"]  # what is left once the halved scales are taken away
    assert bits["float32"] > 5 and 4 <= codes < 4.05  # the codes: 4 bits, plus a little int32 word padding


@pytest.mark.parametrize("report,table", [("README.md", "headline"), ("results/tiny/README.md", "tiny"),
                                          ("results/mini-dream/README.md", "mini-dream")])
def test_the_reports_show_the_tables_the_json_files_give(report, table):
    """Each results table is printed by `results/run.py --table`, so a report cannot drift from its JSON files."""
    text = open(os.path.join(ROOT, report)).read()
    for block in R.TABLES[table]().split("\n\n"):
        assert block in text, f"{report}: the table starting {block.splitlines()[0]!r} differs from --table {table}"
