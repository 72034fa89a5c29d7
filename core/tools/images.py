"""Where the tools' images come from: a folder, a manifest, one image file, or a split of
the run's own data (`run:query`, `run:gallery`, `run:train`; `run:query@<test set>` picks a
test set by name when the pipeline has several).

Every source becomes an `ImageSet`: a record table (paths, identities, cameras,
categories, read without decoding) plus the datasets that decode its records, which is
what `core.data.loading.ImageSamples` batches and what the pictures draw.

A plain folder is searched recursively. Identity and camera are read as the dataset
readers read them, so that a folder, the run's own splits and a features file agree: a
Market-1501 name by the Market-1501 reader (`0002_c1s1_000451_03.jpg` -> pid 2, camid 0:
cameras counted from 0, as torchreid and fast-reid count them; `-1_...` -> pid -1, junk);
any other name takes its pid from a numeric parent folder (`gallery/17/a.jpg` -> pid 17)
and its camera as the `folder` layout reads it (a `c<N>` token, N as written, else 0).
Otherwise the pid is -1 ("unknown": the pictures then draw no green / red borders). The
category of such images is the run's training category when it trained on one, else
"unknown", a name that is no category of the synthetic world: a folder says nothing of
what its images show. A folder whose only subfolders are train/query/gallery is read as
the `folder` dataset layout.

A manifest with a split column, or such a train/query/gallery folder, marks which image
is a query and which a gallery item: given as `--query` it gives its query images, as
`--gallery` its gallery images, as `--images` all of them; one that marks no image query
or gallery (a manifest without a split column: every row "train") gives all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from core.data.layouts.common import IMAGE_EXTENSIONS
from core.data.layouts.folder import camera_of
from core.data.layouts.market1501 import Market1501
from core.data.table import RecordTable
from core.interfaces import Dataset
from core.records import Record

if TYPE_CHECKING:
    from PIL import Image

    from core.tools.loading import LoadedRun

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
SPLITS = ("train", "query", "gallery")
#: pid of a record whose identity is not known
UNKNOWN = -1
#: category of images whose category is not known (a folder, an image file)
UNKNOWN_CATEGORY = "unknown"


class ImageFiles(Dataset):
    """Records given directly (image files on disk); `load_image` reads the path."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = list(records)

    def records(self, split: str) -> list[Record]:
        return list(self._records)


@dataclass
class ImageSet:
    table: RecordTable
    datasets: list[Dataset]
    #: what the user named, for messages
    source: str

    def __len__(self) -> int:
        return len(self.table)

    def image(self, index: int) -> "Image.Image":
        """Record `index` decoded as RGB (the dataset's own decoder: synthetic records render)."""
        return self.datasets[int(self.table.source_ids[index])].load_image(self.table.records[index])

    def label(self, index: int) -> str:
        """A short name for record `index`: its file name, else its position."""
        path = self.table.records[index].path
        return Path(path).name if path else f"#{index}"

    @property
    def knows_identities(self) -> bool:
        return bool(len(self.table)) and bool((self.table.pids != UNKNOWN).any())


def record_for_file(path: Path, category: str = UNKNOWN_CATEGORY) -> Record:
    """A record for one image file; pid and camera from its name or parent folder, as the
    dataset readers read them (module doc)."""
    parsed = Market1501.read_name(path)
    if parsed is not None:
        pid, camid = parsed
    else:
        pid = int(path.parent.name) if path.parent.name.isdigit() else UNKNOWN
        camid = camera_of(path.name)
    return Record(path=str(path), pid=pid, camid=camid, category=category, domain=path.parent.name, split="query")


def files_category(run: "LoadedRun | None") -> str:
    """The category given to image files: the run's training category when it trained on
    exactly one (the only one its model knows), else UNKNOWN_CATEGORY."""
    names = list(run.pipeline.train.category_names) if run is not None else []
    return names[0] if len(names) == 1 else UNKNOWN_CATEGORY


def _image_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files)
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return found


def _table(records: Sequence[Record], name: str, category_names: Sequence[str] | None = None) -> RecordTable:
    return RecordTable.build([(name, list(records))], relabel=False, category_names=category_names)


def open_images(spec: str | Path, run: "LoadedRun | None" = None, flag: str = "--images",
                split: str | None = None) -> ImageSet:
    """An `ImageSet` from a folder, a manifest file, an image file or `run:<split>`. What
    cannot be read (a bad manifest row, a folder without images) is a ConfigError naming
    the command-line `flag` that gave `spec`: `--images data/m.csv:5: field 'pid' ...`.
    `split` ("query", "gallery"): the role `spec` plays, which picks the images of a
    source that marks splits (module doc); None takes all."""
    from core.config.loading import ConfigError
    from core.data.paths import UNREADABLE_FILE, unreadable

    try:
        return _open_images(spec, run, split)
    except ConfigError:
        raise
    except UNREADABLE_FILE as exc:
        raise ConfigError(f"{flag} {spec}: {unreadable(exc)}") from exc
    except (ValueError, FileNotFoundError) as exc:
        text = str(exc)
        named = any(text.startswith(s) for s in (str(spec), str(Path(spec))))
        raise ConfigError(f"{flag} {text}" if named else f"{flag} {spec}: {text}") from exc


