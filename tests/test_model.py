"""model.py against the reference implementations' fixtures, against a textbook float64 evaluation on configs the
fixtures do not cover, and on bad input."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import model as M

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_matches_reference_fixture(family):
    """fp32 hidden states within 1e-6 and logits within 1e-5 of the reference modeling code (fixtures README)."""
    m = M.load(f"{FIX}/{family}-tiny")
    ref = load_file(f"{FIX}/{family}-tiny/reference.safetensors")
    with torch.no_grad():
        x, rope, mask = m.block_inputs(ref["input_ids"])
        for i, block in enumerate(m.blocks):
            assert (x - ref[f"hidden_states.{i}"]).abs().max() <= 1e-6, f"input of block {i}"
            x = block(x, rope, mask)
        assert (x - ref["hidden_prenorm_last"]).abs().max() <= 1e-6
        h = m.norm(x)
        assert (h - ref["hidden_last"]).abs().max() <= 1e-5
        assert (m.lm_head(h) - ref["logits"]).abs().max() <= 1e-5  # the raw (for Dream: unshifted) output
        aligned = ref["logits_shifted"] if family == "dream" else ref["logits"]
        assert (m(ref["input_ids"]) - aligned).abs().max() <= 1e-5  # forward: position i predicts token i


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cuda_load_matches_reference_fixture(family):
    """Tensors loaded straight to the GPU; fp32 within 1e-4 (GPU kernels), bf16 within 2% relative error."""
    ref = load_file(f"{FIX}/{family}-tiny/reference.safetensors")
    ids = ref["input_ids"].cuda()
    with torch.no_grad():
        m = M.load(f"{FIX}/{family}-tiny", device="cuda")
        assert (m.lm_head(m.hidden(ids)).cpu() - ref["logits"]).abs().max() <= 1e-4
        m = M.load(f"{FIX}/{family}-tiny", dtype=torch.bfloat16, device="cuda")
        got = m.lm_head(m.hidden(ids)).float().cpu()
    assert (got - ref["logits"]).norm() / ref["logits"].norm() <= 2e-2


def naive_logits(sd, a, ids):
    """Textbook float64 evaluation written independently of model.py: per-head loops, explicit softmax,
    RoPE as a complex rotation of the pairs (x_j, x_{j+d/2}), kv head of query head j = j // group."""
    d = a.head_dim
    freqs = a.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(ids.shape[1], d // 2, dtype=torch.float64),
                      torch.arange(ids.shape[1], dtype=torch.float64)[:, None] * freqs)

    def rope(t):
        c = torch.complex(t[..., :d // 2], t[..., d // 2:]) * rot
        return torch.cat([c.real, c.imag], -1)

    def norm(v, w):
        return w * v / torch.sqrt((v * v).mean(-1, keepdim=True) + a.norm_eps)

    def lin(v, name):
        return v @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0)

    x = sd["embed.weight"][ids]
    for i in range(a.n_layers):
        p = f"blocks.{i}."
        h = norm(x, sd[p + "attn_norm.weight"])
        q, k, v = (lin(h, p + f"attn.{n}_proj") for n in "qkv")
        heads = []
        for j in range(a.n_heads):
            kv = j // (a.n_heads // a.n_kv_heads)
            qj, kj = rope(q[..., j * d:(j + 1) * d]), rope(k[..., kv * d:(kv + 1) * d])
            heads.append(torch.softmax(qj @ kj.transpose(1, 2) / math.sqrt(d), -1) @ v[..., kv * d:(kv + 1) * d])
        x = x + lin(torch.cat(heads, -1), p + "attn.o_proj")
        h = norm(x, sd[p + "mlp_norm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g * torch.sigmoid(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    logits = lin(norm(x, sd["norm.weight"]), "lm_head")
    return torch.cat([logits[:, :1], logits[:, :-1]], 1) if a.family == "dream" else logits


def random_model(family, dim, n_heads, n_kv_heads, hidden=40, n_layers=2, vocab=97, seed=0):
    a = M.ModelArgs(family, dim, n_layers, n_heads, n_kv_heads, hidden, vocab, 1e-5, 1e4, family == "dream",
                    128, mask_id=vocab - 1)
    torch.manual_seed(seed)
    m = M.Model(a).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            big = any(s in name for s in ("q_proj", "k_proj", "lm_head"))  # sharp attention, varied logits
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) * (0.3 if big else 0.05))
    return m


CONFIGS = [("llada", 48, 3, 3), ("llada", 64, 8, 2), ("dream", 48, 6, 2), ("dream", 32, 4, 1), ("dream", 64, 4, 4)]


@pytest.mark.parametrize("family,dim,n_heads,n_kv_heads", CONFIGS)
@pytest.mark.parametrize("T", [1, 13, 37])
def test_any_config_matches_naive_float64(family, dim, n_heads, n_kv_heads, T):
    m = random_model(family, dim, n_heads, n_kv_heads)
    ids = torch.randint(0, m.args.vocab_size, (2, T))
    with torch.no_grad():
        got = m(ids)
    expect = naive_logits(dict(m.state_dict().items()), m.args, ids)
    assert got.shape == (2, T, m.args.vocab_size)
    assert (got - expect).abs().max() <= 1e-10


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_attention_is_bidirectional(family):
    m = M.load(f"{FIX}/{family}-tiny")
    ids = torch.randint(0, 400, (1, 12))
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1) % 400
    with torch.no_grad():
        assert (m.hidden(ids)[0, 0] - m.hidden(changed)[0, 0]).abs().max() > 1e-3  # a later token moves position 0


