"""Compile one Triton launch ahead of time for an NVIDIA target (no GPU, no driver) and read the facts
that decide its speed from the compiled code: access widths per tensor, predication, registers, spills,
barriers. Used by ``scripts/aot_check.py``; must run with ``TRITON_INTERPRET`` unset.

Specialisation reuses the JIT's own binder (``create_function_from_signature`` and
``JITFunction._pack_args``, private APIs of triton 3.6-3.9, pinned by ``tests/test_aot.py``), so a
compiled specialization is exactly what a launch of the same arguments on a GPU would compile:
16-byte-aligned pointers (a meta tensor's data_ptr 0 counts as aligned) and ints divisible by 16 get
the divisibility hint, ints equal to 1 become constants.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@dataclass(frozen=True)
class Specialization:
    """What the JIT would compile for one launch on ``arch``: hashable, picklable (a cache key)."""

    module: str  # module and name of the @triton.jit kernel, re-imported in worker processes
    name: str
    arch: int
    signature: tuple  # ((param name, type), ...) in parameter order
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, (("tt.divisibility", 16),)), ...)
    options: tuple  # ((option, value), ...): num_warps and friends


def specialize(kernel, args: tuple, kwargs: dict, arch: int) -> Specialization:
    """The JIT's specialization of ``kernel[grid](*args, **kwargs)`` for ``sm_<arch>``."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kw = dict(kwargs, debug=False, instrumentation_mode="")
    bound, spec, opts = binder(*args, **kw)
    options, sig, constexprs, attrs = kernel._pack_args(backend, kw, bound, spec, opts)
    launch_opts = {k: kw[k] for k in ("num_warps", "num_stages", "num_ctas") if k in kw}
    return Specialization(
        module=kernel.fn.__module__,
        name=kernel.fn.__name__,
        arch=arch,
        signature=tuple(sig.items()),
        constexprs=tuple(sorted((p, _plain(v)) for p, v in constexprs.items())),
        attrs=tuple(sorted((p, tuple(tuple(a) for a in v)) for p, v in attrs.items())),
        options=tuple(sorted(launch_opts.items())),
    )


def _plain(value):
    """Constexpr values as hashable, picklable data (triton dtypes become their names)."""
    return ("dtype", value.name) if hasattr(value, "primitive_bitwidth") else value


def _unplain(value):
    import triton.language as tl

    if isinstance(value, tuple) and len(value) == 2 and value[0] == "dtype":
        return tl.dtype(value[1])
    return value


@dataclass
class Access:
    tensor: str  # pointer parameter it addresses ("?" when it cannot be told)
    store: bool
    bytes: int  # per thread per instruction: 16 for ld.global.v4.b32
    guarded_by: frozenset  # tensors whose loaded values the guarding predicate depends on


@dataclass
class Compiled:
    regs: int
    spill_bytes: int  # local memory (spills) + stack, per thread
    shared: int  # bytes of shared memory the kernel asks for (layout conversions go through it)
    barriers: int  # bar.sync in the PTX: each is a layout conversion through shared memory
    accesses: list


def compile_spec(spec: Specialization) -> Compiled:
    """Compile ``spec`` and read its facts (runs in a worker process)."""
    kernel = getattr(importlib.import_module(spec.module), spec.name)
    target = GPUTarget("cuda", spec.arch, 32)
    backend = make_backend(target)
    kw = dict(spec.options, debug=False, instrumentation_mode="")
    options = backend.parse_options(kw)
    src = ASTSource(
        kernel,
        dict(spec.signature),
        {p: _unplain(v) for p, v in spec.constexprs},
        {p: [list(a) for a in v] for p, v in spec.attrs},
    )
    c = triton.compile(src, target=target, options=options.__dict__)
    ptx = c.asm["ptx"]
    regs, spill = _resource_usage(c.asm["cubin"])
    runtime = [name for name, ty in spec.signature if ty != "constexpr"]
    return Compiled(
        regs=regs,
        spill_bytes=spill,
        shared=int(c.metadata.shared),
        barriers=len(re.findall(r"\b(?:bar|barrier)\.sync\b", ptx)),
        accesses=analyse_ptx(ptx, runtime),
    )


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return int(usage["REG"]), int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0))


