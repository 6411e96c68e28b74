"""
dllmq's quantized layers side by side with the kernels a user could take instead, at the 8B models' Linear shapes
and the token counts a denoising step feeds them (a GPU; each variant checked against its float product, then timed
in a CUDA graph, median µs):

  bf16            torch F.linear (cuBLAS): the 1x of every ratio
  W4A16 g128      dllmq's weight-only layer, 4-bit asymmetric weights in groups of 128 (wq_gemm.matmul, its fastest
                  path: what a QLinear runs on CUDA)
  W4A8            dllmq's W4A8 layer, 4-bit symmetric weights per channel, int8 activations per token (wa_gemm.linear
                  "w4a8": act_quant + the GEMM)
  W4A8-FP8        the same codes in the sign order, e4m3 activations per token, on the FP8 tensor cores
                  (wa_gemm.linear "w4f8")
  FP8 layer       dllmq's FP8 layer, e4m3 weights per channel and activations per token (wa_gemm.linear "fp8")
  FP8 GEMM        dllmq's FP8 GEMM alone, on operands quantized beforehand
  _scaled_mm      torch._scaled_mm on the same FP8 operands, row-wise scales (cuBLAS)
  gemlite A16W4   gemlite's Triton A16W4 (the same codes, scales and zeros, groups of 128)
  gemlite A8W8    gemlite's A8W8_FP8_dynamic (activations quantized inside the layer)
  gemlite A8W4    gemlite's A8W4 dynamic, 4-bit weights per channel, FP8 activations

gemlite is not a dependency of dllmq: `pip install gemlite` (pure Python + Triton) where it should be compared; its
columns read "absent" otherwise. A variant whose output differs from its float product by more than 5% of the
output's range reads "wrong" and is not timed.

    python -m kernels.compare                          # every shape at M = 16, 256, 1024, 4096
    python -m kernels.compare --tokens 16 --shapes "LLaDA down,Dream down"
"""
import argparse

import torch
import torch.nn.functional as F

from kernels import act_quant, wa_gemm, wq_gemm
from quantizers.format import fit_grid, fp8_grid, pack, quantize

SHAPES = wa_gemm.SHAPES  # name: (N, K)
COLUMNS = ["W4A16 g128", "W4A8", "W4A8-FP8", "FP8 layer", "FP8 GEMM", "_scaled_mm", "gemlite A16W4", "gemlite A8W8",
           "gemlite A8W4"]


def dllmq_layers(W):
    """W (N, K) bf16 in four formats, rounded as calibrate.py's RTN rounds it: name -> (layer call x -> y, codes,
    scales, zeros) with the codes packed and the grids in bf16 as a QLinear stores them."""
    K, layers = W.shape[1], {}
    s, z = fit_grid(W, 4, 128)
    q = quantize(W, s, z, 4)
    args = (pack(q, 4), s.bfloat16(), z.bfloat16())
    layers["W4A16 g128"] = (lambda x, a=args: wq_gemm.matmul(x, *a, 4, K), q, s, z)
    s, z = fit_grid(W, 4, -1, sym=True)
    q = quantize(W, s, z, 4)
    args = (pack(q, 4, wa_gemm.ORDER["w4a8"]), s.bfloat16(), z.bfloat16())
    layers["W4A8"] = (lambda x, a=args: wa_gemm.linear(x, *a, None, "w4a8"), q, s, z)
    args = (pack(q, 4, wa_gemm.ORDER["w4f8"]), s.bfloat16(), z.bfloat16())  # (RTN's symmetric codes are 1..15)
    layers["W4A8-FP8"] = (lambda x, a=args: wa_gemm.linear(x, *a, None, "w4f8"), q, s, z)
    q, s, z = fp8_grid(W)
    args = (pack(q, 8), s.bfloat16(), z.bfloat16())
    layers["FP8 layer"] = (lambda x, a=args: wa_gemm.linear(x, *a, None, "fp8"), q, s, z)
    return layers


