"""Data-side reliability (issue 18): unreadable images are found before the first step
(header + tail check, cached by path/size/mtime), a test set with no queries or no
gallery is an error naming the dataset and split, and `core data synth` never deletes or
rewrites a file it did not create."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.cli import main
from core.config.loading import ConfigError, load_pipeline
from core.data import image_check
from core.data.image_check import CheckedSet, UnreadableImagesError, check_image, find_bad_images, screen_records
from core.records import Record
from layout_fixtures import damaged_middle, deny_reading  # registered by conftest.py


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Each test its own cache (tests must not see each other's verdicts)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CORE_CACHE_DIR", str(folder))
    return folder


def encoded(fmt: str, seed: int = 0, size=(16, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def decodes(path: Path) -> bool:
    """The reference: PIL decodes every pixel (what the loader would do in epoch 3)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001
        return False


# --- the check of one file -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_a_sound_image_passes(tmp_path, fmt):
    path = write(tmp_path / f"ok.{fmt.lower()}", encoded(fmt))
    assert decodes(path) and check_image(path) is None


@pytest.mark.parametrize("fmt, reason", [("JPEG", "truncated JPEG"), ("PNG", "truncated PNG"),
                                         ("GIF", "truncated GIF"), ("WEBP", "truncated WebP")])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_image_is_found_where_a_full_decode_fails(tmp_path, fmt, reason, keep):
    data = encoded(fmt, size=(64, 128))
    path = write(tmp_path / f"cut.{fmt.lower()}", data[:int(len(data) * keep)])
    assert not decodes(path)  # a real fault: the loader would fail on it mid-epoch
    assert reason in check_image(path)


def test_a_jpeg_without_its_end_marker_is_truncated(tmp_path):
    data = encoded("JPEG")
    assert data.endswith(b"\xff\xd9")
    assert "FF D9" in check_image(write(tmp_path / "a.jpg", data[:-2]))
    assert "FF D9" in check_image(write(tmp_path / "b.jpg", data[:-1]))


def test_trailing_zero_padding_after_the_end_marker_is_accepted(tmp_path):
    data = encoded("JPEG")
    for n in (1, 100, 70_000):  # more than one read chunk of zeros too
        path = write(tmp_path / f"padded{n}.jpg", data + b"\0" * n)
        assert decodes(path) and check_image(path) is None, n
    assert check_image(write(tmp_path / "png.png", encoded("PNG") + b"\0" * 10)) is None
    # padding that is not zeros hides the marker: not accepted
    assert "truncated JPEG" in check_image(write(tmp_path / "junk.jpg", data + b"\x01\x02"))


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file (zero bytes)"),
    (b"<html><body>404 Not Found</body></html>", "not an image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "unreadable header"),  # a JPEG cut inside its header
])
def test_files_that_are_not_images_are_named_with_the_reason(tmp_path, content, reason):
    path = write(tmp_path / "x.jpg", content)
    assert not decodes(path)
    assert reason in check_image(path)


def test_a_missing_file_is_reported(tmp_path):
    assert check_image(tmp_path / "gone.jpg") == "file not found"


def test_a_damaged_middle_passes_the_screen_and_only_a_full_decode_finds_it(tmp_path):
    path = write(tmp_path / "mid.png", damaged_middle())
    assert not decodes(path)  # a real fault: the loader fails on it
    assert check_image(path) is None  # the header and tail screen cannot see it (its limit)
    assert check_image(path, full_decode=True).startswith("does not decode (unrecognized data stream")
    ok = write(tmp_path / "ok.png", encoded("PNG"))
    assert check_image(ok, full_decode=True) is None


