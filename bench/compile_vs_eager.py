"""`trainer.compile` against eager mode (issue 19): for each first-party pipeline's tiny twin
(tests/pipeline_twins.py; the baselines' synthetic pipelines at 8 identities, batch 16)
and stage, the training module (forward + losses, as the trainer runs it) on its first
batches in eager mode and compiled, each built from seed 0; prints the largest relative
difference of a logged loss part, the largest gradient difference over the largest
gradient, the smallest cosine of a gradient tensor with the eager one (tensors above 1e-4
of the largest), and the graphs compiled (recompiles included).

    OMP_NUM_THREADS=1 python bench/compile_vs_eager.py --backend inductor [--twins quickstart ...]
        [--no-layout-optimization] [--device cuda]

With inductor, random numbers are drawn by eager's generator (`fallback_random`), so both
runs see the same dropout. The CI test of the same comparison with `aot_eager` (bit for
bit) is tests/test_compile_matches_eager.py. `--no-layout-optimization` keeps inductor's
convolutions in eager's memory layout (inductor otherwise switches graphs with convolutions
to channels-last): a difference that goes away with it is a different summation order, not a
lowering bug (BENCHMARKS.md: the ResNet-50 twins' second batch puts a ReLU input within
1e-7 of zero, and the two layouts round it to opposite sides).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from core.pipeline import build_pipeline  # noqa: E402
from core.training.trainer import TrainingModule  # noqa: E402
from pipeline_twins import ALL, first_batches, small_config, step_gradients  # noqa: E402


def build(name: str, folder: Path, device: torch.device = torch.device("cpu")):
    torch.manual_seed(0)
    folder.mkdir()
    p = build_pipeline(small_config(name, folder), echo=lambda *a, **k: None)
    net = TrainingModule(p.model, p.loss_modules()).to(device).train()
    net.amp = (device, "fp32")
    return p, net


def steps(p, net, forward, stage: int, batches) -> list[tuple[dict, dict]]:
    net.terms, net.model_forward = p.stage_losses[stage], p.stages[stage].forward
    return step_gradients(forward, net, batches)


def compare(eager, compiled) -> tuple[float, float, float]:
    """(worst relative part difference, worst gradient difference / largest gradient,
    smallest gradient cosine)."""
    part, grad, cosine = 0.0, 0.0, 1.0
    for (parts, grads), (c_parts, c_grads) in zip(eager, compiled):
        if sorted(parts) != sorted(c_parts) or sorted(grads) != sorted(c_grads):
            raise AssertionError(f"different parts or parameters with gradients: "
                                 f"{sorted(set(parts) ^ set(c_parts)) + sorted(set(grads) ^ set(c_grads))}")
        for k, v in parts.items():
            part = max(part, float((v - c_parts[k]).abs().max() / (v.abs().max() + 1e-6)))
        scale = max([float(g.abs().max()) for g in grads.values()] + [1e-30])
        for k, g in grads.items():
            grad = max(grad, float((g - c_grads[k]).abs().max()) / scale)
            if float(g.abs().max()) > 1e-4 * scale:
                cos = torch.nn.functional.cosine_similarity(g.flatten().double(), c_grads[k].flatten().double(), dim=0)
                cosine = min(cosine, float(cos))
    return part, grad, cosine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--twins", nargs="*", default=ALL)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--device", default="cpu", help="where both runs train (fp32; on CUDA without TF32)")
    ap.add_argument("--no-layout-optimization", action="store_true",
                    help="inductor keeps eager's memory layout for convolutions")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch._logging.set_logs(dynamo=logging.ERROR)
    inductor_config.fallback_random = True
    inductor_config.layout_optimization = not args.no_layout_optimization
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 matrix products in both runs, as on the CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, backend {args.backend}, {args.device}, {torch.get_num_threads()} threads, "
          f"layout optimization {'off' if args.no_layout_optimization else 'on'}")
    for name in args.twins:
        folder = Path(tempfile.mkdtemp())
        p, eager_net = build(name, folder / "eager", device)
        p_compiled, compiled_net = build(name, folder / "compiled", device)  # its own loss modules (state, parameters)
        for stage in range(len(p.stages)):
            batches = [b.to(device) for b in first_batches(p, args.batches)]
            start = time.perf_counter()
            eager = steps(p, eager_net, eager_net, stage, batches)
            torch._dynamo.reset()
            counters.clear()
            compiled = steps(p_compiled, compiled_net, torch.compile(compiled_net, backend=args.backend), stage, batches)
            part, grad, cosine = compare(eager, compiled)
            print(f"{name} stage {stage}: {len(batches)} batches, part {part:.1e}, gradient {grad:.1e}, "
                  f"cosine {cosine:.6f}, graphs {counters['stats'].get('unique_graphs', 0)}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
