"""Ahead-of-time compilation of the Triton kernels for a CUDA architecture, without a GPU.

Triton's wheel ships ``ptxas``, so the kernels can be compiled to SASS for, e.g., ``sm_90`` (H100) on a
machine with no GPU. This checks what a CPU-only test cannot: that every kernel variant compiles for the
GPU, that the int8 dot lowers to tensor-core MMAs (``wgmma`` on Hopper, ``mma.sync`` before), that the
K loop is software-pipelined (asynchronous global->shared copies), and the register / spill / shared-memory
budget (``ptxas -v``).

Run ``python -m gcompiler.kernels.aot [--arch 90]``. The kernels must have been created in compiled mode:
this module refuses to run when ``TRITON_INTERPRET=1`` was set when :mod:`gcompiler.kernels._triton` was
imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Optional

from ..errors import KernelError

#: pointer argument -> element type, per kernel (kernel args not listed are i32 unless in _FLOAT_ARGS)
_PTRS = {
    "_conv2d_kernel": {"x_ptr": "X", "w_ptr": "*i8", "wsum_ptr": "*i32", "scale_ptr": "*fp32",
                       "bias_ptr": "*fp32", "res_ptr": "R", "out_ptr": "O", "outf_ptr": "*fp32", "acc_ptr": "*i32",
                       "sums_ptr": "*fp32", "sumsq_ptr": "*fp32"},
    "_conv_transpose2d_kernel": {"x_ptr": "X", "w_ptr": "*i8", "wsum_ptr": "*i32", "taps_ptr": "*i32",
                                 "ntaps_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32", "res_ptr": "R",
                                 "out_ptr": "O", "outf_ptr": "*fp32", "acc_ptr": "*i32", "sums_ptr": "*fp32",
                                 "sumsq_ptr": "*fp32"},
    "_dwconv2d_kernel": {"x_ptr": "X", "w_ptr": "*i8", "scale_ptr": "*fp32", "bias_ptr": "*fp32", "res_ptr": "R",
                         "out_ptr": "O", "outf_ptr": "*fp32", "acc_ptr": "*i32", "sums_ptr": "*fp32",
                         "sumsq_ptr": "*fp32"},
    "_instance_norm_kernel": {"y_ptr": "*fp32", "sums_ptr": "*fp32", "sumsq_ptr": "*fp32", "gamma_ptr": "*fp32",
                              "beta_ptr": "*fp32", "res_ptr": "R", "out_ptr": "O", "outf_ptr": "*fp32"},
}
_FLOAT_ARGS = {"res_scale", "out_scale", "slope", "eps"}
#: int arguments that are multiples of 16 in the layers of interest (channels, 64x64 trunk maps)
_DIVISIBLE = ("C_in", "C_out", "CIN_G", "COUT_G", "K_TOTAL", "C", "H", "W", "OH", "OW", "HW", "OHP", "OWP")

_EPILOGUE_DEFAULTS = dict(ACT=1, HAS_RES=False, RES_IS_INT=False, RES_BEFORE_ACT=False, QUANT=True, QMIN=0,
                          QMAX=255, STORE_FLOAT=False)


@dataclasses.dataclass
class CompileReport:
    name: str
    kernel: str
    meta: dict
    num_warps: int
    num_stages: int
    mma: str  # "wgmma", "mma.sync" or "none"
    async_copies: int  # async global->shared copy ops in the TTGIR (0: the K loop is not pipelined)
    shared_bytes: int
    registers: Optional[int]
    spill_bytes: Optional[int]

    def row(self) -> str:
        regs = "?" if self.registers is None else str(self.registers)
        spill = "?" if self.spill_bytes is None else str(self.spill_bytes)
        tiles = "x".join(str(self.meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in self.meta)
        return (f"{self.name:<34} {tiles:<12} w{self.num_warps} s{self.num_stages}  {self.mma:<8} "
                f"async={self.async_copies:<3} smem={self.shared_bytes:<6} regs={regs:<4} spill={spill}")


def _kernels():
    try:
        from . import _triton
    except ImportError as exc:
        raise KernelError(f"gcompiler.kernels.aot compiles the Triton kernels ahead of time and needs the triton "
                          f"package ({exc}); install it with `pip install triton`") from None
    if _triton.INTERPRET:
        raise KernelError("gcompiler.kernels.aot: the kernels were created for the Triton interpreter "
                          "(TRITON_INTERPRET=1 at import); run this in a process without it")
    return _triton


def compile_kernel(name: str, kernel: str, constexprs: dict, *, x_dtype: str = "*u8", out_dtype: str = "*u8",
                   res_dtype: str = "*fp32", num_warps: int = 4, num_stages: int = 3, arch: int = 90,
                   divisible: tuple[str, ...] = _DIVISIBLE, ptxas_info: bool = True) -> CompileReport:
    """Compile one variant of ``kernel`` (a name in ``gcompiler.kernels._triton``) for ``sm_<arch>``.

    Like a real launch, pointers are taken as 16-byte aligned and the int arguments named in ``divisible``
    as multiples of 16 (Triton specializes on both; without it the int8 loads cannot be vectorized and the
    K loop is not pipelined).
    """
    mod = _kernels()  # first: a clear KernelError when triton is missing
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(mod, kernel)
    ptrs = _PTRS[kernel]
    subst = {"X": x_dtype, "O": out_dtype, "R": res_dtype}
    sig: dict[str, str] = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in ptrs:
            sig[arg] = subst.get(ptrs[arg], ptrs[arg])
        elif arg in _FLOAT_ARGS:
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    missing = [a for a, t in sig.items() if t == "i32" and a.isupper() and a not in constexprs
               and a not in ("N_BATCH", "H", "W", "C_in", "OH", "OW", "C_out", "CIN_G", "COUT_G", "K_TOTAL",
                             "OHP", "OWP", "C", "HW")]
    if missing:
        raise KernelError(f"compile_kernel: constexprs missing for {missing}")
    attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(fn.arg_names)
             if sig[arg].startswith("*") or (sig[arg] == "i32" and arg in divisible)}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    opts = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": False}
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    ptx = ck.asm["ptx"]
    ttgir = ck.asm["ttgir"]
    mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma.sync" if "mma.sync" in ptx else "none")
    asyncs = len(re.findall(r"async_copy_global_to_local|async_tma_copy_global_to_local", ttgir))
    regs = spill = None
    if ptxas_info:
        regs, spill = _ptxas_usage(ptx, arch)
    return CompileReport(name, kernel, {k: v for k, v in constexprs.items() if k.startswith("BLOCK")}, num_warps,
                         num_stages, mma, asyncs, int(ck.metadata.shared), regs, spill)


def _ptxas_usage(ptx: str, arch: int) -> tuple[Optional[int], Optional[int]]:
    """Registers and spill-store bytes per thread from ``ptxas -v`` (the ptxas Triton itself uses)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(arch).path
    except Exception:
        return None, None
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", path, "-o", os.path.join(tmp, "k.o")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs.group(1)) if regs else None, int(spill.group(1)) if spill else None)