def test_a_file_pil_refuses_without_an_oserror_is_bad_input_for_the_loader_too(tmp_path, monkeypatch):
    """PIL refuses some files with exceptions that are not OSErrors (here a decompression bomb:
    more than twice Image.MAX_IMAGE_PIXELS); the loader must tell it as the file's fault, exit
    2, as the screen and the full decode do, not as a crash."""
    from core.data.image_check import UndecodableImageError
    from core.tools.images import ImageFiles, record_for_file

    path = write(tmp_path / "big.png", encoded("PNG", size=(64, 128)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 8,192 pixels
    assert not decodes(path)  # the reference: PIL refuses it
    with pytest.raises(UndecodableImageError, match=rf"cannot decode image {path} \(DecompressionBombError: "):
        ImageFiles([]).load_image(record_for_file(path))
    assert "(DecompressionBombError: Image size (8192 pixels)" in check_image(path, full_decode=True)


# --- many files, the cache -------------------------------------------------------------

def test_every_bad_file_is_found_in_parallel(tmp_path):
    good = [write(tmp_path / f"g{i}.jpg", encoded("JPEG", i)) for i in range(20)]
    bad = [write(tmp_path / f"b{i}.jpg", encoded("JPEG", i)[:100]) for i in range(7)]
    found = find_bad_images([*good, *bad], workers=4)
    assert sorted(found) == sorted(str(p) for p in bad)


def test_a_second_check_reads_no_file_and_a_changed_file_is_read_again(tmp_path, monkeypatch, cache_dir):
    files = [write(tmp_path / f"{i}.jpg", encoded("JPEG", i)) for i in range(6)]
    write(files[0], b"")
    calls = []
    check = image_check._check
    monkeypatch.setattr(image_check, "_check", lambda path, *rest: calls.append(path) or check(path, *rest))
    assert list(find_bad_images(files)) == [str(files[0])]
    assert len(calls) == 6 and (cache_dir / image_check.CACHE_FILE).is_file()
    calls.clear()
    assert list(find_bad_images(files)) == [str(files[0])]  # the cached verdicts, bad ones too
    assert calls == []
    # the same size, a new mtime: read again (the cache key is path, size and mtime_ns)
    write(files[1], encoded("JPEG", 1)[:-2] + b"\x00\x01")
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    write(files[0], encoded("JPEG", 0))  # fixed: a new size
    assert list(find_bad_images(files)) == [str(files[1])]
    assert sorted(calls) == sorted([str(files[0]), str(files[1])])


def test_the_full_decode_verdicts_follow_a_file_fixed_in_place_and_stay_apart_from_the_screens(tmp_path):
    """A file repaired in place at the same size (a new mtime) is decoded again; a verdict of
    one check is never the other's: the screen passes a damaged middle whatever the full
    decode found before it, and the reverse. The reference is PIL decoding the file."""
    sound = encoded("PNG", 3, size=(64, 128))
    middle = len(sound) // 2
    damaged = sound[:middle] + b"\xff" * 64 + sound[middle + 64:]
    path = write(tmp_path / "x.png", damaged)
    assert len(damaged) == len(sound) and not decodes(path)
    assert list(find_bad_images([path], full_decode=True)) == [str(path)]
    assert find_bad_images([path]) == {}  # the screen's own verdict, not the full decode's
    assert list(find_bad_images([path], full_decode=True)) == [str(path)]  # nor the reverse
    stat = path.stat()
    write(path, sound)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == stat.st_size and decodes(path)
    assert find_bad_images([path], full_decode=True) == {}


def test_a_disk_fault_during_the_full_decode_is_reported_and_not_cached(tmp_path, monkeypatch):
    """EIO while decoding says nothing of the file's content: named now, read again next time."""
    import errno

    from PIL import ImageFile

    path = write(tmp_path / "ok.png", encoded("PNG"))

    def eio(self):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(ImageFile.ImageFile, "load", eio)
        assert find_bad_images([path], full_decode=True) == {str(path): "cannot read: Input/output error"}
    assert find_bad_images([path], full_decode=True) == {}


def test_a_corrupt_cache_is_ignored_and_replaced(tmp_path, cache_dir):
    files = [write(tmp_path / "ok.jpg", encoded("JPEG")), write(tmp_path / "bad.jpg", b"")]
    for garbage in (b"\x00\xffnot json", b'{"version": 1, "files": {"' + str(files[1]).encode() + b'": "x"}}',
                    b"[1, 2]"):
        write(cache_dir / image_check.CACHE_FILE, garbage)
        assert list(find_bad_images(files)) == [str(files[1])]
    data = json.loads((cache_dir / image_check.CACHE_FILE).read_text())
    assert data["version"] == image_check.CACHE_VERSION and len(data["files"]) == 2


def test_an_unwritable_cache_is_not_fatal(tmp_path, monkeypatch, caplog):
    """Not fatal, but not silent either: every later check reads every file again, so the
    user is told once which cache could not be written and what to point CORE_CACHE_DIR at."""
    blocker = write(tmp_path / "a-file", b"x")
    monkeypatch.setenv("CORE_CACHE_DIR", str(blocker / "cache"))  # a folder under a file: cannot exist
    bad = write(tmp_path / "bad.jpg", b"")
    with caplog.at_level("WARNING", logger="core.data.image_check"):
        assert list(find_bad_images([bad])) == [str(bad)]
        assert list(find_bad_images([bad])) == [str(bad)]
    said = [r.getMessage() for r in caplog.records if "image-check cache" in r.getMessage()]
    assert len(said) == 1 and str(blocker / "cache") in said[0] and "CORE_CACHE_DIR" in said[0], said
    with pytest.raises(UnreadableImagesError, match="the full list could not be written"):
        screen_records([CheckedSet("set", [Record(path=str(bad), pid=0, camid=0)])])


# --- screening records -----------------------------------------------------------------

def records_with(tmp_path, n_good: int, n_bad: int) -> tuple[list[Record], list[Path]]:
    records, bad = [], []
    for i in range(n_good + n_bad):
        data = encoded("JPEG", i, size=(64, 128))  # cut in its scan data, past the header
        path = write(tmp_path / "img" / f"{i:03d}.jpg", data if i < n_good else data[: len(data) // 2])
        records.append(Record(path=str(path), pid=i % 3, camid=0))
        if i >= n_good:
            bad.append(path)
    return records, bad


def test_the_error_is_one_line_naming_every_bad_file_and_the_flag(tmp_path):
    records, bad = records_with(tmp_path, 4, 8)
    with pytest.raises(UnreadableImagesError) as info:
        screen_records([CheckedSet("data.train.0 (x) train", records)])
    message = str(info.value)
    assert "\n" not in message and "8 unreadable image files (of 12 checked)" in message
    assert "--skip-bad-images" in message and "and 3 more" in message
    shown = [p for p in bad if f"{p}: truncated JPEG" in message]
    assert len(shown) == image_check.SHOWN
    # every bad file, with its reason and where it is used, in the file the message names
    assert info.value.list_file is not None and f"the full list: {info.value.list_file}" in message
    rows = list(csv.reader(info.value.list_file.read_text().splitlines()[1:], delimiter="\t"))
    assert sorted(r[0] for r in rows) == sorted(str(p) for p in bad)
    assert all("truncated JPEG" in r[1] and r[2] == "data.train.0 (x) train" for r in rows)
    assert isinstance(info.value, ConfigError)  # bad input: `core` exits 2


def test_skip_leaves_the_bad_files_out_with_a_warning(tmp_path):
    records, bad = records_with(tmp_path, 5, 2)
    in_memory = Record(path=None, pid=9, camid=0)  # rendered by its dataset: nothing to check
    lines = []
    kept, = screen_records([CheckedSet("data.train.0 (x) train", [*records, in_memory])], mode="skip",
                           echo=lines.append)
    assert [r.path for r in kept] == [r.path for r in records[:5]] + [None]
    assert len(lines) == 1 and lines[0].startswith("warning: left out 2 unreadable image files")
    assert "data.train.0 (x) train: 2" in lines[0]


def test_off_checks_nothing(tmp_path, monkeypatch):
    records, _ = records_with(tmp_path, 1, 1)
    monkeypatch.setattr(image_check, "_check", lambda path: pytest.fail("checked"))
    assert screen_records([CheckedSet("s", records)], mode="off") == [records]
    with pytest.raises(ValueError, match="error, skip, off"):
        screen_records([CheckedSet("s", records)], mode="warn")


# --- in a pipeline ---------------------------------------------------------------------

def manifest(folder: Path, rows: list[tuple[str, int, int, str]], bad: set[str] = frozenset()) -> Path:
    """A manifest dataset on disk: (name, pid, camid, split) rows, the named files truncated."""
    lines = ["path,pid,camid,split"]
    for n, (name, pid, camid, split) in enumerate(rows):
        data = encoded("JPEG", n, size=(64, 128))
        write(folder / name, data[: len(data) // 3] if name in bad else data)
        lines.append(f"{name},{pid},{camid},{split}")
    return write(folder / "manifest.csv", ("\n".join(lines) + "\n").encode())


def rows(train_ids=6, query=True, gallery=True) -> list[tuple[str, int, int, str]]:
    out = [(f"train/{pid}_{i}.jpg", pid, i % 2, "train") for pid in range(train_ids) for i in range(4)]
    if query:
        out += [(f"query/{pid}.jpg", pid, 0, "query") for pid in (100, 101)]
    if gallery:
        out += [(f"gallery/{pid}_{i}.jpg", pid, 1, "gallery") for pid in (100, 101) for i in range(2)]
    return out


def pipeline_file(tmp_path: Path, train: list[dict], test: list[dict] | None = None) -> Path:
    from core.testing import TINY_PIPELINE

    data = {"train": train, "transform": TINY_PIPELINE["data"]["transform"]}
    if test is not None:
        data["test"] = test
    config = {**TINY_PIPELINE, "data": data, "trainer": {**TINY_PIPELINE["trainer"], "eval_before": False}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def build(path: Path, lines: list | None = None, **kwargs):
    from core.pipeline import build_pipeline

    return build_pipeline(load_pipeline(path), echo=(lines.append if lines is not None else lambda *_: None),
                          **kwargs)


def test_a_dataset_without_a_train_split_in_data_train_is_an_error_not_left_out(tmp_path, monkeypatch):
    """A test-only dataset (splits query and gallery) named as the second training set: the
    first still lists training records, so leaving it out would train on less than the
    pipeline names, without a word. Before list_records, asking it for "train" failed."""
    from core.data.manifest import ManifestDataset
    from core.testing import TINY_PIPELINE

    monkeypatch.setattr(ManifestDataset, "splits", ("query", "gallery"))
    data = manifest(tmp_path / "d", rows())
    path = pipeline_file(tmp_path, [TINY_PIPELINE["data"]["train"][0], {"dataset": "manifest", "path": str(data)}])
    with pytest.raises(ConfigError, match=r"data\.train\.1: dataset 'manifest' has no train split \(its splits: "
                                          r"query, gallery\)"):
        build(path)


def test_a_pipeline_with_bad_images_stops_at_build_naming_train_and_test_files(tmp_path):
    bad = {"train/2_1.jpg", "gallery/101_0.jpg"}
    data = manifest(tmp_path / "d", rows(), bad)
    with pytest.raises(UnreadableImagesError) as info:
        build(pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}]))
    assert sorted(info.value.bad) == sorted(str(tmp_path / "d" / b) for b in bad)
    listing = info.value.list_file.read_text()
    assert "data.train.0 (manifest) train" in listing and "data.train.0 (manifest) gallery" in listing


def test_skip_drops_bad_images_before_the_table_and_identities_without_images_vanish(tmp_path):
    bad = {f"train/3_{i}.jpg" for i in range(4)} | {"train/0_0.jpg", "query/100.jpg"}
    data = manifest(tmp_path / "d", rows(), bad)
    lines = []
    p = build(pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}]), lines, image_check="skip")
    paths = {Path(r.path).name for r in p.train.records}
    assert len(p.train) == 24 - 5 and not paths & {Path(b).name for b in bad}
    # identity 3 has no image left: 5 identities, labels 0..4 (the table relabels what it is given)
    assert p.ctx.num_identities == 5 and sorted(set(p.train.pids.tolist())) == list(range(5))
    test, = p.test_sets
    assert len(test.query) == 1 and len(test.gallery) == 4
    assert any(line.startswith("warning: left out 6 unreadable image files") for line in lines)


def test_inference_builds_and_off_do_not_check(tmp_path, monkeypatch):
    data = manifest(tmp_path / "d", rows(), {"train/0_0.jpg"})
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    assert len(build(path, prepare="skip").train) == 24
    assert len(build(path, image_check="off").train) == 24
    with pytest.raises(ValueError, match="image_check must be one of"):
        build(path, image_check="warn")


def test_core_run_stops_before_training_and_skip_bad_images_trains(tmp_path, capsys):
    data = manifest(tmp_path / "d", rows(), {"train/1_2.jpg"})
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "1 unreadable image file" in err and "1_2.jpg: truncated JPEG" in err and "--skip-bad-images" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run2"), "--skip-bad-images"]) == 0
    assert "warning: left out 1 unreadable image file" in capsys.readouterr().err  # a logged warning (#26)
    assert "left out 1 unreadable image file" in (tmp_path / "run2" / "log.txt").read_text()


def test_validate_data_reports_every_bad_file(tmp_path, capsys):
    data = manifest(tmp_path / "d", rows(), {"train/1_2.jpg", "gallery/100_1.jpg"})
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    assert main(["validate", "--data", str(path)]) == 2
    out = capsys.readouterr().out
    assert "30 image files checked" in out and "2 unreadable" in out
    assert f"unreadable: {tmp_path / 'd' / 'train' / '1_2.jpg'}: truncated JPEG" in out
    assert f"unreadable: {tmp_path / 'd' / 'gallery' / '100_1.jpg'}: truncated JPEG" in out
    assert main(["validate", "--data", "--json", str(path)]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["unreadable"]) == 2 and not summary["ok"]
    assert summary["sets"]["data.train.0 (manifest) gallery"] == {"records": 4, "files": 4, "unreadable": 1}
    good = manifest(tmp_path / "good", rows())
    assert main(["validate", "--data", str(pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(good)}]))]) == 0
    assert "data OK: 30 image files checked (header and tail), 0 unreadable" in capsys.readouterr().out


