"""Benchmark: our chunked evaluator against the classic per-query loop.

Embeddings at the shape of Market-1501 (3,368 queries x 15,913 gallery, 751 identities,
6 cameras; --msmt adds MSMT17: 11,659 x 82,161, 3,060 identities, 15 cameras). Two kinds
of features: "random" (i.i.d. Gaussian: positives spread over the whole ranking, our
worst case) and "trained" (identity centres + noise, so positives rank high as with a
trained model). Every measurement runs in its own process; peak RSS is the process's.

Ranking only: on the SAME (Q, G) distance matrix we time `rank_metrics` and the per-query
loop of torchreid's / fast-reid's Python `eval_market1501`, with a stable argsort per
query (the tie rule our metrics follow, so the metrics must agree) and with numpy's
default quicksort (what the toolkits call; as fast as it gets, ties unordered). End to end: `ReIDEvaluator.evaluate` (chunked distances +
ranking, the matrix never whole), against the reference loop plus the time of the
distances it needs. For MSMT17 the reference loop is timed on a sample of queries and
scaled; our ranking alone on the whole matrix (3.8 GB) only with --msmt-matrix.

    python bench/eval.py [--msmt] [--features random trained] [--dim 768] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
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


def reference_metrics(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, ranks=(1, 5, 10),
                      kind: str = "stable"):
    """torchreid's eval_market1501 loop, with an argsort per query: stable (ties by
    gallery index, the rule our metrics follow) or numpy's default quicksort (what the
    toolkits call; ties in an unspecified order)."""
    all_cmc, all_ap, all_inp = [], [], []
    max_rank = max(ranks)
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind=kind)
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


def worker(part: str, shape: str, features: str, dim: int, sample: int) -> dict:
    """One timed measurement in this process. "ours" / "reference": ranking only, on the
    same (Q, G) matrix built before timing ("reference" on the first `sample` queries
    when sample > 0, to be scaled up); "exact" / "faiss_flat": `ReIDEvaluator.evaluate`
    end to end (chunked distances + ranking). `peak_mib` is the process's peak RSS."""
    from core.evaluation import ReIDEvaluator, pairwise_distance, rank_metrics
    from core.interfaces import FeatureSet

    q, g, q_pids, g_pids, q_cams, g_cams = make_data(shape, features, dim)
    distance_seconds = 0.0
    if part in ("exact", "faiss_flat"):
        query, gallery = FeatureSet(q, q_pids, q_cams), FeatureSet(g, g_pids, g_cams)
        evaluator = ReIDEvaluator(metric="cosine", search=part)
        start = time.perf_counter()
        metrics = evaluator.evaluate(query, gallery)
    else:
        if sample:
            q, q_pids, q_cams = q[:sample], q_pids[:sample], q_cams[:sample]
        start = time.perf_counter()
        distmat = torch.cat([pairwise_distance(q[i:i + 512], g, "cosine") for i in range(0, len(q), 512)])
        distance_seconds = time.perf_counter() - start
        del q, g
        start = time.perf_counter()
        if part == "ours":
            metrics = rank_metrics(distmat, q_pids, g_pids, q_cams, g_cams)
        else:
            kind = "quicksort" if part == "reference_quicksort" else "stable"
            metrics = reference_metrics(distmat.numpy(), q_pids, g_pids, q_cams, g_cams, kind=kind)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "distance_seconds": distance_seconds, "peak_mib": peak, "metrics": metrics}


def run_part(part: str, shape: str, features: str, args, sample: int = 0) -> dict:
    """Best of `args.repeats` runs (each in a fresh process: its own peak RSS)."""
    cmd = [sys.executable, __file__, "--worker", part, "--shapes", shape, "--features", features,
           "--dim", str(args.dim), "--threads", str(args.threads), "--sample", str(sample)]
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msmt", action="store_true", help="also run the MSMT17 shape")
    parser.add_argument("--features", nargs="+", default=["random", "trained"], choices=["random", "trained"])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for ours (the reference loop is single-threaded numpy)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (ours and the references alike); the best is shown")
    parser.add_argument("--msmt-matrix", action="store_true",
                        help="also time our ranking alone on the whole MSMT17 matrix (3.8 GB of memory)")
    parser.add_argument("--msmt-sample", type=int, default=500,
                        help="queries the MSMT17 reference loop is timed on (scaled to all queries)")
    parser.add_argument("--shapes", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.shapes[0], args.features[0], args.dim, args.sample)))
        return
    shapes = args.shapes or (["market1501", "msmt17"] if args.msmt else ["market1501"])
    print(f"{_cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} torch "
          f"threads, load average {os.getloadavg()[0]:.1f}, dim {args.dim}, cosine, "
          f"{time.strftime('%Y-%m-%d')}; best of {args.repeats} runs\n")
    print("| shape (Q x G) | features | mAP | ours: ranking (s) | reference loop, stable (s) | speed-up "
          "| reference loop, quicksort (s) | speed-up | ours: end to end (s) | speed-up end to end "
          "| faiss_flat end to end (s) | peak RSS end to end (MiB) | max abs diff vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        num_q, num_g = SHAPES[shape][:2]
        big = shape == "msmt17"
        sample = args.msmt_sample if big else 0
        scale = num_q / args.msmt_sample if big else 1.0
        for features in args.features:
            exact = run_part("exact", shape, features, args)
            ref = run_part("reference", shape, features, args, sample=sample)
            quick = run_part("reference_quicksort", shape, features, args, sample=sample)
            ref_loop, ref_distances = ref["seconds"] * scale, ref["distance_seconds"] * scale
            quick_loop = quick["seconds"] * scale
            if big:  # the references run on a sample; ours ranks the whole matrix with --msmt-matrix
                ours_s, speedup, quick_speedup, diff = "-", "-", "-", "n/a (reference on a sample)"
                est = f" (est. from {args.msmt_sample} queries)"
                ref_cell, quick_cell = f"{ref_loop:.1f}{est}", f"{quick_loop:.1f}{est}"
                faiss_s = "-"
                if args.msmt_matrix:  # the (Q, G) matrix is 3.8 GB
                    ours = run_part("ours", shape, features, args)
                    ours_s = f"{ours['seconds']:.2f}"
                    speedup, quick_speedup = f"{ref_loop / ours['seconds']:.0f}x", f"{quick_loop / ours['seconds']:.0f}x"
            else:
                ours = run_part("ours", shape, features, args)
                ours_s = f"{ours['seconds']:.3f}"
                speedup, quick_speedup = f"{ref_loop / ours['seconds']:.0f}x", f"{quick_loop / ours['seconds']:.0f}x"
                diff = f"{max(abs(exact['metrics'][k] - ref['metrics'][k]) for k in ref['metrics']):.1e}"
                ref_cell, quick_cell = f"{ref_loop:.2f}", f"{quick_loop:.2f}"
                faiss_s = f"{run_part('faiss_flat', shape, features, args)['seconds']:.2f}"
            end_to_end = (ref_loop + ref_distances) / exact["seconds"]
            print(f"| {shape} ({num_q:,} x {num_g:,}) | {features} | {exact['metrics']['mAP']:.2f} "
                  f"| {ours_s} | {ref_cell} | {speedup} | {quick_cell} | {quick_speedup} | {exact['seconds']:.2f} "
                  f"| {end_to_end:.1f}x | {faiss_s} | {exact['peak_mib']:.0f} | {diff} |", flush=True)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
