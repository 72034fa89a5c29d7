"""The `instruct` dataset: records of the six Instruct-ReID tasks, each carrying its task
and its instruction (paper Fig. 1; `tasks.py` has the mapping).

Two sources:

- the synthetic world (`world:`, the keys of the core's `synthetic` dataset): its
  clothes changes, captions, clothes templates and infrared cameras feed all six tasks;
- a manifest (`manifest:`, CSV or JSON lines as the core's `manifest` dataset reads) with
  a `task` column and optional `instruction`, `instruction_image` and `text_query`
  columns: how OmniReID++-style real data is laid out (README "Real data").

Record extras (what reaches the batch):
  "task": the task name;
  "instruction": the text instruction — a tuple of phrasings on training records of
     fixed-text tasks (the backbone draws one per sample), one text otherwise; "" for
     records whose instruction is an image;
  "text_query": True for text-to-image queries (and their training twins): the
     instruction is the sample, the image is a blank placeholder;
  "instruction_image": float (3, h, w) in [0, 1], decoded per sample in the loader's
     workers (`sample_extras`) for clothes-template records;
  "instruction_id": the ground-truth identity of the instruction's content, mAP-tau's
     reference (`reference: labels`): "outfit:<category index>/<identity>/<outfit>" for a
     clothes template or attribute sentences of a person's outfit, "text:<text>" for a
     text (a fixed phrase: its canonical phrasing), "image:<path>" for a manifest's
     clothes image; a manifest's `instruction_id` column overrides it.

Which images each task lists from the world (ours; the paper's tasks come from
different datasets, the world has them all):
  traditional          visible images in the person's first outfit (no clothes change:
                       "do not change clothes");
  clothes-changing     visible images of people, every outfit;
  clothes-template     visible images of people; the instruction is the template of
                       the image's own outfit (training, gallery) or, for a query, of
                       the person's next outfit: retrieve the person wearing it;
  visible-infrared     training: every image; query: visible, gallery: infrared
                       (`infrared_queries`: the other way, SYSU-MM01's protocol);
  text-to-image        training: each visible image twice, as an image (fixed
                       instruction) and as its caption alone; query: captions alone;
                       gallery: visible images;
  language-instructed  visible images; attribute sentences of the own outfit
                       (training, gallery) or the next outfit (query).
With `target_instructions` the training split also lists each clothes-template and
language-instructed image with its person's next outfit's instruction: the query
situation (an image in one outfit, the instruction of another).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from core.data.columns import RecordColumns, as_columns
from core.data.synthetic import CATEGORIES, SyntheticWorld
from core.interfaces import Dataset
from core.records import Record
from reid_instruct_editor.tasks import (CLOTHES_CHANGING, CLOTHES_TEMPLATE, IMAGE_INSTRUCTION_TASKS,
                                        LANGUAGE_INSTRUCTED, TASKS, TEXT_TO_IMAGE, TRADITIONAL, VISIBLE_INFRARED,
                                        attribute_sentences, check_tasks, normalize_text, task_variants)

NAME = "dataset 'instruct'"
#: The world the six tasks need (people, clothes changes, captions, an infrared camera);
#: `world:` keys are merged over these.
DEFAULT_WORLD: dict[str, Any] = {"categories": ["person"], "clothes_changes": 2, "captions": True,
                                 "infrared_cameras": [3]}
#: Grey placeholder image of text-only samples.
BLANK = (128, 128, 128)
#: Separator of instruction phrasings in a manifest cell.
VARIANT_SEPARATOR = "||"


class InstructDataset(Dataset):
    """Records of `tasks` with their instructions (module docstring).

    Keys: `tasks` (subset of the six, in any order); `world` (keys of the `synthetic`
    dataset, merged over DEFAULT_WORLD) or `manifest` (+ `root`) for real data, or
    `source` (a dataset spec, e.g. {dataset: omnireid, root: ..., train: ...}) with `task`
    (the task of all its records; `sourced.py`);
    `variants` ({task: [phrasings]}) replaces the fixed-text tasks' phrasings;
    `target_instructions` (see the module docstring); `infrared_queries`: the world's
    visible-infrared queries are its infrared images and the gallery its visible ones
    (SYSU-MM01's protocol; default false: visible queries, infrared gallery; a manifest
    says it per record); `test_people` (world only): `per_task` (default) gives each test
    identity to one task, as the paper's test sets are different datasets, so the
    task-free gallery holds every image once; `shared`: every task tests every test
    identity (one image then sits in several tasks' galleries); `instruction_size` [h, w] of instruction images (paper:
    128 x 128); `max_words` of normalised texts (50); `blank_size` [h, w] of the
    placeholder image of text-only manifest records.
    """

    def __init__(self, tasks: list[str] = list(TASKS), world: dict[str, Any] | None = None,  # noqa: B006, B008
                 manifest: str | None = None, root: str | None = None,
                 source: dict[str, Any] | None = None, task: str | None = None,
                 sources: list[dict[str, Any]] | None = None,
                 variants: dict[str, list[str]] | None = None, target_instructions: bool = True,
                 infrared_queries: bool = False, test_people: Literal["per_task", "shared"] = "per_task",
                 instruction_size: list[int] = [128, 128], max_words: int = 50,  # noqa: B006
                 blank_size: list[int] = [256, 128]) -> None:  # noqa: B006
        self.tasks = check_tasks(tasks, NAME)
        if sum(v is not None for v in (world, manifest, source, sources)) > 1:
            raise ValueError(f"{NAME}: give one of `world` (the synthetic world), `manifest`, `source` or `sources` "
                             "(real data)")
        self.parts: list[InstructDataset] = []
        if sources is not None:  # one test set of several (task-free): each {task, source}
            from reid_instruct_editor.sourced import check_sources

            for entry in check_sources(sources, NAME):
                self.parts.append(InstructDataset(task=entry["task"], source=entry["source"], variants=variants,
                                                  instruction_size=instruction_size, max_words=max_words,
                                                  blank_size=blank_size))
            self.tasks = list(dict.fromkeys(t for p in self.parts for t in p.tasks))
        if source is not None:
            if task is None:
                raise ValueError(f"{NAME}: `source` needs `task`, the task of its records (one of {', '.join(TASKS)})")
            self.tasks = check_tasks([task], NAME)
        elif task is not None:
            raise ValueError(f"{NAME}: `task` applies to a `source` dataset; the world and manifests list their tasks")
        if len(instruction_size) != 2 or min(instruction_size) < 8:
            raise ValueError(f"{NAME}: instruction_size must be [height, width], each >= 8; got {instruction_size}")
        if max_words < 1:
            raise ValueError(f"{NAME}: max_words must be >= 1, got {max_words}")
        variants = dict(variants or {})
        fixed = [t for t in TASKS if t not in IMAGE_INSTRUCTION_TASKS and t != LANGUAGE_INSTRUCTED]
        for task in variants:
            if task not in fixed:
                raise ValueError(f"{NAME}: variants.{task}: only fixed-text tasks have phrasings ({', '.join(fixed)})")
        self.max_words = int(max_words)
        self.variants = {t: task_variants(t, variants, self.max_words) for t in fixed}
        self.target_instructions = bool(target_instructions)
        if not isinstance(infrared_queries, bool):
            raise ValueError(f"{NAME}: infrared_queries must be true or false, got {infrared_queries!r}")
        if infrared_queries and manifest is not None:
            raise ValueError(f"{NAME}: infrared_queries applies to the synthetic world; a manifest's split "
                             "column says which images are queries")
        self.infrared_queries = infrared_queries
        if test_people not in ("per_task", "shared"):
            raise ValueError(f"{NAME}: test_people must be per_task or shared, got {test_people!r}")
        self.test_people = test_people
        self.instruction_size = (int(instruction_size[0]), int(instruction_size[1]))
        self.blank_size = (int(blank_size[0]), int(blank_size[1]))
        self.world: SyntheticWorld | None = None
        self.source = None
        self.from_source = source is not None
        if source is not None:
            from reid_instruct_editor.sourced import build_source

            self.source = build_source(source, NAME)
            self.root = getattr(self.source, "root", None)
        elif manifest is not None:
            from core.data.manifest import ManifestDataset

            self.source = ManifestDataset(manifest, root)
            self.root = self.source.root
        else:
            self.world = _build_world(world)
            self._check_world()
        self._records: dict[str, RecordColumns] = {}

    # ------------------------------------------------------------------ listing
    def records(self, split: str) -> RecordColumns:
        """The split's task records as columns (core.data.columns). They are derived per
        record from the world or the source (whose reader caches its own listing); the
        instruction column holds tuples of phrasings, which stay in memory (not cached)."""
        if split not in self.splits:
            raise ValueError(f"{NAME}: unknown split '{split}'; valid splits: {', '.join(self.splits)}")
        if split not in self._records:
            if self.parts:
                from reid_instruct_editor.sourced import joined_records

                listed = joined_records(self.parts, split)
            elif self.from_source:
                from reid_instruct_editor.sourced import source_records

                listed = source_records(self, split)
            else:
                listed = self._synthetic(split) if self.world is not None else self._manifest(split)
            self._records[split] = as_columns(listed)
        return self._records[split]

    def _check_world(self) -> None:
        """The world must have what the chosen tasks read: fail naming the world key."""
        w = self.world
        needs = {CLOTHES_CHANGING: ("clothes_changes", w.clothes_changes > 0, "a number >= 1"),
                 VISIBLE_INFRARED: ("infrared_cameras", bool(w.infrared_cameras), "a list of camera indices"),
                 TEXT_TO_IMAGE: ("captions", w.captions, "true"),
                 LANGUAGE_INSTRUCTED: ("captions", w.captions, "true")}
        for task in self.tasks:
            if task in needs and not needs[task][1]:
                key, _, valid = needs[task]
                raise ValueError(f"{NAME}: task '{task}' needs world.{key} ({valid}); the world has "
                                 f"{key}: {getattr(w, key)!r}")
            if task in (CLOTHES_CHANGING, CLOTHES_TEMPLATE) and "person" not in w.categories:
                raise ValueError(f"{NAME}: task '{task}' needs people (world.categories holds {w.categories}); "
                                 "only people wear clothes")

    def _synthetic(self, split: str) -> list[Record]:
        out: list[Record] = []
        owner = self._test_owner() if split != "train" and self.test_people == "per_task" else None
        for k, task in enumerate(self.tasks):
            for r in self._world_records(task, split):
                if owner is None or owner[r.pid] == k:
                    out.extend(self._task_records(task, r, split))
        return out

    def _test_owner(self) -> dict[int, int]:
        """Test identity -> the index of the one task whose query and gallery list it
        (`test_people: per_task`): sorted identities dealt to the tasks in turn, as the
        paper's test sets are different datasets of different people. No image then
        sits in two tasks' galleries (the task-free gallery holds each image once)."""
        pids = sorted({r.pid for s in ("query", "gallery") for r in self.world.records(s)})
        return {p: i % len(self.tasks) for i, p in enumerate(pids)}

    def _world_records(self, task: str, split: str) -> list[Record]:
        """The world records a task's split is drawn from: its own split, except infrared
        visible-infrared queries, which are the test images of the infrared cameras (the
        world's query images are visible, cameras 0 and 1), searched among all the
        visible test images."""
        if task == VISIBLE_INFRARED and self.infrared_queries and split != "train":
            return [r for test_split in ("query", "gallery") for r in self.world.records(test_split)]
        return self.world.records(split)

    def _task_records(self, task: str, r: Record, split: str) -> list[Record]:
        """The records of world record `r` in `task` (none, one, or two)."""
        w = self.world
        cat, identity, image, domain = r.extras["render_key"]
        infrared = bool(r.extras.get("modality", 0))
        person = r.category == "person"
        outfit = w.outfit(image) if person else 0
        if task == VISIBLE_INFRARED:
            if split != "train":  # queries in one modality, gallery in the other
                wanted = self.infrared_queries if split == "query" else not self.infrared_queries
                if infrared != wanted:
                    return []
            return [self._make(r, task, self._fixed(task, split), split=split)]
        if infrared or (task in (CLOTHES_CHANGING, CLOTHES_TEMPLATE) and not person):
            return []
        if task == TRADITIONAL:
            return [self._make(r, task, self._fixed(task, split))] if outfit == 0 else []
        if task == CLOTHES_CHANGING:
            return [self._make(r, task, self._fixed(task, split))]
        if task == TEXT_TO_IMAGE:
            text = self._make(r, task, normalize_text(r.extras["caption"], self.max_words), text_query=True)
            image_row = self._make(r, task, self._fixed(task, split))
            return {"train": [image_row, text], "query": [text], "gallery": [image_row]}[split]
        # clothes-template and language-instructed: own outfit, or the next one
        target = self._next_outfit_image(r, outfit) if person else image
        chosen = target if split == "query" else image
        records = [self._described(task, r, (cat, identity, chosen, domain), target=split == "query")]
        if split == "train" and self.target_instructions and target != image:
            records.append(self._described(task, r, (cat, identity, target, domain), target=True))
        return records

    def _described(self, task: str, r: Record, key: tuple, target: bool) -> Record:
        """A clothes-template or language-instructed record whose instruction shows the
        outfit of render key `key` (its template, or sentences about it)."""
        cat, identity, image, _ = key
        outfit = {"instruction_id": f"outfit:{cat}/{identity}/{self.world.outfit(image)}"} \
            if r.category == "person" else {}
        if task == CLOTHES_TEMPLATE:
            return self._make(r, task, "", extra={"_instruction_key": key, **outfit}, target=target)
        words = CATEGORIES[r.category].describe(self.world.image_attributes(cat, identity, image))
        return self._make(r, task, attribute_sentences(words, r.category, self.max_words), target=target,
                          extra=outfit)

    def _next_outfit_image(self, r: Record, outfit: int) -> int:
        """An image index of the same person in the next outfit (outfits cycle through
        clothes_changes + 1); the outfit depends on the index only (SyntheticWorld.outfit)."""
        w = self.world
        want = (outfit + 1) % (w.clothes_changes + 1)
        return next(j for j in range(w.num_cameras * (w.clothes_changes + 1) + 1) if w.outfit(j) == want)

    def _fixed(self, task: str, split: str) -> str | tuple[str, ...]:
        """All phrasings on training records (one drawn per sample), the canonical one otherwise."""
        return self.variants[task] if split == "train" else self.variants[task][0]

    @staticmethod
    def _make(r: Record, task: str, instruction: Any, text_query: bool = False,
              extra: dict[str, Any] | None = None, target: bool = False, split: str | None = None) -> Record:
        extras = {**r.extras, "task": task, "instruction": instruction, "text_query": bool(text_query),
                  "_role": ("text" if text_query else "image") + ("/target" if target else "")}
        extras.pop("instruction_id", None)  # a world record's own never stands for this instruction
        extras.update(extra or {})
        if "instruction_id" not in extras:
            text = instruction[0] if isinstance(instruction, (tuple, list)) else instruction
            path = extras.get("_instruction_path")
            extras["instruction_id"] = f"image:{path}" if path else f"text:{text}"
        return Record(path=r.path, pid=r.pid, camid=r.camid, category=r.category, domain=r.domain,
                      split=split or r.split, extras=extras)

    def _manifest(self, split: str) -> list[Record]:
        out = []
        for r in self.source.records(split):
            task = r.extras.get("task")
            if task not in TASKS:
                raise ValueError(f"{NAME}: manifest {self.source.path}: record {r.path} has task {task!r}; "
                                 f"the `task` column must name one of: {', '.join(TASKS)}")
            if task in self.tasks:
                out.append(self._manifest_record(r, task, split))
        return out

    def _manifest_record(self, r: Record, task: str, split: str) -> Record:
        where = f"{NAME}: manifest {self.source.path}: record {r.path} ({task})"
        text_query = bool(r.extras.get("text_query", 0))
        raw = r.extras.get("instruction")
        extra: dict[str, Any] = {}
        if text_query and task != TEXT_TO_IMAGE:
            raise ValueError(f"{where}: text_query is set, but only text-to-image queries are text alone")
        if task in IMAGE_INSTRUCTION_TASKS:
            path = r.extras.get("instruction_image")
            if not path:
                raise ValueError(f"{where}: a clothes-template record needs an `instruction_image` "
                                 "(path of the clothes image, relative to root)")
            extra["_instruction_path"] = str(self.root / str(path)) if not str(path).startswith("/") else str(path)
            instruction: Any = ""
        elif text_query or task == LANGUAGE_INSTRUCTED:
            raw = raw if raw not in (None, "") else r.extras.get("caption")
            if raw in (None, ""):
                raise ValueError(f"{where}: needs its description in the `instruction` (or `caption`) column")
            instruction = normalize_text(str(raw), self.max_words)
        elif raw not in (None, ""):
            phrasings = tuple(normalize_text(v, self.max_words) for v in str(raw).split(VARIANT_SEPARATOR) if v.strip())
            instruction = phrasings if split == "train" else phrasings[0]
        else:
            instruction = self._fixed(task, split)
        given = r.extras.get("instruction_id")
        if given not in (None, ""):
            extra["instruction_id"] = str(given)
        return self._make(r, task, instruction, text_query=text_query, extra=extra)

    # ------------------------------------------------------------------ decoding
    def load_image(self, record: Record) -> Image.Image:
        if record.extras.get("text_query"):
            h, w = self._blank_size()
            return Image.new("RGB", (w, h), BLANK)
        if self.parts:
            return Dataset.load_image(self, record)
        if self.world is not None:
            return self.world.load_image(record)
        return self.source.load_image(record)

    def _blank_size(self) -> tuple[int, int]:
        return (self.world.height, self.world.width) if self.world is not None else self.blank_size

    def sample_extras(self, record: Record) -> dict[str, Any]:
        """The instruction image (clothes template), rendered or read per sample."""
        key = record.extras.get("_instruction_key")
        path = record.extras.get("_instruction_path")
        if key is None and path is None:
            return {}
        h, w = self.instruction_size
        if key is not None:
            proxy = Record(path=None, pid=record.pid, camid=record.camid, category=record.category,
                           extras={"render_key": key})
            image = self.world.clothes_template(proxy, size=(h, w))
        else:
            image = Dataset.load_image(self, Record(path=path, pid=record.pid, camid=record.camid))
            image = image.resize((w, h), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return {"instruction_image": torch.from_numpy(array).permute(2, 0, 1).contiguous()}

    def record_key(self, record: Record) -> str:
        """'<task>/<image key>/<role>': one image is listed by several tasks."""
        base = self.world.record_key(record) if self.world is not None else Dataset.record_key(self, record)
        return f"{record.extras.get('task')}/{base}/{record.extras.get('_role', 'image')}"


def _build_world(world: dict[str, Any] | None) -> SyntheticWorld:
    """SyntheticWorld from DEFAULT_WORLD updated with `world`; unknown keys are named."""
    import inspect

    params = {**DEFAULT_WORLD, **dict(world or {})}
    valid = [p for p in inspect.signature(SyntheticWorld).parameters]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"{NAME}: unknown world key(s) {', '.join(unknown)}; valid keys (those of the "
                         f"`synthetic` dataset): {', '.join(valid)}")
    return SyntheticWorld(**params)

