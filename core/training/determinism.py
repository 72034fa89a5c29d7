"""`trainer.deterministic`: bit-identical training on the GPU, at a cost in speed.

On the CPU the same pipeline and seed already train bit-identically (the sampler's plan
depends on (seed, epoch), every augmentation on a per-sample seed, and CPU kernels have a
fixed reduction order for a fixed thread count). CUDA kernels do not all: atomics in
scatter/index_add backward, cuBLAS split-K heuristics and cuDNN's benchmark search reorder
float additions from run to run. `deterministic: true` turns on
`torch.use_deterministic_algorithms` (an op without a deterministic CUDA kernel then
raises instead of silently differing), disables cuDNN's benchmark mode and sets the
cuBLAS workspace that deterministic GEMMs need. The cost: the slower deterministic
kernels (PyTorch's reproducibility notes; typically a few percent for a ViT, more for
models heavy in scatter/index ops) and no cuDNN autotuning.
"""

from __future__ import annotations

import os

import torch

#: cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(enabled: bool) -> None:
    """Turn deterministic algorithms on or off for this process (each run sets its own,
    so a sweep's runs do not inherit the previous run's setting)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(enabled))
    torch.backends.cudnn.deterministic = bool(enabled)
    if enabled:
        torch.backends.cudnn.benchmark = False
