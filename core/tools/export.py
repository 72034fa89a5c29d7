"""`core export`: the inference model (backbone + head up to "embedding") as TorchScript
and ONNX, each checked against the PyTorch model.

The model's input is a `Batch`, which neither format can carry, so what is exported is
`EmbeddingModel`: images (B, 3, H, W), normalised as the run's test transform does
(export.json records size, mean and std) -> embeddings (B, D) float32, the run's flip
averaging included unless asked otherwise. The batch size stays dynamic. The check runs
each exported file on real images (the run's query images, or --images) at a batch size
other than the one used to export, and reports the largest absolute difference from
the PyTorch embeddings; above the tolerance the export fails.

ONNX goes through `torch.onnx.export` (the dynamo exporter, which needs onnxscript) and
is checked with onnxruntime: `pip install reid-core[export]`.

`safetensors` writes `model.safetensors`: the weights with the resolved pipeline and build
context as metadata (core/tools/weights_file.py), the format to publish a model in —
`core eval`, `extract` and `search` take it in place of a run folder, and loading it runs
no code. Its check rebuilds the model from the file alone and compares the embeddings.

An export writes export.json and one file per format (`FORMAT_FILES`) into --out and no
other file. A folder that already holds one of those (an earlier export) is refused
before any work unless `overwrite`, which replaces the earlier export: its files (those
its export.json lists, which may be of a format not asked for this time: left beside the
new export.json they would pass for part of it) and those this export writes; every
other file in the folder is kept. The files are made in a hidden folder inside --out and
moved into place once every format is written and checked, so an export that stops
half-way (an error, Ctrl-C) leaves the earlier one as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from core.pipeline import ReIDModel
from core.config.loading import ConfigError
from core.records import Batch, MissingBatchField


#: the file each format writes into --out, beside `REPORT`
FORMAT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "safetensors": "model.safetensors"}
REPORT = "export.json"
#: the hidden folder inside --out where an export is made before it is moved into place
STAGE = ".export-partial"


def claim_out(out: str | Path, formats: Sequence[str], overwrite: bool = False) -> None:
    """Refuse, before any work, an `out` holding a file this export writes (an earlier
    export's, which would be lost) unless `overwrite`; a folder at one of those paths
    always, and anything but a folder at the stage's path (a file, a link: the stage is
    made there, and cleared). Files this export does not write never stop it."""
    from core.config.loading import ConfigError
    from core.tools.output_files import refuse_existing

    unknown = [f for f in formats if f not in FORMAT_FILES]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; formats: {', '.join(FORMAT_FILES)}")
    out = Path(out)
    paths = [out / REPORT, *(out / FORMAT_FILES[f] for f in dict.fromkeys(formats))]
    folders = [p for p in paths if p.is_dir() and not p.is_symlink()]
    if folders:
        raise ConfigError(f"{folders[0]} is a folder where the export writes a file; move it away or choose "
                          "another --out", file="--out")
    stage = out / STAGE
    if os.path.lexists(stage) and (stage.is_symlink() or not stage.is_dir()):  # never followed, never removed
        raise ConfigError(f"{stage} is in the way: the export makes its files in a hidden folder of that name and "
                          "moves them into place when all are checked; move it away or choose another --out",
                          file="--out")
    refuse_existing(paths, "an earlier export", overwrite, folder=out,
                    replaced="the files this export writes (other files there are kept)")


class EmbeddingModel(nn.Module):
    """images (B, 3, H, W) -> "embedding" (B, D) float32, as evaluation computes it."""

    def __init__(self, model: ReIDModel, flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.flip = flip

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        batch = Batch(images=images, pids=zeros, camids=zeros, categories=zeros, domains=zeros, roles=zeros,
                      indices=zeros, extras={})
        return self.model(batch)["embedding"].float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self._embed(images)
        if self.flip:
            embedding = (embedding + self._embed(images.flip(-1))) / 2
        return embedding


def check_images(run, images: str | None, count: int = 8) -> torch.Tensor:
    """(n, 3, H, W) test-transformed images for the check: `images`, else the run's query
    images, else random normal tensors. No pre-check of the image files
    (`core.tools.images.screened`, which extract, search and explain run): at most `count`
    images are read, before anything is exported, and one that does not read stops the
    export with one line naming it, so a check first would find nothing sooner and save
    no work."""
    from core.tools.images import open_images

    spec = images or ("run:query" if run.pipeline.test_sets else None)
    if spec is None:
        h, w = run.pipeline.ctx.image_size
        return torch.randn(count, 3, h, w, generator=torch.Generator().manual_seed(0))
    image_set = open_images(spec, run)
    transform = run.pipeline.test_transform
    return torch.stack([transform(image_set.image(i)) for i in range(min(count, len(image_set)))])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max())


@contextlib.contextmanager
def _without_torchscript_noise():
    """Torch's own warnings around tracing and loading TorchScript, which a user of
    `core export` can do nothing about, left out; every other warning stays. They are:
    TracerWarnings raised inside torch's library code, which torch means to ignore
    (`TracerWarning.ignore_lib_warnings`: module "torch.(?!jit)") but whose pattern misses
    the top-level module, home of `torch._assert`: a model's shape assertion (timm's
    image-size check) read as a Python bool while tracing, "might not generalize", which
    the export's check at another batch size settles (a TracerWarning from the model's own
    code stays); and the FutureWarnings that `torch.jit.trace`, `trace_method` and `load`
    are deprecated (torch.export, their successor, is what the ONNX export uses)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch(\Z|\.(?!jit))")
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"`torch\.jit\.(trace|trace_method|load)` is deprecated")
        yield