_INSTR = re.compile(r"^\s*(?:@(!?%\w+)\s+)?([a-z][\w.:]*)\s*(.*?);\s*$")
_REG = re.compile(r"%\w+")
_WIDTH = re.compile(r"\.(?:[bsuf])(8|16|32|64)\b")


def analyse_ptx(ptx: str, params: list[str]) -> list[Access]:
    """Global loads and stores of ``ptx`` with the tensor each one addresses, found by following which
    kernel parameters every register is computed from (``params``: the runtime parameters in order).
    A load's result carries the label ``load:<tensor>``, so a guard predicate computed from the mask's
    value shows up in ``guarded_by``."""
    instrs = [m.groups() for line in ptx.splitlines() if (m := _INSTR.match(line))]
    taint: dict[str, set] = {}
    for _ in range(4):  # to a fixed point (back edges of loops)
        changed = False
        for _guard, op, operands in instrs:
            new, dests = _transfer(op, operands, params, taint)
            for d in dests:
                if not new <= taint.get(d, set()):
                    taint.setdefault(d, set()).update(new)
                    changed = True
        if not changed:
            break
    out = []
    for guard, op, operands in instrs:
        if not re.match(r"(ld|st)\.global", op):
            continue
        addr = re.search(r"\[\s*(%\w+)", operands).group(1)
        tensors = sorted(t[6:] for t in taint.get(addr, ()) if t.startswith("param:"))
        ptrs = [t for t in tensors if t.endswith("_ptr")]
        vec = 4 if ".v4" in op else 2 if ".v2" in op else 1
        guarded = (
            frozenset(t[5:] for t in taint.get(guard.lstrip("!"), ()) if t.startswith("load:"))
            if guard
            else frozenset()
        )
        out.append(
            Access(
                ptrs[0] if len(ptrs) == 1 else "?",
                op.startswith("st"),
                vec * int(_WIDTH.search(op).group(1)) // 8,
                guarded,
            )
        )
    return out


def _transfer(op: str, operands: str, params: list[str], taint: dict) -> tuple[set, list[str]]:
    """Labels flowing into the destination registers of one instruction, and those registers."""
    if op.startswith("st.shared"):  # shared memory is one pseudo-register: what goes in comes out
        return set().union(*(taint.get(r, set()) for r in _REG.findall(operands.partition("]")[2]))), ["%shared"]
    if op.startswith(("st.", "bar", "bra", "ret", "barrier", "membar", "fence")):
        return set(), []
    if op.startswith("ld.param"):
        m = re.search(r"_param_(\d+)", operands)
        dest = _REG.findall(operands.split(",")[0])
        idx = int(m.group(1)) if m else len(params)
        return ({f"param:{params[idx]}"} if idx < len(params) else set()), dest
    head, _, rest = operands.partition(",") if not operands.lstrip().startswith("{") else _split_brace(operands)
    dests = _REG.findall(head)
    if op.startswith("ld.shared"):
        return set(taint.get("%shared", set())), dests
    if op.startswith("ld.global"):
        addr = re.search(r"\[\s*(%\w+)", rest).group(1)
        ptrs = [t[6:] for t in taint.get(addr, ()) if t.startswith("param:") and t.endswith("_ptr")]
        return {f"load:{p}" for p in ptrs}, dests
    new = set()
    for r in _REG.findall(rest):
        new |= taint.get(r, set())
    return new, dests


def _split_brace(operands: str) -> tuple[str, str, str]:
    end = operands.index("}")
    return operands[: end + 1], ",", operands[end + 1 :].lstrip(" ,")
