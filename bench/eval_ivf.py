"""Benchmark: exact search against faiss IVF on a gallery of half a million.

The Market-1501+500k shape (3,368 queries; 15,913 gallery images plus 500,000
distractors, 751 identities, 6 cameras), 768-d "trained" features: identity centres
plus `--noise` times Gaussian noise (2.5 is `bench/eval.py`'s ~72% mAP at Market: a
positive's cosine ~0.14, weak neighbourhoods; 1.0: ~0.5, the tight clusters of a
well-trained model); every distractor is its own unqueried identity. Each
row is the work of one `ReIDEvaluator.evaluate` in a fresh process (its own peak RSS):

- exact: chunked matrix products and the full protocol (mAP, mINP);
- faiss_ivf: the evaluator's defaults, faiss's guideline: 4 sqrt(G) lists, k-means on
  up to 256 points per list, nprobe 16;
- faiss_ivf_fast: sqrt(G) lists, k-means on 64 points per list, nprobe 16: a build
  about 10x cheaper, for the trade-off.

IVF reports CMC and mAP@topk (module doc of `core.evaluation.search`); rank-1 is
comparable across rows, and "R1 agreement" is the share of queries whose rank-1 hit or
miss is the same as exact search's.

    python bench/eval_ivf.py [--noise 1.0] [--distractors 500000] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

QUERIES, GALLERY, IDENTITIES, CAMERAS = 3368, 15913, 751, 6


def make_data(distractors: int, dim: int, noise: float, seed: int = 0):
    """Seeded labels and trained-like embeddings; distractors have pids >= IDENTITIES."""
    rng = np.random.default_rng(seed)
    q_pids = np.concatenate([np.arange(IDENTITIES), rng.integers(0, IDENTITIES, QUERIES - IDENTITIES)])
    g_pids = np.concatenate([rng.integers(0, IDENTITIES, GALLERY), IDENTITIES + np.arange(distractors)])
    q_cams, g_cams = rng.integers(0, CAMERAS, QUERIES), rng.integers(0, CAMERAS, len(g_pids))
    centres = rng.standard_normal((IDENTITIES, dim), dtype=np.float32)
    noise = np.float32(noise)
    q = centres[q_pids] + noise * rng.standard_normal((QUERIES, dim), dtype=np.float32)
    g = np.empty((len(g_pids), dim), dtype=np.float32)
    g[:GALLERY] = centres[g_pids[:GALLERY]] + noise * rng.standard_normal((GALLERY, dim), dtype=np.float32)
    for start in range(GALLERY, len(g), 65536):  # own centre + noise, in blocks (memory)
        n = min(65536, len(g) - start)
        g[start:start + n] = np.sqrt(1 + noise**2) * rng.standard_normal((n, dim), dtype=np.float32)
    return torch.from_numpy(q), torch.from_numpy(g), q_pids, g_pids, q_cams, g_cams


def worker(part: str, distractors: int, dim: int, noise: float) -> dict:
    """One timed evaluation: the steps of `ReIDEvaluator.evaluate` (exact: distances in
    blocks, then the protocol; IVF: `search.ivf_per_query`), called one by one so the
    per-query first ranks come out too (for the R1 agreement; 0 = no positive found)."""
    from core.evaluation import search
    from core.evaluation.distances import blocked_rows, distance_to
    from core.evaluation.ranking import per_query_metrics, summarise

    q, g, q_pids, g_pids, q_cams, g_cams = make_data(distractors, dim, noise)
    ranks = [1, 5]
    if part == "faiss_ivf_fast":
        search.IVF_TRAIN_POINTS_PER_LIST = 64
    start = time.perf_counter()
    if part == "exact":
        rows = blocked_rows(distance_to(g, "cosine"), q, len(g))
        per_query = per_query_metrics(rows, q_pids, g_pids, q_cams, g_cams)
        metrics, first = summarise(per_query, ranks), per_query.first_rank
    else:
        topk, nlist = 1000, round(math.sqrt(len(g))) if part == "faiss_ivf_fast" else 0
        valid, first, ap = search.ivf_per_query(q, g, "cosine", q_pids, g_pids, q_cams, g_cams, topk, nlist)
        metrics = search.summarise_topk(valid, first, ap, ranks, topk)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metrics": metrics, "rank1_hits": (first == 1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--noise", type=float, default=1.0, help="feature noise around identity centres")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.distractors, args.dim, args.noise)))
        return
    parts = ("exact", "faiss_ivf", "faiss_ivf_fast")
    results = {}
    for part in parts:
        cmd = [sys.executable, __file__, "--worker", part, "--distractors", str(args.distractors),
               "--dim", str(args.dim), "--noise", str(args.noise)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[part] = json.loads(out.strip().splitlines()[-1])
    g = GALLERY + args.distractors
    print(f"{QUERIES:,} queries x {g:,} gallery, dim {args.dim}, noise {args.noise}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}\n")
    print("| search | lists | time (s) | peak RSS (MiB) | rank-1 | rank-5 | mAP | R1 agreement with exact |")
    print("|---|---|---|---|---|---|---|---|")
    exact_hits = np.asarray(results["exact"]["rank1_hits"])
    lists = {"exact": "-", "faiss_ivf": f"{round(4 * math.sqrt(g)):,}", "faiss_ivf_fast": f"{round(math.sqrt(g)):,}"}
    for part in parts:
        r, m = results[part], results[part]["metrics"]
        ap_key = "mAP" if "mAP" in m else next(k for k in m if k.startswith("mAP@"))
        agreement = float(np.mean(np.asarray(r["rank1_hits"]) == exact_hits))
        print(f"| {part} | {lists[part]} | {r['seconds']:.1f} | {r['peak_mib']:,.0f} | {m['rank-1']:.2f} "
              f"| {m['rank-5']:.2f} | {m[ap_key]:.2f} ({ap_key}) | {100 * agreement:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
