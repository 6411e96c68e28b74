"""The bundled tiny models: they load, their configs round-trip, they fit the size cap, and they do arithmetic."""
import os
import subprocess
import sys

import pytest

import eval as E
import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"llada": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=8, hidden_dim=768, qkv_bias=False),
          "dream": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=2, hidden_dim=592, qkv_bias=True)}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bundled_model_loads_in_its_real_layout(family):
    path = os.path.join(ROOT, "assets", f"tiny-{family}")
    m = M.load(path)
    assert {k: getattr(m.args, k) for k in SHAPES[family]} == SHAPES[family] and m.args.family == family
    assert M.special_ids(path, M.ModelArgs.from_config(m.args.to_config())) == m.args
    tok = M.load_tokenizer(path)
    mask = {"llada": "<|mdm_mask|>", "dream": "<|mask|>"}[family]
    assert m.args.mask_id == tok.token_to_id(mask) and m.args.eos_id == tok.token_to_id("<|endoftext|>")
    assert os.path.getsize(os.path.join(path, "model.safetensors")) <= 20 * 2**20
    assert set(M.tensor_files(path)) == {M.rename(M.name_map(m.args), k) for k in m.state_dict()}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bundled_model_solves_held_out_arithmetic(family):
    """The full 500-problem score is in the model card (96.8% / 96.6%); 32 problems keep this test fast."""
    m = M.load(os.path.join(ROOT, "assets", f"tiny-{family}"))
    args = E.Args(limit=32, batch_size=32)
    result = E.arithmetic_em(m, M.load_tokenizer(os.path.join(ROOT, "assets", f"tiny-{family}")), args, "cpu")
    assert result["exact_match"]["n"] == 32 and result["exact_match"]["value"] >= 0.8


@pytest.mark.slow
def test_sample_cli_defaults_to_the_bundled_model():
    """Run from another directory: the default --model is found relative to sample.py."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--prompt", "Q: 12+5= A: ",
                        "--gen_length", "6", "--steps", "6", "--block_length", "6"],
                       cwd=os.path.dirname(ROOT), capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "17"
