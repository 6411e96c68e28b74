"""
What the kernel files share: whether Triton runs in its CPU interpreter, the shims that make the interpreter compute
what the GPU computes, the launch grid of the split-K GEMMs, the autotuners' timer, and a kernel's Hopper build read
without a GPU (kernels/hopper_builds.py). Imports nothing of the project.

Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported; tests/conftest.py does it without a GPU)
runs a kernel with numpy on the CPU, which lets CPU tests check every kernel against its twin on small shapes. Where
the interpreter (triton 3.9) and the GPU differ, a kernel takes EMULATE (= INTERPRET) and calls one of these:
  fp32 -> bf16   the interpreter truncates, the GPU rounds to nearest even: round_bf16 rounds on the bits first;
  fp32 -> e4m3   the same: round_fp8 rounds to the e4m3 grid on the bits;
  float -> int   the interpreter has no libdevice: rint rounds half to even by floor and a fix-up;
  tl.dot         the interpreter's bf16 / fp8 / int8 products are wrong or missing: dot and mma go through fp32,
                 which holds those products and their sums exactly at the sizes the tests use;
  nibbles        on the GPU one PTX instruction unpacks the nibbles of four bytes at once, which the interpreter
                 cannot run: it takes the same shifts and masks byte by byte; signs: the same for format.py's
                 sign order, whose high codes also need the word rotated, assembled here from its four bytes.
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def round_bf16(v):
    """fp32 v rounded to the nearest even bf16 value, still fp32 (the low 16 bits cleared)."""
    b = v.to(tl.uint32, bitcast=True)
    return ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def to_dtype(v, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 v in dtype, rounded to nearest even on the GPU and under the interpreter alike."""
    if EMULATE and dtype == tl.bfloat16:
        v = round_bf16(v)
    return v.to(dtype)


