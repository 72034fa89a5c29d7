"""`core extract`: the embeddings of a set of images under a trained model, saved with
their records as one .npz file (the gallery side of `core search`, or input to your own
analysis).

The file holds `embeddings` (N, D) float32 and, per row, `paths` ("" for images rendered
in memory), `pids` (-1 unknown), `camids`, `categories`, `domains`, `splits`; plus `meta`,
a JSON string: the run folder, checkpoint, distance metric and embedding size, which
`core search` checks before it ranks a query against the file.

For galleries of millions (`--half`, issue 24) the embeddings are written batch by batch
into a memory-mapped float16 .npy beside the .npz (`<out>.f16.npy`,
`core.evaluation.features`): the whole gallery is never in RAM as float32, and the .npz
holds the records and `embeddings_file` (the .npy's name) in place of `embeddings`;
`load_features` maps it back read-only (the evaluator's `search: blocked` reads it block
by block).

An existing .npz (or, with `--half`, .f16.npy) at --out is refused before any work unless
`overwrite`, which replaces those files and no other. Both are written to a temporary
file beside the target and renamed into place: an interrupted extract leaves the old file,
never half a new one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.data.annotations import read_arrays
from core.data.loading import ImageSamples, collate
from core.records import Record
from core.tools.images import UNKNOWN_CATEGORY, ImageFiles, ImageSet, _table
from core.tools.loading import LoadedRun


def embed(run: LoadedRun, images: ImageSet, batch_size: int = 64, num_workers: int = 0,
          progress: bool = True, half_file: str | Path | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of `images` in table order, as evaluation computes them
    (test transform, the run's flip averaging and autocast); with `half_file`, written
    batch by batch into that float16 memory map instead, which is returned."""
    from core.evaluation.features import FeatureWriter

    from tqdm.auto import tqdm

    from core.log_setup import bar_disabled

    samples = ImageSamples(images.table, images.datasets, run.pipeline.test_transform)
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers, pin_memory=run.device.type == "cuda")
    chunks, writer = [], None
    # closed on success only: a failure leaves it to the CLI, which ends its line before the error
    bar = tqdm(total=len(samples), desc="extract", unit="img", disable=bar_disabled(progress), leave=False)
    with torch.no_grad(), run.autocast(), _needs_fields_of(images):
        for batch in loader:
            batch = batch.to(run.device, non_blocking=True)
            embedding = run.model(batch)["embedding"].float()
            if run.flip:
                batch.images = batch.images.flip(-1)
                embedding = (embedding + run.model(batch)["embedding"].float()) / 2
            if half_file is None:
                chunks.append(embedding.cpu())
            else:
                if writer is None:
                    writer = FeatureWriter(half_file, len(samples), embedding.shape[1])
                writer.write(embedding.cpu().numpy())
            bar.update(len(batch))
    bar.close()
    if not chunks and writer is None:
        raise ValueError(f"{images.source}: no images to embed")
    if writer is not None:
        return writer.close()
    return torch.cat(chunks).numpy().astype(np.float32)


@contextlib.contextmanager
def _needs_fields_of(images: ImageSet):
    """A model that embeds an image with a batch field besides it (Instruct-ReID's
    instruction) given images that do not carry it: one line naming the images, the
    component and the field (it was a raw KeyError blaming the pipeline, exit 1)."""
    from core.config.loading import ConfigError
    from core.records import MissingBatchField

    try:
        yield
    except MissingBatchField as exc:
        raise ConfigError(f"{exc.component} embeds each image with its batch field '{exc.field}', which these "
                          f"images do not carry; give a source that does, such as the run's own data (run:query, "
                          f"run:gallery)", file=images.source) from None


@dataclass
class Features:
    """Embeddings with the records they belong to (what a .npz from `core extract` holds)."""

    embeddings: np.ndarray
    images: ImageSet
    meta: dict[str, Any] = field(default_factory=dict)


def features_path(out: str | Path) -> Path:
    """The .npz written for `out`: `out` itself when it ends in .npz, else with .npz added."""
    out = Path(out)
    return out if out.suffix == ".npz" else Path(f"{out}.npz")


def half_path(out: str | Path) -> Path:
    """The float16 memory map beside the .npz (`--half`): FEATS.npz -> FEATS.f16.npy."""
    return features_path(out).with_suffix(".f16.npy")


