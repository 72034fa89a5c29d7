"""docs/reliability.md: files written through checkpoint.atomic_replace (checkpoints, label
files, core extract's .npz and its --half memory map) are fsynced before the rename, so a
power cut after the rename cannot leave the new name on an empty or partial file. The
reference is that order of system calls: fsync of the temp file, then os.replace onto
the target."""

from __future__ import annotations

import os

import numpy as np


def spy_on_syncs(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        calls.append(("replace", os.path.abspath(src)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_atomic_write_bytes_syncs_the_temp_file_before_the_rename(tmp_path, monkeypatch):
    from core.training.checkpoint import atomic_write_bytes

    calls = spy_on_syncs(monkeypatch)
    atomic_write_bytes(tmp_path / "a.bin", lambda f: f.write(b"x" * 100))
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 100
    replaced = [p for what, p in calls if what == "replace"]
    assert len(replaced) == 1 and calls.index(("fsync", replaced[0])) < calls.index(("replace", replaced[0]))


def test_a_file_written_through_a_memory_map_is_synced_before_the_rename(tmp_path, monkeypatch):
    from core.training.checkpoint import atomic_replace

    calls = spy_on_syncs(monkeypatch)
    with atomic_replace(tmp_path / "m.npy") as tmp:
        m = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(4, 3))
        m[:] = 1
        m.flush()
        del m
    assert np.load(tmp_path / "m.npy").sum() == 12
    replaced = [p for what, p in calls if what == "replace"]
    assert len(replaced) == 1 and ("fsync", replaced[0]) in calls[:calls.index(("replace", replaced[0]))]
