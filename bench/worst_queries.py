"""Benchmark: the per-query APs of `core search RUN --worst N` against the evaluator's own
ranking, on random Market-shaped features (3,368 queries x 15,913 gallery items, dim 768,
751 test identities, 6 cameras) and larger galleries.

Three ways to the same per-query APs, each in a fresh process, timed (best of
`--repeat`) end to end (the distances' matrix products included: `total s`) and, when
the (Q, G) float32 matrix fits `--matrix-mb`, the ranking alone on it (`rank s`); `peak
MB` is the process's peak resident memory (ru_maxrss) after the end-to-end runs, `base
MB` its RSS after building the features, before them:

- sorted: the sort-based reference `--worst` ran before (chunks of 2^22 entries:
  float64 distances, a stable full sort of every row, cumulative sums over the mask;
  tests/evaluation_helpers.py `masked_average_precision`, the tests' reference);
- worst: `core.tools.search.protocol_average_precision` now: the evaluator's ranking
  (`per_query_metrics`) with the evaluator's rule as a `ranked` mask;
- eval: `per_query_metrics` as `ReIDEvaluator.evaluate` runs it (its own camera rule,
  no mask): the floor.

Every way's APs are compared with eval's (the largest difference is printed). Random features put
most of the gallery before the hardest positive (the ranking's slow case: the whole
chunk binned); `--trained` draws identity clusters instead (a trained model's case).

    OMP_NUM_THREADS=1 python bench/worst_queries.py --gallery 15913 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the sort-based reference: tests/evaluation_helpers.py


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def problem(queries: int, gallery: int, dim: int, ids: int, trained: bool, seed: int = 0):
    """Features and labels: Market's counts by default (every query identity in the gallery)."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, ids, gallery)
    g_pids[:ids] = np.arange(ids)  # every identity has a gallery image
    q_pids = rng.integers(0, ids, queries)
    q_cams, g_cams = rng.integers(0, 6, queries), rng.integers(0, 6, gallery)
    if trained:
        centres = rng.standard_normal((ids, dim)).astype(np.float32)
        q = centres[q_pids] + 0.7 * rng.standard_normal((queries, dim)).astype(np.float32)
        g = centres[g_pids] + 0.7 * rng.standard_normal((gallery, dim)).astype(np.float32)
    else:
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        g = rng.standard_normal((gallery, dim)).astype(np.float32)
    return q, g, q_pids, g_pids, q_cams, g_cams


def sorted_average_precision(q, g, ranked, q_pids, g_pids):
    """`--worst` before: per chunk of 2^22 entries, the stable full sort of every row."""
    import torch

    from core.evaluation.distances import distance_to
    from core.evaluation.protocol import chunk_rows
    from evaluation_helpers import masked_average_precision

    q, g = torch.as_tensor(q), torch.as_tensor(g)
    to_gallery = distance_to(g, "cosine")
    parts = []
    step = chunk_rows(len(g))
    for start in range(0, len(q), step):
        rows = np.arange(start, min(start + step, len(q)))
        parts.append(masked_average_precision(to_gallery(q[start:rows[-1] + 1]), ranked(rows), q_pids[rows], g_pids))
    return tuple(np.concatenate(cols) for cols in zip(*parts))


