"""
The stored formats, at the bottom of the project: the uniform integer grid, the FP8 grid and bit packing. Kernels and
quantizers both import this file; it imports nothing of the project.

Integer grid (the convention of GPTQ and AWQ). A group of `group_size` consecutive input channels of one output row
is stored as b-bit codes q = clamp(round(W / s) + z, 0, 2^b - 1) and read back as (q - z) * s:
  asymmetric  s = (hi - lo) / (2^b - 1), z = round(-lo / s), where [lo, hi] is the group's range widened to
              include 0 and shrunk by the clip ratio;
  symmetric   s = max|W| * clip / (2^(b-1) - 1), z = 2^(b-1), so 0 is exact and the grid is centred on the
              codes 1 .. 2^b - 1 (code 0 only when clipped, or reached by GPTQ's updates). GPTQ's reference code
              takes s = 2 max|W| / (2^b - 1) with the same z instead: a step 15/14 finer at 4 bits, whose top value
              (2^(b-1) - 1) s falls short of max|W|, so it clips the largest positive weight; ours keeps both ends.
group_size -1 means one group per row (per channel). A width that group_size does not divide (tiny-dream's MLP width
592 at 128) gets groups of its largest divisor below group_size (74), so no layer needs a larger budget than
asked. Activations use the same grid per token (symmetric by default), V per channel (quantize_channels).

FP8 grid (W8A8-FP8). Weights are e4m3 bytes of W / s with one s = max|W| / 448 per output channel; activations
e4m3 per token. Not an integer grid: its codes are the bytes of torch.float8_e4m3fn.

Packing. Codes are laid out along the input dimension in chunks of 32 (the last chunk zero-padded). A chunk of 32
b-bit codes is read as one 32*b-bit little-endian bit string and stored as b int32 words: code j of a chunk occupies
bits b*j .. b*j+b-1 of that string. So 4-bit codes sit 8 to a word in order, 8-bit codes 4 and 2-bit codes 16, and
3-bit codes straddle word boundaries (codes 10 and 21 of each chunk). Sign planes (Quant-dLLM) are 1-bit codes.
W4A8's pair order (order="pairs") packs 4-bit codes the same way after reordering each chunk of 256 channels (the
last chunk: the channels left, rounded up to 32) so that byte j of a chunk of L holds its channel j in the low nibble
and its channel L / 2 + j in the high one: the W4A8 GEMM (kernels/wa_gemm.py) then takes the low nibbles and the high
ones each against a run of neighbouring activations in their own order.
W4A8-FP8's sign order (order="signs") keeps the pairs but stores each symmetric code c (z = 8, c in 1..15) as the
sign and magnitude of c - 8, so that the FP8 GEMM turns a byte into two e4m3 operands with one or two 32-bit
operations (kernels/wa_gemm.py). Byte j holds the low channel's magnitude in bits 0-2 and its sign in bit 7, the
high channel's magnitude in bits 4-6, and in bit 3 the high channel's sign of the byte before it in its 32-bit word
(byte 0 holds byte 3's): rotating the word right by 4 bits then lines every high channel up as the low ones are.
The grid is -7..7: code 0 (-8, which only clipping or GPTQ's updates reach) has no place, and pack refuses it.
"""
import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------------- integer grid
def group_width(K, group_size):
    """group_size, or the largest divisor of K below it (-1: the whole row)."""
    return K if group_size <= 0 else max(d for d in range(1, min(group_size, K) + 1) if K % d == 0)


def n_groups(K, group_size):
    return K // group_width(K, group_size)


def fit_grid(W, bits, group_size=128, sym=False, clip=1.0, dtype=None):
    """Scales s and zero points z, each (N, G) float32, of the groups of W (N, K). dtype: what the scales are stored
    in (default W's); a bf16 / fp16 scale is rounded up to it here (stored_scale), so codes are chosen against it."""
    Wg = W.float().reshape(W.shape[0], n_groups(W.shape[1], group_size), -1)
    store = dtype or W.dtype
    if sym:
        s = stored_scale(Wg.abs().amax(-1) * clip / (2 ** (bits - 1) - 1), store)
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        lo, hi = Wg.amin(-1).clamp(max=0) * clip, Wg.amax(-1).clamp(min=0) * clip
        s = stored_scale((hi - lo) / (2 ** bits - 1), store)
        z = torch.round(-lo / torch.where(s > 0, s, 1.0))
    return torch.where(s > 0, s, 1.0), z  # an all-zero group gets scale 1 (its codes are all z)


def stored_scale(s, dtype):
    """s (positive, float32) as the checkpoint will hold it: rounded up to the next value of a bf16 / fp16 dtype, so
    the stored grid still spans the range (rounded down, it would clip the range's ends by up to half a step at 8
    bits); float32 / float64: unchanged."""
    if dtype not in (torch.bfloat16, torch.float16):
        return s
    t = s.to(dtype)
    t = torch.where(t.float() < s, (t.view(torch.int16) + 1).view(dtype), t)  # the next value up (s > 0)
    return t.float()


def quantize(W, s, z, bits, lo=0):
    """W (N, K), s and z (N, G) -> codes (N, K) uint8 in lo .. 2^bits - 1 (lo 1: the sign order's grid, -7..7 at
    4 bits)."""
    Wg = W.float().reshape(s.shape[0], s.shape[1], -1)
    q = torch.clamp(torch.round(Wg / s[..., None]) + z[..., None], lo, 2 ** bits - 1)
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


