"""`trainer.compile` under torchrun against one eager process (issue 19), for every method's
tiny twin (tests/pipeline_twins.py): the first steps at world size 2 (gloo, 2 CPU
processes, inductor), the same steps in one process without compile; prints the largest
relative difference of a logged value and whether torch reported collectives left
unwaited. CI runs the quickstart case (tests/test_ddp_methods.py); this runs them all
(a few minutes: each process compiles).

    python bench/ddp_compile.py [--twins irm_synthetic ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from core.runner import run  # noqa: E402
from core.testing import run_torchrun  # noqa: E402
from core.training.run_folder import read_metrics  # noqa: E402
from pipeline_twins import TWINS, twin_config  # noqa: E402

#: steps compared, and overrides: muva's first stage has 2 steps per epoch, step 3 is stage 2's first
STEPS = {"muva_synthetic": (3, ["stages.0.epochs=1"])}
SKIP = ("images_per_s", "lr", "event", "stage", "epoch", "global_step", "images_seen")


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["event"] == "train"]


def check(name: str, folder: Path) -> str:
    steps, extra = STEPS.get(name, (2, []))
    base = [f"trainer.stop_after_steps={steps}", "trainer.sync_bn=true", *extra]
    eager = twin_config(name, folder, base)
    (folder / "compiled").mkdir()
    compiled = twin_config(name, folder / "compiled", [*base, "trainer.compile=true"])
    single = run(eager, run_dir=folder / "single")
    for labels in folder.glob("*.npz"):  # labels (muva's prepare step) made by the one-process run
        (folder / "compiled" / labels.name).write_bytes(labels.read_bytes())
    start = time.perf_counter()
    try:
        proc = run_torchrun("-m", "core", "run", compiled, "--run-dir", folder / "ddp", cwd=folder, timeout=1800)
    except AssertionError as exc:  # the end of the processes' stderr
        return f"{name}: FAILED\n{exc}"
    seconds = time.perf_counter() - start
    one, two = train_records(single.run_dir), train_records(folder / "ddp")
    worst, missing = 0.0, set()
    for a, b in zip(one, two):
        for key, value in a.items():
            if key in SKIP or not isinstance(value, (int, float)):
                continue
            if key not in b:
                missing.add(key)
                continue
            worst = max(worst, abs(value - b[key]) / max(abs(value), 1e-3))
    return (f"{name}: steps {len(one)} / {len(two)}, largest relative difference {worst:.1e}, "
            f"unwaited collectives {'yes' if 'unwaited' in proc.stderr else 'none'}, {seconds:.0f} s"
            + (f", not logged under DDP: {', '.join(sorted(missing))}" if missing else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twins", nargs="*", default=sorted(TWINS))
    args = ap.parse_args()
    for name in args.twins:
        print(check(name, Path(tempfile.mkdtemp())), flush=True)


if __name__ == "__main__":
    main()
