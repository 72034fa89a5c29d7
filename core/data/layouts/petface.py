"""PetFace (Shinoda & Shiohara 2024, "PetFace: A Large-Scale Dataset and Benchmark for
Animal Identification", ECCV): animal faces of 13 families, more than 250k identities; a
test set of MGOR (CVPR 2026: fine-grained pet face ReID, unseen categories).

Official release (github.com/mapooon/PetFace), under the root or inside `PetFace/`:

    images/<species>/<identity>/<nn>.png
    split/<species>/train.csv              columns filename,label (filename relative to images/)
    split/<species>/reidentification.csv   columns filename,label: the re-identification test
                                           images, labelled with the training identities

PetFace's re-identification task identifies each `reidentification.csv` image among the
training identities. As a retrieval protocol (our choice, the closest to it): query =
the `reidentification.csv` images, gallery = the `train.csv` images; train = `train.csv`.
Query and gallery get different camera ids (0 and 1), so no match is filtered out.
Each species is a category; labels restart at 0 per species, so a species' pids are
offset by the labels of the species before it (sorted by name).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, columns_of, find_root, subfolder_names
from core.data.paths import missing_file
from core.interfaces import Dataset

FILES = {"train": "train.csv", "query": "reidentification.csv", "gallery": "train.csv"}


class PetFace(Dataset):
    """`species`: the families to read (e.g. [cat, dog]); null: every folder under split/."""

    name = "petface"

    def __init__(self, root: str, species: Sequence[str] | None = None) -> None:
        self.root = find_root("PetFace", root, ["images", "split"], wrappers=("PetFace",))
        present = subfolder_names(self.root / "split")
        chosen = list(species) if species is not None else present
        missing = [s for s in chosen if s not in present]
        if missing or not chosen:
            raise ValueError(f"PetFace: species {', '.join(missing) or '(none)'} not under {self.root / 'split'}; "
                             f"present: {', '.join(present) or 'none'}")
        self.species = sorted(chosen)
        self._cache: dict[str, RecordColumns] = {}
        self._offsets: dict[str, int] | None = None

    def _read(self, species: str, file_name: str) -> list[tuple[str, int]]:
        path = self.root / "split" / species / file_name
        if not path.is_file():
            raise FileNotFoundError(f"PetFace: split file {missing_file(path)}; expected split/<species>/"
                                    f"{file_name} from the official release")
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
                raise ValueError(f"PetFace: {path}: expected the header 'filename,label', got "
                                 f"{','.join(reader.fieldnames or [])!r}")
            out = []
            for number, row in enumerate(reader, start=2):
                label = (row["label"] or "").strip()
                if not label.lstrip("-").isdigit():
                    raise ValueError(f"PetFace: {path}:{number}: label must be an integer, got {label!r}")
                out.append((row["filename"].strip(), int(label)))
        return out

    def offsets(self) -> dict[str, int]:
        """pid offset of each species: the labels of the species before it (train.csv)."""
        if self._offsets is None:
            offsets, total = {}, 0
            for species in self.species:
                offsets[species] = total
                total += max(label for _, label in self._read(species, FILES["train"])) + 1
            self._offsets = offsets
        return self._offsets

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the split files read (every species' train.csv gives the pid
        offsets) -- path, size, mtime."""
        check_split("PetFace", split, self.splits)
        if split not in self._cache:
            inputs = [self.root / "split" / s / name for s in self.species for name in {FILES["train"], FILES[split]}]
            self._cache[split] = cached_records(self, split, sorted(inputs), lambda: self._list(split))
        return self._cache[split]

    def _list(self, split: str) -> RecordColumns:
        offsets = self.offsets()
        paths, pids, categories = [], [], []
        for species in self.species:
            for file_name, label in self._read(species, FILES[split]):
                paths.append(os.path.join(self.root, "images", file_name))
                pids.append(offsets[species] + label)
                categories.append(species)
        return columns_of(paths, pids, [0 if split == "query" else 1] * len(paths), categories, self.name, split)
