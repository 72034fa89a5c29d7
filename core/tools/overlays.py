"""`core explain`: part-mask overlays for backbones that predict part masks (amsa); the
other methods (Grad-CAM, attention rollout) are in `core.tools.explain_maps`.

The contract (DESIGN.md "backbone": "may add ... masks per layer"): the model's output
dict holds "part_masks", shape (B, P, N) with N = rows x cols of the backbone's
`patch_grid` (row-major patches, as ViT tokens), or (B, P, rows, cols); values are
probabilities in [0, 1] (each part's mask, e.g. a softmax over parts or a sigmoid per
part). A list of such tensors (one per layer) is read at its last layer. Another key can
be named (`--key`).

Per image the picture shows the image, each part's heat map over it (stretched from
that part's minimum to its maximum, both written under it), and the arg-max part map; an
image that carries a text instruction (records' extras "instruction") has it written
under the row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from core.tools.pictures import INK, WHITE, font, jet, wrap, write_index

log = logging.getLogger(__name__)

CONTRACT = ("'part_masks': (B, P, N) probabilities over the backbone's patch grid (N = rows x cols of "
            "backbone.patch_grid), or (B, P, rows, cols)")


class MissingMasks(ValueError):
    """The model does not output part masks under the contract."""


def part_colours(count: int) -> np.ndarray:
    import colorsys

    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(i / max(count, 1), 0.85, 0.95)]
                     for i in range(count)], dtype=np.uint8)


def read_masks(outputs: dict, key: str, grid: tuple[int, int] | None, backbone: str) -> torch.Tensor:
    """(B, P, rows, cols) masks from the model outputs, or MissingMasks saying why not."""
    if key not in outputs:
        raise MissingMasks(f"backbone '{backbone}' does not output part masks: the model outputs "
                           f"{', '.join(sorted(outputs))}; `core explain` needs {CONTRACT} under the key "
                           f"'{key}' (backbones that predict part masks, e.g. amsa, provide it)")
    masks = outputs[key]
    if isinstance(masks, (list, tuple)):  # one per layer: the last layer's
        masks = masks[-1]
    if not torch.is_tensor(masks) or masks.dim() not in (3, 4):
        raise MissingMasks(f"model output '{key}' has shape {tuple(getattr(masks, 'shape', ()))}; expected {CONTRACT}")
    if masks.dim() == 3:
        if grid is None or grid[0] * grid[1] != masks.shape[2]:
            raise MissingMasks(f"model output '{key}' has {masks.shape[2]} positions per part but the backbone's "
                               f"patch_grid is {grid}; expected {CONTRACT}")
        masks = masks.reshape(masks.shape[0], masks.shape[1], grid[0], grid[1])
    return masks.float()


def overlay_picture(image: Image.Image, masks: torch.Tensor, size: tuple[int, int], title: str = "",
                    alpha: float = 0.55, note: str = "") -> Image.Image:
    """The image, a heat map per part (P, rows, cols), and the arg-max part map, in a row.
    `size` is the model input (height, width); the picture keeps its aspect. `note` (an
    instructed image's instruction) is written under the row, wrapped to its width."""
    height = 192
    width = max(32, round(height * size[1] / size[0]))
    base = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
    up = F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    up = up.cpu().numpy()
    tiles, captions = [base.astype(np.uint8)], ["image"]
    for p, m in enumerate(up):
        low, high = float(masks[p].min()), float(masks[p].max())
        heat = jet((m - low) / (high - low)) if high > low else jet(np.zeros_like(m))
        tiles.append(((1 - alpha) * base + alpha * heat).astype(np.uint8))
        captions.append(f"part {p}  {low:.2f}-{high:.2f}")
    colours = part_colours(len(up))
    tiles.append(((1 - alpha) * base + alpha * colours[up.argmax(0)]).astype(np.uint8))
    captions.append("arg-max part")
    gap, head, foot, line = 6, (20 if title else 4), 18, 13
    total_w = gap + len(tiles) * (width + gap)
    small = font(11)
    note_lines = wrap(note, total_w - 2 * gap, lambda text: small.getlength(text)) if note else []
    canvas = Image.new("RGB", (total_w, head + height + foot + len(note_lines) * line), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 3), title, fill=INK, font=font(13))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = gap + i * (width + gap)
        canvas.paste(Image.fromarray(tile), (x, head))
        draw.text((x, head + height + 3), caption, fill=INK, font=small)
    for i, text in enumerate(note_lines):
        draw.text((gap + 1, head + height + foot + i * line), text, fill=INK, font=small)
    return canvas


