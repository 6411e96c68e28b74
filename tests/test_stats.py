"""stats.py against exact values (McNemar's binomial tail in integers), the bootstrap's coverage of a known mean
difference, the decoding-path divergence on constructed paths; and eval.py's paired tables: per-item outcomes in
result files, --reference and --compare."""
import json
import os
from fractions import Fraction
from math import comb

import numpy as np
import pytest

import eval as E
import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}


def outcomes(lost, gained, same_pass, same_fail):
    """Paired 0/1 outcomes (reference, other) with the given counts of each kind of item."""
    a = [1] * lost + [0] * gained + [1] * same_pass + [0] * same_fail
    b = [0] * lost + [1] * gained + [1] * same_pass + [0] * same_fail
    return a, b


@pytest.mark.parametrize("lost,gained", [(10, 2), (2, 10), (0, 7), (5, 5), (1, 0), (30, 12)])
def test_mcnemar_is_the_exact_binomial_tail(lost, gained):
    n = lost + gained
    exact = min(Fraction(1), 2 * sum(Fraction(comb(n, k), 2 ** n) for k in range(min(lost, gained) + 1)))
    a, b = outcomes(lost, gained, 40, 17)
    assert stats.mcnemar(a, b) == pytest.approx(float(exact), rel=1e-12)
    assert stats.mcnemar(*outcomes(10, 2, 0, 0)) == pytest.approx(158 / 4096, rel=1e-12)  # 2 (1 + 12 + 66) / 2^12
    assert stats.mcnemar(*outcomes(0, 0, 9, 9)) == 1.0  # no discordant item: nothing to test


def test_bootstrap_covers_a_known_mean_difference_about_95_percent_of_the_time():
    """Datasets drawn with a true paired difference of 0.1: the 95% interval should cover it in about 95% of them
    (the percentile interval runs a little short at n = 60), and the mean difference is the sample's exactly."""
    rng, covered = np.random.default_rng(1), 0
    for _ in range(200):
        a = rng.normal(3.0, 1.0, 60)
        b = a + 0.1 + rng.normal(0, 0.3, 60)
        diff, low, high, _ = stats.bootstrap(a, b, resamples=2000, seed=0)
        assert diff == pytest.approx((b - a).mean(), abs=1e-12)
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / 200 <= 0.99, covered
    a = np.zeros(100)
    diff, low, high, p = stats.bootstrap(a, a + 0.5 + np.random.default_rng(2).normal(0, 0.5, 100))
    assert low > 0.3 and high < 0.7 and p < 1e-3
    assert stats.bootstrap(a, a) == (0.0, 0.0, 0.0, 1.0)
    assert stats.bootstrap([1, 2, 3], [2, 2, 4], seed=5) == stats.bootstrap([1, 2, 3], [2, 2, 4], seed=5)


def test_divergence_is_the_first_step_the_canvases_differ():
    p = ([1, 2, 3, 4], [7, 8, 9, 10])
    assert stats.divergence(p, p) is None
    assert stats.divergence(p, ([1, 2, 3, 4], [7, 8, 9, 11])) == 4  # same order, last token differs
    assert stats.divergence(p, ([1, 3, 2, 4], [7, 8, 9, 10])) == 2  # positions 1, 2 swapped order: same output
    assert stats.divergence(p, ([2, 1, 3, 4], [7, 8, 9, 10])) == 1
    steps, tokens = [3, 1, 2, 2], [5, 151665, 0, 9]
    assert stats.unpack_path(stats.pack_path(steps, tokens)) == (steps, tokens)


def test_result_files_pair_up_later_and_tables_mark_what_is_significant(tmp_path, capsys):
    base = dict(tasks="arithmetic,wiki_nll", limit=12, mc=1, device="cpu")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    E.evaluate(E.Args(model=TINY["llada"], out=str(a), **base))
    capsys.readouterr()
    E.evaluate(E.Args(model=TINY["dream"], out=str(b), reference=str(a), **base))
    table = capsys.readouterr().out.splitlines()
    saved = json.loads(b.read_text())
    assert {r["model"] for r in saved} == {TINY["dream"]}  # the reference's records stay in its own file
    nll = next(r for r in saved if r["metric"] == "nll")
    ref = next(r for r in json.loads(a.read_text()) if r["metric"] == "nll")
    d = np.array(nll["items"]["outcomes"]) - np.array(ref["items"]["outcomes"])
    assert nll["paired"]["diff"] == pytest.approx(d.mean()) and nll["paired"]["test"] == "bootstrap"
    em = next(r for r in saved if r["metric"] == "exact_match")
    assert em["paired"]["test"] == "mcnemar" and em["items"]["ids"][0].startswith("Q: ")
    assert len(em["items"]["paths"]) == 12 and {r["metric"] for r in saved} >= {"path: same output",
                                                                                "path: steps before divergence"}
    assert any(line.startswith("| task | metric | tiny-llada (reference) | tiny-dream |") for line in table)
    E.evaluate(E.Args(compare=f"{a},{b}"))
    again = capsys.readouterr().out.splitlines()
    assert [line for line in again if "nll" in line] == [line for line in table if "nll" in line]
    assert ("**" in next(line for line in again if "| nll |" in line)) == nll["paired"]["significant"]
    with pytest.raises(E.InputError, match="given twice"):
        E.evaluate(E.Args(compare=f"{a},{a}"))
    (tmp_path / "c.json").write_text(a.read_text())
    with pytest.raises(E.InputError, match="is in .* too"):
        E.evaluate(E.Args(compare=f"{a},{tmp_path / 'c.json'}"))
