"""
The quantized matmuls as torch.library custom operators, for torch.compile (sample.py --compile, bench.py).

Dynamo cannot trace into an autotuned Triton launch, so under torch.compile each GEMM is one opaque operator with a
shape-only fake: the block stays one graph, and Inductor fuses the code around the operator. quantizers/core.py
sends a QLinear here when it is being traced.

A W8A8 layer without an online rotation then quantizes its input with act_quant's torch twin (`reference`), plain
torch that Inductor fuses into the op that produced the input: RMSNorm before q/k/v and gate/up, SiLU * up before
down. Layers that read one input (q/k/v, gate/up) share one quantization. act_quant's kernel can do neither, as it
only sees the finished input; it still quantizes W4A4's int4, as one more operator (see `linear`). The twin's codes
are the same quantizer's but not always the same bits as eagerly: Inductor keeps the producer's output in fp32
instead of rounding it to bf16 first, and its fp32 division is the GPU's approximate one, so values near a rounding
boundary can land one code away (about 2% of codes after a fused bf16 product, on the H100). A layer with an online
rotation does not come here: it keeps act_quant's fused rotation and runs eagerly, outside the graph.
"""
from typing import Optional

import torch
from torch import Tensor

from kernels import act_quant, wa_gemm, wq_gemm


@torch.library.custom_op("dllmq::wa_matmul", mutates_args=())
def wa_matmul(xq: Tensor, sx: Tensor, sums: Optional[Tensor], w: Tensor, sw: Tensor, zw: Tensor,
              bias: Optional[Tensor], fmt: str, K: int, dtype: torch.dtype) -> Tensor:
    """wa_gemm.matmul: act_quant's (codes, scales, sums) times the weight operand -> (M, N) in dtype."""
    return wa_gemm.matmul(xq, sx, sums, w, sw, zw, fmt, K, bias, dtype)


@wa_matmul.register_fake
def _(xq, sx, sums, w, sw, zw, bias, fmt, K, dtype):
    return xq.new_empty(sx.shape[0], w.shape[0], dtype=dtype)


@torch.library.custom_op("dllmq::wq_matmul", mutates_args=())
def wq_matmul(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bits: int, K: int) -> Tensor:
    """wq_gemm.matmul with its fastest path: x (..., K) @ dequant(W)^T -> (..., N)."""
    return wq_gemm.matmul(x, qweight, scales, zeros, bits, K)


@wq_matmul.register_fake
def _(x, qweight, scales, zeros, bits, K):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("dllmq::act_quant", mutates_args=())
def quantize(x: Tensor, fmt: str, clip: float) -> tuple[Tensor, Tensor, Tensor]:
    """act_quant.quantize without a rotation, for the integer formats: (codes, scales, sums)."""
    return act_quant.quantize(x, fmt, clip)


@quantize.register_fake
def _(x, fmt, clip):
    M, K = x.numel() // x.shape[-1], x.shape[-1]
    q = x.new_empty(M, -(-K // 32) * 4 if fmt == "int4" else K, dtype=torch.int32 if fmt == "int4" else torch.int8)
    return q, x.new_empty(M, dtype=torch.float32), x.new_empty(M, dtype=torch.int32)


def wa_linear(x, qweight, scales, zeros, bias, fmt, clip):
    """wa_gemm.linear (without a rotation) in traced code: the twin's quantizer, which Inductor fuses into x's
    producer, then the GEMM as one operator."""
    if fmt == "int4":  # the twin packs 8 codes to a word in 32 int64 steps, which Inductor's code runs slowly
        xq, sx, sums = quantize(x, fmt, clip)
    else:
        xq, sx, sums = act_quant.reference(x, wa_gemm.ACT[fmt], clip)
    y = wa_matmul(xq, sx, sums, wa_gemm.weight_operand(qweight, fmt), scales, zeros, bias, fmt, x.shape[-1], x.dtype)
    return y.view(*x.shape[:-1], qweight.shape[0])
