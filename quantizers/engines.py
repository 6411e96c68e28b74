"""
Other engines' checkpoint formats, both ways, on plain tensors: GPTQ's v1 checkpoint format (what GPTQModel, vLLM's
gptq / gptq_marlin and SGLang read) and compressed-tensors (vLLM's own). export.py writes them from a dllmq
checkpoint; model.load reads them back into QLinear layers.

A QLinear holds codes q in 0 .. 2^b - 1 packed along its K inputs (format.py: 32 codes in b int32 words), per-group
scales s and zero points z (N outputs, G groups), and means W = (q - z) s. Mapped:
  GPTQ v1       qweight int32 (K b / 32, N): our words, transposed (32 / b codes per word along K, code j at bits
                b j); qzeros int32 (G, N b / 32): z - 1 packed along N the same way (v1's convention: a group
                with z = 0 is stored as codes q + 1 and z = 1, the same weight, unless a code is 2^b - 1 already);
                scales fp16 (G, N); g_idx int32 (K,) = k // group; bias. 4 or 8 bits, weight-only; one group
                size for every layer.
  compressed-tensors, by scheme:
    pack-quantized   W4A16 / W8A16: weight_packed int32 (N, K b / 32), the same dense layout as ours (it stores the
                     signed values q - 2^(b-1), offset back by 2^(b-1) when packed, i.e. our codes); weight_scale
                     (N, G); weight_zero_point int32 (N b / 32, G), z packed along N (asymmetric only);
                     weight_shape [N, K].
    int-quantized    W8A8 INT8, weights per channel, activations dynamic per token: weight int8 (N, K) = q - 128;
                     weight_scale (N, 1); weight_zero_point int8 (N, 1) = z - 128 (asymmetric only).
    float-quantized  FP8 e4m3 weights per channel (activations dynamic per token, or none): weight
                     float8_e4m3fn (N, K); weight_scale (N, 1).
Neither format has a place for an online rotation (QuaRot's, DuQuant's), quantized V, clipped or asymmetric
activations, 2-3 bit codes or binary planes: those layers are refused, by name.
"""
import torch

from quantizers.format import pack, unpack

FORMATS = ("gptq", "compressed-tensors")


# --------------------------------------------------------------------------------------------- what maps
def scheme(cfg):
    """The compressed-tensors format of a QLinear's settings (pack-quantized, int-quantized, float-quantized)."""
    if cfg["fp8"] and cfg["bits"] == 8:
        return "float-quantized"
    return "pack-quantized" if cfg["act_bits"] == 16 else "int-quantized"


def refusal(name, cfg, group, fmt):
    """Why layer `name` (its settings; its actual group width `group`, K for one per channel) cannot be written in
    fmt, or None."""
    if cfg.get("format") == "binary":
        return f"layer {name} is binary-residual (Quant-dLLM): {fmt} stores integer codes only"
    if cfg["rotation"] is not None:
        return f"layer {name} rotates its input online (QuaRot / DuQuant): {fmt} has no place for a rotation"
    if cfg["out_bits"] < 16:
        return f"layer {name} quantizes its output (V at {cfg['out_bits']} bits): {fmt} cannot say so"
    if cfg["bits"] not in (4, 8):
        return f"layer {name} has {cfg['bits']}-bit codes: {fmt} engines take 4 or 8 bits"
    wanted = cfg["in_features"] if cfg["group_size"] == -1 else cfg["group_size"]
    if group != wanted:
        return (f"layer {name} has groups of {group} inputs, not the {wanted} of every other layer (its width "
                f"{cfg['in_features']} is no multiple): {fmt} has one group size")
    if fmt == "gptq" and (cfg["act_bits"] < 16 or cfg["fp8"]):
        return f"layer {name} quantizes activations or is FP8: gptq is integer weight-only"
    if cfg["act_bits"] < 16 and (cfg["act_bits"] != 8 or cfg["bits"] != 8 or group != cfg["in_features"]):
        return f"layer {name} is W{cfg['bits']}A{cfg['act_bits']} g{cfg['group_size']}: {fmt} takes W8A8 per channel"
    if cfg["act_bits"] < 16 and (not cfg["act_sym"] or cfg["act_clip"] != 1.0):
        return f"layer {name} has asymmetric or clipped activations: engines quantize them symmetric and unclipped"
    return None


