"""
Weight-activation quantized GEMMs: y = (s_x x_q) (s_w (W_q - z))^T for W8A8 in FP8 or INT8, W4A8 and W4A4, with the
activations quantized per token by kernels/act_quant.py and the scales applied in the epilogue.

Formats (the twin `reference` below defines the product; quantizers/format.py the weights):
  fp8   x: e4m3 per token (act_quant "fp8"); W: e4m3 per output channel (format.fp8_grid: the 8-bit words of a
        QLinear with fp8=True hold the e4m3 bytes), scales s_w (N, 1). Products on the fp8 tensor cores, fp32 sums.
  int8  x: int8 per token; W: 8-bit codes per output channel, z the zero point (128 when symmetric). The tensor cores
        take int8, so a code c enters as c - 128 (its top bit flipped in registers) and the sum is corrected by
        (z - 128) * sum_k x_q[k] in the epilogue, with the token sums act_quant made; int32 sums.
  int4  x: int4 per token, packed 8 to a word; W: 4-bit codes per output channel. Hopper has no int4 tensor-core
        instruction, so both operands are unpacked in registers to int8 and multiplied on the int8 tensor cores:
        int4 here saves memory and bandwidth, not arithmetic. The codes c (0..15) enter as they are and the zero
        point is corrected in the epilogue, as for int8.
  w4a8  x: int8 per token; W: 4-bit codes per output channel in W4A8's pair order (format.pack: 8 to a word
        as for int4, each chunk of 256 channels reordered), read here as bytes: byte j of chunk c holds channel
        256c + j in its low nibble and 256c + 128 + j in its high one (a last chunk of L < 256 channels, rounded
        up to 32: 256c + j and 256c + L / 2 + j). Codes 0..15 enter the int8 tensor cores as
        they are and the zero point is corrected in the epilogue. Half int8's weight bytes for the same
        tensor-core arithmetic. A step of 256 channels loads 128 bytes per output channel and makes two operands
        of them in place, the low nibbles and the high ones, each one instruction per four bytes (shims.nibble:
        on the GPU a 32-bit `and`, after a shift for the high ones); each operand meets a run of 128 neighbouring
        activations, so no code moves between threads and x keeps its own order. The layer at 256 tokens runs at
        1.10-1.36x bf16 on LLaDA's layers and Dream's MLP (H100, results/kernels-h100/w4a8-pair-order.log). What
        this replaced (results/kernels-h100/compare.md): unpacking each word into channel order by a reshape
        (0.37-0.57x bf16 at 256 tokens); nibble i of 32 words at a time, one code per 32-bit operation
        (0.63-0.93x); plain order, byte j holding channels 2j and 2j + 1, against activations that act_quant
        stored with the even channels first (that order made the quantizer 1.3-1.7x slower than plain int8: the
        layer 0.88x bf16 at 256 tokens against 1.03x now, geometric means over the seven shapes); pairs j and
        j + 16 in chunks of 32, whose activations come in runs of 16 (the GEMM 2-2.4x slower).
  w4f8  W4A8-FP8. x: e4m3 per token (act_quant "fp8"); W: symmetric 4-bit codes -7..7 per output channel in
        format.py's sign order (w4a8's pairs, each code stored as the sign and magnitude of c - 8). Products on
        the fp8 tensor cores with fp32 sums, which Triton leaves in flight as it does fp8's, where w4a8's int32
        ones wait. An e4m3 byte m <= 7 is the subnormal m 2^-9 and 0x80 its sign, so the low codes of four bytes
        are one `and` with 0x87878787, the high ones the same after rotating the word right by 4 (shims.signs),
        and the epilogue multiplies by 512. The two operands are joined along K into one product a step. The layer
        at 256 tokens runs at 1.24-1.53x bf16 on LLaDA's layers and Dream's MLP, where w4a8 runs at 1.08-1.34x in
        the same run (H100, results/kernels-h100/w4a8-fp8-signs.log). Centred codes, not w4a8's 0..15 with the
        zero point taken away afterwards: the fp8 tensor cores add with fewer bits than fp32, and sums of 0..15
        carry z sum(x), which lost the result when x had a large mean
        (results/kernels-h100/w4a8-fp8-tensor-cores.log: that form and an eight-operation signed one, dropped).
The epilogue: y[m, n] = (acc[m, n] - (z[n] - offset) * sums[m]) * s_x[m] * s_w[n] (+ bias), in fp32 (fp8 and w4f8
have no zero point), stored in the activation dtype. Weights must be per output channel (one group);
quantizers/core.py decides which layers come here.

How the work is laid out: one program computes one (BLOCK_M tokens x BLOCK_N outputs) tile of y, walking K in steps
of BLOCK_K; each step loads a tile of x codes and a tile of weight codes and adds their product on the tensor cores
into an accumulator held in registers. Programs are numbered so that GROUP_M neighbouring row tiles run one after
another down a column of tiles: they read the same weight tile while it sits in L2. The INT8 kernel computes the
transposed product W x^T: the left operand is the one Hopper's tensor cores read from registers, so the flipped
weight tile goes straight in instead of back through shared memory (results/kernels-h100 has the timings). Triton
keeps a tensor-core product with int32 sums synchronous (its Hopper pipeliner leaves only fp32 sums in flight:
`dotCanBeProperlyAsync` in Triton's WGMMAPipeline.cpp declines any other accumulator), so the int8 and w4a8 loops
wait for each product before they make the next tile's operands, where fp8's and w4f8's overlap (--pipeline below
shows it). At M <= 64 there are too few tiles to fill the GPU (a 4096-wide layer: 32 programs for 132 SMs), so K is
split too: SPLIT_K programs per tile each walk 1/SPLIT_K of it and store their scaled fp32 partial sums in a
workspace, then count themselves in on the tile's counter (an atomic add); the one that arrives last adds the
SPLIT_K partials, stores the tile in the activation dtype and sets the counter back to 0 for the next call. One
kernel, where adding the partials atomically into a zeroed fp32 output took three (the zero-fill and a cast after);
with tiles of 16 tokens as well, the fp8 layer at 16 tokens ran 1.11-1.76x faster and the w4a8 one 1.30-1.76x (two
H100s, bf16 within 4% on both; results/kernels-h100/compare.md). The counters are one int32 per tile, shared by
every call on a device: GEMMs on one CUDA stream run one after another, so no two share them at once.

    python -m kernels.wa_gemm          # on a GPU: check against the twin, then time each format against bf16
    python -m kernels.wa_gemm --parts 16   # where the fp8 / w4a8 / w4f8 layers' time goes at 16 tokens, by kernel
    python -m kernels.wa_gemm --pipeline   # no GPU needed: which formats' products Triton leaves in flight on Hopper
    python -m kernels.hopper_builds --kernels wa_gemm   # no GPU needed: each config's shared memory,
                                       # registers, spills and a hash of its Hopper machine code
    ncu -k regex:_wa_gemm --section SpeedOfLight python -m kernels.wa_gemm --once 12288,4096,320
                                       # one GEMM per format at one tile shape, untimed: for a profiler
"""
import torch
import triton
import triton.language as tl

