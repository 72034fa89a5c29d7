"""Benchmark: evaluation over a gallery of N items stored as a memory-mapped float16 file
(issue 24): the exact protocol out of core (`search: blocked`) and IVF-PQ
(`search: faiss_ivfpq`) over a grid of settings (nlist, pq_m, nprobe, exact re-ranking of
refine x k candidates), each with recall@k against the exact top k.

Clustered synthetic features (identities with ~10 gallery images, centres of std 1 plus
`--noise` per image, 6 cameras), written in chunks with
`core.evaluation.features.FeatureWriter`; the gallery is never whole in RAM as float32.
Each phase runs in a fresh process reading the file, so its peak resident memory
(ru_maxrss) is its own; `base_mb` is that process's RSS after imports and the queries,
before the step.

- exact: `ReIDEvaluator(search="blocked")`, full CMC / mAP / mINP;
- ivfpq: the exact top k of every query (`blocked.blocked_topk`, timed: the reference),
  then per (nlist, pq_m) one index (the coarse k-means trained once per nlist and shared
  by the pq_m values), and per (nprobe, refine) a search of all queries: seconds,
  recall@k and recall@10 (of the exact 10 nearest, about one identity's images), rank-1
  and mAP@k (the evaluator's truncated protocol, `search.topk_per_query`). 0 for
  --nlist / --pq-m / --nprobe: the evaluator's default (the row shows what it became).

    OMP_NUM_THREADS=1 nice -n 5 python bench/eval_blocked.py --gallery 1000000 --queries 200 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def write_problem(work: Path, n: int, queries: int, dim: int, noise: float, seed: int = 0, chunk: int = 100_000):
    """gallery.npy (float16, written in chunks) and problem.npz (labels, float32 queries)."""
    from core.evaluation.features import FeatureWriter

    rng = np.random.default_rng(seed)
    ids = max(n // 10, 1)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    pids = rng.integers(0, ids, n)
    writer = FeatureWriter(work / "gallery.npy", n, dim)
    for s in range(0, n, chunk):
        p = pids[s:s + chunk]
        writer.write(centres[p] + noise * rng.standard_normal((len(p), dim)).astype(np.float32))
    writer.close()
    q_rng = np.random.default_rng(1)
    q_pids = q_rng.choice(pids, queries)
    q = centres[q_pids] + noise * q_rng.standard_normal((queries, dim)).astype(np.float32)
    np.savez(work / "problem.npz", q=q, q_pids=q_pids, q_cams=q_rng.integers(0, 6, queries), g_pids=pids,
             g_cams=rng.integers(0, 6, n))


def _load(work: Path):
    import torch

    from core.evaluation.features import open_features
    from core.interfaces import FeatureSet

    arrays = np.load(work / "problem.npz")
    gallery = open_features(work / "gallery.npy")
    query = FeatureSet(torch.from_numpy(arrays["q"]), arrays["q_pids"], arrays["q_cams"])
    return query, gallery, arrays


def phase_exact(work: Path, args) -> dict:
    from core.evaluation import ReIDEvaluator
    from core.evaluation.features import features_tensor
    from core.interfaces import FeatureSet

    query, _, arrays = _load(work)
    gallery = FeatureSet(features_tensor(work / "gallery.npy"), arrays["g_pids"], arrays["g_cams"],
                         embeddings_file=work / "gallery.npy")  # a tensor over the map, as the trainer's
    base = rss_mb()
    start = time.perf_counter()
    metrics = ReIDEvaluator(search="blocked", chunk_size=args.query_block).evaluate(query, gallery)
    return {"seconds": time.perf_counter() - start, "base_mb": base, "peak_mb": peak_mb(), **metrics}


def phase_ivfpq(work: Path, args) -> dict:
    from core.evaluation.blocked import blocked_topk
    from core.evaluation.ranking import _codes
    from core.evaluation.search import (build_ivfpq, import_faiss, kept_positives, recall_at_k, search_ivfpq,
                                        summarise_topk, topk_per_query)

    faiss = import_faiss("faiss_ivfpq")
    query, gallery, arrays = _load(work)
    base = rss_mb()
    q = query.embeddings.numpy()
    start = time.perf_counter()
    exact = blocked_topk(q, gallery, "cosine", args.topk, query_block=args.query_block)[1]
    out: dict = {"base_mb": base, "exact_topk_s": time.perf_counter() - start, "settings": []}
    q_pids, g_pids = _codes(arrays["q_pids"], arrays["g_pids"], "pids")
    q_cams, g_cams = _codes(arrays["q_cams"], arrays["g_cams"], "camids")
    removed = (kept_positives(q_pids, g_pids, q_cams, g_cams, False)
               - kept_positives(q_pids, g_pids, q_cams, g_cams, True))
    k = args.topk + int(removed.max(initial=0))  # as the evaluator asks, so topk kept items remain
    for nlist in args.nlist:
        first = None  # the first index of this nlist: its coarse quantizer serves the others (kept alive)
        for m in args.pq_m:
            start = time.perf_counter()
            index = build_ivfpq(gallery, "cosine", nlist, m) if first is None else _with_quantizer(
                faiss, first.quantizer, gallery, nlist, m)
            first = first or index
            build_s = time.perf_counter() - start
            for nprobe, refine in itertools.product(args.nprobe, args.refine):
                start = time.perf_counter()
                retrieved = search_ivfpq(index, q, gallery, "cosine", k, nprobe, refine)
                seconds = time.perf_counter() - start
                per_query = topk_per_query(retrieved, q_pids, g_pids, q_cams, g_cams, args.topk)
                summary = summarise_topk(*per_query, [1, 5], args.topk)
                row = {"nlist": index.nlist, "pq_m": index.pq.M, "nprobe": index.nprobe, "refine": refine,
                       "build_s": build_s,
                       "search_s": seconds, f"recall@{args.topk}": recall_at_k(retrieved, exact),
                       "recall@10": recall_at_k(retrieved[:, :10], exact[:, :10]),
                       "rank-1": summary["rank-1"], f"mAP@{args.topk}": summary[f"mAP@{args.topk}"],
                       "peak_mb": peak_mb()}
                print(json.dumps(row), file=sys.stderr, flush=True)
                out["settings"].append(row)
    out["peak_mb"] = peak_mb()
    return out


def _with_quantizer(faiss, quantizer, gallery, nlist: int, m: int):
    """An IVF-PQ index reusing a trained coarse quantizer (faiss skips the k-means when the
    quantizer already holds nlist centroids); its PQ is trained as `build_ivfpq` does."""
    from core.evaluation.search import IVF_TRAIN_POINTS_PER_LIST, _as_float32, _unit_rows

    num_g, dim = len(gallery), int(gallery.shape[1])
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    train_n = min(num_g, max(nlist * IVF_TRAIN_POINTS_PER_LIST, 256 * 64))
    sample = np.sort(np.random.default_rng(0).choice(num_g, train_n, replace=False))
    train = _as_float32(gallery[sample])
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    index.train(train)
    for start in range(0, num_g, 65536):
        index.add(_unit_rows(gallery, start, min(start + 65536, num_g), "cosine"))
    return index


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--noise", type=float, default=1.2, help="feature noise (identity centres have std 1)")
    parser.add_argument("--query-block", type=int, default=256)
    parser.add_argument("--nlist", type=_ints, default=[1024])
    parser.add_argument("--pq-m", type=_ints, default=[32, 64])
    parser.add_argument("--nprobe", type=_ints, default=[16, 64])
    parser.add_argument("--refine", type=_ints, default=[0, 4])
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--skip-ivfpq", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = {"exact": phase_exact, "ivfpq": phase_ivfpq}[args.phase](Path(args.workdir), args)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_problem(work, args.gallery, args.queries, args.dim, args.noise)
        out: dict = {"gallery": args.gallery, "queries": args.queries, "dim": args.dim, "noise": args.noise,
                     "write_s": time.perf_counter() - start, "write_peak_mb": peak_mb(),
                     "file_mb": (work / "gallery.npy").stat().st_size / 2**20}
        argv, skip = [], False
        for a in sys.argv[1:]:  # this run's options less --workdir (the phase gets the temp folder)
            if not skip and not a.startswith("--workdir"):
                argv.append(a)
            skip = a == "--workdir"
        for phase in ("exact", "ivfpq"):
            if getattr(args, f"skip_{phase}"):
                continue
            done = subprocess.run([sys.executable, __file__, *argv, "--phase", phase, "--workdir", str(work)],
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ), check=True)
            out[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
