"""The ahead-of-time check (``scripts/aot_check.py``): one launch compiled for sm_90 in its own
process (so the private Triton APIs it uses fail loudly here when Triton changes), and its PTX
reading on a hand-written sample."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_private_triton_apis_the_check_uses():
    """Pinned: the JIT's binder and argument packer (reused to specialise exactly as a launch
    would), the backend factory, and the compiler tools shipped in the wheel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    assert callable(create_function_from_signature) and callable(JITFunction._pack_args)
    assert callable(make_backend) and ASTSource and GPUTarget("cuda", 90, 32).arch == 90
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    assert (tools / "cuobjdump").exists() and (tools / "ptxas").exists()


@pytest.mark.parametrize(
    "label",
    [
        "fwd 1024x1000 bf16 m:bool",  # 1000 columns: a multiple of 8, not of 16
        "fwd 262144x8192 bf16 m:bool",  # 2**31 elements: a 256k-vocabulary LM head of width 8192
    ],
)
def test_one_launch_compiles_for_sm90_with_16_byte_accesses(label):
    """A Linear weight, bf16: compiled by Triton's NVIDIA backend without a GPU, its loads and
    stores are 16 bytes and predicated on the mask."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "aot_check.py"), "--targets", "90", "--jobs", "1", "--only", label],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith(label))
    cells = row.split()
    assert cells[8:11] == ["16", "16", "yes"], row  # ld B, st B, skips
    assert "1 launches, 1 distinct specializations for sm_90; 0 launches break a rule" in run.stdout


PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u32 k_param_3
)
{
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b64 	%rd2, [k_param_1];
	ld.param.b64 	%rd3, [k_param_2];
	ld.param.b32 	%r1, [k_param_3];
	mul.wide.s32 	%rd4, %r1, 2;
	add.s64 	%rd5, %rd1, %rd4;
	add.s64 	%rd6, %rd3, %rd4;
	setp.lt.s32 	%p1, %r1, 7;
	@%p1 ld.global.b8 { %rs1 }, [ %rd2 + 0 ];
	setp.ne.b16 	%p2, %rs1, 0;
	and.pred 	%p3, %p1, %p2;
	@%p3 ld.global.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd5 + 0 ];
	st.shared.b32 	[%r9], %r2;
	bar.sync 	0;
	ld.shared.b32 	%r6, [%r9];
	@%p1 st.global.v2.b32 [ %rd6 + 0 ], { %r6, %r3 };
	ret;
}
"""


def test_ptx_reading():
    """Each access is traced to its tensor parameter (through address arithmetic), its width read,
    and a guard computed from a loaded mask value shows up; values survive a trip through shared
    memory."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from aot_inspect import analyse_ptx
    finally:
        sys.path.remove(str(SCRIPTS))

    acc = analyse_ptx(PTX, ["x_ptr", "mask_ptr", "out_ptr", "R"])
    assert [(a.tensor, a.store, a.bytes) for a in acc] == [
        ("mask_ptr", False, 1),
        ("x_ptr", False, 16),
        ("out_ptr", True, 8),
    ]
    assert acc[1].guarded_by == {"mask_ptr"} and not acc[0].guarded_by
