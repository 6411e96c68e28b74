"""
LLaDA and Dream, the two open masked-diffusion LLMs, in one small PyTorch file.

Both are LLaMA-style transformers with *bidirectional* attention: RMSNorm computed in fp32, half-split
("NeoX") RoPE, a SwiGLU MLP and grouped-query attention. They differ in three places only:
  - the checkpoint layout (LLaDA: OLMo-style `model.transformer.*`; Dream: Qwen2-style `model.layers.*`),
  - q/k/v biases (Dream has them, LLaDA has none),
  - the logit alignment: Dream was adapted from the autoregressive Qwen2.5, so its raw output at position
    i-1 predicts token i. `Model.forward` applies that shift once, so that for both families
    `logits[:, i]` predicts token i and no consumer (sampler, eval, calibration, training) ever shifts.
Papers: LLaDA (Nie et al. 2025, arXiv:2502.09992), Dream 7B (Ye et al. 2025, arXiv:2508.15487).

    model = load("tests/fixtures/llada-tiny"); logits = model(ids)      # ids (B, T) -> (B, T, vocab)
"""
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from cli import InputError

# Canonical module name -> module name in the family's safetensors files ({i}: block index).
LAYOUTS = {
    "llada": {
        "embed": "model.transformer.wte",
        "blocks.{i}.attn_norm": "model.transformer.blocks.{i}.attn_norm",
        "blocks.{i}.attn.q_proj": "model.transformer.blocks.{i}.q_proj",
        "blocks.{i}.attn.k_proj": "model.transformer.blocks.{i}.k_proj",
        "blocks.{i}.attn.v_proj": "model.transformer.blocks.{i}.v_proj",
        "blocks.{i}.attn.o_proj": "model.transformer.blocks.{i}.attn_out",
        "blocks.{i}.mlp_norm": "model.transformer.blocks.{i}.ff_norm",
        "blocks.{i}.mlp.gate_proj": "model.transformer.blocks.{i}.ff_proj",  # silu is applied to ff_proj
        "blocks.{i}.mlp.up_proj": "model.transformer.blocks.{i}.up_proj",
        "blocks.{i}.mlp.down_proj": "model.transformer.blocks.{i}.ff_out",
        "norm": "model.transformer.ln_f",
        "lm_head": "model.transformer.ff_out",  # the head; not blocks.{i}.ff_out
    },
    "dream": {
        "embed": "model.embed_tokens",
        "blocks.{i}.attn_norm": "model.layers.{i}.input_layernorm",
        "blocks.{i}.attn.q_proj": "model.layers.{i}.self_attn.q_proj",
        "blocks.{i}.attn.k_proj": "model.layers.{i}.self_attn.k_proj",
        "blocks.{i}.attn.v_proj": "model.layers.{i}.self_attn.v_proj",
        "blocks.{i}.attn.o_proj": "model.layers.{i}.self_attn.o_proj",
        "blocks.{i}.mlp_norm": "model.layers.{i}.post_attention_layernorm",
        "blocks.{i}.mlp.gate_proj": "model.layers.{i}.mlp.gate_proj",
        "blocks.{i}.mlp.up_proj": "model.layers.{i}.mlp.up_proj",
        "blocks.{i}.mlp.down_proj": "model.layers.{i}.mlp.down_proj",
        "norm": "model.norm",
        "lm_head": "lm_head",
    },
}
# The chat template's end-of-turn marker, looked up by name in tokenizer.json (LLaMA-3 style / Qwen style).
END_OF_TURN = {"llada": "<|eot_id|>", "dream": "<|im_end|>"}
# Config values that select architecture variants this file does not implement: key -> the supported value.
SUPPORTED = {
    "llada": {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
              "alibi": False, "weight_tying": False, "include_bias": False, "scale_logits": False,
              "input_emb_norm": False, "attention_layer_norm": False},
    "dream": {"hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False, "rope_scaling": None},
}


# ModelArgs field -> config.json key, per family; read by from_config and written by to_config.
CONFIG_KEYS = {
    "llada": {"dim": "d_model", "n_layers": "n_layers", "n_heads": "n_heads", "n_kv_heads": "n_kv_heads",
              "hidden_dim": "mlp_hidden_size", "vocab_size": "embedding_size", "norm_eps": "rms_norm_eps",
              "rope_theta": "rope_theta", "max_seq_len": "max_sequence_length"},
    "dream": {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "n_kv_heads": "num_key_value_heads", "hidden_dim": "intermediate_size", "vocab_size": "vocab_size",
              "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta", "max_seq_len": "max_position_embeddings"},
}
SPECIAL_KEYS = {"mask_id": "mask_token_id", "bos_id": "bos_token_id", "eos_id": "eos_token_id",
                "pad_id": "pad_token_id"}


@dataclass
class ModelArgs:
    family: str           # "llada" or "dream": checkpoint layout, and whether the raw logits are shifted
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int       # < n_heads: grouped-query attention
    hidden_dim: int       # SwiGLU width
    vocab_size: int       # rows of the embedding and of the head
    norm_eps: float
    rope_theta: float
    qkv_bias: bool        # Dream has q/k/v biases, LLaDA none
    max_seq_len: int
    mask_id: int          # special ids come from the checkpoint's files, never from literals
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    def flops(self, batch, length, head_rows=None):
        """Model FLOPs of one forward of `batch` sequences of `length` tokens: 2 per weight of every block Linear per
        token, 4 * length * dim per token per layer for Q K^T and P V (full, bidirectional attention), and 2 per
        head weight per row the head computes (head_rows; all of them when None). Norms, RoPE and softmax omitted."""
        kv = self.n_kv_heads * self.head_dim
        linear = 2 * self.dim * self.dim + 2 * self.dim * kv + 3 * self.dim * self.hidden_dim
        tokens = batch * length
        rows = tokens if head_rows is None else head_rows
        return 2 * tokens * self.n_layers * linear + 4 * tokens * length * self.dim * self.n_layers + \
            2 * rows * self.dim * self.vocab_size

    @classmethod
    def from_config(cls, cfg, where="config.json"):
        """Map the family's Hugging Face config.json keys to ModelArgs; reject variants we do not implement."""
        family = str(cfg.get("model_type", "")).lower()
        if family not in SUPPORTED:
            raise InputError(f"{where}: model_type {cfg.get('model_type')!r} is not supported "
                             f"(expected 'llada' or 'Dream')")
        for key, value in SUPPORTED[family].items():
            if cfg.get(key, value) != value:
                raise InputError(f"{where}: {key}={cfg[key]!r} is not supported (expected {value!r})")
        cfg = {**cfg,  # OLMo-style defaults of LLaDA's config class: kv heads, MLP width, padded vocab
               "n_kv_heads": cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else cfg.get("n_heads")),
               "mlp_hidden_size": cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * cfg.get("d_model", 0),
               "embedding_size": cfg.get("embedding_size") or cfg.get("vocab_size"),
               "num_key_value_heads": cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")}
        missing = [k for k in [*CONFIG_KEYS[family].values(), "mask_token_id"] if cfg.get(k) is None]
        if missing:
            raise InputError(f"{where}: missing key '{missing[0]}' (a {family} config needs it)")
        for f, k in [*CONFIG_KEYS[family].items(), *SPECIAL_KEYS.items()]:
            value, floats = cfg.get(k), f in ("norm_eps", "rope_theta")
            if value is None and f in SPECIAL_KEYS:
                continue
            number = isinstance(value, (int, float)) if floats else isinstance(value, int)
            if isinstance(value, bool) or not number or value < (0 if f in SPECIAL_KEYS else 1e-30 if floats else 1):
                kind = "token id" if f in SPECIAL_KEYS else "positive number" if floats else "positive integer"
                raise InputError(f"{where}: {k}={value!r} must be a {kind}")
        args = cls(family, **{f: cfg[k] for f, k in CONFIG_KEYS[family].items()},
                   qkv_bias=family == "dream" or bool(cfg.get("include_qkv_bias")),
                   **{f: cfg.get(k) for f, k in SPECIAL_KEYS.items()})
        for f, k in SPECIAL_KEYS.items():
            if getattr(args, f) is not None and getattr(args, f) >= args.vocab_size:
                raise InputError(f"{where}: {k} {getattr(args, f)} is outside the vocabulary of {args.vocab_size}")
        if args.dim % args.n_heads or args.n_heads % args.n_kv_heads or args.head_dim % 2:
            raise InputError(f"{where}: heads do not divide the width (dim {args.dim}, heads {args.n_heads}, "
                             f"kv heads {args.n_kv_heads}; head_dim must be even)")
        return args

    def to_config(self):
        """The family's config.json with its real key names, so saved checkpoints load in the reference code."""
        cfg = {"model_type": {"llada": "llada", "dream": "Dream"}[self.family], **SUPPORTED[self.family],
               **{k: getattr(self, f) for f, k in {**CONFIG_KEYS[self.family], **SPECIAL_KEYS}.items()}}
        if self.family == "llada":
            cfg.update(vocab_size=self.vocab_size, include_qkv_bias=self.qkv_bias, rope_full_precision=True,
                       layer_norm_with_affine=True)
        elif not self.qkv_bias:
            raise ValueError("Dream checkpoints always have q/k/v biases")
        return cfg


# ----------------------------------------------------------------------------------------------- the network
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in (at least) fp32 whatever the model dtype, then scale in the model dtype, as both references
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(pos, head_dim, theta, dtype=torch.float32):
    """pos (B, T) integer positions -> cos, sin (B, 1, T, head_dim); the angle is pos / theta^(2j/d)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=dtype) / head_dim)
    angle = pos.to(dtype)[..., None] * inv_freq
    angle = torch.cat([angle, angle], dim=-1)[:, None]  # the half-split form pairs dim j with dim j + d/2
    return angle.cos(), angle.sin()


def apply_rope(x, cos, sin):
    """Rotate (x_j, x_{j+d/2}) pairs of x (B, H, T, d) by the position angle, in cos/sin's dtype (>= fp32)."""
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    causal = False  # bidirectional; True only for the autoregressive source (gguf_to_dream --check, train --distill)

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.q_proj = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)
        self.qkv_proj = None  # q, k and v in one Linear, for inference only (quantizers.core.fuse_projections)

    def qkv(self, x, rope):
        """q (B, H, T, hd) and k, v (B, H_kv, T, hd), RoPE applied to q and k (DLLMQuant's IA-AQ reads them too)."""
        B, T, _ = x.shape
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, *rope), apply_rope(k, *rope), v

    def forward(self, x, rope, mask=None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, rope)
        if self.n_kv_heads != self.n_heads:  # kv head j serves query heads j*g .. j*g+g-1 (interleave, not tile)
            g = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(a.dim, a.hidden_dim, bias=False)
        self.up_proj = nn.Linear(a.dim, a.hidden_dim, bias=False)
        self.down_proj = nn.Linear(a.hidden_dim, a.dim, bias=False)
        self.gate_up_proj = None  # gate and up in one Linear, for inference only (quantizers.core.fuse_projections)

    def forward(self, x):
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(a.dim, a.norm_eps), Attention(a)
        self.mlp_norm, self.mlp = RMSNorm(a.dim, a.norm_eps), MLP(a)

    def forward(self, x, rope, mask=None):
        x = x + self.attn(self.attn_norm(x), rope, mask)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)

    def block_inputs(self, ids, attn_mask=None):
        """Embeddings, RoPE tables and the SDPA mask: everything a Block needs (calibration walks blocks with it).

        attn_mask (B, T), 1 = real token, 0 = padding. Padding is masked as a key only (a padded query row still
        sees real keys, so nothing becomes NaN), and positions count real tokens only, so a left-padded row gets
        the same logits as the same row unpadded."""
        T = ids.shape[1]
        if attn_mask is None:
            pos, mask = torch.arange(T, device=ids.device)[None], None
        else:
            pos = (attn_mask.long().cumsum(-1) - 1).clamp(min=0)
            mask = attn_mask.bool()[:, None, None, :]  # (B, 1, 1, T): which keys every query may see
        dtype = torch.promote_types(self.embed.weight.dtype, torch.float32)  # RoPE in fp32 (fp64 for fp64 models)
        return self.embed(ids), rope_cos_sin(pos, self.args.head_dim, self.args.rope_theta, dtype), mask

    def hidden(self, ids, attn_mask=None):
        """Final-norm hidden states (B, T, dim), unshifted: the input of the LM head."""
        x, rope, mask = self.block_inputs(ids, attn_mask)
        for block in self.blocks:
            x = block(x, rope, mask)
        return self.norm(x)

    def forward(self, ids, attn_mask=None, select=None):
        """ids (B, T) -> logits (B, T, vocab) with logits[:, i] predicting token i, for both families; with select,
        only the rows it indexes: a (B, T) bool gives (N, vocab), the rows a training loss reads, and an index such
        as (slice(None), slice(lo, hi)) gives (B, hi - lo, vocab), a sampler's block (a 150k vocab makes it pay)."""
        return self.head(self.hidden(ids, attn_mask), select)

    def head(self, h, select=None):
        """hidden's states (B, T, dim) -> forward's logits (sample.Graphed runs hidden in a CUDA graph, this not)."""
        if self.args.family == "dream":  # raw row i-1 predicts token i; row 0 is a copy and never used
            h = torch.cat([h[:, :1], h[:, :-1]], dim=1)  # shifting h before the head = shifting the logits
        return self.lm_head(h if select is None else h[select])