def quantize_channels(y, bits, clip=1.0):
    """Per-channel symmetric fake quantization of y (B, T, C) over the T tokens of each sequence: the grid an
    integer softmax(P) V needs for V, whose scales must be constant along the tokens that the matmul sums over."""
    B, T, C = y.shape
    return fake_quant(y.transpose(1, 2).reshape(B * C, T), bits, -1, True, clip).view(B, C, T).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------- fp8 grid
def fp8_grid(W):
    """FP8 (e4m3) weights, per output channel: codes (N, K) uint8 holding the e4m3 bytes of W / s, s = max|W| / 448
    (N, 1) float32, zeros (N, 1) unused."""
    s = W.float().abs().amax(1, keepdim=True) / 448
    s = torch.where(s > 0, s, 1.0)
    return (W.float() / s).to(torch.float8_e4m3fn).view(torch.uint8), s, torch.zeros_like(s)


def fp8_tokens(x, clip=1.0):
    """Per-token dynamic fake quantization of x to e4m3: one scale max|x| * clip / 448 per token."""
    s = x.float().abs().amax(-1, keepdim=True) * clip / 448
    s = torch.where(s > 0, s, 1.0)
    return ((x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s).to(x.dtype)


# ----------------------------------------------------------------------------------------------------- packing
def _slots(bits):
    """For each code j of a 32-code chunk: its word, its bit offset in that word, and whether it spills over."""
    return [(bits * j // 32, bits * j % 32, bits * j % 32 + bits > 32) for j in range(32)]


def pair_order(K):
    """W4A8's pair order: position p of the channels padded to a multiple of 32 holds channel pair_order(K)[p]. In
    each chunk of L = 256 (the last: what is left), positions 2j and 2j + 1 (byte j once packed 8 to a word) hold
    the chunk's channels j and L / 2 + j."""
    padded = -(-K // 32) * 32
    return torch.cat([torch.arange(c, min(c + 256, padded)).view(2, -1).t().reshape(-1) for c in range(0, padded, 256)])


def pack(q, bits, order="plain"):
    """codes (N, K) in [0, 2^bits) -> int32 words (N, ceil(K / 32) * bits), in plain order or (4 bits) pairs or
    signs."""
    N, K = q.shape
    if order == "signs":
        return _pack_signs(q)
    q = F.pad(q.long(), (0, -K % 32))
    if order == "pairs":
        q = q[:, pair_order(K).to(q.device)]
    q = q.view(N, -1, 32)
    words = torch.zeros(N, q.shape[1], bits, dtype=torch.long, device=q.device)
    for j, (w, off, spill) in enumerate(_slots(bits)):
        words[..., w] |= (q[..., j] << off) & 0xFFFFFFFF
        if spill:
            words[..., w + 1] |= q[..., j] >> (32 - off)
    return (words - (words >> 31 << 32)).to(torch.int32).view(N, -1)  # reinterpret the unsigned bits as int32


def unpack(words, bits, K, order="plain"):
    """int32 words (N, ceil(K / 32) * bits) -> codes (N, K) uint8: pack's inverse."""
    if order == "signs":
        return _unpack_signs(words, K)
    N = words.shape[0]
    w = words.view(N, -1, bits).long() & 0xFFFFFFFF
    q = torch.empty(N, w.shape[1], 32, dtype=torch.long, device=words.device)
    for j, (i, off, spill) in enumerate(_slots(bits)):
        q[..., j] = w[..., i] >> off
        if spill:
            q[..., j] |= w[..., i + 1] << (32 - off)
    q = (q & (2 ** bits - 1)).view(N, -1)
    if order == "pairs":
        q = q[:, pair_order(K).argsort().to(q.device)]
    return q[:, :K].to(torch.uint8)


def _pack_signs(q):
    """Symmetric 4-bit codes (N, K) in 1..15 -> int32 words (N, ceil(K / 32) * 4) in the sign order (above)."""
    N, K = q.shape
    if (q == 0).any() or (q > 15).any():
        raise ValueError("the sign order holds symmetric 4-bit codes 1..15 (-7..7 about 8); these codes reach "
                         f"{int(q.min())}..{int(q.max())}")
    v = F.pad(q.long() - 8, (0, -K % 32))[:, pair_order(K).to(q.device)].view(N, -1, 2)  # padding: code 8, v = 0
    lo, hi = v[..., 0], v[..., 1]  # byte j's two channels
    sign_hi = (hi < 0).long().view(N, -1, 4).roll(1, -1).view(N, -1)  # byte j + 1 of the word holds j's sign
    byte = lo.abs() | (lo < 0).long() << 7 | hi.abs() << 4 | sign_hi << 3
    return byte.to(torch.uint8).view(N, -1, 4).view(torch.int32).view(N, -1)


def _unpack_signs(words, K):
    """_pack_signs' inverse: int32 words -> codes (N, K) uint8."""
    N = words.shape[0]
    byte = words.contiguous().view(torch.uint8).view(N, -1).long()
    sign_hi = (byte >> 3 & 1).view(N, -1, 4).roll(-1, -1).view(N, -1)
    lo = torch.where(byte >> 7 & 1 == 1, -(byte & 7), byte & 7)
    hi = torch.where(sign_hi == 1, -(byte >> 4 & 7), byte >> 4 & 7)
    q = torch.stack([lo, hi], -1).view(N, -1)[:, pair_order(K).argsort().to(words.device)] + 8
    return q[:, :K].to(torch.uint8)
