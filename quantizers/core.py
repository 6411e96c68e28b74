"""
The quantization core every method imports: the uniform integer grid, bit packing, QLinear, and the block walker.

Grid (the convention of GPTQ and AWQ). A group of `group_size` consecutive input channels of one output row is
stored as b-bit codes q = clamp(round(W / s) + z, 0, 2^b - 1) and read back as (q - z) * s:
  asymmetric  s = (hi - lo) / (2^b - 1), z = round(-lo / s), where [lo, hi] is the group's range widened to
              include 0 and shrunk by the clip ratio;
  symmetric   s = max|W| * clip / (2^(b-1) - 1), z = 2^(b-1), so 0 is exact and the grid is centred.
group_size -1 means one group per row (per channel). A width that group_size does not divide (tiny-dream's MLP width
592 at 128) gets groups of its largest divisor below group_size (74), so no layer needs a larger budget than
asked. Activations use the same grid per token.

Packing. Codes are laid out along the input dimension in chunks of 32 (the last chunk zero-padded). A chunk of 32
b-bit codes is read as one 32*b-bit little-endian bit string and stored as b int32 words: code j of a chunk occupies
bits b*j .. b*j+b-1 of that string. So 4-bit codes sit 8 to a word in order, 8-bit codes 4 and 2-bit codes 16, and
3-bit codes straddle word boundaries (codes 10 and 21 of each chunk).
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
           "mlp.down_proj")


# ------------------------------------------------------------------------------------------------------ grid
def group_width(K, group_size):
    """group_size, or the largest divisor of K below it (-1: the whole row)."""
    return K if group_size <= 0 else max(d for d in range(1, min(group_size, K) + 1) if K % d == 0)


def n_groups(K, group_size):
    return K // group_width(K, group_size)


def fit_grid(W, bits, group_size=128, sym=False, clip=1.0):
    """Scales s and zero points z, each (N, G) float32, of the groups of W (N, K)."""
    Wg = W.float().reshape(W.shape[0], n_groups(W.shape[1], group_size), -1)
    if sym:
        s = Wg.abs().amax(-1) * clip / (2 ** (bits - 1) - 1)
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        lo, hi = Wg.amin(-1).clamp(max=0) * clip, Wg.amax(-1).clamp(min=0) * clip
        s = (hi - lo) / (2 ** bits - 1)
        z = torch.round(-lo / torch.where(s > 0, s, 1.0))
    return torch.where(s > 0, s, 1.0), z  # an all-zero group gets scale 1 (its codes are all z)


def quantize(W, s, z, bits):
    """W (N, K), s and z (N, G) -> codes (N, K) uint8."""
    Wg = W.float().reshape(s.shape[0], s.shape[1], -1)
    q = torch.clamp(torch.round(Wg / s[..., None]) + z[..., None], 0, 2 ** bits - 1)
    return q.reshape(W.shape).to(torch.uint8)


def dequantize(q, s, z):
    """codes (N, K), s and z (N, G) -> (q - z) * s, (N, K) in s's dtype."""
    qg = q.reshape(s.shape[0], s.shape[1], -1).to(s.dtype)
    return ((qg - z[..., None]) * s[..., None]).reshape(q.shape)


def fake_quant(W, bits, group_size=128, sym=False, clip=1.0):
    """Round W to its grid and back (float in, float out): what a method sees when it measures quantization error."""
    s, z = fit_grid(W, bits, group_size, sym, clip)
    return dequantize(quantize(W, s, z, bits), s, z).to(W.dtype)


def quantize_tokens(x, bits, sym=True, clip=1.0):
    """Per-token dynamic fake quantization of activations x (..., K): one grid per token, from its own range."""
    return fake_quant(x.reshape(-1, x.shape[-1]), bits, -1, sym, clip).view_as(x)


def fp8_grid(W):
    """FP8 (e4m3) weights, per output channel: codes (N, K) uint8 holding the e4m3 bytes of W / s, s = max|W| / 448
    (N, 1) float32, zeros (N, 1) unused. The format of W8A8-FP8 (kernels/wa_gemm.py): not an integer grid."""
    s = W.float().abs().amax(1, keepdim=True) / 448
    s = torch.where(s > 0, s, 1.0)
    return (W.float() / s).to(torch.float8_e4m3fn).view(torch.uint8), s, torch.zeros_like(s)


