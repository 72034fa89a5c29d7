"""Cameras and shots: how one image looks at an identity.

A `Camera` is fixed per (seed, camera index): its usual view, viewpoint (scale, tilt,
shift, mirror, and a perspective keystone), light and colour cast, background, optics
(blur, noise) and a typical occluder. A `Shot` is one image's jitter of that. The
per-image draws that came later (perspective jitter, extra occluders) use their own
stream, so worlds that do not ask for them render exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image

from core.data.synthetic.drawing import Box, Color, hsv

VIEWS = ("front", "back", "side")
#: Stream tag of camera parameters in the seed sequence (category indices stay below it).
CAMERA_STREAM = 1_000


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes (viewpoint, light, background, optics)."""

    index: int
    main_view: str
    scale: float
    angle: float
    shift: tuple[float, float]
    mirror: bool
    light: np.ndarray        # (H, W, 3) float32 multiplier: brightness, colour cast, shading
    offset: float            # added after `light` (haze / black level)
    background: np.ndarray   # (H, W * 3 // 2, 3) uint8, cropped at a per-image offset
    blur: float
    noise: float
    occluder: tuple[float, Color] | None  # (probability, colour) of a pole in front
    #: perspective keystone direction in [-1, 1]^2 (pan, tilt); scaled by the world's `perspective`
    keystone: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Shot:
    """One image's draw of the camera's per-image jitter."""

    view: str
    pose: np.ndarray
    matrix: np.ndarray       # 2x3 affine, un-warped frame -> image (pixels)
    brightness: float
    bg_x: int
    occluder_x: float | None
    #: 3x3 projective map un-warped frame -> image, when the world has perspective (else None: `matrix`)
    homography: np.ndarray | None = None
    #: an extra occluder: (kind, colour, a, b) with kind in bottom / side / top, or None
    extra_occluder: tuple[str, Color, float, float] | None = None

    @property
    def projective(self) -> np.ndarray:
        """The full 3x3 map un-warped frame -> image."""
        return self.homography if self.homography is not None else np.vstack([self.matrix, [0.0, 0.0, 1.0]])


