"""`core explain --method gradcam|rollout`: heat maps on each query and its top matches,
for models without part masks.

The queries are ranked against the gallery as `core search` ranks them (the run's
distance and flip averaging). Then, per query, one picture with the query and its top-k
matches in columns:

- gradcam (CNNs, `core.tools.gradcam`): row 2 shows, on each match, the regions that
  make it similar to the query, and on the query, the regions that make it similar to
  all k matches (the target is the sum of the cosine similarities); row 3 shows, under
  each match, the query's regions that make it similar to that match. Targets are
  cosine similarities of the embeddings, whatever distance the run ranks with.
- rollout (ViTs, `core.tools.rollout`): row 2 shows each image's attention rollout into
  the class token; it does not depend on the other image.

The maps are computed on single, unflipped images in fp32. Each heat map is stretched
from its minimum to its maximum. A query that carries a text instruction (Instruct-ReID:
records' extras "instruction") has it written under its picture, as `core search` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from core.tools.pictures import BLUE, GREEN, GREY, INK, RED, WHITE, font, wrap, write_index

log = logging.getLogger(__name__)

MAP_METHODS = ("gradcam", "rollout")


@dataclass
class Settings:
    method: str
    top: int = 5
    layer: str | None = None
    #: gradcam: "gradcam" (built in) or a pytorch-grad-cam method (`core.tools.gradcam.LIBRARY_CAMS`)
    cam: str = "gradcam"
    discard_ratio: float = 0.0
    head_fusion: str = "mean"


class Explainer:
    """The maps of one loaded run: `maps(batch, references)` -> (B, H, W) in [0, 1] at the
    model's input size."""

    def __init__(self, run, settings: Settings, probe) -> None:
        from core.tools.gradcam import LIBRARY_CAMS
        from core.tools.rollout import attention_modules

        self.run, self.settings = run, settings
        self.model = run.model
        backbone = run.model.backbone
        self.size = tuple(run.pipeline.ctx.image_size)
        self.layer_name = ""
        if settings.method == "rollout":
            self.grid = getattr(backbone, "patch_grid", None) or run.pipeline.ctx.patch_grid
            if not attention_modules(backbone):
                raise ValueError(f"rollout: backbone {type(backbone).__name__} has no timm ViT attention blocks; "
                                 "rollout needs a ViT (for CNNs use --method gradcam)")
            if self.grid is None:
                raise ValueError(f"rollout: backbone {type(backbone).__name__} has no patch_grid")
        elif settings.cam != "gradcam" and settings.cam not in LIBRARY_CAMS:
            raise ValueError(f"--cam {settings.cam}: unknown; choose gradcam (built in) or one of pytorch-grad-cam's "
                             f"{', '.join(LIBRARY_CAMS)}")
        if settings.method == "rollout":
            pass
        elif settings.layer:
            try:
                self.layer = run.model.get_submodule(settings.layer)
            except AttributeError as exc:
                names = [n for n, m in run.model.named_modules() if n.count(".") <= 3 and n][-8:]
                raise ValueError(f"--layer {settings.layer}: no such module in the model ({exc}); module names "
                                 f"look like: {', '.join(names)}") from exc
            self.layer_name = settings.layer
            while isinstance(self.layer, nn.Sequential) and len(self.layer):  # a stage: its last unit's output
                self.layer_name += f".{len(self.layer) - 1}"  # (ReIDResNet calls a stage's units one by one)
                self.layer = self.layer[-1]
        else:
            from core.tools.gradcam import last_feature_map_layer

            if attention_modules(backbone):
                raise ValueError("gradcam: the backbone is a ViT (its only spatial map is the patch embedding); "
                                 "use --method rollout, or name a layer with --layer")
            name, self.layer = last_feature_map_layer(lambda: self.model(probe), backbone)
            self.layer_name = f"backbone.{name}"

    def embed(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch)["embedding"].float()

    def maps(self, batch, references: torch.Tensor | None = None) -> torch.Tensor:
        from core.tools.gradcam import grad_cam, upsample

        if self.settings.method == "rollout":
            from core.tools.rollout import rollout_maps

            raw = rollout_maps(lambda: self.model(batch), self.model.backbone, self.grid,
                               self.settings.discard_ratio, self.settings.head_fusion)
        elif self.settings.cam != "gradcam":
            from core.tools.gradcam import library_cam

            return library_cam(self.settings.cam, self.model, self.layer, batch, references)
        else:
            raw = grad_cam(lambda: self.model(batch)["embedding"], self.layer, references)
        return upsample(raw, self.size).cpu()