from kernels import act_quant
from kernels.shims import INTERPRET, hopper, mma, nibble, signs, time_in_graph, to_dtype
from quantizers.format import fit_grid, fp8_grid, pack, quantize, unpack

FMT = {"fp8": 0, "int8": 1, "int4": 2, "w4a8": 3, "w4f8": 4}
ACT = {"fp8": "fp8", "int8": "int8", "int4": "int4", "w4a8": "int8", "w4f8": "fp8"}  # activations (act_quant)
W_BITS = {"fp8": 8, "int8": 8, "int4": 4, "w4a8": 4, "w4f8": 4}
ORDER = {"fp8": "plain", "int8": "plain", "int4": "plain", "w4a8": "pairs", "w4f8": "signs"}  # codes' packing
NIBBLES = ("w4a8", "w4f8")  # the formats that read 4-bit codes as bytes, 256 channels a step


def weight_operand(qweight, fmt):
    """A QLinear's packed weight as the kernel reads it (a view, no copy): w4a8 / w4f8 read the words as bytes."""
    if fmt == "int4":
        return qweight
    if fmt in NIBBLES:
        return qweight.view(torch.int8)
    return qweight.view(torch.float8_e4m3fn if fmt == "fp8" else torch.uint8)


def reference(xq, sx, w, sw, zw, fmt, K, bias=None, dtype=torch.bfloat16):
    """The pure-torch twin: the dequantized operands multiplied in float32."""
    x = act_quant.dequantize(xq, sx, ACT[fmt], K)
    if fmt == "fp8":
        W = w[:, :K].float()
    else:
        W = unpack(w.view(torch.int32), W_BITS[fmt], K, ORDER[fmt]).float() - zw.float()
    y = (x @ W.T) * sw.float().view(1, -1)
    return (y if bias is None else y + bias.float()).to(dtype)


