"""Unreadable images are found before the first training step, not in the middle of epoch 3.

Every image file a pipeline trains or tests on gets a header check (PIL parses the header;
no pixels are decoded) plus a tail check where the format has a cheap one: a JPEG ends
with the end-of-image marker FF D9 (zero padding after it is tolerated: some cameras and
tools write it), a PNG with its IEND chunk, a GIF with its trailer byte; a WebP is as
long as its RIFF header says. Interrupted downloads and copies, the common fault, lose
the tail; empty files, HTML error pages saved as `.jpg` and other non-images fail the
header. What it does not find: a file whose middle is damaged while its header and tail
are intact. Only a full decode finds that: `core validate --data --full-decode` decodes
every file (slower; its verdicts are cached apart), and the loader, meeting one during a
run, stops with `UndecodableImageError` naming the file and that command.

The files are checked in parallel (threads: the work is I/O) and the verdicts cached by
(path, size, mtime_ns) in `$CORE_CACHE_DIR/image_check.json` (default
`~/.cache/reid-core/`), so a second run re-reads nothing. A corrupt or unwritable cache
is ignored, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from core.config.loading import ConfigError
from core.log_setup import echo_to
from core.records import Record

_echo = echo_to(logging.getLogger(__name__))  # "warning: ..." lines are warnings
T = TypeVar("T")

#: what build_pipeline does with unreadable images: stop, leave them out (with a
#: warning), or not look
MODES = ("error", "skip", "off")
#: the flag of `core run` that turns "error" into "skip"
SKIP_FLAG = "--skip-bad-images"
CACHE_FILE = "image_check.json"
#: `core validate --data` decodes every pixel with this flag; its verdicts are cached here
FULL_DECODE_FLAG = "--full-decode"
DECODE_CACHE_FILE = "image_decode.json"
#: bumped when the checks change, so that verdicts of older checks are not reused
CACHE_VERSION = 1
#: bad files named in the error line itself; the full list goes to a file
SHOWN = 5

_JPEG_END = b"\xff\xd9"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type IEND, its CRC
_GIF_END = b";"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class CheckedSet:
    """Records of one split of one dataset, as the pipeline names them (for messages)."""

    label: str
    records: Sequence[Record]


class UnreadableImagesError(ConfigError):
    """Image files that cannot be read; `bad` maps each path to the reason, `list_file`
    holds the full list (None if it could not be written)."""

    def __init__(self, message: str, bad: dict[str, str], list_file: Path | None) -> None:
        super().__init__(message)
        self.bad, self.list_file = bad, list_file


class UndecodableImageError(ConfigError):
    """An image file whose pixels do not decode, met when a batch needs it: bad input (exit
    2), not a crash. The screen before training reads headers and tails only."""

    @classmethod
    def of(cls, path: str | os.PathLike, exc: BaseException) -> "UndecodableImageError":
        return cls(f"cannot decode image {path} ({decode_fault(exc)}): replace or delete it; "
                   f"`core validate --data {FULL_DECODE_FLAG} PIPELINE` lists every image file of a pipeline "
                   "that does not decode, before training")


def decode_fault(exc: BaseException) -> str:
    """PIL's reason for not decoding a file, on one line (its OSErrors say enough alone)."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, OSError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def cache_dir() -> Path:
    """`$CORE_CACHE_DIR`, else `~/.cache/reid-core`."""
    return Path(os.environ.get("CORE_CACHE_DIR") or Path.home() / ".cache" / "reid-core")


def check_image(path: str | os.PathLike, full_decode: bool = False) -> str | None:
    """Why the image file at `path` cannot be used, or None if its header and tail are sound
    (with `full_decode`: and every pixel decodes)."""
    reason, _, _ = _check(str(path), full_decode)
    return reason


