"""One training step of each first-party pipeline (its tiny twin, as tests/test_host_syncs.py
runs it: forward, every stage's losses, backward), written as the exact values of every
loss term, logged part and gradient, to compare two commits bit for bit: a refactor that
must not change the numerics (issue 19, item 9: host copies of the batch metadata) gives
identical files.

    python bench/step_fingerprint.py --out before.pt [--twins irm_synthetic mgor_synthetic]
    python bench/step_fingerprint.py --out after.pt
    python bench/step_fingerprint.py --compare before.pt after.pt

Batches are made as the trainer makes them (`Pipeline.collate`: collate, then the
components' batch preparers, e.g. instruct-editor's tokens); `--plain-collate` collates by
hand (the path of tools and tests that build batches themselves).

Run both with OMP_NUM_THREADS=1: with two threads the CLIP text tower's gradients of the
irm twins' text-to-image batch differ run to run (~2e-7 relative, the order of a
multithreaded sum), so two runs of the same code would not be identical.

To fingerprint an older commit with this venv: `git worktree add /tmp/base <commit>` and
run this script with PYTHONPATH=/tmp/base:/tmp/base/plugins/<each plugin> (ahead of the
editable installs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from core.data.loading import collate  # noqa: E402
from core.pipeline import bind_losses, build_pipeline  # noqa: E402
from pipeline_twins import ALL, first_batches, small_config  # noqa: E402


def fingerprint(name: str, folder: Path, batches: int = 1, plain: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    p = build_pipeline(small_config(name, folder), echo=lambda *a, **k: None)
    model = p.model.train()
    p.loss_modules().train()
    bind_losses(model, p.loss_modules())
    out: dict[str, torch.Tensor] = {}
    # the step of each of the first `batches` batches (no optimizer step between)
    for b, batch in enumerate(first_batches(p, batches, collate if plain else None)):
        out.update({f"batch{b}/{k}": v for k, v in _step(p, model, batch).items()})
    return out


def _step(p, model, batch) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for s, terms in enumerate(p.stage_losses):
        torch.manual_seed(1 + s)
        outputs = model(batch)
        total = torch.zeros(())
        for t, term in enumerate(terms):
            value = term.module(outputs, batch)
            loss, parts = value if isinstance(value, tuple) else (value, {})
            out[f"{s}/{t}/loss"] = loss.detach().clone()
            for k, v in parts.items():
                out[f"{s}/{t}/{k}"] = torch.as_tensor(v).detach().clone()
            total = total + term.weight * loss
        total.backward()
        modules = {"model": model, "losses": p.loss_modules()}
        for prefix, module in modules.items():
            for k, param in module.named_parameters():
                if param.grad is not None:
                    out[f"{s}/grad/{prefix}.{k}"] = param.grad.detach().clone()
            module.zero_grad(set_to_none=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", nargs="*", default=ALL)
    parser.add_argument("--batches", type=int, default=1, help="the first N batches (irm: one per task)")
    parser.add_argument("--plain-collate", action="store_true",
                        help="batches collated by hand (no batch preparers: irm tokenizes in the step)")
    parser.add_argument("--out")
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.compare:
        a, b = (torch.load(f, weights_only=True) for f in args.compare)
        bad = 0
        for name in sorted(set(a) | set(b)):
            if set(a.get(name, {})) != set(b.get(name, {})):
                print(f"{name}: different keys: {sorted(set(a.get(name, {})) ^ set(b.get(name, {})))}")
                bad += 1
                continue
            diff = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
            print(f"{name}: {len(a[name])} tensors, {'identical' if not diff else f'{len(diff)} differ: {diff[:5]}'}")
            bad += bool(diff)
        sys.exit(1 if bad else 0)
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.twins:
            result[name] = fingerprint(name, Path(folder), args.batches, args.plain_collate)
            print(f"{name}: {len(result[name])} tensors")
    torch.save(result, args.out)


if __name__ == "__main__":
    main()
