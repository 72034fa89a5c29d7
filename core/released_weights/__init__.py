"""Released weights of other ReID code bases (fast-reid, TransReID, ...) read into a
reid-core pipeline's model, for `core eval PIPELINE --weights FILE`. See conversion.py
for the reader contract; a reader is a module of this package named in READERS. A reader
may define `PIPELINES` ((name prefixes, words): the first-party pipelines its files fit,
for messages) and three optional functions beyond it, used by core.restore.restore_released when a reader has
them: `num_identities(state) -> int | None` (their classifier's rows, so that a head
with a classifier builds without training data), `num_cameras(state, data) -> int | None` (the cameras
of their camera embedding, e.g. TransReID's SIE table) and `check_pipeline(state, data) ->
list[str]` (the resolved pipeline YAML against their test protocol: notes, or
WeightsMismatch for what cannot be evaluated, e.g. other input normalisation).

Torch-free at import (the CLI reads READERS for `--from`'s choices; `core --help` does not
import torch): the contract's names are handed on when first asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

#: the reader modules, in the order `--from auto` asks them
READERS = ("fastreid", "transreid", "strong_baseline", "agw")
AUTO = "auto"

__all__ = ["AUTO", "READERS", "Converted", "WeightsMismatch", "pick_reader", "read_weights", "reader_modules"]


def __getattr__(name: str) -> Any:
    if name in ("Converted", "WeightsMismatch"):
        from core.released_weights import conversion

        return getattr(conversion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def reader_modules() -> dict[str, ModuleType]:
    """NAME -> reader module, in READERS order."""
    modules = [importlib.import_module(f"{__name__}.{name}") for name in READERS]
    return {m.NAME: m for m in modules}


def _listing(modules: dict[str, ModuleType]) -> str:
    return ", ".join(f"{name} ({m.TITLE})" for name, m in modules.items())


def pick_reader(state: dict[str, Any], source: str, path: Path | str) -> ModuleType:
    """The reader `source` names, or (`auto`) the one reader that recognises `state`;
    none or several is one WeightsMismatch line listing the readers. A named reader must
    recognise the file too: every reader's convert needs its own names, and a file of
    another code base would otherwise fail later, at the model's build, with a line that
    says nothing of the file."""
    from core.released_weights.conversion import WeightsMismatch

    modules = reader_modules()
    if source != AUTO and source not in modules:
        raise WeightsMismatch(f"--from {source}: no such reader; readers: {_listing(modules)} (or auto)")
    found = [m for m in modules.values() if m.recognise(state)]
    sample = ", ".join(sorted(state)[:3])
    if source != AUTO and modules[source] in found:
        return modules[source]
    if source != AUTO and found:
        raise WeightsMismatch(f"{path}: --from {source}: its tensor names (e.g. {sample}) are not "
                              f"{modules[source].TITLE}'s; {', '.join(m.NAME for m in found)} reads it "
                              f"(--from {found[0].NAME}, or auto)")
    if len(found) == 1:
        return found[0]
    if not found:
        via = f"--from {source}: " if source != AUTO else ""
        raise WeightsMismatch(f"{path}: {via}no reader recognises its tensor names (e.g. {sample}); readers: "
                              f"{_listing(modules)} (a code base or model variant none of them reads)")
    raise WeightsMismatch(f"{path}: several readers recognise it ({', '.join(m.NAME for m in found)}); "
                          f"name one with --from; readers: {_listing(modules)}")


def read_weights(path: Path) -> dict[str, Any]:
    """The file's tensors: torch.load(weights_only=True) or safetensors, never pickle (a file
    that needs it is refused with one line); `model` / `state_dict` wrappers and `module.`
    prefixes removed (core.models.timm_backbone.unwrap_checkpoint)."""
    import torch

    from core.models.timm_backbone import unwrap_checkpoint
    from core.released_weights.conversion import WeightsMismatch
    from core.training.checkpoint import reading_weights

    if not path.is_file():
        raise FileNotFoundError(f"--weights: no file at {path}")
    with reading_weights(path, lambda line: WeightsMismatch(f"--weights: {line}"),
                         "Load it in its own code base and save its state dict (torch.save(model.state_dict(), "
                         "...)) or convert it to .safetensors; nothing from the file is run here"):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = unwrap_checkpoint(state)
    if not isinstance(state, dict) or not state:
        found = "an empty mapping" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise WeightsMismatch(f"--weights: {path} holds {found}, not a state dict of tensors")
    return state
