"""Shareable weights: one `.safetensors` file holding a trained model and what rebuilds it.

This is the format to publish a model in. safetensors stores tensors and string metadata
only, so opening a file received from someone else cannot run code (a pickled
checkpoint can). The file holds:

- the evaluated model's weights (backbone + head; the EMA copy when the run kept one,
  since that is what its evaluations used), under their `backbone.*` / `head.*` names;
- metadata `reid_core.pipeline`: the run's resolved pipeline as YAML, with `trainer.ema`
  cleared (the weights are already the evaluated ones);
- metadata `reid_core.context`: the facts the training data decided (number of
  identities, identities per category, category names, image size, ...), as JSON, so the
  model can be rebuilt without the training data;
- metadata `reid_core.version` and `format` ("pt", as torch's safetensors helpers expect).

`core eval`, `extract` and `search` accept the file in place of a run folder. Its
pipeline's local plugin files (`plugins:`) are refused unless --allow-plugin-files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from core.config.loading import ConfigError, LoadedConfig, apply_override, dump, parse_override, safe_load

SUFFIX = ".safetensors"
PIPELINE_KEY = "reid_core.pipeline"
CONTEXT_KEY = "reid_core.context"
#: BuildContext fields that the training data decides and the model needs to be rebuilt
CONTEXT_FIELDS = ("num_identities", "identities_per_category", "category_names", "domain_names", "num_cameras",
                  "image_size", "feature_dim", "patch_grid", "seed")


def is_weights_file(target: str | Path) -> bool:
    return str(target).endswith(SUFFIX) and Path(target).is_file()


def write_weights(path: str | Path, model: torch.nn.Module, pipeline: dict[str, Any], ctx: Any) -> Path:
    """Write `model`'s weights with the pipeline and build-context facts as metadata."""
    from safetensors.torch import save

    from core import __version__
    from core.training.checkpoint import atomic_write_bytes

    data = copy.deepcopy(pipeline)
    if isinstance(data.get("trainer"), dict):
        data["trainer"]["ema"] = None
    facts = {name: getattr(ctx, name) for name in CONTEXT_FIELDS}
    # safetensors refuses tensors that share memory (tied weights): each gets its own copy
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", PIPELINE_KEY: dump(data), CONTEXT_KEY: json.dumps(facts),
                "reid_core.version": __version__}
    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(save(tensors, metadata=metadata)))
    return path


def read_weights(path: str | Path, overrides: Sequence[str] = ()) -> tuple[LoadedConfig, dict[str, Any],
                                                                             dict[str, torch.Tensor]]:
    """(pipeline with `overrides` applied, build-context facts, weights) of a weights file."""
    from safetensors.torch import load_file, safe_open

    from core.training.checkpoint import reading_weights

    path = Path(path)
    # a cut or corrupt file: the line every weights reader gives ('PATH: not a readable
    # safetensors file (why; copy it again)'), here a ConfigError naming the file
    with reading_weights(path, lambda line: ConfigError(line.removeprefix(f"{path}: "), file=str(path)),
                         "Write it with `core export RUN --format safetensors`."):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    missing = [k for k in (PIPELINE_KEY, CONTEXT_KEY) if k not in metadata]
    if missing:
        raise ConfigError(f"a safetensors file without reid-core's metadata ({', '.join(missing)}): write it with "
                          "`core export RUN --format safetensors`", file=str(path))
    data = safe_load(metadata[PIPELINE_KEY]) or {}
    facts = json.loads(metadata[CONTEXT_KEY])
    origins: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value, origins)
    return LoadedConfig(data=data, file=path.resolve(), origins=origins), facts, state


def context_from_facts(facts: dict[str, Any], **kwargs: Any):
    """A BuildContext from a weights file's facts (no training table)."""
    from core.context import BuildContext

    values = {k: facts[k] for k in CONTEXT_FIELDS if k in facts}
    for key in ("image_size", "patch_grid"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return BuildContext(train=None, **values, **kwargs)