# ----------------------------------------------------------------------------------------- loading and saving
LINEAR_NAMES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                "mlp.down_proj")


def name_map(args):
    """Every canonical module name of the model -> its name in the checkpoint."""
    out = {}
    for canon, ckpt in LAYOUTS[args.family].items():
        for i in range(args.n_layers) if "{i}" in canon else [None]:
            out[canon.format(i=i)] = ckpt.format(i=i)
    return out


def rename(names, key):
    """Rename a tensor's longest known module prefix with `names` and keep the rest (`weight`, `rotation.r1`...);
    None if no prefix is known."""
    module, leaf = key, ""
    while "." in module:
        module, _, last = module.rpartition(".")
        leaf = f"{last}.{leaf}" if leaf else last
        if module in names:
            return f"{names[module]}.{leaf}"
    return None


def _open(file, device="cpu"):
    try:
        return safe_open(file, framework="pt", device=device)
    except (SafetensorError, OSError) as e:
        raise InputError(f"{file}: not a readable safetensors file ({e})") from None


def _read_json(path, what):
    """A JSON object from a file; anything else is one line naming the file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found ({what})")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found a {type(data).__name__} ({what})")
    return data


def special_ids(path, args):
    """Fill bos/eos/pad/eot (and check or fill mask) from tokenizer files when the checkpoint has them.

    tokenizer_config.json names the special tokens (`bos_token`, ...), tokenizer.json's added_tokens give their
    ids; where a tokenizer exists it defines the text, so its bos/eos/pad win over config.json's."""
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_file):
        return args
    vocab = {t["content"]: t["id"] for t in _read_json(tok_file, "tokenizer").get("added_tokens", [])}
    tok_cfg_file = os.path.join(path, "tokenizer_config.json")
    tok_cfg = _read_json(tok_cfg_file, "tokenizer config") if os.path.isfile(tok_cfg_file) else {}
    names = {k: tok_cfg.get(f"{k}_token") for k in ("bos", "eos", "pad", "mask")}
    names = {k: v.get("content") if isinstance(v, dict) else v for k, v in names.items()}
    ids = {k: vocab[v] for k, v in names.items() if v in vocab}
    args.mask_id = ids.get("mask") if args.mask_id is None else args.mask_id  # None: made from scratch (train.py)
    if "mask" in ids and ids["mask"] != args.mask_id:
        raise InputError(f"{tok_cfg_file}: mask_token {names['mask']!r} has id {ids['mask']}, "
                         f"but config.json says mask_token_id {args.mask_id}")
    for k in ("bos", "eos", "pad"):
        setattr(args, f"{k}_id", ids.get(k, getattr(args, f"{k}_id")))
    args.eot_id = vocab.get(END_OF_TURN[args.family])
    return args