METHODS = ("auto", "parts", "gradcam", "rollout")


def explain(target: str | Path, images: str, out: str | Path, key: str = "part_masks", limit: int = 32,
            device: str = "auto", batch_size: int = 32, method: str = "auto", gallery: str | None = None,
            top: int = 5, layer: str | None = None, discard_ratio: float = 0.0, head_fusion: str = "mean",
            exclude_same_camera: bool | None = None, cam: str = "gradcam", image_check: str = "error") -> Path:
    """What `core explain` does; returns the index.html path.

    `method`: parts (the model's part masks, this module), gradcam (CNNs) or rollout
    (ViTs) on each query and its top matches (`core.tools.explain_maps`); auto picks
    parts when the model outputs `key`, else rollout for a ViT backbone, else gradcam.
    `image_check`: the images are checked before the first is drawn, as `core extract`
    checks them (`core.tools.images.screened`): only the first `limit` of --images, the
    only ones drawn (with --skip-bad-images, as many more as were left out:
    `screened_first`), and the whole gallery, which is embedded. Matches are ranked as
    `core search` ranks them: `exclude_same_camera` None follows
    `core.tools.ranked_items.search_rule` (the run's query against its gallery: the items
    its evaluator ranks); True / False: the whole gallery with or without the query's
    identity in its camera.
    """
    from core.data.loading import ImageSamples, collate
    from core.tools.images import open_images, screened, screened_first
    from core.tools.loading import load_run
    from core.tools.search import _instruction_note

    if method not in METHODS:
        raise ValueError(f"explain: method must be one of {', '.join(METHODS)}, got {method!r}")
    run = load_run(target, device=device)
    image_set = screened_first(open_images(images, run), limit, "--images", image_check, "Nothing was drawn")
    count = min(limit, len(image_set))
    samples = ImageSamples(image_set.table, image_set.datasets, run.pipeline.test_transform)
    backbone = run.pipeline.provenance.get("backbone", {}).get("name", type(run.model.backbone).__name__)
    grid = getattr(run.model.backbone, "patch_grid", None) or run.pipeline.ctx.patch_grid
    out = Path(out)
    if method == "auto":
        method = _auto_method(run, collate([samples[0]]).to(run.device), key) if count else "parts"
        log.info("explain: method %s (auto)", method)
    if method != "parts":
        from core.tools.explain_maps import Settings, explain_matches

        if gallery is None:
            at = str(images).partition("@")[2] if str(images).startswith("run:") else ""
            gallery = "run:gallery" + (f"@{at}" if at else "")
        from core.tools.ranked_items import search_rule

        gallery_set, = screened([("--gallery", open_images(gallery, run, "--gallery", "gallery"))], image_check,
                                "Nothing was drawn")
        rule = search_rule(run, images, gallery, image_set, gallery_set, exclude_same_camera)
        return explain_matches(run, image_set, gallery_set, out,
                               Settings(method, top=top, layer=layer, discard_ratio=discard_ratio,
                                        head_fusion=head_fusion, cam=cam),
                               limit=limit, batch_size=batch_size, rule=rule)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for start in range(0, count, batch_size):
        batch = collate([samples[i] for i in range(start, min(start + batch_size, count))]).to(run.device)
        with torch.no_grad(), run.autocast():
            masks = read_masks(run.model(batch), key, grid, backbone)
        for row, index in enumerate(range(start, start + len(batch))):
            label = image_set.label(index)
            stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(label).stem).strip("_") or "image"
            name = f"{index:04d}_{stem}.png"
            title = f"{label}  ({masks.shape[1]} parts, '{key}')"
            overlay_picture(image_set.image(index), masks[row], run.pipeline.ctx.image_size, title,
                            note=_instruction_note(image_set, index)).save(out / name)
            entries.append((name, title))
    return write_index(out, entries, f"part masks of {run.run_dir.name}",
                       f"{CONTRACT}; each heat map stretched from its part's minimum to its maximum", legend=False)


def _auto_method(run, batch, key: str) -> str:
    """parts when the model outputs `key`, rollout for a timm ViT backbone, else gradcam."""
    from core.tools.rollout import attention_modules

    with torch.no_grad():
        if key in run.model(batch):
            return "parts"
    return "rollout" if attention_modules(run.model.backbone) else "gradcam"
