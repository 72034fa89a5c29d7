"""core.file_faults.os_error_reading: a file that is not there is not a read fault. A
weights file removed while it is read (a checkpoint rotated away by another process, a
cleanup script) must not be told 'could not be read from disk ... not judged corrupt ...
try again once the disk or permissions allow': there is nothing left to try again on.
The reference is the module's contract: an OSError with an errno other than a missing
file (ENOENT)."""

from __future__ import annotations

import errno

import pytest
import torch

from core.training.checkpoint import CheckpointError


def test_a_weights_file_removed_while_it_is_read_is_not_a_read_fault(tmp_path):
    from core.file_faults import FileReadFault
    from core.training.checkpoint import reading_weights

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(Exception) as caught:
        with reading_weights(path, CheckpointError, "hint"):
            path.unlink()
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    assert not isinstance(caught.value, FileReadFault)
    assert "not judged corrupt" not in str(caught.value)


def test_os_error_reading_skips_enoent_in_the_chain_and_finds_eio(tmp_path):
    from core.file_faults import os_error_reading

    path = tmp_path / "w.pt"
    path.write_bytes(b"fine")
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    assert os_error_reading(path, missing) is None  # the file reads now: no fault
    eio = OSError(errno.EIO, "Input/output error", str(path))
    assert os_error_reading(path, eio) is eio