def _open_images(spec: str | Path, run: "LoadedRun | None", split: str | None) -> ImageSet:
    text = str(spec)
    if text.startswith("run:"):
        if run is None:
            raise ValueError(f"{text}: `run:<split>` needs a run to read the split from")
        return run_split(run, text[4:])
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image, folder or manifest")
    cats = list(run.pipeline.train.category_names) if run is not None else None
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from core.data.manifest import ManifestDataset

        dataset = ManifestDataset(str(path))
        records = _marked(dataset, path, split)
        if not records:
            raise ValueError(f"{path}: the manifest lists no images")
        return ImageSet(_table(records, path.stem, cats), [dataset], text)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a manifest "
                             f"({', '.join(MANIFEST_SUFFIXES)})")
        records = [record_for_file(path, files_category(run))]
        return ImageSet(_table(records, path.stem, cats), [ImageFiles(records)], text)
    subfolders = {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if subfolders and subfolders <= set(SPLITS) and not any(p.is_file() for p in path.iterdir()
                                                            if p.suffix.lower() in IMAGE_EXTENSIONS):
        from core.data.layouts.folder import FolderDataset

        dataset = FolderDataset(str(path))
        records = _marked(dataset, path, split)
        return ImageSet(_table(records, path.name, cats), [dataset], text)
    records = [record_for_file(f, files_category(run)) for f in _image_files(path)]
    if not records:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it or below")
    return ImageSet(_table(records, path.name, cats), [ImageFiles(records)], text)


def _marked(dataset: Dataset, path: Path, split: str | None) -> list[Record]:
    """The records of `split` of a source that marks splits, when it marks any record
    query or gallery; otherwise, or without `split`, all of them (module doc)."""
    marked = {s: dataset.records(s) for s in SPLITS}
    if split is None or not (len(marked["query"]) or len(marked["gallery"])):
        return [r for s in SPLITS for r in marked[s]]
    if not len(marked[split]):
        held = ", ".join(f"{len(marked[s])} {s}" for s in SPLITS if len(marked[s]))
        raise ValueError(f"{path}: no {split} images in it (it marks {held}); as --{split}, a manifest or a "
                         f"train/query/gallery folder gives its {split} images")
    return list(marked[split])


def screened(sets: Sequence[tuple[str, ImageSet]], mode: str = "error",
             stopped: str = "Nothing was done") -> list[ImageSet]:
    """Each (flag, image set) after the header and tail check of every file
    (core.data.image_check), which the tools run before their first batch so that one bad
    file in a large gallery does not stop them part-way, after the work before it: "error"
    raises one error naming every bad file of all the sets (`stopped` says what was not
    done), "skip" leaves them out with a warning (--skip-bad-images), "off" looks at nothing."""
    from core.config.loading import ConfigError
    from core.data.image_check import CheckedSet, screen_files, without_bad

    bad = screen_files([CheckedSet(f"{flag} {images.source}".strip(), images.table.records) for flag, images in sets],
                       mode=mode, stopped=stopped)
    kept = []
    for flag, images in sets:
        table = without_bad(images.table, bad)
        if not len(table) and len(images):
            raise ConfigError(f"{flag} {images.source}".strip()
                              + f": every image file is unreadable (left out). {stopped}")
        kept.append(images if table is images.table else ImageSet(table, images.datasets, images.source))
    return kept


def screened_first(images: ImageSet, limit: int, flag: str, mode: str = "error",
                   stopped: str = "Nothing was done") -> ImageSet:
    """The first `limit` images of `images` (those a tool draws), screened as `screened`
    screens a set: "error" and "off" look at those alone; "skip" takes one more image for
    each left out, until `limit` sound ones are found or the set ends, so that a bad file
    costs no picture while sound ones remain (the warning says how many were left out of
    how many checked)."""
    from core.data.image_check import find_bad_images, kept_rows

    records, end = images.table.records, min(limit, len(images))
    if mode == "skip":
        bad: dict[str, str] = {}
        checked = 0
        while checked < end:
            bad.update(find_bad_images(str(r.path) for r in records[checked:end] if r.path is not None))
            checked = end
            end = min(len(images), checked + limit - len(kept_rows(records[:checked], bad)))
    first, = screened([(flag, ImageSet(images.table.take(range(end)), images.datasets, images.source))], mode,
                      stopped)
    return first


def run_split(run: "LoadedRun", spec: str) -> ImageSet:
    """`query`, `gallery` (of the first test set, or `query@<name>`) or `train` of the run's data."""
    split, _, name = spec.partition("@")
    p = run.pipeline
    if split == "train":
        return ImageSet(p.train, list(p.train_datasets), f"run:{spec}")
    if split not in ("query", "gallery"):
        raise ValueError(f"run:{spec}: unknown split '{split}'; valid: run:query, run:gallery, run:train "
                         "(run:query@<test set> picks a test set)")
    if not p.test_sets:
        raise ValueError(f"run:{spec}: the pipeline of {run.run_dir} has no test set with query and gallery")
    names = [t.name for t in p.test_sets]
    if name and name not in names:
        raise ValueError(f"run:{spec}: no test set '{name}'; test sets: {', '.join(names)}")
    test = p.test_sets[names.index(name) if name else 0]
    return ImageSet(getattr(test, split), list(test.datasets), f"run:{spec}")