def quantization_config(fmt, cfg, head):
    """config.json's quantization_config for layers with settings cfg (all alike); head: the output head's name."""
    bits, group, sym = cfg["bits"], cfg["group_size"], cfg["sym"]
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False, "sym": sym,
                "static_groups": False, "true_sequential": True, "lm_head": False, "checkpoint_format": "gptq",
                "damp_percent": 0.01}
    kind = scheme(cfg)
    weights = {"num_bits": bits, "type": "float" if cfg["fp8"] else "int", "symmetric": sym or cfg["fp8"],
               "strategy": "group" if group != -1 else "channel", "group_size": None if group == -1 else group,
               "dynamic": False, "actorder": None, "observer": "minmax"}
    acts = None if cfg["act_bits"] == 16 else {"num_bits": 8, "type": "float" if cfg["fp8"] else "int",
                                                "symmetric": True, "strategy": "token", "dynamic": True,
                                                "observer": None}
    return {"quant_method": "compressed-tensors", "format": kind, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                          "output_activations": None, "format": kind}},
            "ignore": [head], "kv_cache_scheme": None}


# ------------------------------------------------------------------------------------------ dllmq -> other
def packed_along_rows(z, bits, n_words):
    """Integer values z (N, G) packed along N: int32 (n_words, G), 32 values in `bits` words (format.pack)."""
    return pack(z.t().to(torch.uint8), bits)[:, :n_words].t().contiguous()


