"""Benchmark: the floor of our ranking method on this machine.

Times ONLY the passes over every (query, gallery) entry that `core.evaluation.ranking`
makes for random features (whole chunks binned), with none of its per-chunk small ops:
the 1/16 column sample, the bit binning (clamp, shift, add), the histogram (`bincount`),
the shared-bin lookup (`index_select`) and the mask decoding (`nonzero` of its words),
over the Market-1501 matrix in 2^21-entry chunks, in one thread and in two. If this
alone is near the time a speed goal allows, no reshuffling of the small ops reaches it.

    python bench/eval_floor.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from core.evaluation import pairwise_distance

CHUNK_ENTRIES = 2**21
BINS_PER_ROW = 4000  # ~4 items per bin up to the hardest positive, as the evaluator picks


def per_entry_passes(d: torch.Tensor, starts: list[int], rows: int) -> None:
    """The per-entry passes of `ranking._positive_ranks` (whole-chunk path) over the
    chunks starting at `starts`, into buffers reused from chunk to chunk."""
    g = d.shape[1]
    bins = torch.empty(rows * g, dtype=torch.int32)
    words = torch.empty(rows * g // 8 + 1, dtype=torch.int64)
    sample = torch.empty(rows, (g + 15) // 16)
    shared = torch.rand(rows * BINS_PER_ROW) < 0.0035  # ~14 positive bins per row
    lo = int(torch.tensor(float(d.min())).view(torch.int32))
    hi = int(torch.tensor(float(d[:64].quantile(0.95))).view(torch.int32))  # about the hardest positive
    shift = max(0, ((hi - lo) // BINS_PER_ROW).bit_length())
    offset = torch.arange(rows, dtype=torch.int32)[:, None] * BINS_PER_ROW - (lo >> shift)
    for start in starts:
        chunk = d[start:start + rows]
        n = chunk.shape[0]
        float(sample[:n].copy_(chunk[:, ::16]).sum())
        b = bins[:n * g].view(n, g)
        torch.clamp(chunk.view(torch.int32), lo, lo + (BINS_PER_ROW - 1 << shift), out=b).bitwise_right_shift_(shift)
        b.add_(offset[:n])
        torch.bincount(b.view(-1), minlength=n * BINS_PER_ROW)
        torch.index_select(shared, 0, b.view(-1), out=words.view(torch.bool)[:n * g])
        words.nonzero()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(3368, 768, generator=gen), torch.randn(15913, 768, generator=gen)
    d = pairwise_distance(q, g, "cosine").contiguous()
    rows = CHUNK_ENTRIES // d.shape[1]
    starts = list(range(0, d.shape[0], rows))
    one, two = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        per_entry_passes(d, starts, rows)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # as the evaluator: two chunks at once
            list(pool.map(lambda k: per_entry_passes(d, starts[k::2], rows), range(2)))
        two.append(time.perf_counter() - t)
    print(f"Market matrix {tuple(d.shape)}, chunks of {rows} rows, {torch.get_num_threads()} torch threads, "
          f"{time.strftime('%Y-%m-%d')}: per-entry passes only, best / median of {args.repeats}")
    for name, times in (("one thread", one), ("two threads", two)):
        times = sorted(times)
        print(f"  {name}: {times[0] * 1e3:.0f} / {times[len(times) // 2] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
