"""
RTN: round every weight to the nearest point of its group's grid (quantizers/core.py). The baseline every other
method is measured against; it needs no calibration data (the block walk only reports each block's output error).

    python calibrate.py --method rtn --wbits 4 --group_size 128
    python calibrate.py --method quarot --bits 8 --fp8              # W8A8 in FP8 e4m3 (core.fp8_grid), rotated
"""
from quantizers.core import LINEARS, QLinear, fit_grid, fp8_grid, quantize as to_grid, swap, walk_blocks


def rtn(W, bits, group_size=128, sym=False, clip=1.0):
    """W (N, K) -> codes (N, K), scales and zeros (N, G)."""
    s, z = fit_grid(W, bits, group_size, sym, clip)
    return to_grid(W, s, z, bits), s, z


def qlinear(linear, q, s, z, args):
    """The QLinear that replaces `linear`, with the weight and activation settings of args."""
    return QLinear.from_codes(q, s, z, linear.bias, getattr(linear, "rotation", None), bits=args.wbits,
                              group_size=args.group_size, sym=args.sym, act_bits=args.abits, act_sym=args.a_sym,
                              act_clip=args.a_clip, fp8=getattr(args, "fp8", False), dtype=linear.weight.dtype)


def round_block(block, args, names=LINEARS):
    """Round the named float Linears of a block to QLinear by RTN (to FP8 e4m3 with args.fp8)."""
    for name in names:
        lin = block.get_submodule(name)
        grid = fp8_grid(lin.weight) if getattr(args, "fp8", False) else rtn(lin.weight, args.wbits, args.group_size,
                                                                              args.sym, args.w_clip)
        swap(block, name, qlinear(lin, *grid, args))


def quantize(model, calib, args):
    for _, block, _ in walk_blocks(model, calib, args.device):
        round_block(block, args)
