"""Line budgets from DESIGN.md, and the README's file tree kept true."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DESIGN.md aims at 400 (model.py) and 250 (sample.py); both hold more CLI flags and checks than planned, and
# sample.py holds Graphed (a step's forward replayed from a CUDA graph).
# core.py holds both stored formats (QLinear's integer grid, Quant-dLLM's binary residual), the online rotation and
# QLinear's dispatch to the Triton kernels, the FP8 format and cache_weights() (faster scoring). A kernel file
# holds its format, twin, kernel, wrapper and benchmark; act_quant.py also the token sums of its two kernels and a
# twin of its rotation's bf16 intermediate. bench.py times every quantized format eagerly and compiled.
BUDGETS = {"model.py": 455, "sample.py": 330, "bench.py": 270, "train.py": 300, "eval.py": 400,
           "calibrate.py": 300, "sandbox.py": 150, "data/prepare.py": 200,
           "data/prepare_code.py": 150, "tools/gguf_to_dream.py": 250, "quantizers/core.py": 420,
           **{f"kernels/{k}.py": 300 for k in ("wq_gemm", "wq_factored", "wa_gemm", "ops")},
           "kernels/act_quant.py": 330, "quantizers/rtn.py": 250, "quantizers/gptq.py": 250, "quantizers/awq.py": 250,
           **{f"quantizers/{m}.py": 250 for m in ("smoothquant", "quarot", "duquant", "dllmquant", "quantdllm")}}


def lines(name):
    with open(os.path.join(ROOT, name)) as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_file_within_budget(name):
    assert lines(name) <= BUDGETS[name], f"{name} has {lines(name)} lines, budget {BUDGETS[name]}"


def test_readme_file_tree_has_the_real_line_counts():
    with open(os.path.join(ROOT, "README.md")) as f:
        tree = f.read().split("## Reading order", 1)[1].split("```")[1]
    rows = re.findall(r"^\s*([\w/]+\.py)\s+(\d+)\s", tree, flags=re.M)
    assert len(rows) >= 5
    for name, count in rows:
        dirs = ("", "tests/", "data/", "quantizers/", "results/", "kernels/", "tools/")
        path = next(d + name for d in dirs if os.path.exists(os.path.join(ROOT, d + name)))
        assert lines(path) == int(count), f"README says {name} has {count} lines, it has {lines(path)}"
