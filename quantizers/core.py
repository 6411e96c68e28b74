"""
The quantized layers, and the one function that decides which code computes them. Every method builds these; model.load
rebuilds them from a checkpoint's metadata.

  Rotation      an orthogonal transform of a Linear's input applied online (QuaRot's H_m (x) H_b, DuQuant's R1 P R2)
  RotLinear     a float Linear whose input is rotated online: what a rotation method leaves for the rounder
  QLinear       packed b-bit (or FP8) codes, per-group scales and zeros, optional per-token activation quantization
                and online rotation: the layer of every method but Quant-dLLM
  BinaryLinear  Quant-dLLM's binary-residual form: sign planes times row and column scales

code_path() is the dispatch: the Triton kernels (kernels/) on a GPU, as custom operators when torch.compile traces
the model, or the pure-torch twin, which defines what the kernels must compute and runs everywhere else. Then the
small edits every method makes to a block: swap a module, fold a per-channel scale.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import act_quant, binary_cols, gptq_cols, ops, wa_gemm, wq_gemm
from quantizers.format import dequantize, fp8_tokens, n_groups, pack, quantize_channels, quantize_tokens, unpack

LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
           "mlp.down_proj")


# ------------------------------------------------------------------------------------------------------- layers
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

    def kernel_form(self, device):
        """act_quant's Form of this rotation on `device` when its fused kernel takes it (QuaRot's H_m (x) H_b), else
        None (torch rotates first). Worked out once, as it reads the matrices back to the host, and kept."""
        if "_form" not in self.__dict__:
            fusable = self.shared and self.perm is None and self.r2 is None
            self._form = act_quant.fused_form(self.r1[0], self.m, self.mix) if fusable else None
        if self._form is not None and self._form.H.device != device:
            self._form = self._form.to(device)  # moved once, not on every call
        return self._form


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
    """A Linear whose weight is stored as packed b-bit codes with per-group scales and zero points (format.py).

    forward: x -> (optional online rotation x T) -> (optional per-token activation quantization) ->
    x @ dequant(W)^T + bias -> (optional per-channel quantization of the output: out_bits, the V of softmax(P) V
    that DLLMQuant's IA-AQ and --v_bits quantize, on v_proj). code_path() below picks the code that does it.
    fp8: activations are quantized to e4m3, not to integers; 8-bit codes are then e4m3 bytes (fp8_grid, W8A8-FP8),
    4-bit ones symmetric integer codes -7..7 per output channel (W4A8-FP8: act_bits 8).
    order: how the codes are packed (format.pack), "plain", "pairs" or "signs": the one the layer's kernel reads
    (kernel_order), which from_codes packs in and settle_order repacks to."""

    def __init__(self, in_features, out_features, bits, group_size=128, sym=False, bias=False, act_bits=16,
                 act_sym=True, act_clip=1.0, rotation=None, out_bits=16, out_clip=1.0, fp8=False, order="plain",
                 dtype=None):
        super().__init__()
        if fp8 and bits != 8 and not (bits == 4 and act_bits == 8 and sym and group_size == -1):
            raise ValueError(f"QLinear: fp8 weights are 8 bits, or 4 bits symmetric per channel with act_bits 8 "
                             f"(W4A8-FP8), not {bits} bits, act_bits {act_bits}, sym {sym}, group_size {group_size}")
        if order != "plain" and (order not in ("pairs", "signs") or bits != 4):
            raise ValueError(f"QLinear: order {order!r} is not 'plain' or (4-bit codes) 'pairs' or 'signs'")
        self.fp8, self.order = fp8, order
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
        """Build from codes (N, K), scales and zeros (N, G), and the Rotation the input gets (or None; kept, not
        copied); cfg: bits, group_size, sym, act_bits, act_sym, act_clip, dtype."""
        dtype = cfg.pop("dtype", None) or (bias.dtype if bias is not None else torch.float32)
        m = cls(q.shape[1], q.shape[0], bias=bias is not None, dtype=dtype, **cfg)
        m.scales.copy_(s)
        m.zeros.copy_(z)
        m.order = m.kernel_order()
        m.qweight.copy_(pack(q, m.bits, m.order))
        if bias is not None:
            m.bias.data.copy_(bias)
        if rotation is not None:  # the module itself, not a copy: Linears that share an input share one rotation,
            m.rotation = rotation.to(dtype)  # which the checkpoint then stores once (model.save)
        return m.to(q.device)

    def config(self):
        """The constructor arguments (minus dtype): what a checkpoint stores to rebuild this module."""
        keys = ("in_features", "out_features", "bits", "group_size", "sym", "act_bits", "act_sym", "act_clip",
                "out_bits", "out_clip", "fp8", "order")
        return {**{k: getattr(self, k) for k in keys}, "bias": self.bias is not None,
                "rotation": self.rotation.config() if self.rotation is not None else None}

    def weight(self):
        """The dequantized weight (N, K) in the scales' dtype."""
        if self.dense is not None:
            return self.dense
        q = unpack(self.qweight, self.bits, self.in_features, self.order)
        if self.fp8 and self.bits == 8:
            return (q.view(torch.float8_e4m3fn).float() * self.scales.float()).to(self.scales.dtype)
        return dequantize(q, self.scales, self.zeros)

    def kernel_order(self):
        """The order in which this layer's kernel reads packed codes: W4A8's pairs, W4A8-FP8's signs, else plain."""
        fmt = wa_format(self)
        return wa_gemm.ORDER[fmt] if fmt else "plain"

    def settle_order(self):
        """Repack the codes, if need be, in kernel_order(): model.load calls it for checkpoints whose layers name no
        order (written before the pair order: plain)."""
        want = self.kernel_order()
        if want != self.order:
            q = unpack(self.qweight, self.bits, self.in_features, self.order)
            self.order = want
            self.qweight.copy_(pack(q, self.bits, want))
        return self

    def forward(self, x, path=None):
        """path: one of PATHS instead of code_path()'s choice (the tests compare them)."""
        y = PATHS[path or code_path(self, x.device, x.dtype)](self, x)
        return quantize_channels(y, self.out_bits, self.out_clip) if self.out_bits < 16 else y

    def rounded_input(self, x):
        """x as the dequantized weight meets it in torch: rotated, then fake-quantized per token."""
        if self.rotation is not None:
            x = self.rotation(x)
        if self.act_bits < 16:
            x = fp8_tokens(x, self.act_clip) if self.fp8 else quantize_tokens(x, self.act_bits, self.act_sym,
                                                                                self.act_clip)
        return x


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


# -------------------------------------------------------------------------------- which code computes a layer
def wa_format(layer):
    """The format in which the W8A8 / W4A8 / W4A4 kernels take a QLinear: "fp8", "int8", "w4a8", "w4f8" (W4A8-FP8),
    "int4", or None (weight-only, weights in groups, other mixed widths, asymmetric activations)."""
    if layer.act_bits == 16 or not layer.act_sym or layer.scales.shape[1] != 1:
        return None
    if layer.fp8:
        return {8: "fp8", 4: "w4f8"}[layer.bits] if layer.act_bits == 8 else None
    return {(8, 8): "int8", (4, 4): "int4", (4, 8): "w4a8"}.get((layer.bits, layer.act_bits))


def code_path(layer, device, dtype):
    """The one place that decides which code computes a QLinear on inputs of this device and dtype (a key of PATHS):
      wa     rotation, per-token quantization and GEMM in Triton: act_quant + wa_gemm (W8A8 FP8 / INT8, W4A4);
      wa_op  the same traced by torch.compile: the GEMM a custom operator (kernels/ops.py), the quantizer the twin's
             torch code, which Inductor fuses into the op that made x; wa_break: a layer with an online rotation,
             traced, runs "wa" in a graph break instead, to keep act_quant's fused rotation;
      wq     rotation and activation rounding in torch, then wq_gemm on the packed codes (weight-only layers, and
             layouts the wa kernels do not take); wq_op: the same as a custom operator, when traced;
      torch  the pure-torch twin: x @ dequant(W)^T in x's dtype, from the weight cache_weights kept if any.
    The Triton paths need CUDA and bf16 / fp16 inputs (the tensor cores would round fp32 to tf32)."""
    if device.type != "cuda" or dtype == torch.float32:
        return "torch"
    traced = torch.compiler.is_compiling()
    if wa_format(layer) is not None:
        return ("wa_op" if layer.rotation is None else "wa_break") if traced else "wa"
    if layer.fp8 or layer.dense is not None:
        return "torch"
    return "wq_op" if traced else "wq"


def gptq_columns(W1, U1, S, Z, groups, bits, lo=0):
    """Which code runs GPTQ's column loop over a block whose grids are all known (quantizers/gptq.py): on CUDA the
    Triton kernel (kernels/gptq_cols.py) -> (codes, errors); elsewhere None, and gptq.py runs its own loop (the
    kernel's twin) -- on a GPU that loop is ~10 launches a column, 12.5 s per LLaDA-8B block on an H100."""
    if not W1.is_cuda:
        return None
    return gptq_cols.columns(W1, U1, S, Z, groups, bits, lo)


def binary_columns(W1, ar, ac, U1):
    """Which code runs Quant-dLLM's column loop over one group (quantizers/quantdllm.py): on CUDA the Triton kernel
    (kernels/binary_cols.py) -> (signs, errors); elsewhere None, and quantdllm.py runs its own loop (the kernel's
    twin) -- on a GPU that loop is about a dozen launches a column."""
    if not W1.is_cuda:
        return None
    return binary_cols.columns(W1, ar, ac, U1)


def _wa(layer, x):
    form = layer.rotation.kernel_form(x.device) if layer.rotation is not None else None
    if layer.rotation is not None and form is None:  # not QuaRot's Hadamard: torch rotates, in x's dtype
        x = layer.rotation(x)
    return wa_gemm.linear(x, layer.qweight, layer.scales, layer.zeros, layer.bias, wa_format(layer), layer.act_clip,
                          form)


def _wa_op(layer, x):
    return ops.wa_linear(x, layer.qweight, layer.scales, layer.zeros, layer.bias, wa_format(layer), layer.act_clip)


def _wq(layer, x, matmul=wq_gemm.matmul):
    x = layer.rounded_input(x)
    y = matmul(x, layer.qweight, layer.scales.to(x.dtype), layer.zeros.to(x.dtype), layer.bits, layer.in_features)
    return y if layer.bias is None else y + layer.bias.to(x.dtype)


def _torch(layer, x):
    x = layer.rounded_input(x)
    return F.linear(x, layer.weight().to(x.dtype), None if layer.bias is None else layer.bias.to(x.dtype))


PATHS = {"wa": _wa, "wa_op": _wa_op, "wa_break": torch.compiler.disable(_wa), "wq": _wq,
         "wq_op": lambda layer, x: _wq(layer, x, ops.wq_matmul), "torch": _torch}


def cache_weights(model):
    """For fast scoring: each quantized layer dequantizes its weight once and keeps it, so a weight-only or binary
    layer runs one float GEMM instead of unpacking its codes every call (the same numbers up to rounding order).
    Layers the W8A8 / W4A4 kernels take stay on them and keep no copy: the pure-torch activation rounding, ~20
    full-size elementwise passes, made a W4A4 mini-Dream forward 1.7x slower than the kernels (H100)."""
    for m in model.modules():
        if isinstance(m, QLinear) and code_path(m, m.qweight.device, m.scales.dtype) == "wa":
            continue
        if isinstance(m, (QLinear, BinaryLinear)):
            m.dense = None
            m.dense = m.weight()
    return model


FUSABLE = {"attn": ("qkv_proj", ("q_proj", "k_proj", "v_proj")), "mlp": ("gate_up_proj", ("gate_proj", "up_proj"))}


def fuse_projections(model, dense=False):
    """For inference: the Linears of a block that read one input (q/k/v; gate/up) become one Linear whose outputs
    are theirs side by side (model.py splits them), so a step runs one GEMM where it ran three (or two). At a
    denoising step's few hundred tokens a 4096-wide GEMM leaves part of the GPU idle: on an H200 at 320 tokens the
    FP8 GEMM takes 15.6 us at N = 4096 and 37.8 us at N = 12288, not 3 x 15.6 (results/speed-h200). QLinears fuse
    when their settings agree but for out_features (one rotation object, no output quantization); plain Linears
    only with dense=True (bf16 cuBLAS at 320 tokens: 57.1 us at N = 12288 against 3 x 18.3, nothing to gain).
    End to end (H100, a 256-token LLaDA-8B generation with CUDA graphs): an FP8 step 8.39 -> 8.10 ms. The outputs
    are the same up to the GEMM's rounding order. A fused model cannot be saved or calibrated.
    Returns the number of groups fused."""
    fused = 0
    for block in model.blocks:
        for parent, (name, parts) in FUSABLE.items():
            mod = block.get_submodule(parent)
            layers = [getattr(mod, p) for p in parts]
            one = concat(layers, dense) if None not in layers else None
            if one is not None:
                setattr(mod, name, one)
                for p in parts:
                    setattr(mod, p, None)
                fused += 1
    return fused


def concat(layers, dense=False):
    """One layer computing every layer's outputs side by side (concatenated along N), or None if they differ."""
    first, cat = layers[0], lambda key: torch.cat([getattr(m, key).data for m in layers])
    if dense and all(type(m) is nn.Linear for m in layers):  # exactly nn.Linear: a RotLinear rotates its input
        one = nn.Linear(first.in_features, sum(m.out_features for m in layers), first.bias is not None, device="meta")
        one.weight = nn.Parameter(cat("weight"), requires_grad=False)
        if first.bias is not None:
            one.bias = nn.Parameter(cat("bias"), requires_grad=False)
        return one
    if not all(type(m) is QLinear for m in layers):
        return None
    cfgs = [{**m.config(), "out_features": 0, "dtype": m.scales.dtype, "device": m.qweight.device} for m in layers]
    if any(c != cfgs[0] for c in cfgs) or first.out_bits < 16 or any(m.rotation is not first.rotation for m in layers):
        return None
    with torch.device("meta"):
        one = QLinear(**{**first.config(), "out_features": sum(m.out_features for m in layers), "rotation": None})
    one.qweight, one.scales, one.zeros = cat("qweight"), cat("scales"), cat("zeros")
    if first.bias is not None:
        one.bias = nn.Parameter(cat("bias"), requires_grad=False)
    one.rotation = first.rotation
    if first.dense is not None:  # cache_weights ran
        one.dense = torch.cat([m.weight() for m in layers])
    return one


def build_layer(cfg):
    """The quantized layer a checkpoint's metadata describes (model.load builds it on the meta device); a setting
    out of range or of the wrong type raises ValueError naming it."""
    binary = cfg.get("format") == "binary"
    for key, ok in (LAYER_BINARY if binary else LAYER_CHECKS).items():
        if key in cfg and not ok(cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r} is not a valid setting")
    if binary and cfg.get("in_features") != cfg.get("group_size", 0) * len(cfg.get("orders", ())):
        raise ValueError("in_features is not group_size times the number of groups")
    return BinaryLinear(**cfg) if binary else QLinear(**cfg)


def _count(v):
    return type(v) is int and v >= 1


def _width(low):
    return lambda v: type(v) is int and (low <= v <= 8 or v == 16)


def _ratio(v):
    return type(v) in (int, float) and 0 < v <= 1


LAYER_CHECKS = {"in_features": _count, "out_features": _count, "bits": lambda v: type(v) is int and 1 <= v <= 8,
                "group_size": lambda v: type(v) is int and (v >= 1 or v == -1), "act_bits": _width(4),
                "out_bits": _width(4), "act_clip": _ratio, "out_clip": _ratio,
                **{k: lambda v: type(v) is bool for k in ("sym", "act_sym", "fp8", "bias")},
                "order": lambda v: v in ("plain", "pairs", "signs"),
                "rotation": lambda v: v is None or (isinstance(v, dict) and _count(v.get("m")) and _count(v.get("b"))
                                                    and all(type(v.get(k, False)) is bool
                                                            for k in ("shared", "perm", "second", "mix")))}
LAYER_BINARY = {"in_features": _count, "out_features": _count, "group_size": _count,
                "orders": lambda v: isinstance(v, list) and len(v) > 0 and all(_count(k) and k <= 8 for k in v),
                "bias": lambda v: type(v) is bool}


# ---------------------------------------------------------------------------------------------- block edits
def swap(block, name, module):
    """Replace the submodule `name` (e.g. "mlp.down_proj") of block."""
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, module)