def fp8_tokens(x, clip=1.0):
    """Per-token dynamic fake quantization of x to e4m3: one scale max|x| * clip / 448 per token."""
    s = x.float().abs().amax(-1, keepdim=True) * clip / 448
    s = torch.where(s > 0, s, 1.0)
    return ((x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s).to(x.dtype)


def quantize_channels(y, bits, clip=1.0):
    """Per-channel symmetric fake quantization of y (B, T, C) over the T tokens of each sequence: the grid an
    integer softmax(P) V needs for V, whose scales must be constant along the tokens that the matmul sums over."""
    B, T, C = y.shape
    return fake_quant(y.transpose(1, 2).reshape(B * C, T), bits, -1, True, clip).view(B, C, T).transpose(1, 2)


# --------------------------------------------------------------------------------------------------- packing
def _slots(bits):
    """For each code j of a 32-code chunk: its word, its bit offset in that word, and whether it spills over."""
    return [(bits * j // 32, bits * j % 32, bits * j % 32 + bits > 32) for j in range(32)]


def pack(q, bits):
    """codes (N, K) in [0, 2^bits) -> int32 words (N, ceil(K / 32) * bits)."""
    N, K = q.shape
    q = F.pad(q.long(), (0, -K % 32)).view(N, -1, 32)
    words = torch.zeros(N, q.shape[1], bits, dtype=torch.long, device=q.device)
    for j, (w, off, spill) in enumerate(_slots(bits)):
        words[..., w] |= (q[..., j] << off) & 0xFFFFFFFF
        if spill:
            words[..., w + 1] |= q[..., j] >> (32 - off)
    return (words - (words >> 31 << 32)).to(torch.int32).view(N, -1)  # reinterpret the unsigned bits as int32


def unpack(words, bits, K):
    """int32 words (N, ceil(K / 32) * bits) -> codes (N, K) uint8."""
    N = words.shape[0]
    w = words.view(N, -1, bits).long() & 0xFFFFFFFF
    q = torch.empty(N, w.shape[1], 32, dtype=torch.long, device=words.device)
    for j, (i, off, spill) in enumerate(_slots(bits)):
        q[..., j] = w[..., i] >> off
        if spill:
            q[..., j] |= w[..., i + 1] << (32 - off)
    return (q & (2 ** bits - 1)).view(N, -1)[:, :K].to(torch.uint8)


# --------------------------------------------------------------------------------------------------- QLinear
class Rotation(nn.Module):
    """An orthogonal input transform x -> x T, applied online, in the compact form the rotation methods need.
    The K = m * b channels are m blocks of b: T = blockdiag(R1) [P blockdiag(R2)] [M (x) I_b], i.e. per-block
    matrices R1 (m of them, or one shared), optionally a channel permutation P and a second per-block stage R2, and
    optionally a mix M (m, m) across blocks. QuaRot's online Hadamard H_m (x) H_b is a shared R1 = H_b with M = H_m;
    DuQuant's transform is R1, its zigzag P, then R2. The same call rotates a weight offline: W T."""

    def __init__(self, m, b, shared=False, perm=False, second=False, mix=False, dtype=None):
        super().__init__()
        self.m, self.b, self.shared = m, b, shared
        eye = torch.eye(b, dtype=dtype).expand(1 if shared else m, b, b).clone()
        self.register_buffer("r1", eye)
        self.register_buffer("perm", torch.arange(m * b) if perm else None)
        self.register_buffer("r2", eye.clone() if second else None)
        self.register_buffer("mix", torch.eye(m, dtype=dtype) if mix else None)

    def config(self):
        return {"m": self.m, "b": self.b, "shared": self.shared, "perm": self.perm is not None,
                "second": self.r2 is not None, "mix": self.mix is not None}

    def forward(self, x):
        lead = x.shape[:-1]
        y = x.reshape(*lead, self.m, self.b)
        r1 = self.r1.to(y.dtype)  # shared: one GEMM over all blocks (an einsum would copy x into block-major order)
        y = y @ r1[0] if self.shared else torch.einsum("...mb,mbc->...mc", y, r1)
        if self.perm is not None:
            y = y.reshape(*lead, -1)[..., self.perm].reshape(*lead, self.m, self.b)
        if self.r2 is not None:
            y = torch.einsum("...mb,mbc->...mc", y, self.r2.to(y.dtype).expand(self.m, -1, -1))
        if self.mix is not None:
            y = self.mix.T.to(y.dtype) @ y  # y_n = sum_m mix[m, n] y_m: one batched GEMM, no permuted copy
        return y.reshape(x.shape)


class RotLinear(nn.Linear):
    """A float Linear whose input is rotated online (its weight already holds W T): the state a rotation method
    leaves for the rounder, which carries the rotation over into the QLinear."""

    @classmethod
    def wrap(cls, linear, rotation):
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        m.weight, m.bias, m.rotation = linear.weight, linear.bias, rotation
        return m

    def forward(self, x):
        return F.linear(self.rotation(x), self.weight, self.bias)


class QLinear(nn.Module):
    """A Linear whose weight is stored as packed b-bit codes with per-group scales and zero points.

    forward: x -> (optional online rotation x T) -> (optional per-token activation fake quantization) ->
    x @ dequant(W)^T + bias. On CUDA in bf16 / fp16 Triton kernels do it: kernels/wa_gemm.py for W8A8 (FP8, INT8)
    and W4A4 with per-channel weights (rotation and activation quantization fused in kernels/act_quant.py),
    kernels/wq_gemm.py for weight-only layers; elsewhere, and for other layouts, the pure-torch twin.
    fp8: the 8-bit codes are e4m3 bytes (fp8_grid) and activations are quantized to e4m3, not to integers."""

    def __init__(self, in_features, out_features, bits, group_size=128, sym=False, bias=False, act_bits=16,
                 act_sym=True, act_clip=1.0, rotation=None, out_bits=16, out_clip=1.0, fp8=False, dtype=None):
        super().__init__()
        if fp8 and bits != 8:
            raise ValueError(f"QLinear: fp8 weights are 8 bits, not {bits}")
        self.fp8 = fp8
        self.in_features, self.out_features, self.bits, self.group_size, self.sym = (
            in_features, out_features, bits, group_size, sym)
        self.act_bits, self.act_sym, self.act_clip = act_bits, act_sym, act_clip
        self.out_bits, self.out_clip = out_bits, out_clip  # v_proj's output: the V of softmax(P) V (DLLMQuant)
        G = n_groups(in_features, group_size)
        words = math.ceil(in_features / 32) * bits
        self.register_buffer("qweight", torch.zeros(out_features, words, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(out_features, G, dtype=dtype))
        self.register_buffer("zeros", torch.zeros(out_features, G, dtype=dtype))
        self.rotation = Rotation(**rotation, dtype=dtype) if rotation else None  # a config dict, as saved
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self.dense = None  # the dequantized weight, kept by cache_weights()

    @classmethod
    def from_codes(cls, q, s, z, bias=None, rotation=None, **cfg):
        """Build from codes (N, K), scales and zeros (N, G), and the Rotation the input gets (or None);
        cfg: bits, group_size, sym, act_bits, act_sym, act_clip, dtype."""
        dtype = cfg.pop("dtype", None) or (bias.dtype if bias is not None else torch.float32)
        m = cls(q.shape[1], q.shape[0], bias=bias is not None, dtype=dtype,
                rotation=rotation.config() if rotation is not None else None, **cfg)
        m.qweight.copy_(pack(q, m.bits))
        m.scales.copy_(s)
        m.zeros.copy_(z)
        if bias is not None:
            m.bias.data.copy_(bias)
        if rotation is not None:
            m.rotation.load_state_dict(rotation.state_dict())
        return m.to(q.device)

    def config(self):
        """The constructor arguments (minus dtype): what a checkpoint stores to rebuild this module."""
        keys = ("in_features", "out_features", "bits", "group_size", "sym", "act_bits", "act_sym", "act_clip",
                "out_bits", "out_clip", "fp8")
        return {**{k: getattr(self, k) for k in keys}, "bias": self.bias is not None,
                "rotation": self.rotation.config() if self.rotation is not None else None}

    def weight(self):
        """The dequantized weight (N, K) in the scales' dtype."""
        if self.dense is not None:
            return self.dense
        q = unpack(self.qweight, self.bits, self.in_features)
        if self.fp8:
            return (q.view(torch.float8_e4m3fn).float() * self.scales.float()).to(self.scales.dtype)
        return dequantize(q, self.scales, self.zeros)

    def forward(self, x):
        fmt = None
        if x.is_cuda and x.dtype != torch.float32 and self.act_bits < 16:
            from kernels.wa_gemm import format_of, linear
            fmt = format_of(self)
        if fmt is not None:  # rotation, activation quantization and the GEMM in Triton kernels (W8A8, W4A4)
            y = linear(x, self, fmt)
        else:
            y = self.dequantized_forward(x)
        return quantize_channels(y, self.out_bits, self.out_clip) if self.out_bits < 16 else y

    def dequantized_forward(self, x):
        """The fake-quantized path: activations rounded and multiplied with the dequantized weight in x's dtype."""
        if self.rotation is not None:
            x = self.rotation(x)
        if self.act_bits < 16:
            x = fp8_tokens(x, self.act_clip) if self.fp8 else quantize_tokens(x, self.act_bits, self.act_sym,
                                                                                self.act_clip)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.is_cuda and x.dtype != torch.float32 and not self.fp8 and self.dense is None:  # the packed codes, read
            from kernels.wq_gemm import matmul
            y = matmul(x, self.qweight, self.scales.to(x.dtype), self.zeros.to(x.dtype), self.bits, self.in_features)
            return y if bias is None else y + bias
        return F.linear(x, self.weight().to(x.dtype), bias)


class BinaryLinear(nn.Module):
    """A Linear stored in Quant-dLLM's binary-residual form: column group g of `group_size` inputs with order K_g
    is W_g ~ sum_k (a_r^(k) a_c^(k)^T) * B_k, B_k in {-1, +1} (one bit each), a_r (N,) and a_c (group_size,) per
    order in the model dtype. `orders` lists K_g per group (mixed precision: ABMP gives 1, 2 or 3)."""

    def __init__(self, in_features, out_features, group_size, orders, bias=False, dtype=None, format="binary"):
        super().__init__()
        self.in_features, self.out_features, self.group_size, self.orders = (
            in_features, out_features, group_size, list(orders))
        planes = sum(self.orders)
        self.register_buffer("qweight", torch.zeros(out_features, math.ceil(planes * group_size / 32),
                                                    dtype=torch.int32))
        self.register_buffer("row_scales", torch.zeros(planes, out_features, dtype=dtype))
        self.register_buffer("col_scales", torch.zeros(planes, group_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self.dense = None  # the dequantized weight, kept by cache_weights()

    @classmethod
    def from_planes(cls, signs, row_scales, col_scales, orders, bias=None, dtype=None):
        """signs (P, N, g) in {-1, +1}, row_scales (P, N), col_scales (P, g): plane p of the groups in order."""
        P, N, g = signs.shape
        m = cls(g * len(orders), N, g, orders, bias is not None, dtype or row_scales.dtype)
        m.qweight.copy_(pack((signs > 0).to(torch.uint8).permute(1, 0, 2).reshape(N, P * g), 1))
        m.row_scales.copy_(row_scales)
        m.col_scales.copy_(col_scales)
        if bias is not None:
            m.bias.data.copy_(bias)
        return m.to(signs.device)

    def config(self):
        return {"format": "binary", "in_features": self.in_features, "out_features": self.out_features,
                "group_size": self.group_size, "orders": self.orders, "bias": self.bias is not None}

    def weight(self):
        """The dequantized weight (N, K) in the scales' dtype."""
        if self.dense is not None:
            return self.dense
        P, g = len(self.row_scales), self.group_size
        B = unpack(self.qweight, 1, P * g).view(self.out_features, P, g).permute(1, 0, 2).to(self.row_scales.dtype)
        planes = (2 * B - 1) * self.row_scales[:, :, None] * self.col_scales[:, None, :]  # (P, N, g)
        ends = torch.tensor(self.orders).cumsum(0).tolist()
        return torch.cat([planes[e - k:e].sum(0) for k, e in zip(self.orders, ends, strict=True)], 1)

    def forward(self, x):
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def cache_weights(model):
    """For fast scoring: each quantized layer dequantizes its weight once and keeps it, so a weight-only or binary
    layer runs one float GEMM instead of unpacking its codes every call (the same numbers up to rounding order).
    Layers the W8A8 / W4A4 kernels take stay on them: the pure-torch activation rounding, ~20 full-size elementwise
    passes, made a W4A4 mini-Dream forward 1.7x slower than the kernels on an H100."""
    for m in model.modules():
        if isinstance(m, QLinear) and m.act_bits < 16 and m.qweight.is_cuda and m.scales.dtype != torch.float32:
            from kernels.wa_gemm import format_of
            if format_of(m) is not None:
                continue  # the kernels take this layer and never read a dense weight: no copy
        if isinstance(m, (QLinear, BinaryLinear)):
            m.dense = None
            m.dense = m.weight()
    return model


def build_layer(cfg):
    """The quantized layer a checkpoint's metadata describes (model.load builds it on the meta device)."""
    return BinaryLinear(**cfg) if cfg.get("format") == "binary" else QLinear(**cfg)


def swap(block, name, module):
    """Replace the submodule `name` (e.g. "mlp.down_proj") of block."""
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, module)


def model_bytes(model):
    """Bytes of all parameters and buffers: the size of the weights in memory and on disk."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# ------------------------------------------------------------------------------------------ the block walker
@dataclass
class Calib:
    """Calibration batch: tokens (N, T) the model reads (masks included), which of them are [MASK], and for
    sampler trajectories the model's confidence in each token; quantizers that weight tokens use the last two."""
    tokens: torch.Tensor
    masked: torch.Tensor
    confidence: torch.Tensor | None = None


@dataclass
class BlockInputs:
    """The inputs x (N, T, C) of one block plus what a block forward needs; run() evaluates a block on them."""
    x: torch.Tensor
    rope: tuple
    chunk: int = 8  # sequences per forward: bounds the MLP activations of a big model

    @torch.no_grad()
    def run(self, block):
        return torch.cat([block(self.x[i:i + self.chunk], self.rope) for i in range(0, len(self.x), self.chunk)])


def rel_error(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@torch.no_grad()
def walk_blocks(model, calib, device, log=print):
    """Yield (i, block, inputs) for each block, on `device`, with inputs computed through the already-modified
    blocks 0..i-1. The caller changes the block in place (swaps in QLinear, rescales); then the walker runs the
    changed block to get the next inputs, logs its relative output error against the unchanged block on the same
    inputs, and moves the block back to where it was, so only one block's weights and inputs sit on the device."""
    home = next(model.parameters()).device
    x, rope, _ = model.block_inputs(calib.tokens.to(home))
    inputs = BlockInputs(x.to(device), tuple(t.to(device) for t in rope))
    t0, n = time.time(), len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.to(device)
        reference = inputs.run(block)
        yield i, block, inputs
        inputs.x = inputs.run(block)
        err = rel_error(inputs.x, reference)
        block.to(home)
        elapsed = time.time() - t0
        log(f"block {i + 1:3d}/{n} | output error {err:.4f} | {elapsed:6.1f} s | "
            f"ETA {elapsed / (i + 1) * (n - i - 1):6.1f} s")


@torch.no_grad()
def input_stats(block, inputs, names, fn, weights=None):
    """Run block on inputs and fold every named Linear's input through fn: acc[name] = fn(acc, X, w), where X
    (tokens, K) are the inputs of one chunk and w (tokens,) the matching token weights (or None)."""
    acc, hooks, rows = dict.fromkeys(names), [], {}

    def hook(name):
        def record(module, args, output):  # a rotated Linear's input is what its weight meets: x T
            x = module.rotation(args[0]) if getattr(module, "rotation", None) is not None else args[0]
            X = x.reshape(-1, x.shape[-1])
            w = None if weights is None else weights[rows["lo"]:rows["hi"]].reshape(-1).to(X.device)
            acc[name] = fn(acc[name], X, w)
        return record
    for name in names:
        hooks.append(block.get_submodule(name).register_forward_hook(hook(name)))
    try:
        for i in range(0, len(inputs.x), inputs.chunk):
            rows.update(lo=i, hi=i + inputs.chunk)
            block(inputs.x[i:i + inputs.chunk], inputs.rope)
    finally:
        for h in hooks:
            h.remove()
    return acc


def gram(acc, X, w=None):
    """Running Hessian proxy H = sum_j w_j x_j x_j^T (float32; w = 1 without token weights)."""
    X = X.float()
    H = (X * w[:, None].float() if w is not None else X).T @ X
    return H if acc is None else acc + H
