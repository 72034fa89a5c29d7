"""OmniReID / OmniReID++ (He et al., Instruct-ReID and Instruct-ReID++): the authors'
release lists every one of its datasets (Market-1501, MSMT17, CUHK03, LTCC, PRCC,
VC-Clothes, COCAS+ Real1 and Real2, LLCM, CUHK-PEDES, SYNTH-PEDES / PLIP) in one
datalist format, one image a line, space-separated:

    <image> <instruction> <pid> <clothes id> [<camera>]

- <image>: the image path, relative to the dataset's root;
- <instruction>: what the task's instruction is made from — a clothes-template image path
  relative to the root (COCAS+ Real1/Real2 clothes-template lists), a key into the
  dataset's JSON of texts (attribute sentences of COCAS+ `*_attr.txt`, captions of
  CUHK-PEDES and SYNTH-PEDES: `caption_t2i_v2.json`, ...), or a placeholder;
- <pid>, <clothes id>: integers; <camera>: an integer, absent in some lists (the authors'
  loader then gives queries and gallery items different cameras: ours, camera 0 for
  train and query, 1 for gallery, so no item is dropped as same-camera).

Each split is its own list file (the authors' configs: `datalist/train.txt`,
`datalist/query.txt`, `datalist/gallery.txt`; LLCM `train.txt`, `query_v2.txt`,
`gallery_v2.txt`; CUHK-PEDES `train_t2i_v2.txt`); a split without a list has no records.
Records carry extras "instruction_ref" (the field), "clothes_id", and — when `texts` (the
JSON) holds the key — "caption" (the text), or, with `instruction: image`,
"instruction_image" (the path). The `instruct` dataset of plugin instruct-editor turns
them into task records (`source: {dataset: omnireid, ...}`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from core.data.columns import RecordColumns
from core.data.layouts.common import (
    SPLITS,
    cached_records,
    check_split,
    columns_of,
    join_paths,
    read_list_file,
    require_dir,
)
from core.data.paths import missing_file
from core.interfaces import Dataset

NAME = "omnireid"
FORMAT = "<image> <instruction> <pid> <clothes id> [<camera>]"


class OmniReIDList(Dataset):
    """One OmniReID++ dataset from its datalists. Keys: `root`; `train`, `query`,
    `gallery` (list files, relative to root or absolute; null: the split is empty);
    `texts` (JSON {instruction key: text}, relative to root; null: none); `instruction`
    (`text`: field 2 is a key into `texts`; `image`: a clothes image path; `none`: a
    placeholder); `name` (the domain of the records, e.g. ltcc; default the root's name)."""

    category = "person"

    def __init__(self, root: str, train: str | None = None, query: str | None = None, gallery: str | None = None,
                 texts: str | None = None, instruction: Literal["text", "image", "none"] = "none",
                 name: str | None = None) -> None:
        self.root = Path(root)
        require_dir(NAME, self.root, f"the dataset's images and its datalists ({FORMAT} per line)")
        if instruction not in ("text", "image", "none"):
            raise ValueError(f"{NAME}: instruction must be text, image or none, got {instruction!r}")
        if instruction == "text" and texts is None:
            raise ValueError(f"{NAME}: instruction: text needs `texts`, the JSON file mapping the lists' second "
                             "field to its text (e.g. caption_t2i_v2.json)")
        self.lists = {s: self._file(v, s) for s, v in (("train", train), ("query", query), ("gallery", gallery))
                      if v is not None}
        if not self.lists:
            raise ValueError(f"{NAME}: no list given; set at least one of train, query, gallery")
        self.instruction = instruction
        self.name = name or self.root.name
        self.texts: dict[str, str] = {}
        if texts is not None:
            path = self._file(texts, "texts")
            with path.open(encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object {{instruction key: text}}, got {type(data).__name__}")
            self.texts = {str(k): str(v) for k, v in data.items()}
        self.texts_path = self._file(texts, "texts") if texts is not None else None
        self._cache: dict[str, RecordColumns] = {}

    def _file(self, value: str, key: str) -> Path:
        path = Path(value) if Path(value).is_absolute() else self.root / value
        if not path.is_file():
            raise FileNotFoundError(f"{NAME}: {key} file {missing_file(path)}")
        return path

    def records(self, split: str) -> RecordColumns:
        """The split's records as columns, cached by the list's (and the texts') path,
        size and mtime; a split without a list has none."""
        check_split(NAME, split, SPLITS)
        if split not in self._cache:
            if split not in self.lists:
                self._cache[split] = columns_of([], [], [], self.category, self.name, split)
            else:
                inputs = [self.lists[split]] + ([self.texts_path] if self.texts_path is not None else [])
                self._cache[split] = cached_records(self, split, inputs, lambda: self._read(split))
        return self._cache[split]

    def _read(self, split: str) -> RecordColumns:
        path = self.lists[split]
        rows = read_list_file(path, (4, 5), 2, f"'{FORMAT}' (integers after the two paths)")
        refs = [fields[1] for _, fields in rows]
        extras: dict = {"instruction_ref": refs, "clothes_id": [int(fields[3]) for _, fields in rows]}
        if self.instruction == "text":
            for number, fields in rows:
                if fields[1] not in self.texts:
                    raise ValueError(f"{path}:{number}: instruction key {fields[1]!r} is not in {self.texts_path}")
            extras["caption"] = [self.texts[ref] for ref in refs]
        elif self.instruction == "image":
            extras["instruction_image"] = refs
        default_cam = 1 if split == "gallery" else 0
        return columns_of(join_paths(self.root, [fields[0] for _, fields in rows]), [int(f[2]) for _, f in rows],
                          [int(f[4]) if len(f) == 5 else default_cam for _, f in rows], self.category,
                          self.name, split, extras)