def lowest_code(args):
    """The lowest code a rounder may choose: 1 for W4A8-FP8 (--fp8 --wbits 4), whose sign order holds the codes of
    -7..7 (format.py), else 0."""
    return 1 if getattr(args, "fp8", False) and args.wbits == 4 else 0


def qlinear(linear, q, s, z, args):
    """The QLinear that replaces `linear` (carrying over its bias and online rotation), with the weight and
    activation settings of calibrate.py's args."""
    return QLinear.from_codes(q, s, z, linear.bias, getattr(linear, "rotation", None), bits=args.wbits,
                              group_size=args.group_size, sym=args.sym, act_bits=args.abits, act_sym=args.a_sym,
                              act_clip=args.a_clip, fp8=getattr(args, "fp8", False), dtype=linear.weight.dtype)


def apply_scale(block, prev, names, s):
    """Fold a per-channel scale s into a block, exactly in float: prev's output (a norm's weight, or a Linear's rows
    and bias) / s, the named Linears' input columns * s. Computed in at least fp32, and in fp64 for an fp64 model."""
    def rescale(t, power):  # t * s^power, with s widened before it is inverted
        wide = torch.promote_types(t.dtype, torch.float32)
        factor = s.to(wide) ** power
        return (t.data.to(wide) * (factor[:, None] if t.dim() == 2 and power < 0 else factor)).to(t.dtype)
    p = block.get_submodule(prev)
    p.weight.data = rescale(p.weight, -1)  # a norm's weight (K,) or a Linear's output rows (K, in)
    if getattr(p, "bias", None) is not None:
        p.bias.data = rescale(p.bias, -1)
    for name in names:
        lin = block.get_submodule(name)
        lin.weight.data = rescale(lin.weight, 1)  # input columns


def model_bytes(model):
    """Bytes of all parameters and buffers: the size of the weights in memory and on disk."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