def read_args(path):
    """ModelArgs of the checkpoint folder `path` (config.json plus the tokenizer's special ids)."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such checkpoint directory")
    cfg_file = os.path.join(path, "config.json")
    return special_ids(path, ModelArgs.from_config(_read_json(cfg_file, "model config"), cfg_file))


def tensor_files(path):
    """{checkpoint tensor name: safetensors file}: one model.safetensors, or the shards an index names."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = _read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: missing key 'weight_map'")
        for shard in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(path, shard)):
                raise InputError(f"{index}: names shard '{shard}', which is not in {path}")
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    if not os.path.isfile(single):
        raise InputError(f"{path}: no model.safetensors and no model.safetensors.index.json")
    with _open(single) as f:
        return dict.fromkeys(f.keys(), single)


@torch.no_grad()
def load(path, dtype=torch.float32, device="cpu"):
    """Load a LLaDA or Dream checkpoint folder, float or quantized (calibrate.py). The model is built on the meta
    device and the tensors are read one by one straight to `device` and assigned, so peak host memory stays about
    one copy of the weights. Floating tensors are cast to dtype; packed integer codes are kept as they are."""
    args, files = read_args(path), tensor_files(path)
    first = next(iter(files.values()))
    names = name_map(args)
    canonical = {v: k for k, v in names.items()}
    with torch.device("meta"):
        model = Model(args)
    qc = foreign_quantization(path)
    layers, converted, done = foreign_layers(files, model, qc, names) if qc else (quantized_layers(first), {}, ())
    with torch.device("meta"):
        if layers:
            from quantizers.core import QLinear, build_layer, swap  # the layers: model.py's one import from below
            for name, cfg in layers.items():
                try:
                    swap(model, name, build_layer(cfg))
                except (ValueError, TypeError, AttributeError) as e:
                    raise InputError(f"{first}: quantization metadata of layer '{name}': {e}") from None
    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    by_file, sd = {}, {}
    for key, t in converted.items():  # another engine's layers, already in ours
        name = rename(canonical, key)
        check_tensor(first, key, t, expected[name])
        sd[name] = (t.to(dtype) if t.is_floating_point() else t).to(device)
    for key, file in files.items():
        if key.endswith("rotary_emb.inv_freq") or key.rpartition(".")[0] in done:
            continue  # a buffer some Qwen2 checkpoints carry (we compute it); a layer converted above
        name = rename(canonical, key)
        if name not in expected:
            raise InputError(f"{file}: unexpected tensor '{key}' for a {args.family} model with this config")
        by_file.setdefault(file, []).append((key, name))
    for file, keys in by_file.items():
        with _open(file, str(torch.device(device))) as f:
            present = set(f.keys())
            for key, name in keys:
                if key not in present:
                    raise InputError(f"{file}: has no tensor '{key}' (model.safetensors.index.json says it does)")
                t = f.get_tensor(key)
                check_tensor(file, key, t, expected[name])
                sd[name] = t.to(dtype) if t.is_floating_point() else t
    for alias, target in tied_tensors(first, files).items():  # stored once, shared again
        name, source = rename(canonical, alias), rename(canonical, target)
        if name not in expected or expected[name][0] != sd[source].shape:
            raise InputError(f"{first}: tied tensor '{alias}' does not fit this model")
        sd[name] = sd[source]
    missing = [rename(names, k) for k in expected if k not in sd]
    if missing:
        raise InputError(f"{path}: checkpoint is missing tensor '{missing[0]}' ({len(missing)} missing in all)")
    model.load_state_dict(sd, assign=True, strict=True)
    for m in model.modules() if layers else ():  # codes packed in another order than the layer's kernel reads
        if isinstance(m, QLinear):
            m.settle_order()
    return model.eval()


