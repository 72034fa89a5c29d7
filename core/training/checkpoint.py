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
import json
import os
import pickle
import random
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from core.file_faults import os_error_reading, read_fault


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


@contextlib.contextmanager
def atomic_replace(path: Path) -> Iterator[Path]:
    """Inside, write the file at the yielded temp path (`.<name>.<random>.tmp` beside `path`:
    the rename stays on one filesystem); on a clean exit it is synced to disk, given the
    user's umask (mkstemp's files are 0600) and renamed over `path`. Any failure, Ctrl-C
    included, removes the temp file and leaves the old `path` as it was: an interrupted
    write never leaves half a file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(name)
        with open(name, "rb+") as f:  # what was written through another handle (a memory map) too
            os.fsync(f.fileno())
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        _remove(name)
        raise


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file_object)` on a temp file beside `path` and rename it into place
    (`atomic_replace`). Any failure leaves the old `path` as it was; an OSError becomes a
    `WriteError` naming `path` and the cause."""
    path = Path(path)
    try:
        with atomic_replace(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}"
                         + ("; the previous file is kept" if path.exists() else "")) from exc


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
    with reading_weights(path, CheckpointError, "Checkpoints written by reid-core load without it. If you trust "
                         f"where the file came from, load it anyway with {TRUST_FLAG}."):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def reading_weights(path: Path, error: Callable[[str], Exception], if_pickled: str) -> Iterator[None]:
    """Inside, `path` is read as weights (torch.load with weights_only=True, safetensors, or
    timm's loader around them); a file that cannot be read fails as `error(line)`, the line
    naming the file and why: it needs pickle (refused: unpickling can run code from the
    file; `if_pickled` says what the user can do instead), or it is cut short or corrupt.
    Any other failure (e.g. a model the file's tensors do not fit) passes through. A file
    the system fails to read (EIO, EACCES) is a `FileReadFault` saying it was not judged
    corrupt (core.file_faults): "copy it again" would be the wrong advice."""
    try:
        yield
    except Exception as exc:
        os_error = os_error_reading(path, exc)
        if os_error is not None:
            kind = "safetensors file" if Path(path).suffix == ".safetensors" else "checkpoint"
            raise read_fault(path, kind, os_error) from exc
        damage = file_damage(path)
        refused = _pickle_refusal(path, exc, damage)
        if refused is not None:
            raise error(f"{refused} {if_pickled}") from None
        unreadable = _read_failure(path, exc, damage)
        if unreadable is None:
            raise
        raise error(unreadable) from None


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (timm re-raises torch's errors as RuntimeErrors)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _pickle_refusal(path: Path, exc: BaseException, damage: str | None) -> str | None:
    """The refusal line when `exc` is (or wraps) weights_only's refusal of a pickle global in
    a file whose structure is whole (`damage`, file_damage's account, is None); None otherwise."""
    refusal = next((e for e in _causes(exc) if isinstance(e, pickle.UnpicklingError)), None)
    if refusal is None or damage is not None:
        return None
    reason = [line.strip() for line in str(refusal).strip().splitlines() if line.strip()]
    detail = next((line for line in reason if "Unsupported" in line or "GLOBAL" in line), reason[0] if reason else "")
    detail = detail.split(". ")[0].rstrip(".")  # torch's advice to allowlist the global follows
    return (f"{path}: refused: this file needs pickle to load, and unpickling can run code from the file"
            + (f" ({detail})." if detail else "."))


def _read_failure(path: Path, exc: BaseException, damage: str | None) -> str | None:
    """'PATH: not a readable checkpoint (why)' when `path` cannot be read: its structure is
    cut or corrupt (`damage`, file_damage's account), or `exc` is a reader's error, or
    reading the file again fails too; None when the file reads (the failure is elsewhere)."""
    from safetensors import SafetensorError

    kind = "safetensors file" if Path(path).suffix == ".safetensors" else "checkpoint"
    why = damage
    if why is None:
        readers = (EOFError, struct.error, zipfile.BadZipFile, SafetensorError)
        if not any(isinstance(e, readers) for e in _causes(exc)) and _reads(path):
            return None
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if is_torchscript_archive(path):  # torch's own words advise weights_only=False, which runs its code
            why = "a TorchScript archive, not a file of tensors: loading one runs the code it holds"
    return f"{path}: not a readable {kind} ({why})"


def _reads(path: Path) -> bool:
    """Whether `path` reads as weights (safetensors, or torch.load with weights_only). A file
    whole but for a pickle global weights_only refuses reads too: the reader that failed
    got past it, so it allows that global (timm's allows the argparse.Namespace its
    training checkpoints hold), and its failure is elsewhere."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    except Exception:  # noqa: BLE001 - any failure to read is the answer
        return False
    return True


def file_damage(path: Path) -> str | None:
    """How `path` is visibly cut short or corrupt, from its own structure: empty; a torch zip
    checkpoint without the central directory at its end; a safetensors file shorter than
    its header or its tensors' byte ranges say. None when the structure is whole, or the
    file is a pickle (torch's legacy format has no such markers); a file in none of these
    formats says so."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if size == 0:
                return "the file is empty; copy it again"
            if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
                if zipfile.is_zipfile(f):
                    return None
                return "truncated or corrupt: the zip directory at its end is missing; copy it again"
            if path.suffix != ".safetensors":
                if head[:1] == b"\x80":  # a pickle (torch's legacy format): no structure to check here
                    return None
                return "not a PyTorch file: neither a zip archive (torch.save) nor a pickle"
            if size < 8:
                return f"truncated: {size} bytes, shorter than a safetensors header; copy it again"
            length = int.from_bytes(head, "little")
            if 8 + length > size:
                return f"truncated: its header says {length} bytes of metadata follow, the file holds {size - 8}; " \
                       "copy it again"
            try:
                header = json.loads(f.read(length))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return "corrupt: its header is not a safetensors header"
            if 8 + length + end > size:
                return f"truncated: its tensors end at byte {8 + length + end}, the file has {size}; copy it again"
    except OSError:
        return None
    return None


def is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (OpenAI's released CLIP .pt files): a zip
    holding compiled code (`<archive>/code/...`), which torch.save's zips do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def trusted_torchscript(path: Path, instead: str, error: Callable[[str], Exception] = ValueError) -> bool:
    """Whether `path` is a TorchScript archive the user trusts (--trust-checkpoint, core.trust).
    Loading one runs the TorchScript it holds (its `__setstate__` methods; torch.from_file
    can write files), which torch refuses under weights_only too: an untrusted one fails as
    `error(line)`, the line naming the file, why, `instead` (where the same weights come as
    tensors) and the flag. False for any other file."""
    from core import trust

    if not is_torchscript_archive(path):
        return False
    if not trust.current().checkpoint:
        raise error(f"{path}: refused: a TorchScript archive (OpenAI's released .pt format) runs the code it holds "
                    f"when it loads. {instead}, or, if you trust where the file came from, pass "
                    f"{trust.CHECKPOINT_FLAG} to `core run` (or `core validate`)")
    return True


#: load_fitting's hint for a run folder's checkpoint that does not fit the run's pipeline
OTHER_PIPELINE = "the checkpoint comes from another pipeline (was it copied from another run folder?)"


def checkpoint_entry(state: Any, key: str, file: Path | str) -> Any:
    """`state[key]` of a loaded checkpoint. A bare state dict (names -> tensors, as other
    code releases weights) has no such entry: it is refused as what it is, where reading
    None out of it was told as 'no model tensors in it ...; the checkpoint comes from
    another pipeline'."""
    if isinstance(state, Mapping) and key not in state and state and all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{file}: a bare state dict ({len(state)} tensors, e.g. '{next(iter(state))}'), not a "
                              f"reid-core checkpoint, which holds '{key}', 'optimizer', 'position', ...: core eval and "
                              "--resume read the checkpoints a reid-core run writes; other code's released weights "
                              "are not loaded (docs/model-zoo.md, 'Evaluating released weights')")
    return state.get(key) if isinstance(state, Mapping) else None


def load_fitting(module: torch.nn.Module, state: Any, file: Path | str, what: str, against: str,
                 hint: str) -> None:
    """`module.load_state_dict(state)`, strict as torch's, but weights that do not fit end in
    one CheckpointError line instead of torch's list of every key: `file`, the `what` tensors
    (e.g. "model") do not fit `against`, how (misfit), and `hint` (why it may be).

    Tensors of another shape are refused before anything is copied. Missing and unexpected
    names are left to torch to judge, since a module may supply what an older checkpoint
    lacks (an `_load_from_state_dict` that adds a key, BatchNorm's `num_batches_tracked` in
    a file without torch's version metadata): only when torch refuses are they reported."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{file}: no {what} tensors in it (found {type(state).__name__}, not a mapping of "
                              f"names to tensors); {hint}")
    own = module.state_dict()

    def refusal() -> CheckpointError:
        return CheckpointError(f"{file}: the {what} tensors do not fit {against}: {misfit(own, state)}; {hint}")

    if misfit(own, state, names=False):
        raise refusal()
    try:
        module.load_state_dict(state)
    except RuntimeError:
        if set(own) == set(state):
            raise
        raise refusal() from None


def misfit(own: Mapping[str, Any], theirs: Mapping[str, Any], names: bool = True) -> str:
    """How the tensors `theirs` (a file's) do not fit `own` (a model's state dict), in a few
    words: how many have another shape, with an example, and (`names`) how many of the
    model's are missing and of the file's unexpected, with two; '' when nothing differs."""
    def count(n: int, what: str) -> str:
        return f"{n} {what}{'s' if n != 1 else ''}"

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")

    def other_shape(mine: torch.Tensor, file: torch.Tensor) -> bool:
        # torch's _load_from_state_dict takes a 1-element 1-d tensor for a 0-d one (torch 0.3's files)
        return mine.shape != file.shape and not (mine.dim() == 0 and file.shape == (1,))

    shapes = sorted(k for k, v in own.items() if isinstance(v, torch.Tensor) and isinstance(theirs.get(k), torch.Tensor)
                    and other_shape(v, theirs[k]))
    parts = []
    if shapes:
        first = shapes[0]
        parts.append(f"{count(len(shapes), 'tensor')} of another shape (e.g. {first} is {list(theirs[first].shape)} "
                     f"in the file, {list(own[first].shape)} in the model)")
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    if names and missing:
        parts.append(f"{len(missing)} of the model's tensors missing (e.g. {some(missing)})")
    if names and unexpected:
        parts.append(f"{count(len(unexpected), 'unexpected tensor')} (e.g. {some(unexpected)})")
    return "; ".join(parts)


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
