"""
RTN: round every weight to the nearest point of its group's grid (quantizers/format.py). The baseline every other
method is measured against; it needs no calibration data (the block walk only reports each block's output error).
It is also the rounder calibrate.py appends after a chain that ends in a transform (--method quarot = quarot,rtn).

    python calibrate.py --method rtn --wbits 4 --group_size 128
    python calibrate.py --method quarot --bits 8 --fp8              # W8A8 in FP8 e4m3 (format.fp8_grid), rotated
    python calibrate.py --method quarot --wbits 4 --abits 8 --fp8 --sym   # W4A8-FP8: codes -7..7, e4m3 activations
"""
from quantizers.core import LINEARS, lowest_code, qlinear, swap
from quantizers.format import fit_grid, fp8_grid, quantize as to_grid
from quantizers.walk import walk_blocks

KIND = "rounder"  # replaces each float Linear by a QLinear
ACTIVATIONS = False  # --bits N means W{N}A16 (activations are quantized only with --abits)


def rtn(W, bits, group_size=128, sym=False, clip=1.0, lo=0):
    """W (N, K) -> codes (N, K) from lo up, scales and zeros (N, G)."""
    s, z = fit_grid(W, bits, group_size, sym, clip)
    return to_grid(W, s, z, bits, lo), s, z


def round_block(block, inputs, args, names=LINEARS):
    """Round the named float Linears of a block to QLinear by RTN (to FP8 e4m3 with --fp8 --wbits 8). RTN reads no
    calibration data: `inputs` is there so that a transform can call it on each block it has just transformed."""
    for name in names:
        lin = block.get_submodule(name)
        fp8 = getattr(args, "fp8", False) and args.wbits == 8
        grid = fp8_grid(lin.weight) if fp8 else rtn(lin.weight, args.wbits, args.group_size, args.sym, args.w_clip,
                                                    lowest_code(args))
        swap(block, name, qlinear(lin, *grid, args))


def quantize(model, calib, args):
    for _, block, inputs in walk_blocks(model, calib, args.device):
        round_block(block, inputs, args)
