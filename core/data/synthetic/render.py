"""Composition of one image: the identity drawn un-warped, warped through the shot,
pasted on the camera's background, occluded, then the optics and the sensor.

Two things vary the sensor on top of the camera: the domain's render style (`STYLES`:
the default photo-like look, flat cartoon shading, a pencil sketch, a dark night look)
and the infrared modality (a thermal look: warm skin bright, fabrics by emissivity, a
cool background; one channel, returned as grey RGB so the usual transforms apply).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from core.data.synthetic.camera import Camera, Shot
from core.data.synthetic.categories import CategorySpec
from core.data.synthetic.drawing import grey_of, is_color

#: Render styles a domain can use; the index is part of the seed of a non-default style,
#: so add new styles at the end. "synthetic" is the world's original look.
STYLES = ("synthetic", "cartoon", "sketch", "night")


def render_image(spec: CategorySpec, attrs: dict[str, Any], camera: Camera, shot: Shot,
                 rng: np.random.Generator, height: int, width: int, style: str = "synthetic",
                 infrared: bool = False) -> Image.Image:
    """Draw the identity un-warped, warp it through the shot, composite it on the
    camera's background, then apply occluders, blur, light and sensor noise (per style)."""
    if infrared:
        attrs = thermal_attributes(attrs)
    sprite = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    spec.draw(ImageDraw.Draw(sprite), attrs, spec.layout(attrs, shot.view, shot.pose, width, height))
    if shot.homography is None:
        inv = np.linalg.inv(np.vstack([shot.matrix, [0, 0, 1]]))[:2].ravel()
        sprite = sprite.transform((width, height), Image.AFFINE, tuple(inv), resample=Image.BILINEAR)
    else:
        inv = np.linalg.inv(shot.homography)
        sprite = sprite.transform((width, height), Image.PERSPECTIVE, tuple((inv / inv[2, 2]).ravel()[:8]),
                                  resample=Image.BILINEAR)
    bg = np.ascontiguousarray(camera.background[:, shot.bg_x:shot.bg_x + width])
    if infrared:  # a cool, low-contrast scene
        bg = (np.asarray(Image.fromarray(bg).convert("L"), np.float32) * 0.4 + 25).astype(np.uint8)
        bg = np.repeat(bg[..., None], 3, axis=2)
    elif style == "cartoon":  # flat colour areas
        bg = np.asarray(ImageOps.posterize(Image.fromarray(bg).filter(ImageFilter.GaussianBlur(3)), 3))
    img = Image.fromarray(bg)
    if style == "cartoon":  # ink outline around the sprite
        alpha = sprite.getchannel("A")
        outline = alpha.filter(ImageFilter.MaxFilter(3))
        img.paste((20, 20, 20), (0, 0), outline)
    img.paste(sprite, (0, 0), sprite)
    draw = ImageDraw.Draw(img)
    if shot.occluder_x is not None:
        x = shot.occluder_x * width
        colour = camera.occluder[1]  # type: ignore[index]
        draw.rectangle((x, 0, x + width * 0.09, height), fill=thermal_grey(colour) if infrared else colour)
    if shot.extra_occluder is not None:
        _extra_occluder(draw, shot.extra_occluder, width, height, infrared)
    if style == "sketch":
        return _sketch(img, rng)
    if camera.blur > 0 and style != "cartoon":
        img = img.filter(ImageFilter.GaussianBlur(camera.blur))
    if infrared:
        return _infrared(img, camera, shot, rng)
    return _photometric(img, camera, shot, rng, style)


def _photometric(img: Image.Image, camera: Camera, shot: Shot, rng: np.random.Generator,
                 style: str = "synthetic") -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) * camera.light
    arr *= shot.brightness
    if style == "night":  # dark, blue, noisy: a low-light camera
        arr *= np.array([0.36, 0.42, 0.58], np.float32)
        arr += camera.offset * 0.3
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * (camera.noise * 1.8 + 4)
    elif style == "cartoon":  # the colour cast, no shading gradient, no noise
        arr = np.asarray(img, dtype=np.float32) * camera.light.mean(axis=(0, 1)) * shot.brightness
    else:
        arr += camera.offset
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * camera.noise
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


def _infrared(img: Image.Image, camera: Camera, shot: Shot, rng: np.random.Generator) -> Image.Image:
    """One channel: the camera's shading (not its colour cast), gain, noise; R == G == B."""
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    arr *= camera.light.mean(axis=2) / float(camera.light.mean()) * shot.brightness
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * camera.noise
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")


def _sketch(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pencil lines on paper with a pale wash of the colours: edges carry the shapes and
    patterns, the wash keeps a hint of the colours."""
    grey = img.convert("L").filter(ImageFilter.GaussianBlur(1.0))
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), np.float32)
    edges = np.where(edges > 10, edges, 0.0)  # the background's grain is no line
    edges[[0, -1], :] = 0
    edges[:, [0, -1]] = 0
    wash = np.asarray(img, np.float32)
    paper = np.array([246, 242, 232], np.float32)
    out = paper * 0.7 + wash * 0.3
    out *= np.clip(1.0 - edges[..., None] / 60.0, 0.15, 1.0)
    out += rng.standard_normal(edges.shape, dtype=np.float32)[..., None] * 3
    np.clip(out, 0, 255, out=out)
    return Image.fromarray(out.astype(np.uint8))


def _extra_occluder(draw: ImageDraw.ImageDraw, occ: tuple[str, Any, float, float], w: int, h: int,
                    infrared: bool) -> None:
    kind, colour, a, b = occ
    colour = thermal_grey(colour) if infrared else colour
    if kind == "bottom":  # a barrier, a bench, a car bonnet
        top = h * (1.0 - 0.15 - 0.2 * a)
        draw.rectangle((0, top, w, h), fill=colour)
        draw.rectangle((0, top, w, top + h * 0.02), fill=tuple(min(255, c + 40) for c in colour))
    elif kind == "side":  # a passer-by's shoulder and arm entering the frame
        x = w * (0.15 + 0.2 * a)
        cx = -w * 0.15 if b < 0.5 else w * 1.15
        edge = x if b < 0.5 else w - x
        draw.ellipse((min(cx, edge) - w * 0.3, h * (0.2 + 0.2 * a), max(cx, edge), h * 1.2), fill=colour)
    else:  # a sign or branch hanging from the top
        draw.rectangle((w * 0.6 * a, 0, w * (0.4 + 0.6 * a), h * (0.1 + 0.12 * b)), fill=colour)


def thermal_grey(colour: Any) -> tuple[int, int, int]:
    """A painted colour seen by a thermal camera: fabrics and paints vary by emissivity
    (here: a muted function of luminance and hue), never as bright as skin."""
    g = int(85 + 0.3 * grey_of(colour) + 0.15 * (colour[0] - colour[2]))
    g = max(50, min(185, g))
    return g, g, g


def thermal_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """The identity in thermal grey levels: every colour attribute mapped by
    `thermal_grey`; skin (people) is the warmest thing in the scene."""
    out = {k: (thermal_grey(v) if is_color(v) else v) for k, v in attrs.items()}
    if "skin" in attrs:
        out["skin"] = (238, 238, 238)
    if "hair" in attrs:
        out["hair"] = (150, 150, 150)
    for k, v in attrs.items():  # lists of colours (a ship's containers)
        if isinstance(v, list) and v and is_color(v[0]):
            out[k] = [thermal_grey(c) for c in v]
        if isinstance(v, tuple) and len(v) == 4 and is_color(v[3]):  # an object's sticker
            out[k] = (*v[:3], thermal_grey(v[3]))
    return out