def _batch(samples, indices) -> object:
    from core.data.loading import collate

    return collate([samples[int(i)] for i in indices])


def explain_matches(run, query_set, gallery_set, out: Path, settings: Settings, limit: int = 16,
                    exclude_same_camera: bool = False, batch_size: int = 32, progress: bool = False,
                    rule=None) -> Path:
    """Rank, compute the maps and draw a picture per query into `out`; returns index.html.
    `rule` (`core.tools.ranked_items.SearchRule` over `query_set`'s rows): the gallery items
    ranked for each query; default the camera rule of `exclude_same_camera`."""
    from core.data.loading import ImageSamples
    from core.tools.extract import embed
    from core.tools.ranked_items import camera_rule
    from core.tools.search import _identity, _instruction_note, _subset, rank

    rule = rule or camera_rule(query_set, gallery_set, exclude_same_camera)
    count = min(limit, len(query_set))
    if count == 0:
        raise ValueError(f"{query_set.source}: no query images")
    queries = _subset(query_set, np.arange(count))
    transform = run.pipeline.test_transform
    q_samples = ImageSamples(queries.table, queries.datasets, transform)
    g_samples = ImageSamples(gallery_set.table, gallery_set.datasets, transform)
    device = run.device
    explainer = Explainer(run, settings, _batch(q_samples, [0]).to(device))  # bad settings fail before ranking
    q_emb = embed(run, queries, batch_size=batch_size, progress=progress)
    g_emb = embed(run, gallery_set, batch_size=batch_size, progress=progress)
    results = rank(q_emb, g_emb, run.metric, settings.top, queries, gallery_set, ranked=rule.ranked)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, result in enumerate(results):
        matches = [int(j) for j in result.gallery]
        q_batch = _batch(q_samples, [result.query]).to(device)
        query_map = match_maps = pair_maps = None
        if matches:
            g_batch = _batch(g_samples, matches).to(device)
            if settings.method == "gradcam":
                e_q, e_g = explainer.embed(q_batch), explainer.embed(g_batch)
                k = len(matches)
                query_map = explainer.maps(q_batch, F.normalize(e_g, dim=1).sum(0, keepdim=True))[0]
                match_maps = explainer.maps(g_batch, e_q.expand(k, -1))
                pair_maps = explainer.maps(_batch(q_samples, [result.query] * k).to(device), e_g)
            else:
                query_map = explainer.maps(q_batch)[0]
                match_maps = explainer.maps(g_batch)
        elif settings.method == "rollout":  # nothing to compare with: the image's own map still stands
            query_map = explainer.maps(q_batch)[0]
        columns = [Column(queries.image(result.query), BLUE, "query",
                          [_identity(queries.table, result.query)], query_map, None)]
        for i, (j, dist, ok) in enumerate(zip(matches, result.distances, result.correct)):
            columns.append(Column(gallery_set.image(j), GREY if ok is None else (GREEN if ok else RED), f"{i + 1}",
                                  [f"{dist:.3f}", _identity(gallery_set.table, j)],
                                  None if match_maps is None else match_maps[i],
                                  None if pair_maps is None else pair_maps[i]))
        label = queries.label(result.query)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(label).stem).strip("_") or "query"
        name = f"{n:04d}_{stem}.png"
        title = f"query {label} ({_identity(queries.table, result.query)})  {settings.method}"
        rows = (["image", "similarity map", "query, for this match"] if settings.method == "gradcam"
                else ["image", "attention rollout"])
        note = _instruction_note(queries, result.query)  # what an instructed query asked for, as core search shows
        explain_picture(columns, rows, explainer.size, title, note=note).save(out / name)
        entries.append((name, title))
    what = (f"{settings.cam} of the cosine similarity at {explainer.layer_name}" if settings.method == "gradcam" else
            f"attention rollout ({settings.head_fusion} over heads, discard ratio {settings.discard_ratio:g})")
    log.info("%s: %d queries, top %d each%s", settings.method, len(results), settings.top,
             f", target layer {explainer.layer_name}" if explainer.layer_name else "")
    return write_index(out, entries, f"{settings.method} maps of {run.run_dir.name}",
                       f"{what}; {run.metric} distance under each match (ranked: {rule.text}); each heat map "
                       "stretched from its minimum to its maximum")