def gemlite_layers(W, w4):
    """gemlite's three layers of W, or a line saying why there are none."""
    try:
        from gemlite.helper import A8W8_FP8_dynamic, A8Wn_HQQ_INT_dynamic, A16Wn
    except ImportError as e:
        return f"absent ({e})"
    _, q, s, z = w4["W4A16 g128"]
    _, q8, s8, z8 = w4["W4A8"]
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device="cuda", dtype=torch.bfloat16)
    lin.weight.data.copy_(W)
    return {"gemlite A16W4": A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(
                q, s.bfloat16(), z.bfloat16(), 4, 128),
            "gemlite A8W8": A8W8_FP8_dynamic(device="cuda", dtype=torch.bfloat16).from_linear(lin, del_orig=False),
            "gemlite A8W4": A8Wn_HQQ_INT_dynamic(device="cuda", dtype=torch.bfloat16, W_nbits=4).from_weights(
                q8, s8.bfloat16(), z8.bfloat16())}


def dequantized(q, s, z):
    """The float weight (N, K) a code grid stands for: (q - z) s per group."""
    N, G = s.shape
    return ((q.float().view(N, G, -1) - z[..., None]) * s[..., None]).view(N, -1)


def variants(W, layers, gl, x):
    """name -> (callable, float reference output) for every column, at this layer (dllmq_layers, gemlite_layers)
    and these tokens."""
    out = {}
    for name, (call, q, s, z) in layers.items():
        Wf = q.view(torch.float8_e4m3fn).float() * s if name == "FP8 layer" else dequantized(q, s, z)
        out[name] = (lambda call=call: call(x), x.float() @ Wf.T)
    _, q, s, _ = layers["FP8 layer"]
    xq, sx, _ = act_quant.quantize(x, "fp8")
    w, sw = q.view(torch.float8_e4m3fn), s.bfloat16()
    ref = (xq.float() * sx.view(-1, 1)) @ (w.float() * s).T
    out["FP8 GEMM"] = (lambda: wa_gemm.matmul(xq, sx, None, w, sw, sw, "fp8", W.shape[1]), ref)
    sa, sb = sx.float().view(-1, 1).contiguous(), s.float().view(1, -1).contiguous()
    out["_scaled_mm"] = (lambda: torch._scaled_mm(xq, w.t(), sa, sb, out_dtype=torch.bfloat16), ref)
    for name in ("gemlite A16W4", "gemlite A8W8", "gemlite A8W4"):
        ref = out[{"gemlite A16W4": "W4A16 g128", "gemlite A8W8": "FP8 layer", "gemlite A8W4": "W4A8"}[name]][1]
        out[name] = (gl, ref) if isinstance(gl, str) else (lambda g=gl[name]: g(x), ref)
    return out


def cell(fn, ref, t_bf16, timer):
    """'µs (ratio)' for one variant, after checking its output; 'wrong' / the reason it is absent otherwise."""
    if isinstance(fn, str):
        return fn.split(" (")[0]
    try:
        err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
    except Exception as e:  # a kernel that cannot run this shape on this GPU: say so in the cell
        return f"fails ({type(e).__name__})"
    if not err < 0.05:
        return f"wrong ({err:.1e})"
    t = timer(fn)
    return f"{t:.1f} ({t_bf16 / t:.2f}x)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="16,256,1024,4096", help="token counts M, comma-separated")
    p.add_argument("--shapes", default=",".join(SHAPES), help="layers, comma-separated, of: " + ", ".join(SHAPES))
    opts = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the timings are CUDA graph replays)")
    unknown = set(opts.shapes.split(",")) - set(SHAPES)
    if unknown:
        p.error(f"--shapes: {', '.join(sorted(unknown))} not in {', '.join(SHAPES)}")
    from triton.testing import do_bench_cudagraph
    timer = lambda f: do_bench_cudagraph(f) * 1e3  # noqa: E731
    import triton
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; µs per layer "
          "call in a CUDA graph (median), and bf16 F.linear's time over it\n")
    print("| layer (N x K) | M | bf16 | " + " | ".join(COLUMNS) + " |\n" + "|---" * (3 + len(COLUMNS)) + "|")
    for name in opts.shapes.split(","):
        N, K = SHAPES[name]
        torch.manual_seed(0)
        W = (torch.randn(N, K, device="cuda") * 0.02).bfloat16()
        layers = dllmq_layers(W)
        gl = gemlite_layers(W, layers)
        for M in map(int, opts.tokens.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            t_bf16 = timer(lambda: F.linear(x, W))  # noqa: B023
            found = variants(W, layers, gl, x)
            cells = [cell(*found[c], t_bf16, timer) for c in COLUMNS]
            print(f"| {name} ({N} x {K}) | {M} | {t_bf16:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
