"""
Export a dllmq checkpoint for other engines: GPTQ's v1 checkpoint format or compressed-tensors (vLLM's own), in the
model's own layout (LLaDA's model.transformer.blocks.N..., Dream's Qwen2 names), with config.json and its
quantization_config, the tokenizer and a model card saying how it was calibrated. quantizers/engines.py says how each
setting maps; one that cannot (online rotations, V quantization, 2-3 bits, binary planes, mixed group sizes) is
refused in one line before anything is written. model.load reads both formats back.

    python calibrate.py --method gptq --wbits 4 --group_size 128 --calib_mode masked --out out/w4
    python export.py --model out/w4 --format gptq --out out/w4-gptq
    python calibrate.py --method smoothquant --bits 8 --sym --out out/w8a8
    python export.py --model out/w8a8 --format compressed-tensors --out out/w8a8-ct
"""
import json
import os
import shutil
from dataclasses import dataclass

import torch

from cli import InputError, InRepo, opt, parse, run_cli
from model import (
    LINEAR_NAMES,
    _open,
    _read_json,
    load,
    name_map,
    quantized_layers,
    rename,
    tensor_files,
    write_safetensors,
)
from quantizers.engines import FORMATS, export_layer, quantization_config, refusal

FLOATS = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


@dataclass
class Args:
    model: str = opt(InRepo("out/quantized"), "a quantized dllmq checkpoint (calibrate.py's --out)")
    format: str = opt("gptq", "gptq (the v1 checkpoint format) or compressed-tensors")
    out: str = opt("", "the folder to write; it must not exist (written beside it as OUT.partial, then renamed)")


def check_args(args):
    if args.format not in FORMATS:
        raise InputError(f"--format {args.format!r} is unknown (expected {' or '.join(FORMATS)})")
    if not args.out:
        raise InputError("--out: name the folder to write")
    out, model = os.path.abspath(args.out), os.path.abspath(args.model)
    if os.path.exists(out):
        raise InputError(f"--out {args.out}: exists; export writes a new folder and replaces nothing")
    if out == model or out.startswith(model + os.sep):
        raise InputError(f"--out {args.out}: inside --model {args.model}")


def stored_dtype(path):
    """The float dtype the checkpoint stores (from its header), so the export keeps it."""
    with _open(next(iter(tensor_files(path).values()))) as f:
        return next(FLOATS[d] for d in (f.get_slice(k).get_dtype() for k in f.keys()) if d in FLOATS)


def layers_of(model, fmt):
    """{module name: QLinear} of the model, after checking every one maps to fmt with the same settings."""
    from quantizers.core import BinaryLinear, QLinear
    found = {n: m for n, m in model.named_modules() if isinstance(m, (QLinear, BinaryLinear))}
    settings = set()
    for name, m in found.items():
        cfg = m.config()
        why = refusal(name, cfg, None if cfg.get("format") == "binary" else m.in_features // m.scales.shape[1], fmt)
        if why:
            raise InputError(f"--format {fmt}: {why}")
        settings.add(tuple(cfg[k] for k in ("bits", "group_size", "sym", "act_bits", "fp8")))
    if len(settings) > 1:
        raise InputError(f"--format {fmt}: the layers differ in their settings {sorted(settings)}; {fmt} has one")
    if len(found) != len(LINEAR_NAMES) * model.args.n_layers:
        raise InputError(f"--format {fmt}: {len(found)} of the {len(LINEAR_NAMES) * model.args.n_layers} Linears "
                         "are quantized; the export takes a checkpoint with all of them quantized")
    return found


def tensors_of(model, found, fmt):
    """Every tensor of the exported checkpoint, under its name there."""
    names, out = name_map(model.args), {}
    for key, t in model.state_dict().items():
        if key.rpartition(".")[0] not in found:
            out[rename(names, key)] = t
    for name, m in found.items():
        t = {"qweight": m.qweight, "scales": m.scales, "zeros": m.zeros, "bias": m.bias}
        try:
            converted = export_layer({k: v.detach() for k, v in t.items() if v is not None}, m.config(), fmt)
        except ValueError as e:
            raise InputError(f"--format {fmt}: layer {name}: {e}") from None
        out.update({f"{names[name]}.{leaf}": v for leaf, v in converted.items()})
    return out


def model_card(config, qc, fmt):
    """A short README.md: what the checkpoint holds and how it was calibrated."""
    d = config.get("dllmq_quantization", {})
    nll = (f"masked-diffusion NLL on held-out Wikipedia {d['nll_before']:.4f} -> {d['nll_after']:.4f} nats/token"
           if d.get("nll_after") is not None else "NLL not measured at calibration (--nll_windows 0)")
    return "\n".join([
        f"# {config.get('model_type', 'dLLM')} quantized by dllmq, in {fmt} format", "",
        f"- method: {d.get('method', '?')}, calibration: {d.get('calib_mode', '?')} (dllmq's calibrate.py)",
        f"- format: {d.get('format', '?')}; here as {fmt}" + (f" {qc['format']}" if "format" in qc else " (v1)"),
        f"- {nll}",
        f"- quantization_config: `{json.dumps(qc)}`", ""])


def export(args):
    check_args(args)
    if not quantized_layers(next(iter(tensor_files(args.model).values()))):
        raise InputError(f"--model {args.model}: a float checkpoint, nothing to export (calibrate.py quantizes it)")
    model = load(args.model, stored_dtype(args.model))
    found = layers_of(model, args.format)
    tensors = tensors_of(model, found, args.format)
    config = _read_json(os.path.join(args.model, "config.json"), "model config")
    qc = quantization_config(args.format, next(iter(found.values())).config(), name_map(model.args)["lm_head"])
    partial = args.out.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an export killed while writing left
    os.makedirs(partial)
    write_safetensors(tensors, os.path.join(partial, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(partial, "config.json"), "w") as f:
        json.dump({**config, "quantization_config": qc}, f, indent=2)
    if args.format == "gptq":
        with open(os.path.join(partial, "quantize_config.json"), "w") as f:
            json.dump(qc, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(args.model, name)):
            shutil.copyfile(os.path.join(args.model, name), os.path.join(partial, name))
    with open(os.path.join(partial, "README.md"), "w") as f:
        f.write(model_card(config, qc, args.format))
    os.rename(partial, args.out)
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {len(found)} layers in {args.format} ({qc.get('format', 'v1')}), "
          f"{size / 2**20:.1f} MiB")


def main():
    run_cli(lambda: export(parse(Args, doc=__doc__)))


if __name__ == "__main__":
    main()