def check_tensor(file, key, t, expected):
    """Refuse a tensor of the wrong shape or kind, or with NaN / Inf, in one line naming it."""
    shape, kind = expected
    if t.shape != shape:
        raise InputError(f"{file}: tensor '{key}' has shape {list(t.shape)}, expected {list(shape)} from config.json")
    if t.is_floating_point() != kind.is_floating_point or not (t.is_floating_point() or t.dtype == kind):
        raise InputError(f"{file}: tensor '{key}' is {str(t.dtype)[6:]}, expected "
                         f"{'a floating type' if kind.is_floating_point else str(kind)[6:]}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise InputError(f"{file}: tensor '{key}' holds NaN or infinite values")


def foreign_quantization(path):
    """config.json's quantization_config when the checkpoint is another engine's GPTQ or compressed-tensors one."""
    from quantizers.engines import foreign
    config = _read_json(os.path.join(path, "config.json"), "model config")
    return foreign(config) if isinstance(config, dict) else None


def foreign_layers(files, model, qc, names):
    """A GPTQ or compressed-tensors checkpoint's quantized Linears as dllmq's: ({layer: settings}, {checkpoint name:
    tensor}, the checkpoint names of the layers converted). quantizers/engines.py holds the mapping."""
    from quantizers.engines import import_layer
    a = model.args
    linears = {names[f"blocks.{i}.{n}"]: f"blocks.{i}.{n}" for i in range(a.n_layers) for n in LINEAR_NAMES}
    parts = {}
    for key, file in files.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in linears:
            parts.setdefault(prefix, {})[leaf] = (key, file)
    layers, out = {}, {}
    for prefix, leaves in sorted(parts.items()):
        if "weight" in leaves and "weight_scale" not in leaves:
            continue  # a Linear the other engine left in float
        N, K = model.get_submodule(linears[prefix]).weight.shape
        t = {}
        for leaf, (key, file) in leaves.items():
            with _open(file) as f:
                t[leaf] = f.get_tensor(key)
        try:
            ours, layers[linears[prefix]] = import_layer(t, qc, N, K)
        except (ValueError, KeyError, RuntimeError) as e:
            raise InputError(f"{next(iter(leaves.values()))[1]}: layer '{prefix}' ({qc['quant_method']}): "
                             f"{e}") from None
        out.update({f"{prefix}.{leaf}": v for leaf, v in ours.items()})
    return layers, out, {n.rpartition(".")[0] for n in out}


def quantized_layers(file):
    """{layer name: its settings} from a quantized checkpoint's metadata ({} for a float one)."""
    with _open(file) as f:
        text = (f.metadata() or {}).get("quant")
    if text is None:
        return {}
    try:
        layers = json.loads(text)["layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{file}: its quantization metadata is not the JSON calibrate.py writes ({e})") from None
    if not isinstance(layers, dict) or not all(isinstance(c, dict) for c in layers.values()):
        raise InputError(f"{file}: its quantization metadata's 'layers' is not a map of layer settings")
    return layers


def tied_tensors(file, files):
    """{checkpoint name: the stored tensor it shares} from the metadata's "tied" ({} when there is none)."""
    with _open(file) as f:
        text = (f.metadata() or {}).get("tied")
    try:
        tied = {} if text is None else json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{file}: its 'tied' metadata is not JSON ({e})") from None
    if not isinstance(tied, dict) or not all(isinstance(v, str) and v in files and k not in files
                                             for k, v in tied.items()):
        raise InputError(f"{file}: its 'tied' metadata does not map names absent from the file to stored tensors")
    return tied


def load_tokenizer(path):
    """The `tokenizers` Tokenizer of a checkpoint folder, or None when it has no tokenizer.json."""
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(file)
    except Exception as e:  # the tokenizers library raises plain Exceptions for files it cannot read
        raise InputError(f"{file}: not a tokenizers file ({e})") from None


def save(model, path, metadata=None, config=None):
    """Write config.json (plus the `config` entries given) and model.safetensors in the family's real layout. A
    tensor that several modules share (the rotation of Linears that read one input) is written once, and the
    metadata's "tied" maps each other name to it. Each file is written under a temporary name and renamed when
    complete (atomic on one file system), so nothing is ever half-written."""
    if any(b.attn.qkv_proj is not None or b.mlp.gate_up_proj is not None for b in model.blocks):
        raise ValueError(f"save({path}): the model's projections are fused for inference (fuse_projections); save "
                         "it before fusing them")
    os.makedirs(path, exist_ok=True)
    names = name_map(model.args)
    sd, tied, first = {}, {}, {}
    for key, t in model.state_dict().items():  # a tensor several modules share is stored once, under its first name
        name, same = rename(names, key), (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and same in first:
            tied[name] = first[same]
            continue
        first[same], sd[name] = name, t
    out = os.path.join(path, "model.safetensors")
    meta = {"format": "pt", **(metadata or {}), **({"tied": json.dumps(tied, sort_keys=True)} if tied else {})}
    write_safetensors(sd, out + ".tmp", meta)
    with open(os.path.join(path, "config.json.tmp"), "w") as f:
        json.dump({**model.args.to_config(), **(config or {})}, f, indent=2)
    os.replace(out + ".tmp", out)
    os.replace(os.path.join(path, "config.json.tmp"), os.path.join(path, "config.json"))


DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
          torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}  # the library's order


def write_safetensors(tensors, file, metadata):
    """The safetensors format with everything in a fixed order, so the same tensors make the same bytes (the
    library writes its metadata in a random order): an 8-byte little-endian header size, the JSON header (metadata,
    then each tensor's dtype, shape and byte range) padded with spaces to 8 bytes, the data. Tensors go in the
    library's order, widest dtype first, then by name, so every one starts aligned to its element size. They are
    written one at a time, so a big model needs no second copy in memory."""
    order = list(DTYPES)
    names = sorted(tensors, key=lambda n: (-order.index(tensors[n].dtype), n))
    header, offset = {"__metadata__": dict(sorted(metadata.items()))}, 0
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name in names:
            f.write(tensors[name].detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