def _configs(few, family="plain"):  # (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages): tokens x outputs x
    # inputs, K split. w4a8 / w4f8 walk K 256 channels at a time (128 weight bytes).
    if family != "plain" and few:  # M <= 64: both nibble formats, K split 2 to 8 ways
        shapes = [(64, 128, 256, 4, 4, 3), (16, 128, 256, 4, 4, 3), (16, 64, 256, 2, 4, 3), (16, 128, 256, 8, 4, 3)]
    elif family == "w4a8":  # the three tiles that won a layer shape at M = 256 or 1024 among 14; 64 x 64 made
        # LLaDA's q/k/v/o and down 1.2-1.3x faster at 256 and Dream's 512-wide k/v 1.5x
        # (H100, results/kernels-h100/w4a8-tiles-256-1024.log)
        shapes = [(256, 128, 256, 1, 8, 3), (64, 128, 256, 1, 4, 3), (64, 64, 256, 1, 4, 4)]
    elif family == "w4f8":  # the four among 18 whose best is within 1.5% of the best of all 18 at every layer shape
        # and M = 256, 320, 1024, 2048; w4a8's three were up to 1.21x slower (H100,
        # results/kernels-h100/w4a8-fp8-tiles.log)
        shapes = [(256, 128, 256, 1, 8, 3), (64, 128, 256, 1, 4, 3), (128, 64, 256, 1, 4, 4), (64, 64, 256, 1, 4, 3)]
    elif few:  # tiles of 16 tokens (each won a layer shape in fp8 at M = 16), and one of 64 that made the fp8
        # layers at M = 64 up to 1.25x faster, the int4 ones up to 1.8x (H100, results/kernels-h100/compare.md)
        shapes = [(16, 64, 128, 4, 4, 3), (16, 64, 128, 2, 4, 3), (16, 32, 256, 4, 4, 4), (16, 32, 256, 8, 4, 4),
                  (64, 128, 128, 4, 4, 4)]
    else:
        shapes = [(128, 256, 128, 1, 8, 3), (128, 128, 128, 1, 8, 4), (64, 128, 128, 1, 4, 4), (64, 64, 128, 1, 4, 4),
                  (256, 128, 128, 1, 8, 3), (128, 128, 64, 1, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "SPLIT_K": sk}, num_warps=w,
                          num_stages=s) for m, n, k, sk, w, s in shapes]


@triton.jit
def _nibbles(ptr, rows, rows_ok, k0, stride, n_words, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """4-bit codes (BLOCK_R, BLOCK_K) int32 of channels k0 .. k0 + BLOCK_K: one load per word, spread by shifts."""
    rw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    words = tl.load(ptr + rows[:, None] * stride + rw[None, :], mask=rows_ok[:, None] & (rw < n_words)[None, :],
                    other=0)
    return tl.reshape(words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :], (BLOCK_R, BLOCK_K)) & 15


