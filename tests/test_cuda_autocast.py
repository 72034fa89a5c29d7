"""CUDA's autocast rules on the CPU (core.cuda_autocast): the emulation itself, and one
training step of every first-party synthetic pipeline under it (issue 19: instruct-editor
crashed on its first CUDA bf16 forward with an index_copy that CPU autocast promotes)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.config.loading import load_pipeline
from core.cuda_autocast import emulate_cuda_autocast
from core.data.loading import ImageSamples, collate
from core.interfaces import indices_and_roles
from core.pipeline import bind_losses, build_pipeline
from pipeline_twins import TWINS, twin_config  # noqa: E402 - registered by conftest.py


def test_matrix_products_run_in_bf16_and_normalisations_in_fp32(cuda_autocast):
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    with cuda_autocast(torch.bfloat16):
        y = lin(x)
        assert y.dtype == torch.bfloat16
        assert (y @ y.t()).dtype == torch.bfloat16
        assert F.layer_norm(y, (3,)).dtype == torch.float32
        assert F.softmax(y, dim=1).dtype == torch.float32
        assert y.sum().dtype == torch.float32
        assert torch.cat([y, torch.zeros(1, 3)]).dtype == torch.float32  # cat's own type promotion
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_mixed_dtype_index_copy_fails_as_on_cuda_although_cpu_autocast_promotes_it():
    lin = torch.nn.Linear(4, 3)
    x, at = torch.randn(5, 4), torch.arange(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.zeros(6, 3).index_copy(0, at, lin(x)).dtype == torch.float32  # CPU autocast promotes
    with emulate_cuda_autocast(torch.bfloat16), pytest.raises(RuntimeError, match="same dtype"):
        torch.zeros(6, 3).index_copy(0, at, lin(x))


def test_disabled_region_runs_ops_on_the_dtypes_given():
    lin = torch.nn.Linear(4, 3)
    with emulate_cuda_autocast(torch.float16) as mode:
        with mode.disabled():
            assert lin(torch.randn(2, 4)).dtype == torch.float32
        assert lin(torch.randn(2, 4)).dtype == torch.float16


def _batches(p, count: int):
    """The first `count` batches of the pipeline's first epoch, collated."""
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    for step, plan in enumerate(iter(p.sampler)):
        if step >= count:
            return
        indices, roles = indices_and_roles(plan)
        yield collate([samples[(i, 0, r)] for i, r in zip(indices, roles)])


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("losses_in_autocast", [False, True], ids=["losses_fp32", "losses_in_autocast"])
def test_every_pipeline_step_runs_under_cuda_bf16_autocast(name, losses_in_autocast, tmp_path, one_torch_thread):
    """Model forward under the emulation; every stage's losses either outside it (the
    trainer's contract: losses in fp32 outside autocast) or inside (a plugin calling a
    loss under its own autocast); then backward. The instruction pipelines cycle six
    tasks (text, clothes-image and text-only queries): six batches cover them all."""
    p = build_pipeline(load_pipeline(twin_config(name, tmp_path)), echo=lambda *a, **k: None)
    model = p.model.train()
    p.loss_modules().train()
    bind_losses(model, p.loss_modules())  # as the trainer does before the first step
    for batch in _batches(p, 6 if name.startswith("irm") else 1):
        with emulate_cuda_autocast(torch.bfloat16) as mode:
            outputs = model(batch)
            assert "linear" in mode.cast_ops or "scaled_dot_product_attention" in mode.cast_ops
            total = torch.zeros(())
            for terms in p.stage_losses:
                for term in terms:
                    if losses_in_autocast:
                        out = term.module(outputs, batch)
                    else:
                        with mode.disabled():
                            out = term.module({k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                                               for k, v in outputs.items()}, batch)
                    loss = out[0] if isinstance(out, tuple) else out
                    assert math.isfinite(float(loss.detach())), (term.name, loss)
                    total = total + term.weight * loss.float()
        total.backward()
        model.zero_grad(set_to_none=True)