def run_way(way: str, args) -> dict:
    """One way in this process: seconds end to end (distances included) and of the
    ranking alone (on the distances computed beforehand, when they fit), best of
    args.repeat each; the peak RSS of the end-to-end runs; the APs."""
    import torch

    from core.evaluation.distances import blocked_rows, distance_to
    from core.evaluation.protocol import standard_ranked_gallery
    from core.evaluation.ranking import per_query_metrics
    from core.interfaces import FeatureSet
    from core.tools.search import protocol_average_precision

    q, g, q_pids, g_pids, q_cams, g_cams = problem(args.queries, args.gallery_size, args.dim, args.ids, args.trained)
    meta = lambda n, p, c: FeatureSet(torch.zeros(n, 0), p, c)  # noqa: E731
    ranked = standard_ranked_gallery(meta(len(q), q_pids, q_cams), meta(len(g), g_pids, g_cams)).ranked
    qt, gt = torch.from_numpy(q), torch.from_numpy(g)

    def ranking(distances):
        if way == "sorted":
            from core.evaluation.protocol import chunk_rows
            from evaluation_helpers import masked_average_precision

            if not isinstance(distances, torch.Tensor):
                return sorted_average_precision(q, g, ranked, q_pids, g_pids)[1]
            step = chunk_rows(len(g))
            return np.concatenate([masked_average_precision(distances[s:s + step], ranked(np.arange(s, min(s + step,
                                   len(q)))), q_pids[s:s + step], g_pids)[1] for s in range(0, len(q), step)])
        if way == "worst":
            if not isinstance(distances, torch.Tensor):
                return protocol_average_precision(q, g, "cosine", ranked, q_pids, g_pids)[1]
            return per_query_metrics(distances, q_pids, g_pids, np.zeros(len(q)), np.zeros(len(g)),
                                     exclude_same_camera=False, ranked=ranked).average_precision
        if distances is None:
            distances = blocked_rows(distance_to(gt, "cosine"), qt, len(gt))
        return per_query_metrics(distances, q_pids, g_pids, q_cams, g_cams).average_precision

    def best(distances):
        seconds, ap = float("inf"), None
        for _ in range(args.repeat):
            start = time.perf_counter()
            with torch.no_grad():
                ap = ranking(distances)
            seconds = min(seconds, time.perf_counter() - start)
        return seconds, ap

    base = rss_mb()
    total, ap = best(None)
    peak = peak_mb()
    rank_only = float("nan")
    if len(q) * len(g) * 4 <= args.matrix_mb * 2**20:
        with torch.no_grad():
            matrix = distance_to(gt, "cosine")(qt)
        rank_only, _ = best(matrix)
    return {"seconds": total, "rank_seconds": rank_only, "peak_mb": peak, "base_mb": base, "ap": ap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, nargs="+", default=[15913, 100000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--trained", action="store_true", help="clustered features (a trained model's distances)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--ways", nargs="+", default=["sorted", "worst", "eval"])
    parser.add_argument("--matrix-mb", type=int, default=4096,
                        help="time the ranking alone on a precomputed (Q, G) float32 matrix when it fits this")
    parser.add_argument("--_way", help=argparse.SUPPRESS)
    parser.add_argument("--_gallery", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._way:  # a child: one way, results to --_out
        args.gallery_size = args._gallery
        result = run_way(args._way, args)
        np.save(args._out, result.pop("ap"))
        print(repr(result))
        return
    import tempfile

    import torch

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}")
    print(f"features: {'clustered (trained-like)' if args.trained else 'random'}, {args.queries} queries, "
          f"dim {args.dim}, {args.ids} identities, 6 cameras; best of {args.repeat}")
    print(f"{'gallery':>9} {'way':>7} {'total s':>8} {'x eval':>7} {'rank s':>7} {'x eval':>7} {'peak MB':>8} "
          f"{'base MB':>8} {'max|dAP|':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.gallery:
            found = {}
            for way in args.ways:
                out = f"{tmp}/{way}-{n}.npy"
                cmd = [sys.executable, __file__, "--_way", way, "--_gallery", str(n), "--_out", out,
                       "--queries", str(args.queries), "--dim", str(args.dim), "--ids", str(args.ids),
                       "--repeat", str(args.repeat), "--matrix-mb", str(args.matrix_mb),
                       *(["--trained"] if args.trained else [])]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"{n:>9} {way:>7} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                found[way] = eval(done.stdout.strip().splitlines()[-1]), np.load(out)  # noqa: S307 - our child's repr
            floor, floor_ap = found.get("eval", (None, None))
            for way, (r, ap) in found.items():
                ratio = f"{r['seconds'] / floor['seconds']:.2f}" if floor else "-"
                rank_ratio = f"{r['rank_seconds'] / floor['rank_seconds']:.2f}" if floor else "-"
                diff = f"{np.abs(ap - floor_ap).max():.1e}" if floor_ap is not None else "-"
                print(f"{n:>9} {way:>7} {r['seconds']:>8.2f} {ratio:>7} {r['rank_seconds']:>7.2f} {rank_ratio:>7} "
                      f"{r['peak_mb']:>8.0f} {r['base_mb']:>8.0f} {diff:>9}", flush=True)


if __name__ == "__main__":
    main()