@triton.jit
def _wa_gemm(a_ptr, b_ptr, sa_ptr, sum_ptr, sb_ptr, zb_ptr, bias_ptr, c_ptr, ws_ptr, count_ptr, M, N, K, stride_am,
             stride_bn, stride_cm, a_words, b_words, M_BUCKET, FMT: tl.constexpr, OFFSET: tl.constexpr,
             HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, FULL: tl.constexpr, EMULATE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
             SPLIT_K: tl.constexpr):
    # programs walk GROUP_M row tiles down a column before moving on (the tiles of W they share stay in L2);
    # pid_k is this program's part of K (0 unless SPLIT_K > 1)
    pid, pid_k = tl.program_id(0), tl.program_id(1)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * grid_n) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    if FMT == 1 or FMT >= 3:  # the transposed product W x^T (module docstring): (BLOCK_N, BLOCK_M), transposed at
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32 if FMT == 4 else tl.int32)  # the end
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if FMT == 0 else tl.int32)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    for t in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, k_tiles)):
        k0 = t * BLOCK_K
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        if FMT == 2:
            a = tl.where(k_ok[None, :], _nibbles(a_ptr, rm, m_ok, k0, stride_am, a_words, BLOCK_M, BLOCK_K) - 8, 0)
            b = tl.trans(_nibbles(b_ptr, rn, n_ok, k0, stride_bn, b_words, BLOCK_N, BLOCK_K).to(tl.int8))
            acc = mma(a.to(tl.int8), b, acc, EMULATE)
        elif FMT == 1:  # int8 activations, the weight tile the register operand; 8-bit code c as c - 128: flip
            w = tl.load(b_ptr + rn[:, None] * stride_bn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            w = (w ^ 0x80).to(tl.int8, bitcast=True)  # the top bit, read the byte as int8
            xt = tl.load(a_ptr + rm[None, :] * stride_am + rk[:, None], mask=m_ok[None, :] & k_ok[:, None], other=0)
            acc = mma(w, xt, acc, EMULATE)
        elif FMT >= 3:  # w4a8 / w4f8: a step of 256 channels is 128 bytes of codes per row, byte j's low nibble
            tl.static_assert(BLOCK_K == 256)  # for channel j of the step, its high one for channel half + j
            if FULL:  # K a multiple of 256: every step whole
                half = 128
            else:  # the last step: what is left of K, rounded up to 32 (a multiple of 16: aligned loads)
                half = tl.multiple_of(tl.minimum(2 * b_words - k0, 256) // 2, 16)
            j = tl.arange(0, 128)
            b = tl.load(b_ptr + rn[:, None] * stride_bn + (k0 // 2 + j)[None, :],
                        mask=n_ok[:, None] & (j < half)[None, :], other=0)
            if FMT == 3:  # w4a8: one product per nibble half, codes 0..15 (padding past K meets activations of 0)
                for h in tl.static_range(2):
                    pk = k0 + h * half + j
                    xt = tl.load(a_ptr + rm[None, :] * stride_am + pk[:, None],
                                 mask=m_ok[None, :] & ((j < half) & (pk < K))[:, None], other=0)
                    acc = mma(nibble(b, h, EMULATE), xt, acc, EMULATE)
            else:  # w4f8: the two halves' operands joined along K into one product a step (two products would
                w = tl.reshape(tl.permute(tl.join(signs(b, 0, EMULATE), signs(b, 1, EMULATE)), (0, 2, 1)),
                               (BLOCK_N, 256))  # make the first wait for the tensor cores)
                if FULL:
                    xt = tl.load(a_ptr + rm[None, :] * stride_am + rk[:, None], mask=m_ok[None, :], other=0.0)
                else:
                    kk = tl.arange(0, 256)
                    pk = k0 + kk // 128 * half + kk % 128
                    xt = tl.load(a_ptr + rm[None, :] * stride_am + pk[:, None],
                                 mask=m_ok[None, :] & ((kk % 128 < half) & (pk < K))[:, None], other=0.0)
                acc = mma(w, xt, acc, EMULATE)
        else:
            a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptr + rn[None, :] * stride_bn + rk[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            acc = mma(a, b, acc, EMULATE)
    if FMT == 1 or FMT >= 3:
        acc = tl.trans(acc)
    if FMT == 4:  # the weight operands were worth v / 512
        acc *= 512.0
    # the zero-point correction and the bias are added once, by the first part of K (masks as vectors: the
    # interpreter takes no scalar in a mask)
    m_first, n_first = m_ok & (rm * 0 + pid_k == 0), n_ok & (rn * 0 + pid_k == 0)
    if HAS_ZERO:  # sum_k x_k (c_k - z) = sum_k x_k (c_k - offset) - (z - offset) sum_k x_k
        z = tl.load(zb_ptr + rn, mask=n_ok, other=0.0).to(tl.float32).to(tl.int32) - OFFSET
        acc -= tl.load(sum_ptr + rm, mask=m_first, other=0)[:, None] * z[None, :]
    sa = tl.load(sa_ptr + rm, mask=m_ok, other=0.0)
    sb = tl.load(sb_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)  # (in the layer's dtype: no cast kernel per call)
    y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=n_first, other=0.0).to(tl.float32)[None, :]
    out, ok = c_ptr + rm[:, None] * stride_cm + rn[None, :], m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:  # this part's fp32 sums to the workspace; the tile's last part to arrive adds them all
        part = rm[:, None] * N + rn[None, :]
        tl.store(ws_ptr + pid_k * M * N + part, y, mask=ok)
        if tl.atomic_add(count_ptr + pid, 1, sem="acq_rel") == SPLIT_K - 1:  # (acq_rel: the others' stores seen)
            y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(SPLIT_K):
                y += tl.load(ws_ptr + k * M * N + part, mask=ok, other=0.0, cache_modifier=".cg")  # from L2
            tl.store(out, to_dtype(y, c_ptr.dtype.element_ty, EMULATE), mask=ok)
            tl.atomic_xchg(count_ptr + pid, 0)
    else:
        tl.store(out, to_dtype(y, c_ptr.dtype.element_ty, EMULATE), mask=ok)


def _family(fmt):
    return fmt if fmt in NIBBLES else "plain"


_CONFIGS = {(few, f): _configs(few, f) for few in (False, True) for f in ("plain", "w4a8", "w4f8")}
_TUNED = {k: triton.autotune(c, key=["M_BUCKET", "N", "K", "FMT"], do_bench=time_in_graph)(_wa_gemm)
          for k, c in _CONFIGS.items()}


def configs(fmt, few):
    """The configs the autotuner chooses among for this format, at M <= 64 (few) or above."""
    return _CONFIGS[few, _family(fmt)]


def _grid(M, N, meta):
    return triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"]


_COUNTERS = {}  # device -> int32 zeros, one per output tile of a split-K GEMM; each call leaves them 0 again
_FEW = [c for (few, _), cs in _CONFIGS.items() if few for c in cs]
_SPLITS, _TILE_M, _TILE_N = (f(c.kwargs[k] for c in _FEW)
                             for f, k in ((max, "SPLIT_K"), (min, "BLOCK_M"), (min, "BLOCK_N")))


def _split_k_buffers(M, N, device):
    """The workspace for SPLIT_K partial sums (the most any config splits) and the tiles' counters (as many as the
    smallest tile makes; 65536 at first, so that a model's first call, not a CUDA graph's capture, allocates them)."""
    tiles = triton.cdiv(M, _TILE_M) * triton.cdiv(N, _TILE_N)
    if device not in _COUNTERS or _COUNTERS[device].numel() < tiles:
        _COUNTERS[device] = torch.zeros(max(tiles, 1 << 16), device=device, dtype=torch.int32)
    return torch.empty(_SPLITS, M, N, device=device, dtype=torch.float32), _COUNTERS[device]


def matmul(xq, sx, sums, w, sw, zw, fmt, K, bias=None, dtype=torch.bfloat16, config=None):
    """Quantized activations (codes xq, scales sx, sums: act_quant's three; sums None for fp8) times the weight
    operand w (weight_operand), with per-channel scales sw and zeros zw (N,) or (N, 1) -> (M, N) in dtype.
    config: one of configs(fmt, few) instead of the autotuned one (the tests run each; the interpreter cannot
    time). At M <= 64 K is split over 2 to 8 programs (configs(fmt, True)) whose fp32 partial sums the last adds:
    a down projection at M = 16 is otherwise 32 programs for 132 SMs, each walking all of K."""
    M, N = sx.shape[0], w.shape[0]
    fp8 = ACT[fmt] == "fp8"  # e4m3 activations: no zero point to correct (w4f8's codes are centred on 8)
    if (sums is None) != fp8:
        raise ValueError(f"wa_gemm: {fmt} needs {'no sums' if fp8 else 'the token sums act_quant gives'}")
    sw = sw.reshape(-1)
    zw = zw.reshape(-1) if not fp8 else sw
    config = configs(fmt, False)[0] if config is None and INTERPRET else config  # (the fewest programs: the
    # interpreter's time goes by programs; the tests run each split-K config by name)
    few = M <= 64 if config is None else config.kwargs["SPLIT_K"] > 1
    y = torch.empty(M, N, device=xq.device, dtype=dtype)
    ws, counts = _split_k_buffers(M, N, xq.device) if few else (y, sx)  # (unread without a split)
    args = (xq, w, sx, sx if sums is None else sums, sw, zw, bias if bias is not None else sw, y, ws, counts, M, N, K,
            xq.stride(0), w.stride(0), y.stride(0), xq.shape[1], w.shape[1], triton.next_power_of_2(M))
    flags = dict(FMT=FMT[fmt], OFFSET=128 if fmt == "int8" else 0, HAS_ZERO=not fp8,
                 HAS_BIAS=bias is not None, FULL=K % 256 == 0, EMULATE=INTERPRET)
    if config is None:
        _TUNED[few, _family(fmt)][lambda meta: _grid(M, N, meta)](*args, **flags)
    else:
        _wa_gemm[_grid(M, N, config.kwargs)](*args, **flags, **config.kwargs, num_warps=config.num_warps,
                                             num_stages=config.num_stages)
    return y


def linear(x, qweight, scales, zeros, bias, fmt, clip=1.0, form=None, config=None):
    """A W8A8 / W4A8 / W4A4 layer: x (..., K) bf16/fp16 quantized per token (rotated first by a Form, in the same
    pass) by act_quant, then the GEMM with the scales (and bias) in its epilogue -> (..., N) in x's dtype."""
    K, N = x.shape[-1], qweight.shape[0]
    xq, sx, sums = act_quant.quantize(x, ACT[fmt], clip, form)
    y = matmul(xq, sx, sums, weight_operand(qweight, fmt), scales, zeros, fmt, K, bias, x.dtype, config)
    return y.view(*x.shape[:-1], N)


# ------------------------------------------------------------------------------------------ check and benchmark
SHAPES = {"LLaDA q/k/v/o": (4096, 4096), "LLaDA gate/up": (12288, 4096), "LLaDA down": (4096, 12288),
          "Dream q/o": (3584, 3584), "Dream k/v": (512, 3584), "Dream gate/up": (18944, 3584),
          "Dream down": (3584, 18944)}  # name: (N, K)
TOKENS = (16, 256, 512, 1024, 2048, 4096)


def _layer(N, K, fmt):
    """bf16 weight W (N, K) and its per-channel codes as a QLinear stores them: (qweight, scales, zeros) in bf16."""
    W = torch.randn(N, K, device="cuda") * 0.02
    bits = W_BITS[fmt]
    sym = fmt == "w4f8"  # (its sign order holds symmetric codes only)
    q, s, z = fp8_grid(W) if fmt == "fp8" else (lambda s, z: (quantize(W, s, z, bits), s, z))(*fit_grid(W, bits, -1,
                                                                                                       sym))
    return W.bfloat16(), (pack(q, bits, ORDER[fmt]), s.bfloat16(), z.bfloat16())


def bench(fmts=tuple(FMT), tokens=TOKENS, hadamard=True):
    """Per layer shape and token count: bf16 F.linear against each format's whole layer (act_quant + GEMM) and its
    GEMM alone, each in a CUDA graph; then (hadamard) the online Hadamard's cost on the down projections. Checks
    every result against the twin first. Prints markdown tables."""
    from triton.testing import do_bench_cudagraph
    time = lambda f: do_bench_cudagraph(f) * 1e3  # noqa: E731
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; weights per "
          "channel, activations per token (quantized inside the timed layer), times in µs in a CUDA graph\n")
    print("| layer (N x K) | M | bf16 | " + " | ".join(f"{f} layer | {f} GEMM" for f in fmts) + " | " +
          " | ".join(f"{f} vs bf16" for f in fmts) + " |\n" + "|---" * (3 + 3 * len(fmts)) + "|")
    ratios = {f: [] for f in fmts}
    for name, (N, K) in SHAPES.items():
        layers = {fmt: _layer(N, K, fmt) for fmt in fmts}
        for M in tokens:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            W = next(iter(layers.values()))[0]
            t_ref = time(lambda: torch.nn.functional.linear(x, W))  # noqa: B023
            cells = []
            for fmt, (_, (qw, s, z)) in layers.items():
                xq, sx, sums = act_quant.quantize(x, ACT[fmt])
                w = weight_operand(qw, fmt)
                y = linear(x, qw, s, z, None, fmt)
                ref = reference(xq, sx, w, s, z, fmt, K, None, torch.float32)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                if err > 2e-2:  # fp8 sums on the H100 carry fewer bits than fp32
                    raise SystemExit(f"{name} M={M} {fmt}: differs from the twin by {err:.2e}")
                t_layer = time(lambda: linear(x, qw, s, z, None, fmt))  # noqa: B023
                t_gemm = time(lambda: matmul(xq, sx, sums, w, s, z, fmt, K))  # noqa: B023
                cells.append((t_layer, t_gemm))
                ratios[fmt].append((M, t_ref / t_layer))
            print(f"| {name} ({N} x {K}) | {M} | {t_ref:.1f} | " + " | ".join(f"{a:.1f} | {b:.1f}" for a, b in cells)
                  + " | " + " | ".join(f"{t_ref / a:.2f}x" for a, _ in cells) + " |", flush=True)
    for fmt, r in ratios.items():  # the layer's range over the shapes at each M, and over M >= 1024 as a whole
        for label, keep in [(f"M = {m}", lambda v, m=m: v == m) for m in tokens] + [("M >= 1024", lambda v: v >= 1024)]:
            cell = torch.tensor([v for m, v in r if keep(m)])
            if len(cell):
                print(f"{fmt}: whole layer at {label}: {cell.min():.2f}x to {cell.max():.2f}x bf16 (geometric mean "
                      f"{cell.log().mean().exp():.2f}x over {len(cell)} shapes x token counts)")
    if not hadamard:
        return
    print("\nOnline Hadamard (QuaRot's down projection): act_quant with and without it, against the down GEMM\n")
    print("| layer | M | quant µs | quant + Hadamard µs | overhead µs | fp8 GEMM µs | overhead / fp8 GEMM | "
          "bf16 GEMM µs | overhead / bf16 GEMM |\n" + "|---" * 9 + "|")
    for name in ("LLaDA down", "Dream down"):
        N, K = SHAPES[name]
        W, (qw, s, z) = _layer(N, K, "fp8")
        form = act_quant.hadamard_form(K).to("cuda")
        for M in TOKENS[2:]:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            xq, sx, _ = act_quant.quantize(x, "fp8")
            t_q, t_h = (time(lambda f=f: act_quant.quantize(x, "fp8", 1.0, f)) for f in (None, form))  # noqa: B023
            w = weight_operand(qw, "fp8")
            t_g = time(lambda: matmul(xq, sx, None, w, s, z, "fp8", K))  # noqa: B023
            t_b = time(lambda: torch.nn.functional.linear(x, W))  # noqa: B023
            print(f"| {name} | {M} | {t_q:.1f} | {t_h:.1f} | {t_h - t_q:.1f} | {t_g:.1f} | "
                  f"{(t_h - t_q) / t_g:.0%} | {t_b:.1f} | {(t_h - t_q) / t_b:.0%} |", flush=True)


def parts(M=16, fmts=("fp8", "w4a8", "w4f8"), calls=50):
    """Where a whole layer's time goes at M tokens: bf16 F.linear and each format's layer timed in a CUDA graph,
    then the layer's kernels (act_quant, the GEMM, any fill or copy torch adds) timed one by one by
    torch.profiler over `calls` eager calls; the graph's time minus their sum is what the kernels' launches and
    dependencies add between them (the GPU idles while one kernel ends and the next begins)."""
    from triton.testing import do_bench_cudagraph
    acts = [torch.profiler.ProfilerActivity.CUDA]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; M = {M}; µs per "
          "call: the layer in a CUDA graph, then each of its kernels (torch.profiler, mean of "
          f"{calls} calls)\n\n| layer (N x K) | format | bf16 | layer | kernels: name µs | sum | gaps | vs bf16 |\n"
          + "|---" * 8 + "|")
    for name, (N, K) in SHAPES.items():
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        for fmt in fmts:
            W, (qw, s, z) = _layer(N, K, fmt)
            t_ref = do_bench_cudagraph(lambda: torch.nn.functional.linear(x, W)) * 1e3  # noqa: B023
            t_layer = do_bench_cudagraph(lambda: linear(x, qw, s, z, None, fmt)) * 1e3  # noqa: B023
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(calls):
                    linear(x, qw, s, z, None, fmt)
                torch.cuda.synchronize()
            us = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
                    us[e.name] = us.get(e.name, 0.0) + e.time_range.elapsed_us() / calls
            cells = ", ".join(f"{_label(n)} {t:.1f}" for n, t in us.items())
            print(f"| {name} ({N} x {K}) | {fmt} | {t_ref:.1f} | {t_layer:.1f} | {cells} | {sum(us.values()):.1f} | "
                  f"{t_layer - sum(us.values()):.1f} | {t_ref / t_layer:.2f}x |", flush=True)


def _label(kernel):
    """A profiled kernel's role in the layer, from its name."""
    for part, role in (("_wa_gemm", "GEMM"), ("_quant_rows", "act_quant"), ("_rotate_quant", "act_quant"),
                       ("Fill", "fill"), ("copy", "copy")):
        if part in kernel:
            return role
    return kernel[:40]


def once(N, K, M, tile=(64, 128)):
    """One GEMM of each of fp8, int8, w4a8 and w4f8 at (M x K) @ (K x N) with the BLOCK_M x BLOCK_N tile given (no
    autotuning, whose trial runs a profiler would record too), for a hardware-counter profile to compare them."""
    for fmt in ("fp8", "int8", "w4a8", "w4f8"):
        _, (qw, s, z) = _layer(N, K, fmt)
        xq, sx, sums = act_quant.quantize(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), ACT[fmt])
        config = next(c for c in configs(fmt, False) if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == tile)
        matmul(xq, sx, sums, weight_operand(qw, fmt), s, z, fmt, K, config=config)
    torch.cuda.synchronize()


