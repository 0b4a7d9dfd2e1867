"""The launch table of ``scripts/aot_check.py``: realistic shapes, planned by the package's own launch
planning on meta tensors (what a CUDA device would get), with the DRAM bytes each launch must move."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

DENSITY = 0.5  # fraction of live rows assumed for the bytes a row mask reads (upstream was timed at 0.5)
SHORT = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.bool: "bool",
}

LINEAR_WEIGHTS = [(16384, 4096), (4096, 4096), (1024, 1000), (256, 128), (50257, 4096)]
CONV_WEIGHTS = [(1024, 1024, 3, 3), (256, 256, 3, 3), (120, 120, 3, 3), (64, 3, 7, 7)]
LINEAR_OUTPUTS = [(8192, 4096), (8192, 1000), (4096, 50257)]
CONV_OUTPUTS = [((64, 256, 56, 56), False), ((64, 256, 56, 56), True), ((64, 120, 28, 28), True)]
# 2**31 elements: the weight of a 256k-vocabulary LM head of width 8192, and its output for 8192 tokens
HUGE_WEIGHT = (262144, 8192)
HUGE_OUTPUT = (8192, 262144)


@dataclass(frozen=True)
class Case:
    op: str  # "fwd" / "bwd": FakeStructuredSparsity forward / backward (row mask); "hook": BiasHook
    shape: tuple
    dtype: torch.dtype  # the weight's (fwd, bwd) or the layer output's (hook) dtype
    mask_dtype: torch.dtype
    channels_last: bool = False
    prune_bias: bool = True  # hook only
    variant: str = "eager"  # hook only: "eager" adds in place and writes the pruned bias back;
    # "compiled" (the custom op under torch.compile) writes a new output

    def label(self) -> str:
        s = f"{self.op} {'x'.join(map(str, self.shape))}{' cl' if self.channels_last else ''} {SHORT[self.dtype]}"
        s += f" m:{SHORT[self.mask_dtype]}"
        if self.op == "hook":
            s += f" {'pb' if self.prune_bias else 'nopb'} {self.variant}"
        return s


@dataclass
class Planned:
    case: Case
    kernel: object
    grid: int
    args: tuple
    kwargs: dict
    data: tuple  # pointer parameters of the per-element tensors (the rest are per-row vectors)
    aligned: bool  # rows hold a multiple of 8 elements (not fp64): the register and layout rules apply
    uniform: bool  # ... and the tensors share one dtype (a bool mask aside): the 16-byte and vector rules too
    dram_bytes: float = 0.0
    vector_bytes: float = 0.0  # per-row vector (mask, bias) bytes loaded by all programs together
    extra: dict = field(default_factory=dict)

    @property
    def warps(self) -> int:
        return self.kwargs["num_warps"]

    @property
    def tile(self) -> str:
        return f"{self.kwargs['BLOCK_R']}x{self.kwargs['BLOCK_C']}"


def cases(compact: bool = False) -> list[Case]:
    """The table: every weight and output shape x dtypes x mask dtypes (x prune_bias x variant for the
    hook). ``compact``: one mask dtype and one hook variant per shape and dtype, plus the mixed-dtype rows."""
    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    masks = [torch.bool, torch.float32]
    weights = [(s, False) for s in LINEAR_WEIGHTS] + [(s, cl) for s in CONV_WEIGHTS for cl in (False, True)]
    outputs = [(s, False) for s in LINEAR_OUTPUTS] + CONV_OUTPUTS
    out = []
    if compact:  # channels_last weights plan exactly as contiguous ones (rows are contiguous either way)
        for (s, cl), dt in itertools.product(weights, [torch.bfloat16, torch.float32]):
            if not cl:
                out.append(Case("fwd", s, dt, torch.bool, cl))
        out.append(Case("fwd", (16384, 4096), torch.bfloat16, torch.float32))
        out.append(Case("bwd", (16384, 4096), torch.bfloat16, torch.float32))
        for (s, cl), dt in itertools.product(outputs, [torch.bfloat16, torch.float32]):
            out.append(Case("hook", s, dt, torch.bool, cl))
        return out
    for (s, cl), dt, m, op in itertools.product(weights, dtypes, masks, ("fwd", "bwd")):
        out.append(Case(op, s, dt, m, cl))
    for (s, cl), dt, m, pb, v in itertools.product(outputs, dtypes, masks, (True, False), ("eager", "compiled")):
        out.append(Case("hook", s, dt, m, cl, pb, v))
    # past 2**31 elements (64-bit offsets): bf16, as such a model is trained
    out += [Case(op, HUGE_WEIGHT, torch.bfloat16, torch.bool) for op in ("fwd", "bwd")]
    out.append(Case("hook", HUGE_OUTPUT, torch.bfloat16, torch.bool))
    # fp64: compiled only (the speed rules are for the dtypes that matter on a GPU)
    out += [
        Case("fwd", (256, 128), torch.float64, torch.bool),
        Case("bwd", (120, 120, 3, 3), torch.float64, torch.float64),
        Case("hook", (64, 120, 28, 28), torch.float64, torch.bool, True),
    ]
    return out


def _meta(shape, dtype, channels_last=False):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last else t


def plan(case: Case) -> Planned:
    """Tensors of ``case`` on the meta device, planned by the package's launch planning."""
    from structprune_triton.launch import dense_3d

    x = _meta(case.shape, case.dtype, case.channels_last)
    R = case.shape[0] if case.op != "hook" else case.shape[1]
    mask = torch.empty(R, dtype=case.mask_dtype, device="meta")
    n, size = x.numel(), lambda t: t.element_size()
    if case.op == "hook":
        bias = torch.empty(R, dtype=case.dtype, device="meta")
        dst = x if case.variant == "eager" else torch.empty_like(x)
        bias_out = bias if case.variant == "eager" and case.prune_bias else None
        kernel, grid, args, kwargs = _plan_bias_add(x, bias, mask, dst, 1, case.prune_bias, bias_out)
        data = ("src_ptr", "dst_ptr")
        dram = 2 * n * size(x) + R * (size(bias) + size(mask) + (size(bias) if bias_out is not None else 0))
        vec_row = size(bias) + (size(mask) if case.prune_bias else 0)
        dim = 1
    else:
        if case.op == "bwd":  # the gradient of the forward's output, laid out like it
            x = torch.empty_like(x, dtype=torch.result_type(mask, x))
        out = torch.empty_like(x, dtype=case.dtype if case.op == "bwd" else torch.result_type(mask, x))
        kernel, grid, args, kwargs = _plan_row_mask(x, mask, out)
        data = ("x_ptr", "out_ptr")
        dram = DENSITY * n * size(x) + n * size(out) + R * size(mask)
        vec_row = size(mask)
        dim = 0
    _, _, B = dense_3d(x, dim)
    row_len = R if B == 1 else B  # elements per contiguous run
    uniform = len({t for t in (x.dtype, case.dtype)} | ({case.mask_dtype} - {torch.bool})) == 1
    aligned = case.dtype != torch.float64 and row_len % 8 == 0
    blocks = grid if isinstance(grid, int) else grid[0]
    # every tile loads the vector entries of its rows once: programs / (tiles along the masked dim) x R
    along = kwargs["BLOCK_C"] if kwargs.get("MASKED_C") else kwargs["BLOCK_R"]
    vec = blocks / -(-R // along) * R * vec_row
    return Planned(case, kernel, blocks, args, kwargs, data, aligned, aligned and uniform, dram, vec)


def plan_all(compact: bool = False) -> list[Planned]:
    return [plan(c) for c in cases(compact)]


def _plan_row_mask(x, mask, out):
    from structprune_triton.ops.row_mask import plan_launch

    return _unpack(plan_launch(x, mask, out))


def _plan_bias_add(src, bias, mask, dst, dim, prune_bias, bias_out):
    from structprune_triton.ops.bias_add import plan_launch

    return _unpack(plan_launch(src, bias, mask, dst, dim, prune_bias, bias_out))


def _unpack(launch):
    return launch.kernel, launch.grid, launch.args, launch.kwargs