def test_validate_data_full_decode_finds_a_file_whose_middle_is_damaged(tmp_path, capsys):
    data = manifest(tmp_path / "d", rows())
    bad = write(tmp_path / "d" / "gallery" / "101_1.jpg", damaged_middle())
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    assert main(["validate", "--data", str(path)]) == 0  # the screen `core run` makes passes it
    assert main(["validate", "--data", "--full-decode", str(path)]) == 2
    out = capsys.readouterr().out
    assert "30 image files checked (full decode), 1 unreadable" in out
    assert f"unreadable: {bad}: does not decode (unrecognized data stream" in out
    assert f"{bad}\tdoes not decode" in next(image_check.cache_dir().glob("bad_images-*.tsv")).read_text()
    assert main(["validate", "--full-decode", "--json", str(path)]) == 2  # --full-decode implies --data
    summary = json.loads(capsys.readouterr().out)
    assert summary["check"] == "full decode" and [u["path"] for u in summary["unreadable"]] == [str(bad)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_meeting_a_damaged_image_stops_with_exit_2_naming_it_and_the_full_decode(tmp_path, capsys, workers):
    data = manifest(tmp_path / "d", rows())
    bad = [write(tmp_path / "d" / name, damaged_middle(n)) for n, (name, *_) in enumerate(rows()[:24])]
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"),
                 "--set", f"trainer.num_workers={workers}"]) == 2  # bad input, not a crash (exit 1)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot decode image ") and any(str(b) in err for b in bad)
    assert "data stream contents when reading image file): replace or delete it" in err
    assert "core validate --data --full-decode" in err and "Caught" not in err