def _hopper(fmt, config, full=True):
    """Without a GPU: the kernel of one format and config compiled for Hopper (shims.hopper) as the JIT would at a
    layer's shapes (K a multiple of 256 when full; pointers, N, K and strides multiples of 16)."""
    ints = ("M", "N", "K", "stride_am", "stride_bn", "stride_cm", "a_words", "b_words", "M_BUCKET")
    x = {"fp8": "*fp8e4nv", "int8": "*i8", "int4": "*i32"}[ACT[fmt]]
    w = {"fp8": "*fp8e4nv", "int8": "*u8", "int4": "*i32"}.get(fmt, "*i8")  # (as weight_operand views it)
    ptrs = dict(a_ptr=x, b_ptr=w, sa_ptr="*fp32", sum_ptr="*fp32" if ACT[fmt] == "fp8" else "*i32", sb_ptr="*bf16",
                zb_ptr="*bf16", bias_ptr="*bf16", c_ptr="*bf16", ws_ptr="*fp32", count_ptr="*i32")
    consts = dict(FMT=FMT[fmt], OFFSET=128 if fmt == "int8" else 0, HAS_ZERO=ACT[fmt] != "fp8", HAS_BIAS=False,
                  FULL=full, EMULATE=False, **config.kwargs)
    types = {**ptrs, **dict.fromkeys(ints, "i32")}
    return hopper(_wa_gemm, types, consts, (*ptrs, *ints[1:-1]), config.num_warps, config.num_stages)


