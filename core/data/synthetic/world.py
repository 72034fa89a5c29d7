"""The `synthetic` dataset: identities of several categories rendered under several
cameras, in one or several render styles (domains), optionally with clothes changes, an
infrared modality and captions; no files."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.data.synthetic.camera import Camera, Shot, add_extras, make_camera, make_shot, warp_boxes
from core.data.synthetic.categories import CATEGORIES, CATEGORY_INDEX, CATEGORY_NAMES
from core.data.synthetic.person import OUTFIT_KEYS, outfit_template, sample_outfit
from core.data.synthetic.render import STYLES, render_image
from core.interfaces import Dataset
from core.records import Record

#: Offset added to a test identity's index so train and test identities never share
#: attributes or pids; pid = category_index * PID_STRIDE + identity index.
PID_STRIDE = 100_000
#: Stream tags in the seed sequences (category indices and the camera stream stay below).
OUTFIT_STREAM = 2_000
DOMAIN_STREAM = 3_000
EXTRA_STREAM = 4_000


class SyntheticWorld(Dataset):
    """Identities of several categories rendered under several cameras; no files.

    Train identities are 0..identities-1 of each category not held out; test identities
    (query/gallery) are the next `test_identities`, so the two never share attributes or
    pids (pid = category_index * 100000 + identity, category_index from `CATEGORIES`).
    Image i of an identity (in each domain) is taken by camera i % cameras; an
    identity's query images are its images 0 and 1 (cameras 0 and 1), its gallery
    images the rest. Held-out categories and held-out domains appear in query/gallery
    only (unseen-category and domain-generalisation protocols).

    Parameters beyond the split sizes:
      domains: render styles, one domain each (see `STYLES`: synthetic, cartoon, sketch,
        night); every identity has `images_per_identity` images in every domain.
      clothes_changes: extra outfits per person; image i wears outfit
        (i % cameras + i // cameras) % (clothes_changes + 1): every camera sees several.
      infrared_cameras: cameras that see in thermal infrared (grey images, R == G == B).
      captions: add a caption and an attribute string to every record.
      perspective: strength in [0, 1] of each camera's keystone (0.3 looks natural).
      occlusion: probability in [0, 1] that an image gets an extra occluder.
    An image depends on (seed, category, identity, image, domain) and on the knobs that
    concern it (render size, cameras, its camera's modality, its outfit, perspective,
    occlusion), never on the category or domain lists: adding a category keeps the rest.

    extras (every record of one world has the same keys):
      "part_boxes": float32 (3, 4) part boxes [x0, y0, x1, y1], fractions of the image, after
        the camera's warp (bounding boxes of the warped boxes, clipped to [0, 1]), in the
        order of `CATEGORIES[category].part_names` (person: head, upper, legs);
      "clothes_id" (when clothes_changes > 0): int, unique per (person, outfit) in the
        world, -1 for other categories;
      "modality" (when infrared_cameras): int, 0 visible, 1 infrared;
      "caption", "attributes" (when captions): str; attributes as "key=value;..." (read
        with `parse_attributes`), the words the caption is built from;
      "render_key": internal, for `load_image`.
    """

    def __init__(
        self,
        seed: int = 0,
        categories: list[str] = ["person", "vehicle"],  # noqa: B006 - YAML default, never mutated
        identities: int = 40,
        test_identities: int = 20,
        cameras: int = 4,
        images_per_identity: int = 8,
        render_size: list[int] = [128, 64],  # noqa: B006
        held_out_categories: list[str] = [],  # noqa: B006
        domains: list[str] = ["synthetic"],  # noqa: B006
        held_out_domains: list[str] = [],  # noqa: B006
        clothes_changes: int = 0,
        infrared_cameras: list[int] = [],  # noqa: B006
        captions: bool = False,
        perspective: float = 0.0,
        occlusion: float = 0.0,
    ) -> None:
        if int(seed) < 0:  # numpy's seed sequences take none: it was 'expected non-negative integer' at the first image
            raise ValueError(f"SyntheticWorld: 'seed' must be >= 0; got {seed}")
        _validate(categories, identities, test_identities, cameras, images_per_identity, render_size,
                  held_out_categories)
        _validate_more(domains, held_out_domains, clothes_changes, infrared_cameras, cameras, perspective, occlusion)
        self.seed = int(seed)
        self.categories = list(categories)
        self.identities = int(identities)
        self.test_identities = int(test_identities)
        self.num_cameras = int(cameras)
        self.images_per_identity = int(images_per_identity)
        self.height, self.width = (int(v) for v in render_size)
        self.held_out_categories = list(held_out_categories)
        self.domains = list(domains)
        self.held_out_domains = list(held_out_domains)
        self.clothes_changes = int(clothes_changes)
        self.infrared_cameras = sorted({int(c) for c in infrared_cameras})
        self.captions = bool(captions)
        self.perspective = float(perspective)
        self.occlusion = float(occlusion)
        self._cameras: list[Camera] | None = None
        self._records: dict[str, list[Record]] = {}

    # -- listing

    def identity_namespace(self) -> tuple:
        """pid = category index * PID_STRIDE + identity index, and an identity's look
        depends on (seed, category, identity): worlds of one seed share identities."""
        return ("synthetic", self.seed)

    def records(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise ValueError(f"SyntheticWorld: unknown split '{split}'; valid splits: {', '.join(self.splits)}")
        if split not in self._records:
            self._records[split] = self._list(split)
        return self._records[split]

    def _list(self, split: str) -> list[Record]:
        out: list[Record] = []
        for name in self.categories:
            if split == "train" and name in self.held_out_categories:
                continue
            cat = CATEGORY_INDEX[name]
            ids = range(self.identities) if split == "train" else \
                range(self.identities, self.identities + self.test_identities)
            for identity in ids:
                for domain in self.domains:
                    if split == "train" and domain in self.held_out_domains:
                        continue
                    for image in range(self.images_per_identity):
                        image_split = "train" if split == "train" else ("query" if image < 2 else "gallery")
                        if image_split == split:
                            out.append(self._record(name, cat, identity, image, domain, split))
        return out

    def _record(self, name: str, cat: int, identity: int, image: int, domain: str, split: str) -> Record:
        spec = CATEGORIES[name]
        shot, _ = self._shot(cat, identity, image, domain)
        attrs = self.image_attributes(cat, identity, image)
        layout = spec.layout(attrs, shot.view, shot.pose, self.width, self.height)
        matrix = shot.homography if shot.homography is not None else shot.matrix
        pid = cat * PID_STRIDE + identity
        camid = image % self.num_cameras
        extras: dict[str, Any] = {"render_key": (cat, identity, image, domain),
                                  "part_boxes": warp_boxes(spec.parts(layout), matrix, self.width, self.height)}
        if self.clothes_changes:
            extras["clothes_id"] = pid * (self.clothes_changes + 1) + self.outfit(image) if name == "person" else -1
        if self.infrared_cameras:
            extras["modality"] = int(camid in self.infrared_cameras)
        if self.captions:
            words = spec.describe(attrs)
            extras["caption"] = spec.caption(words)
            extras["attributes"] = format_attributes({"category": name, "view": shot.view, **words})
        return Record(path=None, pid=pid, camid=camid, category=name, domain=domain, split=split, extras=extras)

    # -- rendering

    def load_image(self, record: Record) -> Image.Image:
        key = record.extras.get("render_key")
        if key is None:
            raise ValueError(f"SyntheticWorld: record of pid {record.pid} has no extras['render_key']; "
                             "it was not listed by a SyntheticWorld")
        return self.render(*key)

    def record_key(self, record: Record) -> str:
        """"<category>/<identity>/<image>/<domain>": the render key names the image (the
        world's options, which decide the pixels, are checked by the annotation file's
        fingerprint)."""
        key = record.extras.get("render_key")
        if key is None:
            raise ValueError(f"SyntheticWorld: record of pid {record.pid} has no extras['render_key']")
        _, identity, image, domain = key
        return f"{record.category}/{identity}/{image}/{domain}"

    def render(self, category_index: int, identity: int, image: int, domain: str | None = None) -> Image.Image:
        """Image `image` of `identity` in `domain` (default: the first); its camera is image % cameras."""
        domain = self.domains[0] if domain is None else domain
        spec = CATEGORIES[CATEGORY_NAMES[category_index]]
        shot, rng = self._shot(category_index, identity, image, domain)
        camid = image % self.num_cameras
        return render_image(spec, self.image_attributes(category_index, identity, image), self.cameras[camid],
                            shot, rng, self.height, self.width, style=domain,
                            infrared=camid in self.infrared_cameras)

    def clothes_template(self, record: Record, size: tuple[int, int] | None = None) -> Image.Image:
        """The outfit a person wears in `record`, alone on a plain background, front view,
        at `size` (height, width; default the render size): Instruct-ReID's clothes
        template. Only people wear clothes."""
        if record.category != "person":
            raise ValueError(f"SyntheticWorld.clothes_template: only 'person' records wear clothes; "
                             f"got a '{record.category}' record (pid {record.pid})")
        cat, identity, image, _ = record.extras["render_key"]
        h, w = size if size is not None else (self.height, self.width)
        return outfit_template(self.image_attributes(cat, identity, image), int(w), int(h))

    @property
    def cameras(self) -> list[Camera]:
        """Built on first use (a few small arrays), so listing records stays cheap."""
        if self._cameras is None:
            self._cameras = [make_camera(self.seed, c, self.height, self.width) for c in range(self.num_cameras)]
        return self._cameras

    def attributes(self, category_index: int, identity: int) -> dict[str, Any]:
        """The identity's attributes (outfit 0 for people): stable for (seed, category, identity)."""
        return _identity_attributes(self.seed, category_index, identity)

    def outfit(self, image: int) -> int:
        """Which of a person's outfits image `image` shows (0 without clothes changes)."""
        return (image % self.num_cameras + image // self.num_cameras) % (self.clothes_changes + 1)

    def image_attributes(self, category_index: int, identity: int, image: int) -> dict[str, Any]:
        """What image `image` shows: the identity, in its outfit for that image."""
        outfit = self.outfit(image) if CATEGORY_NAMES[category_index] == "person" else 0
        if outfit == 0:
            return self.attributes(category_index, identity)
        return _outfit_attributes(self.seed, category_index, identity, outfit)

    def _shot(self, cat: int, identity: int, image: int, domain: str) -> tuple[Shot, np.random.Generator]:
        """The image's jitter and the generator, positioned after it, for its noise."""
        style = STYLES.index(domain)
        key = [self.seed, cat, identity, image] + ([DOMAIN_STREAM, style] if style else [])
        rng = np.random.default_rng(key)
        camera = self.cameras[image % self.num_cameras]
        shot = make_shot(rng, camera, self.height, self.width)
        if self.perspective or self.occlusion:
            extra = np.random.default_rng([self.seed, cat, identity, image, EXTRA_STREAM, style])
            shot = add_extras(shot, extra, camera, self.perspective, self.occlusion, self.height, self.width)
        return shot, rng

    def __getstate__(self) -> dict[str, Any]:
        """DataLoader workers rebuild cameras instead of receiving them pickled."""
        state = dict(self.__dict__)
        state["_cameras"] = None
        return state


def format_attributes(words: dict[str, str]) -> str:
    """{'top': 'red', ...} -> 'top=red;...' (a string, so batches collate it as a list)."""
    return ";".join(f"{k}={v}" for k, v in words.items())


def parse_attributes(text: str) -> dict[str, str]:
    """The inverse of `format_attributes`."""
    return dict(item.split("=", 1) for item in text.split(";") if item)


@lru_cache(maxsize=4096)
def _identity_attributes(seed: int, category_index: int, identity: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, category_index, identity])
    return CATEGORIES[CATEGORY_NAMES[category_index]].sample(rng)


@lru_cache(maxsize=4096)
def _outfit_attributes(seed: int, category_index: int, identity: int, outfit: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, category_index, identity, OUTFIT_STREAM, outfit])
    new = sample_outfit(rng)
    return {**_identity_attributes(seed, category_index, identity), **{k: new[k] for k in OUTFIT_KEYS}}


