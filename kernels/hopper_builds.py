"""
What ptxas builds of the inference kernels for Hopper (sm_90a), read without a GPU: every config each kernel ships,
compiled as its launches at LLaDA-8B's and Dream-7B's shapes would be (bf16 activations), with its shared memory a
block (Hopper allows 227 KB; the autotuner drops a config past that without a word), registers a thread, the stack
its registers spill to, and a hash of its machine code. Two trees whose hashes agree run the same instructions: a
change to a kernel's source that leaves every hash equal needs no new timing.

Each Triton wheel ships its own ptxas, and a GPU machine runs the one of its wheel, so another version's machine code
needs only that wheel (the GPU machines here run triton 3.6.0):
    pip install --no-deps --target T36 triton==3.6.0
    PYTHONPATH=T36:. python -m kernels.hopper_builds

    python -m kernels.hopper_builds                            # every kernel: a markdown table, then a summary
    python -m kernels.hopper_builds --kernels wa_gemm,act_quant   # some of them
"""
import argparse

import triton

from kernels import act_quant, wa_gemm, wq_factored, wq_gemm
from kernels.shims import hopper, machine_code

HOPPER_SHARED = 232448  # bytes of shared memory one block may have on sm_90
WIDTHS = (4096, 3584, 12288, 18944)  # the fused rotation's widths, as `python -m kernels.act_quant` times them


def _wa_gemm():
    for fmt in wa_gemm.FMT:
        for few in (False, True):
            for c in wa_gemm.configs(fmt, few):
                for full in (True, False) if fmt in wa_gemm.NIBBLES else (True,):  # (only they read FULL)
                    k = "" if fmt not in wa_gemm.NIBBLES else ", K whole" if full else ", K ragged"
                    yield f"{fmt}, M {'<= 64' if few else '> 64'}{k}", c, wa_gemm._hopper(fmt, c, full)


def _wq_gemm():
    fn = wq_gemm._wq_gemm.fn  # (under its heuristics)
    ptrs = dict(x_ptr="*bf16", qw_ptr="*i32", s_ptr="*bf16", z_ptr="*bf16")
    ints = ("M", "N", "K", "G", "GROUP", "stride_xm", "stride_qn", "stride_sn", "stride_ym", "n_words", "M_BUCKET")
    aligned = (*ptrs, "y_ptr", "N", "K", "GROUP", "stride_xm", "stride_qn", "stride_ym", "n_words")
    for few in (True, False):
        for c in wq_gemm.CONFIGS[few]:
            for bits in (4, 8, 3, 2):
                types = {**ptrs, "y_ptr": "*fp32" if few else "*bf16", **dict.fromkeys(ints, "i32")}
                consts = dict(BITS=bits, ATOMIC=few, DOT_F32=False, ALIGNED=True, **c.kwargs)
                yield f"W{bits} g128, M {'<= 64' if few else '> 64'}", c, hopper(fn, types, consts, aligned,
                                                                               c.num_warps, c.num_stages)


def _wq_factored():
    ptrs = dict(x_ptr="*bf16", qw_ptr="*i32", s_ptr="*bf16", z_ptr="*bf16", y_ptr="*fp32")
    ints = ("M", "N", "K", "GROUP", "stride_xm", "stride_qn", "stride_sn", "stride_ym", "M_BUCKET")
    for chunk, configs in wq_factored.CONFIGS.items():
        for c in configs:
            consts = dict(CHUNK=chunk, MAGIC=0x4300, OFFSET=128.0, DOT_F32=False, **c.kwargs)
            types = {**ptrs, **dict.fromkeys(ints, "i32")}
            yield f"W4, chunks of {chunk}", c, hopper(wq_factored._factored, types, consts, (*ptrs, *ints[1:-1]),
                                                      c.num_warps, c.num_stages)