def pipeline(fmts=tuple(FMT), tile=(64, 128)):
    """Without a GPU: compile each format's many-token kernel (the tile given, K a multiple of 256) for Hopper
    (sm_90) and print how Triton's pipeliner left its tensor-core products: the `pendings` of each wait, in program
    order (1: a product left in flight while the next operands are made; 0: each product waited for; the last wait
    of fp8 and w4f8 is the one after the loop)."""
    import re
    for fmt in fmts:
        c = next(c for c in configs(fmt, False) if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == tile)
        waits = re.findall(r"warp_group_dot_wait .*pendings = (\d+)", _hopper(fmt, c).asm["ttgir"])
        print(f"{fmt}: tile {tile[0]} x {tile[1]}, sums in {'fp32' if ACT[fmt] == 'fp8' else 'int32'}: the waits "
              f"leave {', '.join(waits)} products in flight")


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="check and time the W8A8 / W4A8 / W4A4 GEMMs (see the module's header)")
    p.add_argument("--once", help="N,K,M: run one GEMM per format at a 64 x 128 tile instead, for a profiler")
    p.add_argument("--pipeline", action="store_true", help="instead, no GPU needed: compile each format for Hopper "
                   "and print whether Triton leaves its tensor-core products in flight")
    p.add_argument("--formats", default=",".join(FMT), help="the table's formats, of " + ", ".join(FMT))
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="the table's token counts M")
    p.add_argument("--parts", type=int, metavar="M", help="instead: the fp8, w4a8, w4f8 layers at M tokens split "
                   "into their kernels' times (torch.profiler) and the gaps between them, against bf16")
    opts = p.parse_args()
    fmts = opts.formats.split(",")
    if set(fmts) - set(FMT):
        p.error(f"--formats: unknown {sorted(set(fmts) - set(FMT))}; the formats are {', '.join(FMT)}")
    if opts.once:
        once(*map(int, opts.once.split(",")))
    elif opts.pipeline:
        pipeline(fmts)
    elif opts.parts:
        parts(opts.parts)
    else:
        tokens = tuple(int(m) for m in opts.tokens.split(","))
        bench(fmts, tokens, hadamard=tokens == TOKENS)