def _validate(categories: list[str], identities: int, test_identities: int, cameras: int,
              images_per_identity: int, render_size: list[int], held_out: list[str]) -> None:
    """Fail at construction with the key at fault and what would be valid."""
    known = ", ".join(CATEGORIES)
    if not categories:
        raise ValueError(f"SyntheticWorld: 'categories' is empty; choose from: {known}")
    for key, names in (("categories", categories), ("held_out_categories", held_out)):
        for name in names:
            if name not in CATEGORIES:
                raise ValueError(f"SyntheticWorld: unknown category '{name}' in '{key}'; known categories: {known}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"SyntheticWorld: 'categories' lists a category twice: {categories}")
    for name in held_out:
        if name not in categories:
            raise ValueError(f"SyntheticWorld: held-out category '{name}' is not in 'categories' ({categories})")
    if set(held_out) == set(categories):
        raise ValueError("SyntheticWorld: 'held_out_categories' holds every category, leaving no training data")
    if identities < 1 or test_identities < 1 or identities + test_identities >= PID_STRIDE:
        raise ValueError(f"SyntheticWorld: 'identities' and 'test_identities' must be >= 1 and sum below "
                         f"{PID_STRIDE}; got {identities} and {test_identities}")
    if cameras < 2:
        raise ValueError(f"SyntheticWorld: 'cameras' must be >= 2 (ReID matches across cameras); got {cameras}")
    need = 4 if cameras == 2 else 3
    if images_per_identity < need:
        raise ValueError(f"SyntheticWorld: 'images_per_identity' must be >= {need} with {cameras} cameras, so "
                         f"each query (images 0, 1) has a gallery match in another camera; got {images_per_identity}")
    if len(render_size) != 2 or min(render_size) < 16:
        raise ValueError(f"SyntheticWorld: 'render_size' must be [height, width], each >= 16; got {render_size}")


def _validate_more(domains: list[str], held_out_domains: list[str], clothes_changes: int,
                   infrared_cameras: list[int], cameras: int, perspective: float, occlusion: float) -> None:
    styles = ", ".join(STYLES)
    if not domains:
        raise ValueError(f"SyntheticWorld: 'domains' is empty; choose render styles from: {styles}")
    for key, names in (("domains", domains), ("held_out_domains", held_out_domains)):
        for name in names:
            if name not in STYLES:
                raise ValueError(f"SyntheticWorld: unknown domain '{name}' in '{key}'; known render styles: {styles}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"SyntheticWorld: 'domains' lists a domain twice: {domains}")
    for name in held_out_domains:
        if name not in domains:
            raise ValueError(f"SyntheticWorld: held-out domain '{name}' is not in 'domains' ({domains})")
    if set(held_out_domains) == set(domains):
        raise ValueError("SyntheticWorld: 'held_out_domains' holds every domain, leaving no training data")
    if clothes_changes < 0:
        raise ValueError(f"SyntheticWorld: 'clothes_changes' must be >= 0; got {clothes_changes}")
    for c in infrared_cameras:
        if not 0 <= int(c) < cameras:
            raise ValueError(f"SyntheticWorld: 'infrared_cameras' names camera {c}; cameras are 0..{cameras - 1}")
    for key, value in (("perspective", perspective), ("occlusion", occlusion)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"SyntheticWorld: '{key}' must be in [0, 1]; got {value}")


def preview_grid(world: SyntheticWorld, n_identities: int = 6, split: str = "train",
                 labels: bool = False) -> Image.Image:
    """Rows = the first identities of each category, columns = cameras (per domain): a
    visual check that identities differ and cameras change the view. Held-out categories
    show test identities. `labels` adds the category names on the left and the cameras
    (IR = infrared) and domains on top. A category shows at most the identities its split
    has (more rows would render identities the world does not hold)."""
    h, w, pad = world.height, world.width, 2
    rows, starts = [], set()
    for name in world.categories:
        test = split != "train" or name in world.held_out_categories
        first, count = (world.identities, world.test_identities) if test else (0, world.identities)
        starts.add(len(rows))
        rows.extend((CATEGORY_INDEX[name], first + i) for i in range(min(n_identities, count)))
    cams = min(world.num_cameras, world.images_per_identity)
    cols = [(domain, c) for domain in world.domains for c in range(cams)]
    left, top = (64, 14) if labels else (0, 0)
    grid = Image.new("RGB", (left + len(cols) * (w + pad) + pad, top + len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (cat, identity) in enumerate(rows):
        y = top + pad + r * (h + pad)
        for c, (domain, image) in enumerate(cols):
            grid.paste(world.render(cat, identity, image, domain), (left + pad + c * (w + pad), y))
        if labels and r in starts:
            draw.text((3, y + 2), CATEGORY_NAMES[cat], fill=(0, 0, 0))
    if labels:
        for c, (domain, image) in enumerate(cols):
            text = f"c{image + 1}" + (" IR" if image in world.infrared_cameras else "")
            if len(world.domains) > 1 and image == 0:
                text = f"{domain[:6]} {text}"
            draw.text((left + pad + c * (w + pad) + 1, 1), text, fill=(0, 0, 0))
    return grid
