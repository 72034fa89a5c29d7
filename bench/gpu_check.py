"""One-command GPU check (issue 19): what a first GPU run of reid-core does, as one table.

    python bench/gpu_check.py                      # on the GPU (about 5-8 minutes on one H100)
    python bench/gpu_check.py --device cpu --tiny  # the same rows with tiny models (a test runs it)
    python bench/gpu_check.py --only vit,eval --json out.json

Rows (each a real training step of the trainer's module: forward under autocast, losses
in fp32 outside it, backward, fused AdamW; the same batch repeated, so data loading is not
measured):
  - ViT-B/16 at 256x128 (TransReID's baseline setting: batch 64 = 16 x 4, BNNeck, CE +
    triplet) in fp32, bf16 and fp16 (gradient scaler), each without and with torch.compile:
    images/s, achieved TFLOP/s, MFU (model FLOPs from torch's FlopCounterMode over one
    forward + backward, against the card's dense peak for that precision);
  - ResNet-50 at 256x128, bf16: images/s;
  - one training step of the full-size MGOR (hse_vit ViT-B/16 at 256x256, EDPS episode of
    64, MOIL + HSE), MUVA (CLIP ViT-B/16 at 256x128 with AM-MSA, stage-2 losses) and IRM
    (ViT-B/16 + CLIP ViT-B/16 instruction encoder + editing blocks) models, from random
    weights (no download), on the synthetic world at the papers' image sizes;
  - Market-1501-shape evaluation (3,368 queries x 15,913 gallery, 768-d) on the device,
    and the same with float16 features on disk (`search: blocked` on the device they were
    computed on; its metrics checked against the in-memory path's);
  - DDP over NCCL (gloo on the CPU) with one process: the ViT-B/16 bf16 step wrapped;
  - peak device memory of each row;
  - the dtype the model's first matrix product computed in (one untimed forward of the
    training module as the row sets it up), so a precision setting that does not reach
    the forward shows in the table instead of passing as a slow bf16 row.
On the CPU, `--emulate-cuda-autocast` applies CUDA autocast's rules (core.cuda_autocast)
where the trainer would enter autocast on CUDA, so the test of the tiny check sees the
bf16 and fp16 rows compute in bf16 and fp16, and `--emulate-separate-device` runs the
rows with the model on core.separate_device's emulated device, so a host tensor meeting
device tensors in the check itself fails there and not in a GPU session's few minutes.
A row that fails prints its error and the check goes on (exit status 1 at the end).
The goal for an H100: >= 40% MFU for ViT-B/16 bf16 training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
sys.path.insert(0, str(ROOT / "tests"))

from pipeline_twins import write_resolved  # noqa: E402

#: dense peak TFLOP/s by (card name fragment, precision); fp32 without TF32
PEAK_TFLOPS = {
    ("H200", "bf16"): 989.4, ("H200", "fp16"): 989.4, ("H200", "fp32"): 66.9,
    ("H100", "bf16"): 989.4, ("H100", "fp16"): 989.4, ("H100", "fp32"): 66.9,
    ("A100", "bf16"): 312.0, ("A100", "fp16"): 312.0, ("A100", "fp32"): 19.5,
    ("L4", "bf16"): 121.0, ("L4", "fp16"): 121.0, ("L4", "fp32"): 30.3,
}

TRAINER = ["trainer.num_workers=0", "trainer.progress=false"]

#: full-size rows: (pipeline file, overrides) — the synthetic twins at the papers' sizes
FULL = {
    "vit": ("quickstart.yaml", [
        "backbone.arch=vit_base_patch16_224", "backbone.model_kwargs={}", "data.train.0.identities=200",
        "data.train.0.categories=[person]", "data.train.0.render_size=[256, 128]",
        "data.transform.size=[256, 128]", "sampler.batch_size=64"]),
    "resnet50": ("quickstart.yaml", [
        "backbone.arch=resnet50", "backbone.model_kwargs={}", "data.train.0.identities=200",
        "data.train.0.categories=[person]", "data.train.0.render_size=[256, 128]",
        "data.transform.size=[256, 128]", "sampler.batch_size=64"]),
    "mgor": ("mgor_synthetic.yaml", [
        "backbone.arch=vit_base_patch16_224", "backbone.model_kwargs={}", "data.train.0.render_size=[256, 256]",
        "data.transform.size=[256, 256]", "data.test=[]", "sampler.batch_size=64"]),
    "muva": ("muva_synthetic.yaml", [
        "backbone.model_cfg=null", "backbone.model=ViT-B-16", "backbone.quick_gelu=true", "backbone.mask_hidden=128",
        "data.train.0.render_size=[256, 128]", "data.transform.size=[256, 128]", "sampler.batch_size=64"]),
    "irm": ("irm_synthetic.yaml", [
        "backbone.arch=vit_base_patch16_224", "backbone.model_kwargs={}", "backbone.clip_config=null",
        "backbone.clip_model=ViT-B-16", "backbone.clip_pretrained=null", "data.train.0.world.render_size=[256, 128]",
        "data.transform.size=[256, 128]", "data.test=[]", "sampler.batch_size=64"]),
}

TINY_VIT = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"
#: --tiny: the same rows with one-block models on 32-pixel images
TINY = {
    "vit": ("quickstart.yaml", [
        f"backbone.model_kwargs={TINY_VIT}", "data.train.0.identities=4", "data.train.0.test_identities=2",
        "data.train.0.render_size=[32, 16]", "data.transform.size=[32, 16]", "sampler.batch_size=16"]),
    "resnet50": ("quickstart.yaml", [
        "backbone.arch=resnet18", "backbone.model_kwargs={}", "data.train.0.identities=4",
        "data.train.0.test_identities=2", "data.train.0.render_size=[32, 16]", "data.transform.size=[32, 16]",
        "sampler.batch_size=16"]),
    "mgor": ("mgor_synthetic.yaml", [
        f"backbone.model_kwargs={TINY_VIT}", "data.train.0.identities=4", "data.train.0.test_identities=2",
        "data.train.0.render_size=[32, 16]", "data.transform.size=[32, 16]", "data.test=[]",
        "sampler.batch_size=32"]),
    "muva": ("muva_synthetic.yaml", [
        "data.train.0.identities=8", "data.train.0.test_identities=2", "data.train.0.images_per_identity=4",
        "sampler.batch_size=16", "backbone.model_cfg.vision_cfg={layers: 2, width: 32, patch_size: 8, head_width: 16}",
        "backbone.model_cfg.text_cfg={context_length: 20, vocab_size: 49408, width: 32, heads: 2, layers: 1}"]),
    "irm": ("irm_synthetic.yaml", [
        f"backbone.model_kwargs={TINY_VIT}", "data.train.0.world.identities=8", "data.train.0.world.test_identities=4",
        "data.train.0.world.images_per_identity=8", "data.test=[]", "sampler.batch_size=16",
        "backbone.clip_config={embed_dim: 32, vision_cfg: {image_size: 32, patch_size: 8, width: 32, layers: 1, "
        "head_width: 16}, text_cfg: {context_length: 64, vocab_size: 49408, width: 32, heads: 2, layers: 1}}"]),
}


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for (card, p), v in PEAK_TFLOPS.items() if card in name and p == precision), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class Step:
    """One pipeline's training step as the trainer runs it, on one fixed batch."""

    def __init__(self, name: str, table: dict, device: torch.device, precision: str, out_dir: Path,
                 batch_size: int | None = None) -> None:
        from core.config.loading import load_pipeline
        from core.data.loading import ImageSamples
        from core.interfaces import indices_and_roles
        from core.pipeline import build_pipeline
        from core.training import precision as P
        from core.training.trainer import TrainingModule

        file, overrides = table[name]
        extra = [f"sampler.batch_size={batch_size}"] if batch_size else []
        path = write_resolved(load_pipeline(PIPELINES / file, [*overrides, *TRAINER, *extra]), out_dir / name)
        p = build_pipeline(load_pipeline(path), echo=lambda *a, **k: None)
        self.net = TrainingModule(p.model, p.loss_modules()).to(device).train()
        last = len(p.stages) - 1  # the method's main stage (MUVA: stage 2)
        self.net.terms, self.net.model_forward = p.stage_losses[last], p.stages[last].forward
        self.net.amp = (device, precision)  # the trainer's precision setting (TrainingModule.amp)
        plan = next(iter(p.sampler))
        indices, roles = indices_and_roles(plan)
        samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
        self.batch = p.collate()([samples[(i, 0, r)] for i, r in zip(indices, roles)]).to(device)
        params = [q for q in self.net.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
        self.scaler = P.grad_scaler(device, precision)
        self.forward: Callable = self.net
        self.device, self.images = device, len(self.batch)

    def wrap(self, fn: Callable[[torch.nn.Module], Any]) -> None:
        self.forward = fn(self.net)

    def __call__(self) -> None:
        total, _, _ = self.forward(self.batch, train=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def compute_dtype(self) -> str:
        """The output dtype of the backbone's first convolution or linear layer in one
        training forward (no gradient), as this step's precision setting makes it."""
        first = next(m for m in self.net.backbone.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        seen: list[torch.dtype] = []
        handle = first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        try:
            with torch.no_grad():
                self.net(self.batch, train=True)
        finally:
            handle.remove()
        return str(seen[0]).removeprefix("torch.")

    def flops(self) -> int:
        """Model FLOPs of one forward + backward (uncompiled module)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            total, _, _ = self.net(self.batch, train=True)
            total.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def train_row(args, name: str, precision: str, compiled: bool, ddp: bool = False) -> dict[str, Any]:
    device = torch.device(args.device)
    reset_memory(device)
    step = Step(name, TINY if args.tiny else FULL, device, precision, args.out_dir, args.batch_size)
    flops = step.flops() if name == "vit" else None
    dtype = step.compute_dtype()
    if ddp:
        step.wrap(lambda net: torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index or 0] if device.type == "cuda" else None))
    if compiled:
        step.wrap(torch.compile)
    seconds = time_steps(step, device, args.warmup + (2 if compiled else 0), args.steps)
    row = {"images_per_s": step.images / seconds, "step_ms": seconds * 1e3, "memory_gb": peak_memory_gb(device),
           "compute_dtype": dtype}
    if flops:
        achieved = flops / seconds / 1e12
        peak = peak_tflops(device, precision, args.peak_tflops)
        row.update(tflops=achieved, mfu=achieved / peak if peak else None)
    return row


def eval_shape(args) -> tuple[int, int, int, int]:
    """(queries, gallery items, dimensions, identities) of the evaluation rows: Market-1501's
    test split with ViT-B's 768-d embeddings, or a tiny one."""
    return (100, 500, 32, 20) if args.tiny else (3368, 15913, 768, 750)


def eval_row(args) -> dict[str, Any]:
    from core.evaluation.reid import ReIDEvaluator
    from core.interfaces import FeatureSet

    device = torch.device(args.device)
    reset_memory(device)
    nq, ng, dim, ids = eval_shape(args)
    rng = np.random.default_rng(0)
    g = torch.Generator(device="cpu").manual_seed(0)

    def features(n: int) -> FeatureSet:
        return FeatureSet(embeddings=torch.randn(n, dim, generator=g).to(device),
                          pids=rng.integers(0, ids, n), camids=rng.integers(0, 6, n))

    query, gallery = features(nq), features(ng)
    evaluator = ReIDEvaluator(metric="cosine")
    evaluator.evaluate(query, gallery)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    evaluator.evaluate(query, gallery)
    synchronize(device)
    return {"seconds": time.perf_counter() - start, "memory_gb": peak_memory_gb(device)}


def eval_disk_row(args) -> dict[str, Any]:
    """The Market shape again with the features on disk, as the trainer writes sets above
    `eval_features_disk_above`: float16 memory maps searched block by block (`search:
    blocked`) on the device they were computed on, and the exact path's metrics."""
    from core.evaluation.features import FeatureWriter, features_tensor
    from core.evaluation.reid import ReIDEvaluator
    from core.interfaces import FeatureSet

    device = torch.device(args.device)
    reset_memory(device)
    nq, ng, dim, ids = eval_shape(args)
    rng = np.random.default_rng(0)
    sets = []
    for name, n in (("query", nq), ("gallery", ng)):
        path = args.out_dir / f"eval-{name}.npy"
        writer = FeatureWriter(path, n, dim, "float16")
        writer.write(rng.standard_normal((n, dim), dtype=np.float32))
        writer.close()
        mapped = features_tensor(path)
        pids, cams = rng.integers(0, ids, n), rng.integers(0, 6, n)
        sets.append((FeatureSet(embeddings=mapped, pids=pids, camids=cams, embeddings_file=path,
                                compute_device=str(device)),
                     FeatureSet(embeddings=mapped.float().to(device), pids=pids, camids=cams)))
    (query, query_memory), (gallery, gallery_memory) = sets
    evaluator = ReIDEvaluator(metric="cosine")
    in_memory = evaluator.evaluate(query_memory, gallery_memory)  # also the warm-up of the device's kernels
    synchronize(device)
    start = time.perf_counter()
    on_disk = evaluator.evaluate(query, gallery)
    synchronize(device)
    seconds = time.perf_counter() - start
    # the same float16-rounded features both ways: equal up to distances that round apart
    # (a GPU may pick other matmul kernels for other block widths)
    worst = max(abs(on_disk[k] - in_memory[k]) for k in in_memory)
    return {"seconds": seconds, "memory_gb": peak_memory_gb(device), "metrics_diff": worst}


def ddp_row(args) -> dict[str, Any]:
    import torch.distributed as dist

    device = torch.device(args.device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        row = train_row(args, "vit", "bf16", compiled=False, ddp=True)
        row["backend"] = backend
        return row
    finally:
        dist.destroy_process_group()


def emulate_cuda_autocast_on_cpu() -> None:
    """Where the trainer enters autocast for bf16/fp16 on CUDA, enter the CPU emulation of
    CUDA's autocast on the CPU too (the trainer's loss region leaves it; on the emulated
    separate device the trainer applies it itself)."""
    from core.cuda_autocast import emulate_cuda_autocast
    from core.training import precision as P

    device_autocast = P.autocast

    def autocast(device: torch.device, precision: str):
        if device.type == "cpu" and precision in P.DTYPES:
            return emulate_cuda_autocast(P.DTYPES[precision])
        return device_autocast(device, precision)

    P.autocast = autocast


def plan(args) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    rows = []
    compile_options = (False, True) if (args.device.startswith("cuda") or args.compile) and not args.no_compile \
        else (False,)
    for precision in ("fp32", "bf16", "fp16"):
        rows.append((f"vit {precision}", lambda p=precision: train_row(args, "vit", p, False)))
    rows.append(("resnet50 bf16", lambda: train_row(args, "resnet50", "bf16", False)))
    for method in ("mgor", "muva", "irm"):
        rows.append((f"{method} bf16 step", lambda m=method: train_row(args, m, "bf16", False)))
    rows.append(("eval market-shape", lambda: eval_row(args)))
    rows.append(("eval market-shape on disk", lambda: eval_disk_row(args)))
    rows.append(("ddp 1 process vit bf16", lambda: ddp_row(args)))
    if True in compile_options:  # last: compiling takes most of the check's time
        for precision in ("fp32", "bf16", "fp16"):
            rows.append((f"vit {precision} compile", lambda p=precision: train_row(args, "vit", p, True)))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        rows = [r for r in rows if any(r[0].startswith(w) for w in wanted)]
    return rows


def fmt(value: Any, spec: str) -> str:
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and images (CPU tests)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    parser.add_argument("--only", default="", help="comma-separated row prefixes, e.g. vit,eval")
    parser.add_argument("--batch-size", type=int, default=None, help="replace every row's batch size")
    parser.add_argument("--compile", action="store_true", help="compile rows on the CPU too")
    parser.add_argument("--no-compile", action="store_true", help="no compile rows")
    parser.add_argument("--emulate-cuda-autocast", action="store_true",
                        help="on the CPU: apply CUDA autocast's rules where the trainer would autocast on CUDA")
    parser.add_argument("--emulate-separate-device", action="store_true",
                        help="on the CPU: the model on core.separate_device's emulated device (host/device "
                             "mixing fails as on a GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's peak for MFU (else a table)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="rows not started within this many seconds are skipped (default 8 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "reid_gpu_check")
    args = parser.parse_args(argv)
    args.steps = args.steps or (1 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    for flag in ("emulate_cuda_autocast", "emulate_separate_device"):
        if getattr(args, flag) and device.type != "cpu":
            parser.error(f"--{flag.replace('_', '-')} is for --device cpu (a GPU does it itself)")
    if args.emulate_cuda_autocast:
        emulate_cuda_autocast_on_cpu()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
        name = "cpu"
    with contextlib.ExitStack() as stack:
        if args.emulate_separate_device:
            from core.separate_device import emulate_separate_device

            args.device = str(stack.enter_context(emulate_separate_device()))
            name = "cpu (emulated separate device)"
        return run_rows(args, name)


def run_rows(args, name: str) -> int:
    """Print the table of `plan(args)`'s rows (and write the JSON); 1 if a row failed."""
    print(f"reid-core GPU check on {name} (torch {torch.__version__}){' --tiny' if args.tiny else ''}", flush=True)
    header = f"{'row':28} {'images/s':>10} {'step ms':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak GB':>8}  note"
    print(header)
    print("-" * len(header))
    results, failed, began = [], 0, time.perf_counter()
    for label, fn in plan(args):
        start = time.perf_counter()
        if start - began > args.budget_s:
            results.append({"row": label, "skipped": "budget"})
            print(f"{label:28} skipped: the {args.budget_s:.0f} s budget is spent (--budget-s)", flush=True)
            continue
        try:
            row = fn()
            note = f"{row['seconds']:.3f} s" + (f", metrics vs in memory {row['metrics_diff']:.1e}"
                                                  if "metrics_diff" in row else "") if "seconds" in row else \
                " ".join(filter(None, (row.get("compute_dtype"), row.get("backend"))))
        except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
            failed += 1
            row = {"error": f"{type(exc).__name__}: {exc}"}
            note = "FAILED " + row["error"].splitlines()[0][:120]
            if os.environ.get("GPU_CHECK_DEBUG"):
                traceback.print_exc()
        row.update(row=label, wall_s=time.perf_counter() - start)
        results.append(row)
        mfu = row.get("mfu")
        print(f"{label:28} {fmt(row.get('images_per_s'), '10.1f')} {fmt(row.get('step_ms'), '9.1f')} "
              f"{fmt(row.get('tflops'), '8.1f')} {fmt(None if mfu is None else 100 * mfu, '5.1f')}"
              f"{'%' if mfu is not None else ' '} {fmt(row.get('memory_gb'), '8.2f')}  {note}", flush=True)
        if "error" in row and os.environ.get("GPU_CHECK_DEBUG") is None:
            print(f"{'':28} (GPU_CHECK_DEBUG=1 prints the traceback)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "tiny": args.tiny,
                                         "rows": results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