def test_the_error_line_is_not_printed_on_the_progress_bar_line(tmp_path, terminal_stderr):
    data = manifest(tmp_path / "d", rows())
    for n, (name, *_) in enumerate(rows()[:24]):
        write(tmp_path / "d" / name, damaged_middle(n))
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    stream = terminal_stderr()
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--set", "trainer.progress=true"]) == 2
    err = stream.getvalue()
    assert "main 1/1:" in err  # the bar was drawn (bars are drawn on a terminal only)
    shown = err.replace("\r", "\n").split("\n")  # a terminal starts over at \r: the closed bar's line is reused
    assert any(line.startswith("error: cannot decode image ") for line in shown), repr(err)


def test_a_manifest_that_cannot_be_read_is_one_line_naming_it_and_the_key(tmp_path, capsys, monkeypatch):
    data = manifest(tmp_path / "d", rows())
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    deny_reading(monkeypatch, data)
    assert main(["validate", str(path)]) == 2  # a file the pipeline names, as a missing one is
    assert capsys.readouterr().err == (f"error: {path}: data.train.0: dataset 'manifest' could not be built: cannot "
                                       f"read {data}: permission denied; the user running core needs read access "
                                       "to it\n")


def test_a_folder_given_as_the_manifest_is_named_as_a_folder(tmp_path, capsys):
    folder = tmp_path / "d" / "manifest.csv"
    folder.mkdir(parents=True)
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(folder)}])
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: data.train.0: dataset 'manifest' could not be built: "
                                       f"{folder} is a folder, where a file is expected\n")