def _act_quant():
    codes = {"fp8": "*fp8e4nv", "int8": "*i8", "int4": "*i32"}
    for fmt, q in codes.items():  # the plain quantizer: one config, the same at every width from 2048 up
        types = dict(x_ptr="*bf16", q_ptr=q, s_ptr="*fp32", sum_ptr="*i32", K="i32", stride_xm="i32", stride_qm="i32",
                     clip="fp32")
        consts = dict(QMAX=act_quant.QMAX[fmt], FMT=act_quant.FMT[fmt], BLOCK=act_quant.CHUNK, EMULATE=False)
        aligned = ("x_ptr", "q_ptr", "s_ptr", "sum_ptr", "K", "stride_xm", "stride_qm")
        yield f"_quant_rows {fmt}", None, hopper(act_quant._quant_rows, types, consts, aligned, act_quant.WARPS, 3)
    for K in WIDTHS:  # the fused rotation: QuaRot's Hadamard of each width
        form = act_quant.hadamard_form(K)
        for fmt, q in codes.items():
            for c in act_quant.CONFIGS:
                types = dict(x_ptr="*bf16", h_ptr="*bf16", b_ptr="*bf16", q_ptr=q, s_ptr="*fp32", sum_ptr="*i32",
                             M="i32", K="i32", stride_xm="i32", stride_qm="i32", norm="fp32", clip="fp32",
                             M_BUCKET="i32")
                consts = dict(QMAX=act_quant.QMAX[fmt], FMT=act_quant.FMT[fmt], C=form.C, R0=form.R0, R1P=form.R1P,
                              X_F32=False, EMULATE=False, **c.kwargs)
                aligned = ("x_ptr", "h_ptr", "b_ptr", "q_ptr", "s_ptr", "sum_ptr", "K", "stride_xm", "stride_qm")
                yield (f"_rotate_quant {fmt}, K {K}", c, hopper(act_quant._rotate_quant, types, consts, aligned,
                                                                c.num_warps, c.num_stages))


KERNELS = {"wa_gemm": _wa_gemm, "wq_gemm": _wq_gemm, "wq_factored": _wq_factored, "act_quant": _act_quant}


def describe(config):
    """A config's constexprs, warps and stages in a few characters."""
    if config is None:
        return f"{act_quant.WARPS} warps"
    kw = ", ".join(f"{k} {v}" for k, v in config.kwargs.items() if k != "GROUP_M")
    return f"{kw}; {config.num_warps} warps, {config.num_stages} stage{'s' * (config.num_stages != 1)}"


def main():
    p = argparse.ArgumentParser(description="compile the inference kernels' configs for Hopper without a GPU and "
                                "print what ptxas made of each (see the module's header)")
    p.add_argument("--kernels", default=",".join(KERNELS), help="which, of " + ", ".join(KERNELS))
    opts = p.parse_args()
    names = opts.kernels.split(",")
    if set(names) - set(KERNELS):
        p.error(f"--kernels: unknown {sorted(set(names) - set(KERNELS))}; the kernels are {', '.join(KERNELS)}")
    print(f"triton {triton.__version__}, sm_90a\n\n| kernel | variant | config | shared KB | registers | stack bytes | "
          "SASS hash |\n|---|---|---|---|---|---|---|")
    rows = []  # (row, shared bytes, stack bytes)
    for name in names:
        for variant, config, kernel in KERNELS[name]():
            shared, regs, stack, digest = machine_code(kernel)
            row = f"{name} | {variant} | {describe(config)}"
            print(f"| {row} | {shared / 1024:.0f} | {regs} | {stack} | {digest} |", flush=True)
            rows.append((row, shared, stack))
    big = [row for row, shared, _ in rows if shared > HOPPER_SHARED]
    spills = sum(stack > 0 for _, _, stack in rows)
    print(f"\n{len(rows)} builds; {len(big)} need more than Hopper's 227 KB of shared memory (they never run: the "
          f"autotuner drops them), {spills} spill registers to the stack")
    for row in big:
        print(f"  too large: {row}")


if __name__ == "__main__":
    main()
