"""SmoothQuant, QuaRot, DuQuant: orthogonal Hadamards and rotations, and what they buy at W4A4 (that each keeps the
float64 logits is tests/test_methods.py's)."""
import copy
import os

import pytest
import torch

import calibrate as C
import model as M
from eval import Args as EvalArgs, wiki_nll
from quantizers import duquant, quarot
from quantizers.core import Rotation, RotLinear
from quantizers.hadamard import hadamard_factors, orthogonal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}
SIZES = [32, 128, 256, 592, 768, 3584, 4096, 12288, 18944]  # head dims, tiny and 8B widths


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_for_every_width_used(n):
    A, B = hadamard_factors(n)
    for H in (A, B):
        assert (H.abs() == 1).all() and torch.equal(H @ H.T, len(H) * torch.eye(len(H), dtype=torch.float64))
    assert len(A) * len(B) == n and len(B) >= 4  # a power-of-two factor, so the online cost stays small


def test_online_rotations_equal_the_dense_matrix_and_the_fused_linear():
    x = torch.randn(5, 592, dtype=torch.float64)
    had = quarot.online_hadamard(592, torch.float64)
    assert torch.allclose(had(x), x @ orthogonal(592, None), atol=1e-12)
    X = torch.randn(256, 592, dtype=torch.float64) * torch.rand(592, dtype=torch.float64) * 10
    dual = duquant.dual_transform(X, 128, 8, torch.Generator().manual_seed(0))
    T = dual(torch.eye(592, dtype=torch.float64))  # rows of I -> the matrix T itself
    assert torch.allclose(T @ T.T, torch.eye(592, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(dual(x), x @ T, atol=1e-12)
    assert (X @ T).abs().max() < X.abs().max()  # the point: a lower peak
    lin = torch.nn.Linear(592, 7, dtype=torch.float64)
    fused = RotLinear.wrap(copy.deepcopy(lin), dual)
    fused.weight.data = dual(lin.weight.data)
    assert torch.allclose(fused(x), lin(x), atol=1e-12)


def held_out_nll(tmp_path, **kw):
    args = C.Args(**{"nsamples": 16, "seqlen": 128, "nll_windows": 0, "device": "cpu", "rotation_steps": 32,
                     "out": str(tmp_path / kw["method"].replace(",", "-")), **kw})
    m = C.calibrate(args)
    return wiki_nll(m, M.load_tokenizer(TINY["llada"]), EvalArgs(limit=16, mc=2), "cpu")["nll"]["value"], m


@pytest.fixture(scope="module")
def float_nll():
    return wiki_nll(M.load(TINY["llada"]), M.load_tokenizer(TINY["llada"]), EvalArgs(limit=16, mc=2),
                    "cpu")["nll"]["value"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["smoothquant", "quarot", "duquant"])
def test_w8a8_costs_under_one_percent(tmp_path, float_nll, method):
    nll, _ = held_out_nll(tmp_path, method=method, bits=8)
    assert abs(nll / float_nll - 1) < 0.01


@pytest.mark.slow
def test_w4a4_rotations_beat_rtn_and_smoothing(tmp_path, float_nll):
    """The study's finding on the trained tiny model: at W4A4 rotation (QuaRot, DuQuant) costs far less than round
    to nearest or smoothing (results/tiny/README.md gives the numbers with the default calibration)."""
    cost = {m: held_out_nll(tmp_path, method=m, **kw)[0] - float_nll for m, kw in [
        ("rtn", {"wbits": 4, "abits": 4, "group_size": -1}), ("smoothquant", {"bits": 4}), ("quarot", {"bits": 4}),
        ("duquant", {"bits": 4})]}
    assert max(cost["quarot"], cost["duquant"]) < 0.6 * min(cost["rtn"], cost["smoothquant"]), cost


@pytest.mark.slow
@pytest.mark.parametrize("method", ["quarot", "duquant"])
def test_rotated_checkpoint_loads_back_exactly(tmp_path, method):
    _, m = held_out_nll(tmp_path, method=method, bits=4, nsamples=4, seqlen=32)
    again = M.load(str(tmp_path / method))
    assert isinstance(again.blocks[0].mlp.down_proj.rotation, Rotation)
    ids = torch.randint(0, 4000, (2, 20))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))