def test_data_stats_on_a_manifest_it_cannot_read_names_the_file(tmp_path, capsys, monkeypatch):
    data = deny_reading(monkeypatch, manifest(tmp_path / "d", rows()))
    assert main(["data", "stats", str(data)]) == 2
    assert capsys.readouterr().err == (f"error: cannot read {data}: permission denied; the user running core "
                                       "needs read access to it\n")


def test_data_stats_reports_a_reader_error_instead_of_dropping_the_split(tmp_path, capsys, monkeypatch):
    """A Market-1501 tree with a file name that does not parse: the reader raises a
    ValueError naming the file, which `core data stats` took for 'a reader without this
    split', printing a table with no train row and exiting 0."""
    monkeypatch.setenv("REID_CORE_CACHE", "off")
    for split, name in [("bounding_box_train", "0001_c1s1_000001_00.jpg"), ("bounding_box_train", "holiday.jpg"),
                        ("query", "0002_c1s1_000001_00.jpg"), ("bounding_box_test", "0002_c2s1_000001_00.jpg")]:
        (tmp_path / split).mkdir(exist_ok=True)
        Image.new("RGB", (16, 32)).save(tmp_path / split / name)
    assert main(["data", "stats", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "holiday.jpg" in captured.err and captured.err.startswith("error: ") and "query" not in captured.out


def test_a_tool_given_a_manifest_it_cannot_read_names_the_flag_and_the_file(tmp_path, monkeypatch):
    from core.tools.images import open_images

    data = deny_reading(monkeypatch, manifest(tmp_path / "d", rows()))
    with pytest.raises(ConfigError, match=rf"^--gallery {data}: cannot read {data}: permission denied; "):
        open_images(data, flag="--gallery")


def test_validate_data_skips_in_memory_records(tmp_path, capsys):
    from core.testing import TINY_PIPELINE

    path = pipeline_file(tmp_path, TINY_PIPELINE["data"]["train"])
    assert main(["validate", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 image files checked" in out and "rendered in memory" in out


# --- test sets with no queries or no gallery -------------------------------------------

def test_an_explicit_test_set_without_gallery_names_the_dataset_and_split(tmp_path):
    train = manifest(tmp_path / "train", rows())
    test = manifest(tmp_path / "test", rows(train_ids=0, gallery=False))
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(train)}],
                         [{"dataset": "manifest", "path": str(test), "name": "held"}])
    with pytest.raises(ConfigError, match=r"data\.test\.0: dataset 'manifest' \(set 'held'\), a test set, has no "
                                          r"gallery records; it has 2 query"):
        build(path)


def test_an_explicit_test_set_with_neither_split_is_an_error(tmp_path):
    train = manifest(tmp_path / "train", rows())
    test = manifest(tmp_path / "test", rows(train_ids=2, query=False, gallery=False))
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(train)}],
                         [{"dataset": "manifest", "path": str(test)}])
    with pytest.raises(ConfigError, match=r"data\.test\.0: .* has no query and no gallery records"):
        build(path)


