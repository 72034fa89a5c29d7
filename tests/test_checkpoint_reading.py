"""Specification of the shared weights reader (core.training.checkpoint): which files are
refused and why, which are left to the loader, and that load_fitting accepts what torch's
strict load_state_dict accepts. Each expectation comes from what torch, safetensors or
the zip format say of the file, not from the reader's own code. Tiny tensors only."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from core.training.checkpoint import CheckpointError, load_checkpoint, load_fitting

#: what a clone without `git lfs pull` holds in place of a weights file (Git LFS spec v1)
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 346378221\n")


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))  # 0-d


def test_load_fitting_takes_a_one_element_tensor_for_a_scalar_as_torch_does(tmp_path):
    """torch's _load_from_state_dict loads a (1,) tensor into a 0-d parameter (files written
    by torch 0.3): 'strict as torch's' must not refuse it as another shape."""
    state = {**Scaled().state_dict(), "scale": torch.tensor([5.0])}
    reference = Scaled()
    reference.load_state_dict(state)  # the reference: torch accepts it
    module = Scaled()
    load_fitting(module, state, tmp_path / "old.pt", "model", "the model", "hint")
    assert module.scale.item() == 5.0 and module.scale.dim() == 0


def test_load_fitting_refuses_a_three_element_tensor_for_a_scalar(tmp_path):
    state = {**Scaled().state_dict(), "scale": torch.zeros(3)}
    with pytest.raises(RuntimeError, match="size mismatch for scale"):
        Scaled().load_state_dict(state)  # the reference: torch refuses it
    with pytest.raises(CheckpointError, match=r"1 tensor of another shape \(e.g. scale is \[3\] in the file, \[\] in"):
        load_fitting(Scaled(), state, tmp_path / "x.pt", "model", "the model", "hint")


class _WritesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_legacy_format_checkpoint_that_needs_pickle_is_refused_as_such_and_runs_nothing(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) writes torch's pre-1.6 format:
    a pickle stream (PROTO, 0x80, first), no zip. The file is whole, so the refusal is the
    pickle one naming the global, not 'not a PyTorch file'."""
    marker, path = tmp_path / "RAN", tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2), "x": _WritesAFile(marker)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80" and not zipfile.is_zipfile(path)  # the format, by its bytes
    with pytest.raises(CheckpointError, match=r"legacy.pt: refused: this file needs pickle.*GLOBAL io.open"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_legacy_format_checkpoint_of_tensors_loads(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("text", [LFS_POINTER, "<!DOCTYPE html><html><body>404 Not Found</body></html>"],
                         ids=["git-lfs-pointer", "html-error-page"])
def test_a_text_file_in_place_of_weights_is_not_a_pytorch_file_not_a_pickle_to_trust(tmp_path, text):
    """A Git LFS pointer checked out without `git lfs pull`, or an error page a failed
    download saved: torch's weights_only unpickler reads the text as opcodes and raises an
    UnpicklingError, but the file is neither a zip (no 'PK\\x03\\x04') nor a pickle (no
    0x80), so it is named as not a PyTorch file, and --trust-checkpoint is not offered."""
    path = tmp_path / "last.pt"
    path.write_text(text)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what makes the case: torch's error is the pickle one
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable checkpoint (not a PyTorch file"), message
    assert "--trust-checkpoint" not in message and "needs pickle" not in message, message


class Counted(torch.nn.Module):
    """A module that added a buffer in a later version and supplies it to older checkpoints
    (as instruct-editor's losses do for trained_steps)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "steps", torch.ones((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def test_load_fitting_leaves_missing_names_to_the_modules_own_loading(tmp_path):
    """A checkpoint written before the buffer existed lacks it; the module's
    _load_from_state_dict supplies it and torch's strict load_state_dict accepts the file,
    so load_fitting must too."""
    state = {k: v for k, v in Counted().state_dict().items() if k != "steps"}
    Counted().load_state_dict(state)  # the reference: torch accepts it
    module = Counted()
    load_fitting(module, state, tmp_path / "older.pt", "losses'", "the model", "hint")
    assert int(module.steps) == 1


def _eio_reading(monkeypatch, path):
    """The system fails to read `path` (EIO), as a failing disk or a stale network mount
    does: torch's C++ zip reader then fails in its own words, and Python's read of the file
    raises the OSError with its errno."""
    import builtins
    import errno

    import core.file_faults as file_faults

    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        if str(file) == str(path):
            raise OSError(errno.EIO, "Input/output error")
        return real_open(file, mode, *args, **kwargs)

    def failing_load(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    monkeypatch.setattr(file_faults, "open", failing_open, raising=False)
    monkeypatch.setattr(torch, "load", failing_load)


def test_a_disk_fault_is_not_called_a_corrupt_checkpoint(tmp_path, monkeypatch):
    """A checkpoint the system fails to read is a fault of the disk, not of the file:
    'not a readable checkpoint ... copy it again' would send a researcher to delete a
    good file. The line names the file and the OS error; the exit is 1 (not bad input)."""
    from core.exit_codes import exit_code
    from core.file_faults import FileReadFault
    from core.training.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": Scaled().state_dict()})
    size = path.stat().st_size
    _eio_reading(monkeypatch, path)
    with pytest.raises(FileReadFault) as caught:
        load_checkpoint(path)
    line = str(caught.value)
    assert str(path) in line and "Errno 5" in line and "not judged corrupt" in line
    assert "not a readable" not in line and "\n" not in line
    assert exit_code(caught.value) == 1
    assert path.stat().st_size == size  # left as it is


def test_permission_denied_on_a_weights_file_is_a_read_fault(tmp_path, monkeypatch):
    import errno

    from core.file_faults import FileReadFault

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)

    def denied(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(FileReadFault, match=r"w\.pt: the checkpoint could not be read from disk \(\[Errno 13\]"):
        load_checkpoint(path)


def test_another_files_os_error_inside_the_reader_is_not_this_files_fault(tmp_path, monkeypatch):
    """Only the weights file's own read faults are told as such: an OSError about some other
    path (raised while the block runs) passes through unchanged."""
    import errno

    from core.file_faults import FileReadFault
    from core.training.checkpoint import reading_weights

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(PermissionError) as caught:
        with reading_weights(path, CheckpointError, "hint"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "other.json"))
    assert not isinstance(caught.value, FileReadFault)
