"""Atomic checkpoints and the random-number state a resumed run needs.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one: a crash mid-write never leaves a truncated `last.pt`, and a
failed write (disk full, I/O error) leaves the previous file as it was.

Checkpoints hold only what `torch.load(weights_only=True)` accepts — tensors and plain
Python containers of numbers and strings (numpy's RNG state is stored as a tensor) — so
loading one can never run code. A file that needs pickle (an old checkpoint, or one made
by another tool) is refused unless the user says they trust it (`--trust-checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely or at all; the message names the file."""


class WriteError(OSError):
    """Writing a file failed (disk full, I/O error, permissions): one line naming the path
    and the cause. The file that was there before is untouched."""

    def __str__(self) -> str:
        return str(self.strerror)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file_object)` on a temp file beside `path`, fsync, then rename it into
    place with the user's umask (mkstemp's files are 0600). Any failure removes the temp
    file and leaves the old `path` as it was; an OSError becomes a `WriteError` naming
    `path` and the cause."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}"
                         + ("; the previous file is kept" if path.exists() else "")) from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete `.<name>.*.tmp` files that an earlier process killed mid-write left behind
    (a SIGKILL runs no clean-up); called when a run folder is opened."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


TRUST_FLAG = "--trust-checkpoint"


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`. A file that needs pickle is refused with
    a message naming it; `trust=True` (the CLI's --trust-checkpoint) loads it anyway."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "Unsupported" in line or "GLOBAL" in line), reason[0] if reason else "")
        raise CheckpointError(
            f"{path}: refused: this file needs pickle to load, and unpickling can run code from the file "
            f"({detail.strip()}). Checkpoints written by reid-core load without it. If you trust where the "
            f"file came from, load it anyway with {TRUST_FLAG}.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None


#: load_fitting's hint for a run folder's checkpoint that does not fit the run's pipeline
OTHER_PIPELINE = "the checkpoint comes from another pipeline (was it copied from another run folder?)"


def load_fitting(module: torch.nn.Module, state: Any, file: Path | str, what: str, against: str,
                 hint: str) -> None:
    """`module.load_state_dict(state)`, strict as torch's, but weights that do not fit end in
    one CheckpointError line instead of torch's list of every key: `file`, the `what` tensors
    (e.g. "model") do not fit `against`, how many of the module's tensors are missing, how many of the file's are
    unexpected or of another shape (an example or two of each), and `hint` (why it may be).

    Tensors of another shape are refused before anything is copied. Missing and unexpected
    names are left to torch to judge, since a module may supply what an older checkpoint
    lacks (an `_load_from_state_dict` that adds a key, BatchNorm's `num_batches_tracked` in
    a file without torch's version metadata): only when torch refuses are they reported."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{file}: no {what} tensors in it (found {type(state).__name__}, not a mapping of "
                              f"names to tensors); {hint}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k, v in own.items() if isinstance(v, torch.Tensor) and isinstance(state.get(k), torch.Tensor)
                    and v.shape != state[k].shape)

    def refusal() -> CheckpointError:
        def some(names: list[str]) -> str:
            return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")

        parts = []
        if shapes:
            first = shapes[0]
            parts.append(f"{len(shapes)} tensors of another shape (e.g. {first} is {list(state[first].shape)} in the "
                         f"file, {list(own[first].shape)} in the model)")
        if missing:
            parts.append(f"{len(missing)} of the model's tensors missing (e.g. {some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {some(unexpected)})")
        return CheckpointError(f"{file}: the {what} tensors do not fit {against}: {'; '.join(parts)}; {hint}")

    if shapes:
        raise refusal()
    try:
        module.load_state_dict(state)
    except RuntimeError:
        if not (missing or unexpected):
            raise
        raise refusal() from None


def rng_state() -> dict[str, Any]:
    """This process's RNG states in types `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