def _check(path: str, full_decode: bool = False) -> tuple[str | None, os.stat_result | None, bool]:
    """(reason or None, the file's stat, whether the verdict may be cached: a missing or
    unreadable file says nothing about its content)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file not found", None, False
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}", None, False
    if not os.path.isfile(path):
        return "not a regular file", st, False
    if st.st_size == 0:
        return "empty file (zero bytes)", st, True
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", st, False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":  # PIL decodes WebP on open: check the length first
        declared = int.from_bytes(head[4:8], "little") + 8
        if st.st_size < declared:
            return f"truncated WebP ({st.st_size} bytes; its RIFF header says {declared})", st, True
    try:
        with Image.open(path) as image:
            fmt, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        return f"not an image (no known image format; starts with {head[:8]!r})", st, True
    except OSError as exc:
        if exc.errno is not None:  # the disk or the permissions, not the content: not cached
            return f"cannot read: {exc.strerror or exc}", st, False
        return f"unreadable header ({exc})", st, True
    except Exception as exc:  # noqa: BLE001 - any decoder failure on the header is a verdict
        return f"unreadable header ({type(exc).__name__}: {exc})", st, True
    if width <= 0 or height <= 0:
        return f"{fmt} image of size {width}x{height}", st, True
    try:
        fault = _tail_fault(path, fmt, st.st_size)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", st, False
    if fault is not None or not full_decode:
        return fault, st, True
    try:
        with Image.open(path) as image:
            image.load()  # every pixel, as the loader's convert("RGB") does
    except OSError as exc:
        if exc.errno is not None:  # the disk or the permissions: not cached
            return f"cannot read: {exc.strerror or exc}", st, False
        return f"does not decode ({decode_fault(exc)})", st, True
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a verdict
        return f"does not decode ({decode_fault(exc)})", st, True
    return None, st, True


def _tail_fault(path: str, fmt: str | None, size: int) -> str | None:
    """The format's end-of-file check (None where the format has no cheap one)."""
    if fmt == "JPEG" or fmt == "MPO":
        if _last_bytes(path, size, len(_JPEG_END)) != _JPEG_END:
            return "truncated JPEG (no end-of-image marker FF D9 at the end)"
    elif fmt == "PNG":
        if _last_bytes(path, size, len(_PNG_END)) != _PNG_END:
            return "truncated PNG (no IEND chunk at the end)"
    elif fmt == "GIF":
        if _last_bytes(path, size, 1) != _GIF_END:
            return "truncated GIF (no trailer byte 3B at the end)"
    return None


def _last_bytes(path: str, size: int, n: int) -> bytes:
    """The last `n` bytes before any trailing zero padding (fewer if the file is shorter)."""
    with open(path, "rb") as f:
        end = size
        while end > 0:  # find the last non-zero byte, reading backwards in chunks
            start = max(0, end - _CHUNK)
            f.seek(start)
            chunk = f.read(end - start).rstrip(b"\0")
            if chunk:
                end = start + len(chunk)
                break
            end = start
        f.seek(max(0, end - n))
        return f.read(min(n, end))


def _load_cache(file: Path) -> dict[str, list]:
    """The cached verdicts, or {} for a missing, unreadable, corrupt or outdated file."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _cached(entry: Any, st: os.stat_result) -> tuple[bool, str | None]:
    """(hit, verdict) for a cache entry [size, mtime_ns, reason or null]."""
    if (isinstance(entry, list) and len(entry) == 3 and entry[0] == st.st_size and entry[1] == st.st_mtime_ns
            and (entry[2] is None or isinstance(entry[2], str))):
        return True, entry[2]
    return False, None


#: cache files that could not be written, said once each per process
_unwritable: set[Path] = set()


def _save_cache(file: Path, files: dict[str, list]) -> None:
    """Write the cache atomically; failing to (read-only home, full disk, CORE_CACHE_DIR
    naming a file) costs only speed, and is said once: every later check reads every file."""
    from core.training.checkpoint import atomic_write_bytes

    data = json.dumps({"version": CACHE_VERSION, "files": files}, separators=(",", ":")).encode("utf-8")
    try:
        atomic_write_bytes(file, lambda f: f.write(data))
    except OSError as exc:
        if file not in _unwritable:
            _unwritable.add(file)
            _echo(f"warning: cannot write the image-check cache {file} ({exc.strerror or exc}); images are checked "
                  f"again on every run: point CORE_CACHE_DIR at a folder you can write")


def find_bad_images(paths: Iterable[str | os.PathLike], workers: int | None = None,
                    cache: bool = True, full_decode: bool = False) -> dict[str, str]:
    """{path: reason} for every unreadable image among `paths` (in the order given),
    checked in parallel; with `cache`, files whose (path, size, mtime_ns) were checked
    before are not read again. `full_decode`: decode every pixel too (slow; a cache of
    its own)."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    if not unique:
        return {}
    cache_file = cache_dir() / (DECODE_CACHE_FILE if full_decode else CACHE_FILE)
    known = _load_cache(cache_file) if cache else {}
    fresh: dict[str, list] = {}

    def one(path: str) -> str | None:
        key = os.path.abspath(path)
        entry = known.get(key)
        if entry is not None:
            try:
                hit, verdict = _cached(entry, os.stat(path))
            except OSError:
                hit, verdict = False, None
            if hit:
                return verdict
        reason, st, cacheable = _check(path, full_decode)
        if cacheable and st is not None:
            fresh[key] = [st.st_size, st.st_mtime_ns, reason]  # one key per thread: dict writes are atomic
        return reason

    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    if len(unique) == 1 or workers == 1:
        verdicts = [one(p) for p in unique]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-check") as pool:
            verdicts = list(pool.map(one, unique, chunksize=64))
    if cache and fresh:
        _save_cache(cache_file, {**_load_cache(cache_file), **fresh})  # merge with a concurrent run's
    return {p: r for p, r in zip(unique, verdicts) if r is not None}