@pytest.mark.parametrize("query, gallery, empty", [(True, False, "gallery"), (False, True, "query")])
def test_a_default_test_set_with_one_side_empty_is_an_error(tmp_path, query, gallery, empty):
    data = manifest(tmp_path / "d", rows(query=query, gallery=gallery))
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    with pytest.raises(ConfigError, match=rf"data\.train\.0: dataset 'manifest' .* has no {empty} records"):
        build(path)


def test_a_train_only_dataset_says_there_is_no_test_set(tmp_path):
    data = manifest(tmp_path / "d", rows(query=False, gallery=False))
    lines = []
    p = build(pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}]), lines)
    assert p.test_sets == []
    assert [line for line in lines if "no test set" in line] == [
        "warning: this pipeline has no test set (data.test is not given and the training datasets (manifest) have "
        "no query/gallery records): it trains without evaluation; name one in data.test to evaluate"]


def test_a_train_only_dataset_beside_one_with_a_test_set_is_fine(tmp_path):
    only = manifest(tmp_path / "only", rows(query=False, gallery=False))
    full = manifest(tmp_path / "full", rows())
    lines = []
    p = build(pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(only), "name": "a"},
                                       {"dataset": "manifest", "path": str(full), "name": "b"}]), lines)
    assert [t.name for t in p.test_sets] == ["b"] and not any("no test set" in line for line in lines)