@triton.jit
def round_fp8(v, EMULATE: tl.constexpr):
    """v (fp32, |v| <= 448) rounded to the nearest even e4m3 value, still fp32. The GPU's cast rounds like this by
    itself; under the interpreter it is done on the bits: 3 mantissa bits for normal values, steps of 2^-9 below
    2^-6 (the subnormals)."""
    if EMULATE:
        b = v.to(tl.uint32, bitcast=True)
        normal = ((b + 0x7FFFF + ((b >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
        sub = (v + 24576.0) - 24576.0  # 1.5 * 2^14: adding it leaves a multiple of 2^-9, rounded to nearest even
        v = tl.where(tl.abs(v) < 0.015625, sub, normal)
    return v


@triton.jit
def rint(v, EMULATE: tl.constexpr):
    """v rounded to the nearest integer, ties to even (as torch.round), as int32: one cvt.rni on the GPU, where the
    interpreter's form below made the int8 quantizer 30% slower (H100). Under the interpreter: floor(v + 0.5), then
    a tie that landed on an odd number goes down (exact for |v| < 2^22)."""
    if EMULATE:
        r = tl.floor(v + 0.5)
        return tl.where((r - v == 0.5) & (tl.floor(r * 0.5) * 2 != r), r - 1.0, r).to(tl.int32)
    return libdevice.float2int_rn(v)


@triton.jit
def dot(a, b, acc, EMULATE: tl.constexpr):
    """a @ b + acc (acc fp32, or None) on the tensor cores; through fp32 under the interpreter."""
    if EMULATE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def mma(a, b, acc, EMULATE: tl.constexpr):
    """acc + a @ b for fp8 or int8 operands, acc fp32 or int32; through fp32 under the interpreter, which has no fp8
    or int8 product (fp32 holds these products and sums exactly)."""
    if EMULATE:
        return acc + tl.dot(a.to(tl.float32), b.to(tl.float32)).to(acc.dtype)
    return tl.dot(a, b, acc, out_dtype=acc.dtype)


@triton.jit
def nibble(b, HIGH: tl.constexpr, EMULATE: tl.constexpr):
    """The low (HIGH = 0) or high nibble of every byte of an int8 tile b, as int8 codes 0..15. On the GPU four bytes
    sit in one 32-bit register, and an `and` with 0x0F0F0F0F (after a shift by 4 for the high nibbles) unpacks all
    four at once: pack=4 hands the register to the instruction whole. With Triton's own `(b >> 4) & 15` the W4A8
    GEMM was 1.1-1.5x slower at M = 256 (H100, results/kernels-h100/compare.md; not profiled, likely byte by byte)."""
    if EMULATE:
        return (b >> 4 * HIGH) & 15  # the arithmetic shift's sign bits are masked off
    if HIGH:
        return tl.inline_asm_elementwise("{.reg .b32 t; shr.u32 t, $1, 4; and.b32 $0, t, 0x0F0F0F0F;}", "=r,r", [b],
                                         dtype=tl.int8, is_pure=True, pack=4)
    return tl.inline_asm_elementwise("and.b32 $0, $1, 0x0F0F0F0F;", "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)


@triton.jit
def signs(b, HIGH: tl.constexpr, EMULATE: tl.constexpr):
    """The low (HIGH = 0) or high codes of an int8 tile b (R, C) in format.py's sign order, as fp8 e4m3 operands
    worth v / 512 (v = c - 8 in -7..7). An e4m3 byte 0..7 is m 2^-9 (a subnormal) and 0x80 its sign, so the sign
    order's low code is its byte & 0x87 and the high one that of its word rotated right by 4: on the GPU, per four
    bytes one `and` (after one funnel shift for the high codes). The rotation reads the byte beside it, so the four
    bytes in a register must be four neighbours of a row in memory order: pack=4 hands over four neighbouring
    elements, and C is a multiple of 4 (tests/test_wa_kernels.py checks this on the GPU). Under the interpreter:
    the same operations on the words rebuilt from their bytes, then the values in fp32."""
    if EMULATE:
        R: tl.constexpr = b.shape[0]
        C: tl.constexpr = b.shape[1]
        u = tl.reshape(b.to(tl.int32) & 255, (R, C // 4, 2, 2))  # [.., i, t] is byte 2i + t of a word
        b02, b13 = tl.split(u)
        b0, b2 = tl.split(b02)
        b1, b3 = tl.split(b13)
        w = (b0 | b1 << 8 | b2 << 16 | b3 << 24).to(tl.uint32, bitcast=True)
        if HIGH:
            w = w >> 4 | w << 28
        w &= 0x87878787
        y = tl.join(tl.join(w & 255, (w >> 16) & 255), tl.join((w >> 8) & 255, w >> 24))
        y = tl.reshape(y, (R, C)).to(tl.int32)
        return tl.where(y >= 128, -(y & 7), y).to(tl.float32) * 0.001953125
    if HIGH:
        c = tl.inline_asm_elementwise("{.reg .b32 t; shf.r.wrap.b32 t, $1, $1, 4; and.b32 $0, t, 0x87878787;}",
                                      "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)
    else:
        c = tl.inline_asm_elementwise("and.b32 $0, $1, 0x87878787;", "=r,r", [b], dtype=tl.int8, is_pure=True,
                                      pack=4)
    return c.to(tl.float8e4nv, bitcast=True)


def time_in_graph(f, quantiles):
    """The autotuners' timer: a config's kernel replayed in a CUDA graph, as a model step runs it (timed by plain
    launches, one config's launch overhead can hide another's faster kernel)."""
    from triton.testing import do_bench_cudagraph
    return do_bench_cudagraph(f, quantiles=quantiles)


def hopper(fn, types, consts, aligned, warps, stages):
    """Without a GPU: the jitted fn compiled for Hopper (sm_90a) by Triton and the ptxas its wheel ships, as the JIT
    would compile a launch. types: the Triton type of each pointer or scalar argument ("*bf16", "i32", ...), every
    other argument a constexpr in consts; aligned: the arguments the JIT would find divisible by 16."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if INTERPRET:
        raise SystemExit("compiling for the GPU needs TRITON_INTERPRET unset")
    sig = {n: types.get(n, "constexpr") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n in aligned}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def machine_code(kernel):
    """A kernel compiled by `hopper`: its shared memory a block (bytes, dynamic and static), registers a thread, stack
    frame a thread (bytes: where registers spill) and a hash of its SASS without addresses, read from its cubin by
    the cuobjdump Triton's wheel ships."""
    import hashlib
    import re
    import subprocess
    import tempfile
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        code, use = (subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout
                     for flag in ("-sass", "-res-usage"))
    r = {key: int(v) for key, v in re.findall(r"(REG|STACK|SHARED):(\d+)", use)}
    digest = hashlib.sha256(re.sub(r"/\*[0-9a-f]{4}\*/", "", code).encode()).hexdigest()[:12]
    return kernel.metadata.shared + r["SHARED"], r["REG"], r["STACK"], digest


def grid(M, N, meta):
    """Programs of a split-K GEMM over weight rows x tokens x K splits (kernels/wq_gemm.py, wq_factored.py)."""
    return triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]), meta["SPLIT_K"]