def write_bad_list(bad: dict[str, str], used_in: dict[str, list[str]]) -> tuple[Path | None, str]:
    """Write every bad file with its reason and the sets using it; (path, "") or (None, why not)."""
    from core.training.checkpoint import atomic_write_bytes

    digest = hashlib.sha1("\n".join(sorted(bad)).encode("utf-8")).hexdigest()[:12]
    file = cache_dir() / f"bad_images-{digest}.tsv"
    lines = ["path\treason\tused in"] + [f"{p}\t{r}\t{', '.join(used_in.get(p, []))}" for p, r in bad.items()]
    try:
        atomic_write_bytes(file, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))
    except OSError as exc:
        return None, str(exc)
    return file, ""


def _summary(bad: dict[str, str], checked: int, used_in: dict[str, list[str]]) -> tuple[str, Path | None]:
    """'N unreadable image files (of M checked): p1: why; ... and K more; the full list: F'."""
    list_file, why_not = write_bad_list(bad, used_in)
    shown = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    where = f"the full list: {list_file}" if list_file else f"the full list could not be written ({why_not})"
    noun = "file" if len(bad) == 1 else "files"
    return f"{len(bad)} unreadable image {noun} (of {checked:,} checked): {shown}{more}; {where}", list_file


def files_used_in(sets: Sequence[CheckedSet]) -> dict[str, list[str]]:
    """{path: labels of the sets whose records use it}, for records with a file path."""
    used_in: dict[str, list[str]] = {}
    for s in sets:
        for path in _file_paths(s.records):
            labels = used_in.setdefault(path, [])
            if s.label not in labels:
                labels.append(s.label)
    return used_in


def _file_paths(records: Sequence[Record]) -> list[str]:
    """The file path of each record that has one, in order; a RecordColumns's read from its
    path column, not through a Record built per row (`kept_rows`)."""
    from core.data.columns import RecordColumns

    if isinstance(records, RecordColumns):
        paths = records.path.to_list()
        if records.path_valid is None:
            return paths
        return [p for p, has in zip(paths, records.path_valid.tolist()) if has]
    return [str(r.path) for r in records if r.path is not None]


def kept_rows(records: Sequence[Record], bad: dict[str, str]) -> list[int]:
    """The positions of the records whose file is not in `bad` (or that have no file). A
    RecordColumns is read through its path column: a Record built per row would cost
    seconds on a table of millions (`core.data.columns`)."""
    from core.data.columns import RecordColumns

    if isinstance(records, RecordColumns):
        return _kept_column_rows(records, bad)
    return [i for i, r in enumerate(records) if r.path is None or str(r.path) not in bad]