def _conv_flags(**over: Any) -> dict:
    flags = dict(KH=3, KW=3, SH=1, SW=1, PH=1, PW=1, DH=1, DW=1, PAD_MODE=1, X_UNSIGNED=True, HAS_ZP=True,
                 PAD_ZP=False, FLAT_K=False, HAS_BIAS=True, STATS=False, STORE_ACC=False, **_EPILOGUE_DEFAULTS)
    flags.update(over)
    return flags


def standard_variants(quick: bool = False) -> list[dict]:
    """Kernel variants of a CycleGAN-style int8 generator: (name, kernel, constexprs, dtypes, warps, stages)."""
    big = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)
    variants = [
        dict(name="conv3x3 reflect uint8->uint8 +stats", kernel="_conv2d_kernel",
             constexprs={**_conv_flags(STATS=True, ACT=0, QUANT=False, QMAX=0), **big}, out_dtype="*fp32",
             num_warps=8, num_stages=4),
        dict(name="conv3x3 s2 zeros int8 relu->uint8", kernel="_conv2d_kernel",
             constexprs={**_conv_flags(SH=2, SW=2, PAD_MODE=0, X_UNSIGNED=False, HAS_ZP=False), **big},
             x_dtype="*i8", num_warps=8, num_stages=4),
        dict(name="conv1x1 flat uint8 +res(int8)", kernel="_conv2d_kernel",
             constexprs={**_conv_flags(KH=1, KW=1, PH=0, PW=0, PAD_MODE=0, FLAT_K=True, HAS_RES=True,
                                       RES_IS_INT=True, ACT=0), "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64},
             res_dtype="*i8", num_warps=4, num_stages=4),
        dict(name="conv zeros pad zp!=0 (select fill)", kernel="_conv2d_kernel",
             constexprs={**_conv_flags(PAD_MODE=0, PAD_ZP=True), **big}, num_warps=4, num_stages=4),
        dict(name="convT 3x3 s2 uint8->fp32 +stats", kernel="_conv_transpose2d_kernel",
             constexprs=dict(KH=3, KW=3, SH=2, SW=2, X_UNSIGNED=True, HAS_ZP=True, PAD_ZP=False, HAS_BIAS=True,
                             STATS=True, STORE_ACC=False, **{**_EPILOGUE_DEFAULTS, "ACT": 0, "QUANT": False,
                                                             "QMAX": 0}, **big),
             out_dtype="*fp32", num_warps=8, num_stages=4),
        dict(name="depthwise 3x3 reflect uint8", kernel="_dwconv2d_kernel",
             constexprs=dict(KH=3, KW=3, SH=1, SW=1, PH=1, PW=1, DH=1, DW=1, PAD_MODE=1, HAS_BIAS=True,
                             STATS=False, STORE_ACC=False, BLOCK_M=64, BLOCK_N=64, **_EPILOGUE_DEFAULTS),
             num_warps=8, num_stages=2),
        dict(name="instancenorm relu ->uint8", kernel="_instance_norm_kernel",
             constexprs=dict(AFFINE=False, BLOCK_M=64, BLOCK_N=64, **_EPILOGUE_DEFAULTS),
             num_warps=4, num_stages=2),
    ]
    return variants[:2] if quick else variants


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100)")
    parser.add_argument("--quick", action="store_true", help="only the first two variants")
    parser.add_argument("--sweep", action="store_true",
                        help="compile every autotuning config of the MMA kernels (slow) to spot register spills")
    args = parser.parse_args(argv)
    print(f"compiling for sm_{args.arch} (no GPU needed)")
    failures = 0
    for v in standard_variants(args.quick):
        v = dict(v)
        name, kernel, constexprs = v.pop("name"), v.pop("kernel"), v.pop("constexprs")
        runs = [(constexprs, v)]
        if args.sweep and "BLOCK_K" in constexprs:
            runs = []
            for cfg in _kernels()._mma_configs():
                runs.append(({**constexprs, **cfg.kwargs},
                             {**v, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}))
        for consts, opts in runs:
            try:
                print(compile_kernel(name, kernel, consts, arch=args.arch, **opts).row(), flush=True)
            except Exception as exc:  # report every variant, fail at the end
                failures += 1
                msg = str(exc).splitlines()[-1] if str(exc) else ""
                print(f"{name:<34} FAILED: {type(exc).__name__}: {msg}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
