"""Host time the instruct-editor training step spent tokenizing, before and after the
instructions were tokenized in the data loader (issue 19; `Backbone.batch_preparer`).

    OMP_NUM_THREADS=1 python bench/instruction_tokens.py [--batch-size 64] [--repeats 20]

The irm_synthetic twin (tests/pipeline_twins.py) at batch 64 (32 identities), its first
six batches (one per task). For each batch, the step (forward + every loss of the last
stage, no backward) runs once on a batch collated by hand, recording every text the step
tokenizes (backbone: all phrasings of the text rows; text-to-image: MLM captions and the
momentum model's captions), and once on the trainer's prepared batch, counting tokenizer
calls (0 expected). The recorded texts are then tokenized by the full-size tokenizer
(open_clip ViT-B-16's, context 77), median of `--repeats`: the host time each step spent
between the device's kernels, and what the loader's worker now spends (the preparer on the
same batch, with the same tokenizer).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from core.config.loading import load_pipeline  # noqa: E402
from core.data.loading import ImageSamples, collate  # noqa: E402
from core.pipeline import bind_losses, build_pipeline  # noqa: E402
from pipeline_twins import twin_config  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    import open_clip
    from reid_instruct_editor.instruction_encoder import InstructionEncoder
    from reid_instruct_editor.instruction_text import InstructionTokens

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    p = build_pipeline(load_pipeline(twin_config("irm_synthetic", folder, [
        f"sampler.batch_size={args.batch_size}", "data.train.0.world.identities=32"])), echo=lambda *a, **k: None)
    model = p.model.train()
    p.loss_modules().train()
    bind_losses(model, p.loss_modules())
    terms = p.stage_losses[-1]
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    full = open_clip.get_tokenizer("ViT-B-16")
    recorded: list[str] = []
    original = InstructionEncoder.tokenize

    def recording(self, texts, device):
        recorded.extend(texts)
        return original(self, texts, device)

    def step(batch) -> None:
        with torch.no_grad():
            outputs = model(batch)
            for term in terms:
                term.module(outputs, batch)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, full-size tokenizer: ViT-B-16 (context 77)")
    print(f"{'task':22} {'texts in step':>13} {'step ms before':>14} {'calls after':>11} "
          f"{'texts in loader':>15} {'loader ms':>9}")
    prepare = p.collate()
    for plan, _ in zip(p.sampler, range(6)):
        items = [samples[(i, 0, 0)] for i in plan]
        recorded.clear()
        InstructionEncoder.tokenize = recording
        try:
            step(collate(items))
        finally:
            InstructionEncoder.tokenize = original
        in_step = list(recorded)
        batch = prepare(items)
        recorded.clear()
        InstructionEncoder.tokenize = recording
        try:
            step(batch)
        finally:
            InstructionEncoder.tokenize = original
        calls_after = len(recorded)
        loader_texts = int(batch.extras["instruction_phrasings"].sum())
        full_preparer = InstructionTokens(full)
        plain = collate(items)
        before = median_ms(lambda: full(in_step), args.repeats) if in_step else 0.0
        loader = median_ms(lambda: full_preparer(plain), args.repeats)
        print(f"{batch.extras['task'][0]:22} {len(in_step):13d} {before:14.2f} {calls_after:11d} "
              f"{loader_texts:15d} {loader:9.2f}")


if __name__ == "__main__":
    main()