def _kept_column_rows(columns: Any, bad: dict[str, str]) -> list[int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    listed = pc.is_in(columns.path.to_arrow(), value_set=pa.array(list(bad), type=pa.large_string()))
    dropped = listed.to_numpy(zero_copy_only=False).astype(bool)
    if columns.path_valid is not None:  # a row without a file ("" in the column) is kept
        dropped &= columns.path_valid
    return np.flatnonzero(~dropped).tolist()


def without_bad(records: T, bad: dict[str, str]) -> T:
    """`records` (a list of records, a RecordColumns, or a RecordTable) less those whose file
    is in `bad`, of the same type (columns stay columns); `records` itself when none is."""
    from core.data.columns import RecordColumns
    from core.data.table import RecordTable

    if not bad:
        return records
    rows = kept_rows(records.records if isinstance(records, RecordTable) else records, bad)
    if len(rows) == len(records):
        return records
    return records.take(rows) if isinstance(records, (RecordTable, RecordColumns)) else [records[i] for i in rows]


def screen_records(sets: Sequence[CheckedSet], mode: str = "error",
                   echo: Callable[[str], Any] = _echo, workers: int | None = None,
                   cache: bool = True, stopped: str = "Nothing was trained") -> list[list[Record]]:
    """The records of each set with a file path checked (records without one, rendered in
    memory, pass). "error": raise `UnreadableImagesError` naming every bad file (`stopped`
    says what was not done); "skip": leave them out and warn through `echo`; "off": check
    nothing."""
    bad = screen_files(sets, mode, echo, workers, cache, stopped)
    return [without_bad(s.records, bad) for s in sets]


def screen_files(sets: Sequence[CheckedSet], mode: str = "error",
                 echo: Callable[[str], Any] = _echo, workers: int | None = None,
                 cache: bool = True, stopped: str = "Nothing was trained") -> dict[str, str]:
    """`screen_records`' check alone: {path: reason} of the bad files the caller leaves out
    ("skip", after the warning), {} when there are none ("off": none looked for); "error"
    raises."""
    if mode not in MODES:
        raise ValueError(f"image_check must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "off":
        return {}
    used_in = files_used_in(sets)
    bad = find_bad_images(used_in, workers=workers, cache=cache)
    if not bad:
        return {}
    message, list_file = _summary(bad, len(used_in), used_in)
    if mode == "error":
        raise UnreadableImagesError(
            f"{message}. {stopped}. Replace or delete them, or pass {SKIP_FLAG} to leave them out "
            f"(with a warning)", bad, list_file)
    counts = [len(s.records) - len(kept_rows(s.records, bad)) for s in sets]
    per_set = ", ".join(f"{s.label}: {n}" for s, n in zip(sets, counts) if n)
    echo(f"warning: left out {message} ({per_set})")
    return bad


def screen_pipeline_records(sources: Any, train: list[list[Record]], test: list[tuple[list[Record], list[Record]]],
                            mode: str = "error", echo: Callable[[str], Any] = _echo
                            ) -> tuple[list[list[Record]], list[tuple[list[Record], list[Record]]]]:
    """`screen_records` over a pipeline's train records (per train dataset) and test records
    ((query, gallery) per test set) in one pass, so that one error lists every bad file.
    `sources` is the pipeline's `DataSources` (it names the sets in messages)."""
    kept = screen_records(pipeline_sets(sources, train, test), mode=mode, echo=echo)
    n = len(train)
    return kept[:n], [(kept[n + 2 * i], kept[n + 2 * i + 1]) for i in range(len(test))]


def pipeline_sets(sources: Any, train: list[list[Record]],
                  test: list[tuple[list[Record], list[Record]]]) -> list[CheckedSet]:
    """Train records per train dataset, then (query, gallery) per test set, each labelled
    by the key that declares it: `data.train.0 (market1501) train`, `data.test.1 (msmt17) query`."""
    sets = [CheckedSet(f"data.train.{i} ({name}) train", recs)
            for i, (name, recs) in enumerate(zip(sources.train_names, train))]
    group = "train" if sources.test_specs is None else "test"
    for i, ((name, _), (query, gallery)) in enumerate(zip(sources.test_pairs, test)):
        sets += [CheckedSet(f"data.{group}.{i} ({name}) query", query),
                 CheckedSet(f"data.{group}.{i} ({name}) gallery", gallery)]
    return sets