def make_camera(seed: int, index: int, height: int, width: int) -> Camera:
    """Camera `index` of world `seed`: fixed viewpoint bias, light, background and optics."""
    rng = np.random.default_rng([seed, CAMERA_STREAM, index])
    main_view = VIEWS[(index + seed) % len(VIEWS)]
    cast = rng.uniform(0.78, 1.2, 3)
    gain = rng.uniform(0.6, 1.25) * cast / cast.mean()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    lx, ly = rng.uniform(-1, 1, 2)
    shading = 1.0 + 0.25 * (lx * (xs / width - 0.5) + ly * (ys / height - 0.5))
    light = (shading[..., None] * gain.astype(np.float32)[None, None, :]).astype(np.float32)
    occluder = (float(rng.uniform(0.2, 0.5)), hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.7))) \
        if rng.random() < 0.5 else None
    camera = Camera(
        index=index, main_view=main_view, scale=float(rng.uniform(0.8, 1.05)),
        angle=float(rng.uniform(-6, 6)), shift=(float(rng.uniform(-0.07, 0.07)), float(rng.uniform(-0.05, 0.09))),
        mirror=bool(rng.random() < 0.5), light=light, offset=float(rng.uniform(-10, 25)),
        background=make_background(rng, height, width * 3 // 2),
        blur=float(rng.choice([0.0, 0.0, 0.6, 1.0, 1.4])), noise=float(rng.uniform(2, 9)), occluder=occluder,
    )
    # drawn last, so that everything above stays what it was before perspective existed
    pan, tilt = rng.uniform(-1, 1), rng.uniform(0.2, 1.0) * rng.choice([-1, 1], p=[0.25, 0.75])
    return replace(camera, keystone=(float(pan), float(tilt)))


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A camera's scene: a floor/wall split, pillars, or a gradient, over smooth clutter."""
    base = np.array(hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8)), np.float32)
    other = np.array(hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.85)), np.float32)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    kind = rng.integers(3)
    if kind == 0:  # wall above, floor below a horizon
        img = np.where(ys < rng.uniform(0.5, 0.75), base, other) + np.zeros_like(xs)
    elif kind == 1:  # pillars / shop fronts
        period = rng.uniform(0.15, 0.4)
        img = np.where((xs / period) % 1.0 < rng.uniform(0.3, 0.6), base, other) + np.zeros_like(ys)
    else:
        img = base * (1 - ys) + other * ys + np.zeros_like(xs)
    coarse = rng.normal(0, 1, (max(height // 10, 2), max(width // 10, 2), 3)) * [1.0, 0.25, 0.25]
    coarse = (coarse @ np.array([[1, 1, 1], [1, -1, 0], [0, 1, -1]]) * 22).astype(np.float32)  # mostly luminance
    clutter = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), np.float32) - 128
    fine = rng.normal(0, 4, (height, width, 3)).astype(np.float32)
    return np.clip(img + clutter + fine, 0, 255).astype(np.uint8)


def make_shot(rng: np.random.Generator, camera: Camera, height: int, width: int) -> Shot:
    """The per-image jitter: view (mostly the camera's), pose, placement, light."""
    r = rng.random()
    view = camera.main_view if r < 0.7 else VIEWS[(VIEWS.index(camera.main_view) + (1 if r < 0.85 else 2)) % 3]
    pose = rng.random(4)
    scale = camera.scale * rng.uniform(0.93, 1.07)
    angle = math.radians(camera.angle + rng.uniform(-2.5, 2.5))
    dx = (camera.shift[0] + rng.uniform(-0.04, 0.04)) * width
    dy = (camera.shift[1] + rng.uniform(-0.03, 0.03)) * height
    mirror = camera.mirror != bool(rng.random() < 0.25)
    brightness = float(rng.uniform(0.88, 1.12))
    bg_x = int(rng.integers(0, camera.background.shape[1] - width + 1))
    occ = camera.occluder
    occluder_x = float(rng.uniform(0.05, 0.95)) if occ is not None and rng.random() < occ[0] else None
    return Shot(view, pose, _affine(scale, angle, mirror, dx, dy, width, height), brightness, bg_x, occluder_x)


def add_extras(shot: Shot, rng: np.random.Generator, camera: Camera, perspective: float, occlusion: float,
               height: int, width: int) -> Shot:
    """The later per-image draws, from their own stream `rng`: a perspective keystone
    (the camera's, jittered, scaled by `perspective`) and, with probability `occlusion`,
    an extra occluder (a barrier at the bottom, a passer-by at a side, a sign at the top).
    A fixed number of draws, so changing one knob never moves the other's values."""
    u = rng.random(8)
    homography = None
    if perspective > 0:
        pan = perspective * (camera.keystone[0] + (u[0] - 0.5) * 0.4) * 0.6
        tilt = perspective * (camera.keystone[1] + (u[1] - 0.5) * 0.4) * 0.6
        homography = np.vstack([shot.matrix, [0.0, 0.0, 1.0]]) @ keystone(pan, tilt, width, height)
    extra = None
    if u[2] < occlusion:
        kind = ("bottom", "side", "top")[int(u[3] * 3)]
        extra = (kind, hsv(u[4], 0.15 + 0.5 * u[5], 0.2 + 0.6 * u[6]), float(u[7]), float(u[0]))
    return replace(shot, homography=homography, extra_occluder=extra)


def keystone(pan: float, tilt: float, w: int, h: int) -> np.ndarray:
    """A projective map about the image centre: with tilt > 0 the top of the object comes
    nearer (wider), as a camera mounted high and looking down sees it; pan does the same
    left-right. The centre stays put and keeps its scale."""
    c = np.array([[1.0, 0.0, w / 2], [0.0, 1.0, h / 2], [0.0, 0.0, 1.0]])
    pan, tilt = float(np.clip(pan, -0.7, 0.7)), float(np.clip(tilt, -0.7, 0.7))
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [pan / (w / 2), tilt / (h / 2), 1.0]])
    return c @ p @ np.linalg.inv(c)


def _affine(scale: float, angle: float, mirror: bool, dx: float, dy: float, w: int, h: int) -> np.ndarray:
    """2x3 matrix: mirror, rotate and scale about the image centre, then shift."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    m = np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    centre = np.array([w / 2, h / 2])
    t = centre + np.array([dx, dy]) - m @ centre
    return np.column_stack([m, t])


def warp_boxes(boxes: Sequence[Box], matrix: np.ndarray, w: int, h: int) -> np.ndarray:
    """Boxes (pixels, un-warped) -> the bounding boxes of their warped corners, as
    fractions [x0, y0, x1, y1] of the image, clipped to [0, 1]. `matrix` is 2x3 (affine)
    or 3x3 (projective: straight edges stay straight, so the corners bound the quad)."""
    out = np.empty((len(boxes), 4), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        pts = np.array([[x0, x1, x1, x0], [y0, y0, y1, y1], [1, 1, 1, 1]], np.float64)
        q = matrix @ pts
        if q.shape[0] == 3:
            q = q[:2] / q[2]
        out[i] = (q[0].min() / w, q[1].min() / h, q[0].max() / w, q[1].max() / h)
    return np.clip(out, 0.0, 1.0)
