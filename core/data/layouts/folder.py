"""A generic folder tree, for data that comes in no standard layout (DESIGN.md "Data"):

    root/<split>/<category>/<identity>/<image>      split: train, query, gallery

Categories and identities are the folders' names; the domain is the root folder's name.
The camera is read from a `c<N>` token in the file name (`0001_c3_x.jpg`, `c12.png`,
`42_c2s1_000151_01.jpg` -> N as written); images without one get camera 0. Within a
category's query and gallery images, either every name has the token or none does: a mix
is an error (a query named without it would share camera 0 with no gallery image, and
keep its own camera's matches in the gallery); so within its train images. train/ may be
named otherwise than query/ and gallery/ (the exclusion compares only these). A tree, or
its query and gallery images, with no token at all is warned about (every such image is
then camera 0, which the evaluator's same-camera exclusion must be told). Images in a format
the listing skips (.webp, .tif, ...) are an error, not left out.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from core.data.columns import RecordColumns
from core.data.layouts.common import (
    IMAGE_EXTENSIONS,
    SPLITS,
    cached_records,
    check_split,
    folder_tree,
    image_names,
    require_dir,
    subfolder_names,
)
from core.interfaces import Dataset
from core.records import Record

LAYOUT = "<root>/<split>/<category>/<identity>/<image> with split in train, query, gallery"
CAMERA_TOKEN = re.compile(r"(?:^|_)c(\d+)")
TOKEN_RULE = "a `c<N>` token at the start of the name or after '_' (0001_c3_x.jpg, c12.png)"
#: image formats this reader does not list: an error, where other files (notes.txt) are ignored
UNLISTED_IMAGE_EXTENSIONS = frozenset({".webp", ".tif", ".tiff", ".gif", ".jfif", ".heic", ".heif", ".avif",
                                       ".jp2", ".ppm", ".pgm"})
log = logging.getLogger(__name__)


class FolderDataset(Dataset):
    """Records from a `<split>/<category>/<identity>/<image>` tree.

    `category` reads one category folder only (e.g. train on `person`, test on the
    unseen `animal` from the same tree); None reads all. A missing split folder lists no
    records, so a train-only tree works; a folder at the split level that is no split
    is an error (a typo would otherwise empty a split silently).

    Pids: the identity folder's name as an integer when every identity name in the tree
    is a number and no number appears under two categories; otherwise the index of
    (category, name) in the sorted list of all of them. Both are the same for every
    split, so query and gallery folders of one identity share a pid.

    Cameras: without `c<N>` tokens every image has camera 0, and an evaluator that drops
    same-camera gallery images would drop every positive: set the evaluator's
    `exclude_same_camera: false` for such trees.
    """

    def __init__(self, root: str, category: str | None = None) -> None:
        self.root = Path(root)
        self.category = category
        self.domain = self.root.resolve().name  # like the manifest's file stem; "." names the folder
        require_dir("FolderDataset", self.root, LAYOUT)
        present = subfolder_names(self.root)
        stray = [n for n in present if n not in SPLITS]
        if stray:
            raise ValueError(f"FolderDataset: {self.root / stray[0]} is not a split folder; expected "
                             f"{LAYOUT} (found {', '.join(f'{n}/' for n in present)})")
        if not present:
            raise FileNotFoundError(f"FolderDataset: no split folder in {self.root}; expected {LAYOUT}")
        self._cache: dict[str, RecordColumns] = {}
        self._pids = self._identity_labels()
        self._query_categories_in_gallery()
        self._cameras_checked = False

    def _categories(self, split: str) -> list[str]:
        folder = self.root / split
        if not folder.is_dir():
            return []
        self._no_images_here(folder, "a split folder holds category folders")
        names = subfolder_names(folder)
        return [c for c in names if self.category is None or c == self.category]

    def _identities(self, split: str, category: str) -> list[str]:
        folder = self.root / split / category
        self._no_images_here(folder, "a category folder holds identity folders")
        return subfolder_names(folder)

    def _no_images_here(self, folder: Path, why: str) -> None:
        images = image_names(folder)
        if images:
            raise ValueError(f"FolderDataset: image {folder / images[0]} is at the wrong depth ({why}); "
                             f"expected {LAYOUT}")

    def _identity_labels(self) -> dict[tuple[str, str], int]:
        pairs = sorted({(c, i) for s in SPLITS for c in self._categories(s) for i in self._identities(s, c)})
        if self.category is not None and not pairs:
            found = sorted({c for s in SPLITS if (self.root / s).is_dir() for c in subfolder_names(self.root / s)})
            raise ValueError(f"FolderDataset: no identities of category '{self.category}' in {self.root}; "
                             f"categories found: {', '.join(found) or 'none'}")
        numbers = {(c, int(i)) for c, i in pairs if i.isascii() and i.isdigit()}
        if len(numbers) == len(pairs) and len({n for _, n in numbers}) == len(numbers):
            return {(c, i): int(i) for c, i in pairs}
        return {pair: index for index, pair in enumerate(pairs)}

    def identity_namespace(self) -> tuple:
        """One identity folder is one pid in every split. Folder names as pids hold for any
        `category`; indices into the (category, name) list only for the same `category`."""
        numbered = all(i.isascii() and i.isdigit() and int(i) == p for (_, i), p in self._pids.items())
        return ("folder", str(self.root.resolve())) + (() if numbered else (self.category,))

    def records(self, split: str) -> RecordColumns:
        """The split's records as columns, cached by the path, size and mtime of every
        folder of the tree down to the identity folders (pids depend on all splits)."""
        check_split("FolderDataset", split, self.splits)
        if split not in self._cache:
            self._cache[split] = cached_records(self, split, folder_tree(self.root, 3), lambda: self._list(split))
        return self._cache[split]

    def _query_categories_in_gallery(self) -> None:
        """Query and gallery identities are matched by (category, identity folder): a query
        category the gallery lacks (a typo, zebras/ for zebra/) could match nothing."""
        query, gallery = self._categories("query"), self._categories("gallery")
        missing = [c for c in query if c not in gallery]
        if query and gallery and missing:
            raise ValueError(f"FolderDataset: {self.root / 'query' / missing[0]} has no gallery counterpart "
                             f"({self.root / 'gallery' / missing[0]}), so none of its queries could match: identities "
                             f"are matched by category and identity folder name; gallery categories: "
                             f"{', '.join(gallery)}")

    def _check_camera_tokens(self) -> None:
        """Every image name of a category has a camera token, or none has, within train/ and
        within query/ and gallery/ (the splits the same-camera exclusion compares: a train/
        of images from another source, named without tokens, is a valid tree); no image is
        in a format the listing skips (file names only, once per process, when a listing is
        built rather than read from the cache)."""
        if self._cameras_checked:
            return
        by_group: dict[tuple[str, str], tuple[list[Path], list[Path]]] = {}
        for split in SPLITS:
            group = "train/" if split == "train" else "query/ and gallery/"
            for category in self._categories(split):
                marked, unmarked = by_group.setdefault((category, group), ([], []))
                for identity in self._identities(split, category):
                    folder = self.root / split / category / identity
                    _no_unlisted_images(folder)
                    for name in image_names(folder):
                        (marked if CAMERA_TOKEN.search(Path(name).stem) else unmarked).append(folder / name)
        for (category, group), (marked, unmarked) in by_group.items():
            if marked and unmarked:
                raise ValueError(
                    f"FolderDataset: {unmarked[0]} has no camera token, but {len(marked)} of "
                    f"{len(marked) + len(unmarked)} images of category '{category}' in {group} have one (e.g. "
                    f"{marked[0].name}); it would get camera 0 and the same-camera exclusion would compare the "
                    f"wrong cameras. Name every image with {TOKEN_RULE}, or none ({len(unmarked)} without: "
                    f"{unmarked[0].name}, ...)")
        self._warn_without_tokens(by_group)
        self._cameras_checked = True

    def _warn_without_tokens(self, by_group: dict[tuple[str, str], tuple[list[Path], list[Path]]]) -> None:
        """Warn when no image name has a camera token, or no query / gallery one does (the
        images the evaluator's same-camera exclusion compares): every such image is camera 0."""
        fix = ("Rename the files if they come from several cameras; else set `evaluator: {name: reid, "
               "exclude_same_camera: false}` (with exclusion on, every gallery positive of a query is dropped)")
        unmarked = [u for _, u in by_group.values() if u]
        if unmarked and not any(m for m, _ in by_group.values()):
            log.warning(f"FolderDataset: no image name has a camera token in {self.root} (e.g. {unmarked[0][0].name}; "
                        f"the camera is read from {TOKEN_RULE}): every image is camera 0. {fix}")
            return
        tested = [(m, u) for (_, group), (m, u) in by_group.items() if group != "train/"]
        untested = [u for m, u in tested if u]
        if untested and not any(m for m, _ in tested):
            log.warning(f"FolderDataset: no query or gallery image name has a camera token in {self.root} (e.g. "
                        f"{untested[0][0].name}; the camera is read from {TOKEN_RULE}): every query and gallery "
                        f"image is camera 0. {fix}")

    def _list(self, split: str) -> list[Record]:
        self._check_camera_tokens()
        out = []
        for category in self._categories(split):
            for identity in self._identities(split, category):
                folder = self.root / split / category / identity
                pid = self._pids[(category, identity)]
                out.extend(Record(path=str(folder / name), pid=pid, camid=camera_of(name), category=category,
                                  domain=self.domain, split=split) for name in image_names(folder))
        return out


def _no_unlisted_images(folder: Path) -> None:
    """An identity folder's images in a format the listing skips would vanish silently."""
    unlisted = sorted(n for n in os.listdir(folder)
                      if not n.startswith(".") and os.path.splitext(n)[1].lower() in UNLISTED_IMAGE_EXTENSIONS)
    if unlisted:
        raise ValueError(f"FolderDataset: {folder / unlisted[0]} is an image this reader does not list (it lists "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); convert such files ({len(unlisted)} in "
                         f"{folder}), or they would be left out without a word")


def camera_of(file_name: str) -> int:
    """N of the first `c<N>` token (at the start or after `_`) of the name, else 0."""
    match = CAMERA_TOKEN.search(Path(file_name).stem)
    return int(match.group(1)) if match else 0

