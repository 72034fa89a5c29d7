"""Graph breaks of each first-party pipeline's training step under torch.compile (issue 19,
item 9), counted on the CPU with `torch._dynamo.explain`: every break splits the step into
separately compiled graphs with Python (and often a host sync) between them.

    python bench/graph_breaks.py [--twins quickstart irm_synthetic ...] [--reasons 8]

Each pipeline is its tiny twin (tests/pipeline_twins.py: a few identities, a 2-block model;
the baselines' synthetic pipelines with 8 identities and batch 16): graph breaks depend on
the code path, not on the model's size. Two functions are explained
per pipeline and stage: the model forward alone (`model(batch)`, what `trainer.compile`
compiles) and forward + every loss of the stage (the step without backward). Prints the
graph and break counts and the distinct break reasons with the line that caused them.
"""

from __future__ import annotations

import argparse
import collections
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from core.pipeline import bind_losses, build_pipeline  # noqa: E402
from pipeline_twins import ALL, first_batches, small_config  # noqa: E402


def where(reason) -> str:
    stack = [f for f in (reason.user_stack or []) if str(ROOT) in f.filename]
    if not stack:
        return "?"
    f = stack[-1]
    return f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}"


def explain(fn, *args):
    torch._dynamo.reset()
    out = torch._dynamo.explain(fn)(*args)
    reasons = collections.Counter(f"{where(r)}: {r.reason.splitlines()[0][:160]}" for r in out.break_reasons)
    return out.graph_count, out.graph_break_count, reasons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twins", nargs="*", default=ALL)
    ap.add_argument("--reasons", type=int, default=12, help="distinct reasons printed per function")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    for name in args.twins:
        tmp = Path(tempfile.mkdtemp())
        p = build_pipeline(small_config(name, tmp), echo=lambda *a, **k: None)
        model = p.model.train()
        p.loss_modules().train()
        bind_losses(model, p.loss_modules())
        batch, = first_batches(p, 1)
        t0 = time.perf_counter()
        graphs, breaks, reasons = explain(model, batch)
        print(f"\n== {name}: model forward: {graphs} graphs, {breaks} breaks")
        for r, n in reasons.most_common(args.reasons):
            print(f"   {n:3d} x {r}")
        for index, terms in enumerate(p.stage_losses):
            def step(b, terms=terms):
                outputs = model(b)
                total = 0.0
                for term in terms:
                    out = term.module(outputs, b)
                    total = total + term.weight * (out[0] if isinstance(out, tuple) else out)
                return total

            graphs, breaks, reasons = explain(step, batch)
            names = ", ".join(t.name for t in terms)
            print(f"== {name}: stage {index} forward + losses ({names}): {graphs} graphs, {breaks} breaks")
            for r, n in reasons.most_common(args.reasons):
                print(f"   {n:3d} x {r}")
        print(f"   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