@dataclass
class Column:
    image: Image.Image | None
    border: tuple[int, int, int]
    heading: str
    caption: list[str]
    #: row 2: this image's map
    own_map: torch.Tensor | None
    #: row 3: the query's map for this match (gradcam)
    pair_map: torch.Tensor | None


def blend(image: Image.Image, heat: torch.Tensor | None, width: int, height: int, alpha: float = 0.5) -> Image.Image:
    """`image` resized to (width, height) with the map (H, W) in [0, 1] over it in the jet colours."""
    from core.tools.pictures import jet

    base = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
    if heat is None:
        return Image.fromarray(base.astype(np.uint8))
    m = F.interpolate(heat[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return Image.fromarray(((1 - alpha) * base + alpha * jet(m.clamp(0, 1).numpy())).astype(np.uint8))


def explain_picture(columns: list[Column], rows: list[str], size: tuple[int, int], title: str = "",
                    height: int = 128, border: int = 4, gap: int = 6, note: str = "") -> Image.Image:
    """Columns (query, matches) x rows (image, its map, the query's map for the match);
    `note` (an instructed query's instruction) is written under the captions, wrapped to
    the picture's width, as `core search`'s ranked lists write it."""
    width = max(24, round(height * size[1] / size[0]))
    small, big = font(11), font(13)
    line, label_w = 13, 120
    lines = max(len(c.caption) for c in columns)
    top = (20 if title else 4) + line + 2
    cell_w, cell_h = width + 2 * border, height + 2 * border
    total_w = label_w + gap + len(columns) * (cell_w + gap) + 2 * gap
    note_lines = wrap(note, total_w - 2 * gap, lambda text: small.getlength(text)) if note else []
    total_h = top + len(rows) * (cell_h + gap) + (lines + len(note_lines)) * line + gap
    canvas = Image.new("RGB", (total_w, total_h), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 3), title, fill=INK, font=big)
    for r, name in enumerate(rows):
        draw.text((gap, top + r * (cell_h + gap) + cell_h // 2 - 6), name, fill=INK, font=small)
    for c, column in enumerate(columns):
        x = label_w + gap + c * (cell_w + gap) + (2 * gap if c else 0)
        draw.text((x + 1, top - line - 1), column.heading, fill=INK, font=small)
        for r in range(len(rows)):
            heat = (None, column.own_map, column.pair_map)[r]
            if r and heat is None:
                continue
            y = top + r * (cell_h + gap)
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=column.border)
            if column.image is not None:
                canvas.paste(blend(column.image, heat, width, height), (x + border, y + border))
        y = top + len(rows) * (cell_h + gap)
        for i, text in enumerate(column.caption):
            draw.text((x + 1, y + i * line), text, fill=INK, font=small)
    y = top + len(rows) * (cell_h + gap) + lines * line
    for i, text in enumerate(note_lines):
        draw.text((gap + 1, y + i * line), text, fill=INK, font=small)
    return canvas