def claim_out(out: str | Path, half: bool = False, overwrite: bool = False) -> None:
    """Refuse, before any work, an `out` whose .npz (with `half`, or whose .f16.npy) exists
    (earlier embeddings, which would be lost) unless `overwrite`."""
    from core.tools.output_files import refuse_existing

    refuse_existing([features_path(out), *([half_path(out)] if half else [])], "earlier embeddings", overwrite)


def save_features(path: str | Path, features: Features) -> Path:
    """Write the .npz atomically (a temp file renamed into place: an interruption leaves the
    old file); `path` gets .npz added when it lacks it."""
    from core.training.checkpoint import atomic_write_bytes

    path = features_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = features.images.table
    e = features.embeddings
    on_disk = isinstance(e, np.memmap) and e.filename and Path(e.filename).parent.resolve() == path.parent.resolve()
    stored = dict(embeddings_file=np.asarray(Path(e.filename).name)) if on_disk else \
        dict(embeddings=e.astype(np.float32))
    arrays = dict(
        **stored,
        paths=np.asarray(t.column("path").to_list(), dtype=str),  # "" where an image has no file
        pids=t.pids.astype(np.int64), camids=t.camids.astype(np.int64),
        categories=t.column("category").astype(str), domains=t.column("domain").astype(str),
        splits=t.column("split").astype(str),
        meta=np.asarray(json.dumps(features.meta)))
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def load_features(path: str | Path) -> Features:
    """A .npz written by `core extract`; its images decode from their paths when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    arrays = read_arrays(path, "features file")
    missing = [k for k in ("paths", "pids", "camids") if k not in arrays]
    if "embeddings" not in arrays and "embeddings_file" not in arrays:
        missing.insert(0, "embeddings")
    if missing:
        raise ValueError(f"{path}: not a features file written by `core extract` (lacks {', '.join(missing)})")
    if "embeddings_file" in arrays:  # float16 memory map beside the .npz (`--half`)
        from core.evaluation.features import open_features

        arrays["embeddings"] = open_features(path.parent / str(arrays["embeddings_file"]))
    n = len(arrays["embeddings"])
    column = lambda key, default: arrays[key].tolist() if key in arrays else [default] * n  # noqa: E731
    records = [Record(path=p or None, pid=int(pid), camid=int(cam), category=c, domain=d, split=s)
               for p, pid, cam, c, d, s in zip(arrays["paths"].tolist(), arrays["pids"], arrays["camids"],
                                               column("categories", UNKNOWN_CATEGORY), column("domains", "default"),
                                               column("splits", "gallery"))]
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    images = ImageSet(_table(records, path.stem), [ImageFiles(records)], str(path))
    e = arrays["embeddings"]
    return Features(embeddings=e if isinstance(e, np.memmap) else e.astype(np.float32), images=images, meta=meta)


def features_meta(run: LoadedRun, images: ImageSet, embeddings: np.ndarray) -> dict[str, Any]:
    return {"run_dir": str(run.run_dir.resolve()), "checkpoint": str(run.checkpoint.resolve()),
            "metric": run.metric, "dim": int(embeddings.shape[1]), "source": images.source,
            "flip": run.flip}


def extract_to_file(target: str | Path, images: str | Path, out: str | Path, device: str = "auto",
                    batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                    half: bool = False, image_check: str = "error",
                    overwrite: bool = False, weights: str | Path | None = None, source: str = "auto",
                    overrides: Sequence[str] = ()) -> tuple[Path, Features]:
    """What `core extract` does: load the run, check the image files, embed the images,
    write the .npz (with `half`, the embeddings into a float16 memory map beside it; module
    doc). `image_check`, as for training (core.data.image_check): unreadable files stop it
    before the first batch ("error"), are left out with a warning ("skip"), or are not
    looked for ("off"). Existing output files are refused unless `overwrite`."""
    from core.evaluation.features import open_features
    from core.tools.images import open_images, screened
    from core.tools.loading import load_run
    from core.training.checkpoint import atomic_replace

    claim_out(out, half, overwrite)
    run = load_run(target, device=device, overrides=overrides, weights=weights, source=source)
    image_set, = screened([("--images", open_images(images, run))], image_check, "Nothing was extracted")
    if half:  # into a temp file renamed into place once complete, as the .npz is
        with atomic_replace(half_path(out)) as partial:
            embed(run, image_set, batch_size=batch_size, num_workers=num_workers, progress=progress,
                  half_file=partial)
        embeddings = open_features(half_path(out))
    else:
        embeddings = embed(run, image_set, batch_size=batch_size, num_workers=num_workers, progress=progress)
    features = Features(embeddings, image_set, features_meta(run, image_set, embeddings))
    return save_features(out, features), features