def test_a_gallery_emptied_by_skipped_images_says_so(tmp_path):
    data = manifest(tmp_path / "d", rows(), {f"gallery/{pid}_{i}.jpg" for pid in (100, 101) for i in range(2)})
    path = pipeline_file(tmp_path, [{"dataset": "manifest", "path": str(data)}])
    with pytest.raises(ConfigError, match=r"has no gallery records \(its 4 gallery images are all unreadable"):
        build(path, image_check="skip")


# --- core data synth never touches a file it did not create ----------------------------

SYNTH = ["--categories", "person", "--identities", "2", "--test-identities", "1", "--cameras", "2",
         "--images-per-identity", "4", "--render-size", "32", "16", "--no-captions"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synth_refuses_a_folder_with_a_user_file_and_leaves_it_byte_identical(tmp_path, capsys):
    out = tmp_path / "out"
    write(out / "thesis.tex", b"years of work")
    write(out / "bounding_box_train" / "0001_c1s1_000000_00.jpg", b"my own photo")
    before = snapshot(out)
    assert main(["data", "synth", "--out", str(out), *SYNTH]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["bounding_box_train", "thesis.tex"]


def test_synth_overwrite_refuses_a_file_an_earlier_export_did_not_create(tmp_path, capsys):
    out = tmp_path / "out"
    write(out / "manifest.csv", b"path,label\nmine.jpg,1\n")  # the user's own manifest
    before = snapshot(out)
    assert main(["data", "synth", "--out", str(out), *SYNTH, "--overwrite"]) == 2
    assert "did not create" in capsys.readouterr().err and snapshot(out) == before
    # an earlier export's folder with a foreign file at a path the export writes
    export = tmp_path / "export"
    assert main(["data", "synth", "--out", str(export), *SYNTH]) == 0
    (export / "manifest.csv").write_text("path,pid,camid,category,domain,split,market_pid\n")  # lists nothing
    before = snapshot(export)
    assert main(["data", "synth", "--out", str(export), *SYNTH, "--overwrite"]) == 2
    assert snapshot(export) == before


def test_synth_overwrite_replaces_an_earlier_export_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "out"
    assert main(["data", "synth", "--out", str(out), *SYNTH, "--images-per-identity", "6"]) == 0
    first = snapshot(out)
    foreign = {"notes.txt": b"keep me", "bounding_box_train/mine.jpg": encoded("JPEG"),
               "query/README": b"mine too"}
    for name, data in foreign.items():
        write(out / name, data)
    assert main(["data", "synth", "--out", str(out), *SYNTH, "--overwrite", "--seed", "7"]) == 0
    after = snapshot(out)
    assert all(after[name] == data for name, data in foreign.items())
    listed = {row["path"] for row in csv.DictReader((out / "manifest.csv").open())}
    exported = {name for name in after if name not in foreign and name not in ("manifest.csv", "mapping.csv")}
    assert exported == listed  # the earlier, larger export's extra images are gone: the layout matches
    assert len(listed) < len([n for n in first if n.endswith(".jpg")])
    assert any(after[name] != first.get(name) for name in listed)  # rewritten (another seed)


def test_synth_preview_does_not_replace_an_existing_file(tmp_path, capsys):
    png = write(tmp_path / "photo.png", b"not mine to replace")
    assert main(["data", "synth", "--preview", str(png), *SYNTH]) == 2
    assert "exists" in capsys.readouterr().err and png.read_bytes() == b"not mine to replace"
    assert main(["data", "synth", "--preview", str(png), *SYNTH, "--overwrite"]) == 0
    assert Image.open(png).format == "PNG"


@pytest.mark.parametrize("param, expected", [
    ("foo=1", "error: --param: foo: unknown key 'foo' for dataset 'manifest'. Valid keys: path"),
    ("path=[1]", "error: --param: path: wrong type for dataset 'manifest': expected ")])
def test_data_stats_names_a_reader_parameter_it_does_not_take(tmp_path, capsys, param, expected):
    """`core data stats X --param foo=1`: a raw 'TypeError: ... got an unexpected keyword
    argument', exit 1; now checked as a pipeline's keys are, one line naming --param, exit 2."""
    from core.cli import main

    data = manifest(tmp_path / "d", rows())
    assert main(["data", "stats", str(data), "--param", param]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err


def test_the_rows_kept_of_a_column_table_are_those_of_a_plain_loop_and_no_record_is_built(monkeypatch):
    """kept_rows built a Record for every row of a column table (seconds on millions) to read
    its path. It reads the path column now: the same rows as the plain loop over records
    (rows without a file kept, a bad path dropped wherever it recurs), no Record built.
    Seen failing before: the patched record accessor was called."""
    from core.data.columns import RecordColumns
    from core.data.table import RecordTable

    records = [Record(path=f"img/{i % 7}.jpg" if i % 5 else None, pid=i % 3, camid=0) for i in range(40)]
    bad = {"img/2.jpg": "truncated", "img/6.jpg": "zero bytes", "img/not-in-table.jpg": "missing"}
    expected = [i for i, r in enumerate(records) if r.path is None or r.path not in bad]  # the plain loop
    columns = RecordColumns.from_records(records)
    assert columns.path_valid is not None and 0 < len(expected) < len(records)

    def no_record(self, i):
        raise AssertionError("a Record was built")

    monkeypatch.setattr(RecordColumns, "__getitem__", no_record)
    assert image_check.kept_rows(columns, bad) == expected
    table = RecordTable.build([("s", records)], relabel=False)
    kept = image_check.without_bad(table, bad)  # the table less the bad rows, still columns
    monkeypatch.undo()
    assert isinstance(kept.records, RecordColumns) and list(kept.records) == [records[i] for i in expected]
    assert image_check.kept_rows(records, bad) == expected  # a list of records: the loop itself


def test_the_files_a_column_table_uses_are_read_from_its_path_column(monkeypatch):
    """files_used_in (which every image check starts with) built a Record per row of a column
    table to read its path. The same {path: set labels} as the plain loop, in the same order,
    with no Record built. Seen failing before: the patched record accessor was called."""
    from core.data.columns import RecordColumns

    train = [Record(path=f"img/{i % 7}.jpg" if i % 5 else None, pid=i % 3, camid=0) for i in range(40)]
    query = [Record(path=f"img/{i}.jpg", pid=0, camid=1) for i in (3, 9, 3)]
    expected: dict = {}
    for label, records in (("train", train), ("query", query)):  # the plain loop
        for r in records:
            if r.path is not None and label not in expected.setdefault(str(r.path), []):
                expected[str(r.path)].append(label)
    sets = [CheckedSet(label, RecordColumns.from_records(records)) for label, records in (("train", train),
                                                                                          ("query", query))]
    monkeypatch.setattr(RecordColumns, "__getitem__", lambda self, i: pytest.fail("a Record was built"))
    used_in = image_check.files_used_in(sets)
    assert used_in == expected and list(used_in) == list(expected)
    assert used_in["img/3.jpg"] == ["train", "query"] and used_in["img/9.jpg"] == ["query"]