def unpacked_along_rows(words, bits, N):
    """packed_along_rows undone: int32 (n_words, G) -> integer values (N, G), int64."""
    full = torch.nn.functional.pad(words.t(), (0, -(-N // 32) * bits - words.shape[0]))
    return unpack(full.contiguous(), bits, N).t().long()


def shift_zero_points(qweight, z, cfg):
    """GPTQ v1 stores z - 1, so a zero point of 0 does not fit. A group with z = 0 whose codes stay below 2^b - 1 is
    the same weight as codes q + 1 with z = 1, so it is stored that way; any other is refused (ValueError). ->
    (words (N, K b / 32), z)."""
    N, K, b = cfg["out_features"], cfg["in_features"], cfg["bits"]
    if not (z == 0).any():
        return qweight[:, :K * b // 32], z
    q = unpack(qweight, b, K).view(N, z.shape[1], -1)
    shift = (z == 0) & (q.amax(-1) < 2 ** b - 1)
    if ((z == 0) & ~shift).any():
        raise ValueError(f"{int(((z == 0) & ~shift).sum())} groups have zero point 0 and a code 2^{b} - 1: GPTQ v1 "
                         "(which stores z - 1) cannot hold them")
    q = (q + shift[..., None].to(q.dtype)).view(N, K)
    return pack(q, b)[:, :K * b // 32], torch.where(shift, 1, z)


def export_layer(t, cfg, fmt):
    """A QLinear's tensors t (qweight, scales, zeros, bias?) -> the tensors of fmt, under their names there."""
    N, K, b = cfg["out_features"], cfg["in_features"], cfg["bits"]
    words, s, z = t["qweight"][:, :K * b // 32], t["scales"], t["zeros"].round().long()
    out = {} if t.get("bias") is None else {"bias": t["bias"]}
    if fmt == "gptq":
        words, z = shift_zero_points(t["qweight"], z, cfg)
        G = s.shape[1]
        return {**out, "qweight": words.t().contiguous(), "scales": s.t().contiguous().half(),
                "qzeros": packed_along_rows(z - 1, b, N * b // 32).t().contiguous(),
                "g_idx": (torch.arange(K) // (K // G)).int(), **({"bias": out["bias"].half()} if out else {})}
    kind = scheme(cfg)
    if kind == "float-quantized":
        q = unpack(t["qweight"], 8, K).view(torch.float8_e4m3fn)
        return {**out, "weight": q, "weight_scale": s}
    if kind == "int-quantized":
        q = unpack(t["qweight"], 8, K).long()
        zero = {} if cfg["sym"] else {"weight_zero_point": (z - 128).to(torch.int8)}
        return {**out, "weight": (q - 128).to(torch.int8), "weight_scale": s, **zero}
    zero = {} if cfg["sym"] else {"weight_zero_point": packed_along_rows(z, b, -(-N * b // 32))}
    return {**out, "weight_packed": words.contiguous(), "weight_scale": s, "weight_shape": torch.tensor([N, K]),
            **zero}


# ------------------------------------------------------------------------------------------ other -> dllmq
def foreign(config):
    """The quantization_config of a GPTQ or compressed-tensors checkpoint's config.json, or None."""
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") in FORMATS else None


def layer_settings(qc):
    """(bits, group_size, sym, act_bits, fp8) from a quantization_config, or ValueError naming what is not taken."""
    if qc["quant_method"] == "gptq":
        if qc.get("checkpoint_format", "gptq") != "gptq":
            raise ValueError(f"checkpoint_format {qc.get('checkpoint_format')!r}: only GPTQ's v1 'gptq' is read")
        return int(qc["bits"]), int(qc.get("group_size", -1)), bool(qc.get("sym", True)), 16, False
    groups = list(qc.get("config_groups", {}).values())
    if len(groups) != 1 or qc.get("quantization_status") != "compressed":
        raise ValueError("compressed-tensors: one compressed config group is read")
    w, a = groups[0]["weights"], groups[0].get("input_activations")
    fp8 = w["type"] == "float"
    if a is not None and not (a["num_bits"] == 8 and a["strategy"] == "token" and a["dynamic"] and a["symmetric"]):
        raise ValueError("compressed-tensors: activations other than dynamic symmetric 8-bit per token")
    group = -1 if w["strategy"] == "channel" else int(w["group_size"])
    return int(w["num_bits"]), group, bool(w["symmetric"]), 16 if a is None else 8, fp8


def import_layer(t, qc, N, K):
    """fmt's tensors t of one Linear (N outputs, K inputs) -> (our tensors qweight, scales, zeros, bias?; the
    QLinear settings)."""
    bits, group, sym, act_bits, fp8 = layer_settings(qc)
    cfg = {"in_features": K, "out_features": N, "bits": bits, "group_size": group, "sym": sym, "act_bits": act_bits,
           "act_sym": True, "act_clip": 1.0, "out_bits": 16, "out_clip": 1.0, "fp8": fp8, "bias": "bias" in t,
           "rotation": None}
    words = -(-K // 32) * bits
    out = {} if "bias" not in t else {"bias": t["bias"]}
    if qc["quant_method"] == "gptq":
        G = t["scales"].shape[0]
        if not torch.equal(t["g_idx"].long(), torch.arange(K) // (K // G)):
            raise ValueError("its g_idx is not k // group (act-order checkpoints are not read)")
        z = unpacked_along_rows(t["qzeros"].t(), bits, N) + 1  # v1 stores z - 1
        q = torch.nn.functional.pad(t["qweight"].t(), (0, words - t["qweight"].shape[0]))
        return {**out, "qweight": q.contiguous(), "scales": t["scales"].t().contiguous(), "zeros": z.float()}, cfg
    if fp8:
        return {**out, "qweight": pack(t["weight"].view(torch.uint8), 8), "scales": t["weight_scale"],
                "zeros": torch.zeros_like(t["weight_scale"])}, cfg
    if act_bits == 8:
        zp = t.get("weight_zero_point")
        z = torch.full((N, 1), 128.0) if zp is None else zp.float() + 128
        return {**out, "qweight": pack((t["weight"].long() + 128).to(torch.uint8), 8), "scales": t["weight_scale"],
                "zeros": z}, cfg
    s = t["weight_scale"]
    zp = t.get("weight_zero_point")
    z = torch.full(s.shape, 2.0 ** (bits - 1)) if zp is None else unpacked_along_rows(zp, bits, N).float()
    q = torch.nn.functional.pad(t["weight_packed"], (0, words - t["weight_packed"].shape[1]))
    return {**out, "qweight": q.contiguous(), "scales": s, "zeros": z}, cfg