def export_torchscript(wrapper: EmbeddingModel, example: torch.Tensor, path: Path) -> Path:
    with torch.no_grad(), _without_torchscript_noise():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    return path


def run_torchscript(path: Path, images: torch.Tensor) -> np.ndarray:
    # safe: `path` is the archive export_torchscript has just written from the run's model
    # (the export's own check), never a file the user received
    with _without_torchscript_noise():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def export_onnx(wrapper: EmbeddingModel, example: torch.Tensor, path: Path, opset: int | None = None) -> Path:
    kwargs = {"input_names": ["images"], "output_names": ["embedding"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                          external_data=False, verbose=False, **kwargs)
    return path


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def export_safetensors(run, path: Path) -> Path:
    from core.tools.weights_file import write_weights

    return write_weights(path, run.model, run.pipeline.config.data, run.pipeline.ctx)


def run_safetensors(path: Path, images: torch.Tensor, flip: bool) -> np.ndarray:
    """Embeddings of the model rebuilt from the weights file alone (as `core eval` does)."""
    from core.tools.loading import load_run

    rebuilt = load_run(path, device="cpu")
    with torch.no_grad():
        return EmbeddingModel(rebuilt.model, flip=flip).eval()(images).numpy()


def export(target: str | Path, out: str | Path, formats: Sequence[str] = ("torchscript", "onnx"),
           tolerance: float = 1e-4, opset: int | None = None, images: str | None = None,
           flip: bool = True, overwrite: bool = False) -> dict:
    """Export and check; returns (and writes to export.json) the report. Runs on the CPU:
    the exported files are device-neutral and the check compares like with like. An `out`
    holding an earlier export is refused unless `overwrite` (module doc)."""
    from core.tools.loading import load_run

    claim_out(out, formats, overwrite)
    run = load_run(target, device="cpu")
    wrapper = EmbeddingModel(run.model, flip=flip and run.flip).eval()
    check = check_images(run, images)
    example = check[:2] if len(check) > 2 else check
    try:
        with torch.no_grad():
            reference = wrapper(check).numpy()
    except MissingBatchField as exc:  # e.g. Instruct-ReID's instruction: an embedding of the image and more
        raise ConfigError(f"cannot be exported: {exc.component} reads the batch field '{exc.field}' besides the "
                          "images, and an exported model takes images alone (torchscript and onnx trace that "
                          "call; safetensors is checked by it). Nothing was written; core eval, extract and "
                          "search read the run folder itself", file=str(target)) from None
    out = Path(out)
    stage = out / STAGE
    if stage.is_dir() and not stage.is_symlink():  # an export interrupted before it cleaned up
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        report = _export_into(run, wrapper, check, example, reference, stage, out, formats, tolerance, opset)
        _move_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _export_into(run, wrapper: EmbeddingModel, check: torch.Tensor, example: torch.Tensor, reference: np.ndarray,
                 stage: Path, out: Path, formats: Sequence[str], tolerance: float, opset: int | None) -> dict:
    """Write and check each format in `stage`, then the report; files are named as they
    will be in `out`."""
    from core.data.transforms import NORMS, eval_resize

    transform = (run.pipeline.config.data.get("data") or {}).get("transform") or {}
    h, w = run.pipeline.ctx.image_size
    mean, std = NORMS[transform.get("norm", "imagenet")]
    report = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint),
              "input": {"height": h, "width": w, "resize": eval_resize(transform),
                        "mean": list(mean), "std": list(std), "layout": "NCHW float32"},
              "embedding_dim": int(reference.shape[1]), "flip": wrapper.flip, "metric": run.metric,
              "tolerance": tolerance, "check_images": int(len(check)), "formats": {}}
    for fmt in formats:
        info = {"file": None, "max_abs_diff": None, "ok": False, "note": ""}
        if fmt == "torchscript":
            path = export_torchscript(wrapper, example, stage / FORMAT_FILES[fmt])
            info.update(max_abs_diff=_max_diff(run_torchscript(path, check), reference))
        elif fmt == "onnx":
            try:
                path = export_onnx(wrapper, example, stage / FORMAT_FILES[fmt], opset)
            except ImportError as exc:
                raise ImportError(f"ONNX export needs onnx and onnxscript ({exc}); pip install reid-core[export]") \
                    from None
            try:
                info["max_abs_diff"] = _max_diff(run_onnx(path, check), reference)
            except ImportError:
                info["note"] = "not checked: onnxruntime is not installed (pip install reid-core[export])"
        elif fmt == "safetensors":
            path = export_safetensors(run, stage / FORMAT_FILES[fmt])
            info.update(max_abs_diff=_max_diff(run_safetensors(path, check, wrapper.flip), reference))
        else:
            raise ValueError(f"unknown export format {fmt!r}; formats: torchscript, onnx, safetensors")
        info["file"] = str(out / FORMAT_FILES[fmt])
        info["ok"] = info["max_abs_diff"] is not None and info["max_abs_diff"] <= tolerance
        report["formats"][fmt] = info
    (stage / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _earlier_files(out: Path) -> list[str]:
    """The model files an earlier export in `out` lists in its export.json (names of
    `FORMAT_FILES` only: a hand-edited report cannot name other files to delete)."""
    try:
        formats = json.loads((out / REPORT).read_text(encoding="utf-8")).get("formats") or {}
        listed = {Path(str(info.get("file") or "")).name for info in formats.values() if isinstance(info, dict)}
    except (OSError, ValueError, AttributeError):
        return []
    return sorted(listed & set(FORMAT_FILES.values()))


def _move_in(stage: Path, out: Path) -> None:
    """Replace the earlier export in `out` by the files in `stage`: the earlier export's
    model files not made again are removed, then each new file is renamed into place,
    export.json last (a report never names a file that is not there yet)."""
    made = sorted(p.name for p in stage.iterdir())
    for name in _earlier_files(out):
        if name not in made:
            (out / name).unlink(missing_ok=True)
    for name in sorted(made, key=lambda n: n == REPORT):
        os.replace(stage / name, out / name)
