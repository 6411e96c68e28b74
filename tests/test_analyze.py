"""analyze.py: outlier statistics find planted outliers exactly; the step error of a model against itself is 0."""
import os

import pytest
import torch

import analyze as A
import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "assets", "tiny-llada")


def test_channel_stats_find_planted_outliers():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=gen)
    X[:, 5] *= 12  # "normal" outlier channels: large on every token, below the massive threshold
    X[:, 17] *= 6
    X[3, 40], X[300, 40] = 5000.0, -4000.0  # massive activations on two tokens, one masked, one visible
    masked = torch.zeros(512, dtype=torch.bool)
    masked[:256] = True
    s = A.channel_stats(X, masked, massive=100.0, top=3)
    assert s["channels"] == [40, 5, 17] and s["max"] == 5000.0
    assert (s["massive_masked"], s["massive_visible"]) == (1, 1) and s["tokens_masked"] == 256
    median_channel = X.abs().amax(0).median()
    assert abs(s["ratio"] - 5000.0 / median_channel.item()) < 1e-6 * s["ratio"]


def test_gaussian_activations_have_kurtosis_three_and_no_massive_tokens():
    X = torch.randn(8192, 64, generator=torch.Generator().manual_seed(1))
    s = A.channel_stats(X, torch.zeros(8192, dtype=torch.bool))
    assert abs(s["kurtosis"] - 3.0) < 0.1 and s["massive_masked"] == s["massive_visible"] == 0


@pytest.mark.slow
def test_step_error_of_a_model_against_itself_is_zero():
    m = M.load(TINY)
    prompts = torch.randint(0, 4000, (2, 16), generator=torch.Generator().manual_seed(0))
    text, records = A.error_report(m, m, prompts, 32)
    assert len(records) == 32 and all(r["kl"] == 0 and r["top1"] == 1 and r["logits"] == 0 for r in records)
    assert "identical canvases at every step" in text and "2 of 2 final outputs are identical" in text


@pytest.mark.slow
def test_report_on_the_tiny_model_shows_the_outliers_at_down_proj_and_quarot_removing_them(tmp_path):
    args = A.Args(nsamples=4, seqlen=64, method="quarot", out=str(tmp_path / "report.md"))
    tables, _ = A.analyze(args)
    clean, rotated = tables["clean"], tables["quarot clean"]
    worst = max(clean, key=lambda k: clean[k]["kurtosis"])
    assert worst[1] == "down_in"  # the study's finding: the heaviest tails enter the MLP's down projection
    assert rotated[worst]["max"] < 0.5 * clean[worst]["max"] and rotated[worst]["kurtosis"] < 10
    assert len(clean) == 4 * len(M.load(TINY).blocks)
    assert open(tmp_path / "report.md").read().startswith("# ")