@pytest.mark.parametrize("family,n_kv_heads", [("llada", 4), ("dream", 2)])
def test_left_padding_gives_the_unpadded_logits(family, n_kv_heads):
    m = random_model(family, 32, 4, n_kv_heads)
    short, long = torch.randint(0, 90, (1, 7)), torch.randint(0, 90, (1, 11))
    batch = torch.cat([torch.cat([torch.full((1, 4), 5), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    with torch.no_grad():  # from the second real token on: Dream's logit at the first one is never used
        both = m(batch, mask)
        assert (both[0, 5:] - m(short)[0, 1:]).abs().max() <= 1e-10
        assert (both[1] - m(long)[0]).abs().max() <= 1e-10


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_save_writes_the_real_layout_and_loads_back(family, tmp_path):
    src = f"{FIX}/{family}-tiny"
    m = M.load(src)
    M.save(m, str(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == set(M.tensor_files(src))  # the same tensor names as the reference checkpoint
    again = M.load(str(tmp_path))
    assert again.args == m.args
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))


def test_in_place_edits_never_reach_the_checkpoint_file(tmp_path):
    """CPU weights are mapped from the file copy-on-write: transforms that edit them in place (rotations,
    smoothing) must leave the checkpoint on disk untouched."""
    shutil.copytree(f"{FIX}/dream-tiny", tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    m = M.load(str(tmp_path / "m"))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.0)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert torch.equal(M.load(str(tmp_path / "m")).norm.weight * 2, m.norm.weight)


def test_config_round_trip_and_bf16_load():
    for family in ("llada", "dream"):
        a = M.read_args(f"{FIX}/{family}-tiny")
        assert M.ModelArgs.from_config(json.loads(json.dumps(a.to_config()))) == a
        m = M.load(f"{FIX}/{family}-tiny", dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in m.parameters())
        assert m(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


def test_llada_config_defaults_follow_olmo():
    """Absent n_kv_heads: MHA, or one kv head with multi_query_attention; absent mlp_hidden_size: mlp_ratio * d."""
    with open(f"{FIX}/llada-tiny/config.json") as f:
        cfg = json.load(f)
    read = lambda **kw: M.ModelArgs.from_config({**cfg, **kw})  # noqa: E731
    assert read(n_kv_heads=None).n_kv_heads == 4 and read(multi_query_attention=False).n_kv_heads == 4
    assert read(n_kv_heads=None, multi_query_attention=True).n_kv_heads == 1
    assert read(mlp_hidden_size=None, mlp_ratio=3).hidden_dim == 192


def write_tokenizer(path, tokens, special, tok_cfg):
    """A tiny word-level tokenizer.json whose special tokens sit at the given ids, plus tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True) for s in special])
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f)
    return tok


def test_special_ids_come_from_the_tokenizer_files(tmp_path):
    shutil.copytree(f"{FIX}/dream-tiny", tmp_path / "m")
    words = [f"w{i}" for i in range(495)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>",
                                             "<|x|>", "<|mask|>"]
    write_tokenizer(tmp_path / "m", words, words[495:],
                    {"bos_token": "<|beginoftext|>", "eos_token": {"content": "<|endoftext|>"},
                     "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"})
    a = M.read_args(str(tmp_path / "m"))
    assert (a.mask_id, a.bos_id, a.eos_id, a.pad_id, a.eot_id) == (500, 498, 495, 495, 497)
    edit_json(tmp_path / "m" / "config.json", mask_token_id=499)
    with pytest.raises(M.InputError, match=r"mask_token .* has id 500, but config.json says mask_token_id 499"):
        M.read_args(str(tmp_path / "m"))


# ------------------------------------------------------------------------------------------------ bad input
def broken_copy(tmp_path, family="llada"):
    dst = tmp_path / family
    shutil.copytree(f"{FIX}/{family}-tiny", dst)
    return dst


def edit_json(file, **changes):
    """Change keys of a JSON file; a value of None removes the key."""
    with open(file) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(file, "w") as f:
        json.dump({k: v for k, v in cfg.items() if v is not None}, f)


def drop_tensor(file, key, replace=None):
    sd = load_file(file)
    del sd[key]
    if replace is not None:
        sd[key] = replace
    save_file(sd, file)


BAD = {
    "missing dir": (lambda d: shutil.rmtree(d), "no such checkpoint directory"),
    "missing config": (lambda d: os.remove(d / "config.json"), "config.json: not found"),
    "unknown model_type": (lambda d: edit_json(d / "config.json", model_type="gpt2"),
                           "model_type 'gpt2' is not supported"),
    "missing config key": (lambda d: edit_json(d / "config.json", d_model=None), "missing key 'd_model'"),
    "unsupported variant": (lambda d: edit_json(d / "config.json", weight_tying=True), "weight_tying=True"),
    "index names a missing shard": (lambda d: os.remove(d / "model-00002-of-00002.safetensors"),
                                    "names shard 'model-00002-of-00002.safetensors', which is not in"),
    "shard lacks a tensor": (lambda d: drop_tensor(d / "model-00001-of-00002.safetensors",
                                                   "model.transformer.wte.weight"),
                             "has no tensor 'model.transformer.wte.weight'"),
    "tensor missing everywhere": (lambda d: edit_json(d / "model.safetensors.index.json", weight_map={
        k: v for k, v in json.load(open(d / "model.safetensors.index.json"))["weight_map"].items()
        if k != "model.transformer.ln_f.weight"}), "missing tensor 'model.transformer.ln_f.weight'"),
    "wrong shape": (lambda d: drop_tensor(d / "model-00001-of-00002.safetensors", "model.transformer.ln_f.weight",
                                          torch.ones(65)), "has shape [65], expected [64]"),
    "corrupt shard": (lambda d: open(d / "model-00002-of-00002.safetensors", "wb").write(b"\0" * 64),
                      "not a readable safetensors file"),
    "not json": (lambda d: open(d / "config.json", "w").write("{"), "config.json: not valid JSON"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoint_gives_one_clear_line(case, tmp_path):
    d = broken_copy(tmp_path)
    breaker, message = BAD[case]
    breaker(d)
    with pytest.raises(M.InputError) as e:
        M.load(str(d))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unexpected_tensor_in_single_file(tmp_path):
    d = broken_copy(tmp_path, "dream")
    drop_tensor(d / "model.safetensors", "model.norm.weight")
    sd = load_file(d / "model.safetensors")
    save_file({**sd, "model.norm.weight": torch.ones(64), "model.extra.weight": torch.ones(3)},
              d / "model.safetensors")
    with pytest.raises(M.InputError, match="unexpected tensor 'model.extra.weight'"):
        M.load(str(d))


@pytest.mark.slow
def test_cli_error_is_one_line_on_stderr(tmp_path):
    r = subprocess.run([sys.executable, "sample.py", "--model", str(tmp_path / "nope"), "--prompt_ids", "1"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such checkpoint directory"]


def test_checkpoint_files_are_the_safetensors_librarys_own_bytes(tmp_path):
    """write_safetensors orders everything itself (the library writes several metadata keys in a random order): with
    one metadata key, its bytes are exactly the library's, for every dtype a checkpoint holds."""
    tensors = {"w": torch.randn(3, 5).bfloat16(), "q": torch.arange(7, dtype=torch.int32), "s": torch.randn(4),
               "f8": torch.randn(2).to(torch.float8_e4m3fn), "u": torch.zeros(3, dtype=torch.uint8),
               "d": torch.randn(2, dtype=torch.float64), "h": torch.randn(3).half(), "empty": torch.zeros(0)}
    M.write_safetensors(tensors, str(tmp_path / "ours"), {"format": "pt"})
    save_file(tensors, str(tmp_path / "lib"), metadata={"format": "pt"})
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "lib").read_bytes()
    M.write_safetensors(tensors, str(tmp_path / "again"), {"z": "1", "format": "pt", "a": "2"})
    M.write_safetensors(tensors, str(tmp_path / "again2"), {"a": "2", "z": "1", "format": "pt"})
    assert (tmp_path / "again").read_bytes() == (tmp_path / "again2").read_bytes()
    back = load_file(str(tmp_path / "again"))
    assert all(torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)) for k, v in tensors.items())
