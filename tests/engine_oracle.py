"""
The format owners' own code reading an exported checkpoint, with nothing of dllmq on the path: compressed-tensors'
compressors decompress each layer, and auto-round's pure-torch GPTQ QuantLinear (the "zp" variant, which reads GPTQ's
v1 zero points, stored minus one) dequantizes and runs it. tests/test_export.py runs this in a separate process:
transformers, which both import, finds dllmq's kernels/ package in place of Hugging Face's `kernels` when the
project's root is on the path.

    python tests/engine_oracle.py {compressed-tensors,gptq} EXPORTED_DIR OUT.safetensors [INPUTS.safetensors]
    python tests/engine_oracle.py --jobs '[[FORMAT, EXPORTED_DIR, OUT, INPUTS or null], ...]'   # many, one import

OUT gets, for every quantized layer P: P.weight, the (N, K) weight the library dequantizes (GPTQ: for K <= 4096), and
with INPUTS (tensors named by their width K) P.out, the layer's output on the input of its width.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def read(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def layers(tensors, marker):
    """{layer prefix: {leaf: tensor}} for the layers that hold `marker`."""
    out = {}
    for key, t in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        out.setdefault(prefix, {})[leaf] = t
    return {p: parts for p, parts in out.items() if marker in parts}


def compressed_tensors(folder, tensors, inputs):
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    qc = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    scheme = config.config_groups["group_0"]
    compressor = BaseCompressor.load_from_registry(config.format)
    out = {}
    for prefix, parts in layers(tensors, "weight_scale").items():
        W = compressor.decompress({k: v for k, v in parts.items() if k != "bias"}, scheme)["weight"]
        out[f"{prefix}.weight"] = W.contiguous()
        x = inputs.get(str(W.shape[1]))
        if x is not None:
            y = x.to(W.dtype) @ W.t()
            out[f"{prefix}.out"] = y + parts["bias"].to(y.dtype) if "bias" in parts else y
    return out


def gptq(folder, tensors, inputs):
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    qc = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
    out = {}
    for prefix, parts in layers(tensors, "qzeros").items():
        K, N = len(parts["g_idx"]), parts["scales"].shape[1]
        # g_idx is k // group here (desc_act false); the layer's g_idx path slices its scales by K, not by N, so it
        # is built without one and groups by group_size, as GPTQ readers do without act-order
        layer = QuantLinear(qc["bits"], qc["group_size"], K, N, bias=False, g_idx=False)
        for name in ("qweight", "qzeros", "scales"):
            setattr(layer, name, parts[name])
        with torch.no_grad():
            if K <= 4096:
                out[f"{prefix}.weight"] = layer(torch.eye(K, dtype=torch.float16)).t().contiguous()
            x = inputs.get(str(K))
            if x is not None:
                y = layer(x.half())
                out[f"{prefix}.out"] = y + parts["bias"].half() if "bias" in parts else y
    return out


def run(fmt, folder, dest, inputs=None):
    x = {}
    if inputs:
        with safe_open(inputs, "pt") as f:
            x = {k: f.get_tensor(k) for k in f.keys()}
    save_file({"compressed-tensors": compressed_tensors, "gptq": gptq}[fmt](folder, read(folder), x), dest)


def main():
    if len(sys.argv) < 3 or (sys.argv[1] != "--jobs" and len(sys.argv) < 4):
        sys.exit(__doc__)
    for job in json.loads(sys.argv[2]) if sys.argv[1] == "--jobs" else [sys.argv[1:5]]:
        run(*job)


if __name__ == "__main__":
    main()
