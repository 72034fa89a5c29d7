"""Mixed precision as the trainer applies it: the model's forward under autocast, the
losses and evaluation embeddings in fp32.

Why losses leave autocast: `.float()` inside a loss does not leave an autocast region, so
a matmul in a loss (the euclidean distance |a|^2 + |b|^2 - 2ab of a triplet, a logit
against a 0.01 temperature) would run in bf16 and lose the resolution the loss depends
on (distance errors of ~2 at feature norm 26 against a 0.3 margin). The contract for
plugin authors: a loss receives fp32 outputs and runs with autocast disabled.

Autocast is CUDA's only: on the CPU training is fp32 whatever `precision` says (CPU
autocast is slower, and its promotion rules differ from CUDA's). On the emulated separate
device of the tests (core.separate_device), bf16 and fp16 apply CUDA's autocast rules
(core.cuda_autocast) and fp16 has its gradient scaler, so a run there takes CUDA's paths.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from core import cuda_autocast, separate_device

#: autocast dtype of each precision setting
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast region of the model's forward for `precision` on `device`."""
    if precision in DTYPES and device.type == "cuda":
        return torch.autocast("cuda", dtype=DTYPES[precision])
    if precision in DTYPES and separate_device.is_emulated(device):
        return cuda_autocast.emulate_cuda_autocast(DTYPES[precision])
    return contextlib.nullcontext()


def loss_region(device: torch.device):
    """Autocast switched off: what losses run inside, whatever the caller entered (no
    region where the device type has no autocast)."""
    check = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    available = check(device.type) if check else device.type in ("cuda", "cpu")
    region = torch.autocast(device.type, enabled=False) if available else contextlib.nullcontext()
    if not cuda_autocast.ACTIVE:
        return region
    both = contextlib.ExitStack()  # inside the tests' emulation of CUDA autocast: leave it too
    both.enter_context(region)
    both.enter_context(cuda_autocast.suspended())
    return both


def to_fp32(outputs: dict[str, Any]) -> dict[str, Any]:
    """Low-precision floating tensors of a model's outputs as fp32 (others untouched)."""
    return {k: v.float() if torch.is_tensor(v) and v.dtype in (torch.bfloat16, torch.float16) else v
            for k, v in outputs.items()}


def grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler":
    """A gradient scaler for fp16 on CUDA (bf16 and fp32 need none: a disabled scaler)."""
    gpu = device.type == "cuda" or separate_device.is_emulated(device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and gpu)
