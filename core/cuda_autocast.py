"""CUDA's autocast rules applied on the CPU, so the test suite catches the dtype errors a
first GPU run would hit (issue 19).

CPU autocast is not CUDA autocast: its op lists differ, and it *promotes* mixed-dtype
ops (`index_copy`, `cat`, `stack`, ...) that CUDA autocast leaves alone, so an
`index_copy` of a bf16 source into an fp32 tensor passes under CPU autocast and fails on
the first CUDA step. `emulate_cuda_autocast(dtype)` does not use CPU autocast at all: a
`TorchFunctionMode` casts the inputs of the ops in CUDA's lists as `torch.autocast("cuda")`
does (torch.amp docs, "CUDA Ops that can autocast to float16 / float32 / widest type")
and runs every other op on the dtypes it is given, as CUDA would. The casts happen above
autograd, like the real ones: gradients flow back through them to the fp32 parameters.

The mode sees the calls made from Python code, not the calls a function makes inside
its own body while the mode handles it (torch pops the mode meanwhile): compositions
whose inner products CUDA would cast (einsum -> bmm, F.multi_head_attention_forward ->
linear, bmm) are therefore listed by their own names and run wholly in the lower
precision. It is an emulation for tests, not a speed path.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

#: CUDA ops that autocast to the lower precision (float16 / bfloat16); `einsum` and
#: `scaled_dot_product_attention` run their matrix products in it on CUDA too
LOWER = frozenset({
    "__matmul__", "__rmatmul__", "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul",
    "multi_dot", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "linear", "matmul", "mm", "mv", "prelu", "einsum",
    "scaled_dot_product_attention", "multi_head_attention_forward", "gru_cell", "lstm_cell", "rnn_tanh_cell",
    "rnn_relu_cell",
})

#: CUDA ops that autocast to float32
FLOAT32 = frozenset({
    "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits",
    "cosh", "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cross_entropy_loss",
    "cumprod", "cumsum", "dist", "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div",
    "l1_loss", "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss",
    "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "nll_loss_nd", "norm", "normalize", "pdist",
    "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss", "soft_margin_loss",
    "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss",
})

#: CUDA ops that run in the widest floating type of their inputs (every other op sees
#: its inputs as they are: `index_copy`, `index_put_`, `scatter`, `masked_scatter` with
#: mixed dtypes fail on CUDA, whatever CPU autocast does)
PROMOTE = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sample", "index_put",
                     "scatter_add", "tensordot"})


def _eligible(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if _eligible(value):
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _widest(values: Iterator[Any]) -> torch.dtype | None:
    widest = None
    for value in values:
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if _eligible(item):
                widest = item.dtype if widest is None else torch.promote_types(widest, item.dtype)
    return widest


class CudaAutocastEmulation(TorchFunctionMode):
    """The mode behind `emulate_cuda_autocast`; `enabled` False passes every op through
    (a region the code under test runs outside autocast)."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"CUDA autocast runs in bfloat16 or float16, got {dtype}")
        self.dtype = dtype
        self.enabled = True
        #: names of the ops cast so far (a test can check that the mode saw the model)
        self.cast_ops: set[str] = set()

    def __enter__(self):
        ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        ACTIVE.remove(self)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.startswith("__")  # autocast leaves in-place ops alone
        if self.enabled and not in_place:
            target = self.dtype if name in LOWER else torch.float32 if name in FLOAT32 else None
            if name in PROMOTE:
                target = _widest(iter((*args, *kwargs.values())))
            if target is not None:
                args, kwargs = _cast(args, target), {k: _cast(v, target) for k, v in kwargs.items()}
                self.cast_ops.add(name)
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """A region outside autocast, as `torch.autocast("cuda", enabled=False)`."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before


#: the emulations entered and not yet left (a plain list: compiled code reads it without
#: a graph break, where asking torch for its mode stack would break the graph)
ACTIVE: list[CudaAutocastEmulation] = []


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Every active emulation disabled inside, whoever entered it: the emulated
    `torch.autocast("cuda", enabled=False)` (the trainer's loss region)."""
    with contextlib.ExitStack() as stack:
        for mode in list(ACTIVE):
            stack.enter_context(mode.disabled())
        yield


def emulate_cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> CudaAutocastEmulation:
    """A context manager applying `torch.autocast("cuda", dtype)`'s rules to CPU tensors:

        with emulate_cuda_autocast(torch.bfloat16):
            outputs = model(batch)        # fails where the first CUDA bf16 step would
    """
    return CudaAutocastEmulation(dtype)
