"""Benchmark: our chunked evaluator against the classic per-query loop.

Random embeddings at the shape of Market-1501 (3,368 queries x 15,913 gallery, 751
identities, 6 cameras; --msmt adds MSMT17: 11,659 x 82,161, 3,060 identities, 15
cameras). Two kinds of features: "random" (i.i.d. Gaussian: positives spread over the
whole ranking, our worst case) and "trained" (identity centres + noise, so positives rank
high as with a trained model). Every measurement runs in its own process so peak memory
is its own: the RSS high-water mark above the RSS at the start of the timed region,
sampled every 2 ms.

On the SAME (Q, G) distance matrix we time `rank_metrics` and the per-query loop of
torchreid's / fast-reid's Python `eval_market1501` (a stable argsort per query), and
check the metrics agree; we also time `ReIDEvaluator.evaluate` end to end (chunked
distances + ranking, the matrix never whole).

    python bench/eval.py [--msmt] [--features random trained] [--dim 768] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import torch

SHAPES = {  # name: (queries, gallery, identities, cameras, gallery distractors)
    "market1501": (3368, 15913, 751, 6, 2798),
    "msmt17": (11659, 82161, 3060, 15, 0),
}


def make_data(shape: str, features: str, dim: int, seed: int = 0):
    """Seeded metadata shaped like the dataset's test split, and embeddings."""
    num_q, num_g, num_ids, num_cams, distractors = SHAPES[shape]
    rng = np.random.default_rng(seed)
    q_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_q - num_ids)])
    g_pids = np.concatenate([rng.integers(0, num_ids, num_g - distractors),
                             np.full(distractors, num_ids)])  # distractors: an unqueried pid
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if features == "random":
        q, g = rng.standard_normal((num_q, dim)), rng.standard_normal((num_g, dim))
    else:
        centres = rng.standard_normal((num_ids + 1, dim))
        q = centres[q_pids] + 2.5 * rng.standard_normal((num_q, dim))  # mAP ~ 70%
        g = centres[g_pids] + 2.5 * rng.standard_normal((num_g, dim))
    emb = lambda x: torch.from_numpy(x.astype(np.float32))  # noqa: E731
    return emb(q), emb(g), q_pids, g_pids, q_cams, g_cams


def reference_metrics(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, ranks=(1, 5, 10)):
    """torchreid's eval_market1501 loop, with a stable argsort per query."""
    all_cmc, all_ap, all_inp = [], [], []
    max_rank = max(ranks)
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw_cmc = (g_pids[order] == q_pids[i]).astype(np.int32)[keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[last] / (last + 1.0))
        num_rel = raw_cmc.sum()
        all_ap.append((cmc / np.arange(1.0, len(cmc) + 1) * raw_cmc).sum() / num_rel)
        cmc = np.minimum(cmc, 1)[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), constant_values=1))
    cmc = np.asarray(all_cmc, dtype=np.float64).mean(0)
    out = {f"rank-{k}": 100.0 * cmc[k - 1] for k in ranks}
    out.update({"mAP": 100.0 * np.mean(all_ap), "mINP": 100.0 * np.mean(all_inp),
                "num_valid_queries": len(all_ap)})
    return out


class PeakRSS:
    """RSS high-water mark above the RSS at entry, sampled by a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra_mib = (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(part: str, shape: str, features: str, dim: int) -> dict:
    """One timed measurement; the distance matrix is built before timing starts."""
    from core.evaluation import ReIDEvaluator, pairwise_distance, rank_metrics
    from core.interfaces import FeatureSet

    q, g, q_pids, g_pids, q_cams, g_cams = make_data(shape, features, dim)
    if part == "evaluator":
        query, gallery = FeatureSet(q, q_pids, q_cams), FeatureSet(g, g_pids, g_cams)
        evaluator = ReIDEvaluator(metric="cosine")
        with PeakRSS() as mem:
            start = time.perf_counter()
            metrics = evaluator.evaluate(query, gallery)
    else:
        distmat = torch.cat([pairwise_distance(q[i:i + 512], g, "cosine") for i in range(0, len(q), 512)])
        del q, g
        with PeakRSS() as mem:
            start = time.perf_counter()
            if part == "ours":
                metrics = rank_metrics(distmat, q_pids, g_pids, q_cams, g_cams)
            else:
                metrics = reference_metrics(distmat.numpy(), q_pids, g_pids, q_cams, g_cams)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": mem.extra_mib, "metrics": metrics}


def run_part(part: str, shape: str, features: str, dim: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", part, "--shapes", shape, "--features", features,
           "--dim", str(dim), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msmt", action="store_true", help="also run the MSMT17 shape")
    parser.add_argument("--features", nargs="+", default=["random", "trained"], choices=["random", "trained"])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for ours (the reference loop is single-threaded numpy)")
    parser.add_argument("--shapes", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.shapes[0], args.features[0], args.dim)))
        return
    shapes = args.shapes or (["market1501", "msmt17"] if args.msmt else ["market1501"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"{args.threads} torch threads, load average {os.getloadavg()[0]:.1f}, dim {args.dim}, cosine\n")
    print("| shape (Q x G) | features | mAP | ours: rank_metrics on matrix (s) | reference loop (s) "
          "| speed-up | ours: evaluator end to end (s) | peak extra RSS ours / evaluator / reference (MiB) "
          "| max abs diff vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        num_q, num_g = SHAPES[shape][:2]
        for features in args.features:
            ours, ref, ev = (run_part(p, shape, features, args.dim, args.threads) for p in ("ours", "reference", "evaluator"))
            diff = max(abs(ours["metrics"][k] - ref["metrics"][k]) for k in ref["metrics"])
            diff_ev = max(abs(ev["metrics"][k] - ref["metrics"][k]) for k in ref["metrics"])
            print(f"| {shape} ({num_q:,} x {num_g:,}) | {features} | {ref['metrics']['mAP']:.2f} "
                  f"| {ours['seconds']:.2f} | {ref['seconds']:.2f} | {ref['seconds'] / ours['seconds']:.1f}x "
                  f"| {ev['seconds']:.2f} | {ours['peak_mib']:.0f} / {ev['peak_mib']:.0f} / {ref['peak_mib']:.0f} "
                  f"| {diff:.1e} (evaluator: {diff_ev:.1e}) |", flush=True)


if __name__ == "__main__":
    main()
