"""Paint a ``Scene`` as a seamless 360° panorama, or as video frames with a panning camera (numpy).

A picture is composed from layers painted once at the panorama's full width: the sky (gradient,
sun or moon glow, stars), clouds, the mountain ranges far to near (atmospheric perspective: each
further range fades toward the haze colour; snow on the highest), a forest band, and below the
horizon either ground or water that mirrors everything above it with ripples. Every horizontal
function is periodic over the width (``noise``), so column ``W-1`` continues into column ``0``.

Video frames look through a window that pans across the panorama: each layer moves by the pan times
its parallax (far ranges barely, the forest fully), clouds drift on their own, and in ``setting``
clips the sun sinks and the light dims, so consecutive frames hold real, layered motion.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .noise import field, ridge
from .scene import Scene

# zenith, horizon sky colours; the light on the land; the haze; the sun's colour and height
# (share of the sky's height above the horizon; None: below it)
PALETTES = {
    "day": dict(zenith=(0.16, 0.38, 0.76), horizon=(0.66, 0.80, 0.94), light=(1.0, 1.0, 0.97),
                haze=(0.70, 0.80, 0.91), sun=(1.0, 0.97, 0.88), sun_height=0.75),
    "golden hour": dict(zenith=(0.27, 0.42, 0.70), horizon=(0.99, 0.79, 0.50), light=(1.0, 0.83, 0.62),
                        haze=(0.93, 0.78, 0.60), sun=(1.0, 0.86, 0.55), sun_height=0.22),
    "sunset": dict(zenith=(0.20, 0.18, 0.42), horizon=(0.98, 0.45, 0.22), light=(0.86, 0.52, 0.42),
                   haze=(0.80, 0.46, 0.40), sun=(1.0, 0.62, 0.30), sun_height=0.05),
    "dusk": dict(zenith=(0.05, 0.07, 0.20), horizon=(0.44, 0.34, 0.54), light=(0.34, 0.34, 0.50),
                 haze=(0.33, 0.30, 0.46), sun=None, sun_height=None),
    "night": dict(zenith=(0.01, 0.02, 0.07), horizon=(0.07, 0.10, 0.20), light=(0.24, 0.27, 0.40),
                  haze=(0.10, 0.13, 0.23), sun=None, sun_height=None),
}
ROCK = np.array([0.42, 0.40, 0.43])
FOREST = np.array([0.10, 0.22, 0.13])
MEADOW = np.array([0.30, 0.42, 0.20])
WATER = np.array([0.05, 0.13, 0.20])


@dataclasses.dataclass
class Layers:
    """A scene painted at panorama size: RGB sky, RGBA layers in depth order with their parallax."""

    scene: Scene
    palette: dict
    sky: np.ndarray                     # [H, W, 3]
    layers: list                        # [(rgba [H, W, 4], parallax)], far to near, above the horizon
    below: np.ndarray | None            # [H, W, 3] ground; None where water mirrors the land
    horizon_px: int
    clouds: np.ndarray                  # [H, W, 4]


def _palette(scene: Scene) -> dict:
    palette = {k: (np.array(v) if isinstance(v, tuple) else v) for k, v in PALETTES[scene.time].items()}
    tint = np.array([1.0 + 0.06 * scene.hue_shift, 1.0, 1.0 - 0.06 * scene.hue_shift])
    for key in ("zenith", "horizon", "haze"):
        palette[key] = np.clip(palette[key] * tint, 0, 1)
    return palette


def _sky(scene: Scene, palette: dict, height: int, width: int, horizon_px: int, rng) -> np.ndarray:
    y = np.arange(height)[:, None, None] / max(horizon_px, 1)
    t = np.clip(y, 0, 1) ** 1.4
    sky = palette["zenith"] * (1 - t) + palette["horizon"] * t
    sky = np.broadcast_to(sky, (height, width, 3)).copy()
    if scene.time in ("night", "dusk"):
        density = 0.004 if scene.time == "night" else 0.0012
        stars = rng.random((horizon_px, width)) < density
        brightness = rng.uniform(0.3, 1.0, size=stars.shape) * stars * (1 - t[:horizon_px, :, 0] * 0.8)
        sky[:horizon_px] += brightness[..., None] * np.array([0.9, 0.92, 1.0])
    return sky


def _glow(sky: np.ndarray, scene: Scene, palette: dict, horizon_px: int, sun_height: float, period: int,
          light_scale: float = 1.0) -> np.ndarray:
    """Sky with the sun (or moon) disc and glow at ``sun_height`` (share of the sky above the
    horizon) and column ``sun_azimuth * width``; distances wrap around every ``period`` columns."""
    height, width, _ = sky.shape
    cx = scene.sun_azimuth * width
    cy = horizon_px * (1 - sun_height)
    x = np.arange(width)[None, :]
    dx = np.abs(x - cx) % period
    dx = np.minimum(dx, period - dx)                                # across the 360° seam too
    dy = np.arange(height)[:, None] - cy
    distance = np.sqrt(dx ** 2 + dy ** 2) / height
    out = sky.copy()
    if palette["sun"] is not None:
        glow = np.exp(-distance / 0.16) * 0.55 + np.exp(-distance / 0.6) * 0.2
        out += glow[..., None] * palette["sun"] * light_scale
        disc = np.clip((0.045 - distance) / 0.006, 0, 1)
        out = out * (1 - disc[..., None]) + disc[..., None] * np.minimum(palette["sun"] * 1.2, 1.0)
    elif scene.moon:
        disc = np.clip((0.028 - distance) / 0.004, 0, 1)
        shadow = np.sqrt((dx - 0.018 * height) ** 2 + (dy + 0.006 * height) ** 2) / height
        crescent = disc * np.clip((shadow - 0.024) / 0.004, 0.15, 1)
        halo = np.exp(-distance / 0.08) * 0.12
        out += halo[..., None] * np.array([0.7, 0.75, 0.9])
        out = out * (1 - crescent[..., None]) + crescent[..., None] * np.array([0.95, 0.94, 0.86])
    return out


def _clouds(scene: Scene, palette: dict, height: int, width: int, horizon_px: int, rng) -> np.ndarray:
    rgba = np.zeros((height, width, 4))
    if scene.clouds <= 0:
        return rgba
    band = max(horizon_px, 8)
    noise = field(rng, band, width, slope=2.3, stretch=3.5)
    threshold = 0.75 - 0.45 * scene.clouds
    density = np.clip((noise - threshold) / 0.22, 0, 1)
    fade = np.clip((np.arange(band)[:, None] / band - 0.05) / 0.2, 0, 1) * np.clip(1.05 - np.arange(band)[:, None] / band, 0, 1)
    alpha = density * fade * 0.92
    lit = palette["light"] * 0.85 + palette["horizon"] * 0.25
    shade = palette["zenith"] * 0.5 + palette["haze"] * 0.4
    below = np.clip(np.roll(density, -3, axis=0) - density + 0.5, 0, 1)[..., None]
    rgba[:band, :, :3] = np.clip(lit * (1 - 0.45 * below) + shade * 0.45 * below, 0, 1)
    rgba[:band, :, 3] = alpha
    return rgba


def _range(scene: Scene, palette: dict, height: int, width: int, horizon_px: int, index: int, rng,
           snow: bool) -> np.ndarray:
    """One mountain range as RGBA: ``index`` 0 is the furthest."""
    n = scene.ranges
    depth = (n - index) / n                                   # 1 far .. 1/n near
    sky_h = horizon_px
    smooth = ridge(rng, width, octaves=64, roughness=1.25, lowest=2 + index)
    sharp = 1 - np.abs(ridge(rng, width, octaves=48, roughness=1.05, lowest=3 + 2 * index))
    shape = 0.55 * (smooth + 1) / 2 + 0.45 * sharp
    peak = sky_h * (0.22 + 0.38 * depth) * rng.uniform(0.8, 1.1)
    top = sky_h - 2 - peak * (0.25 + 0.75 * shape)              # ridge line per column
    y = np.arange(height)[:, None]
    inside = (y >= top[None, :]) & (y < horizon_px + 1)
    # sun-facing flanks are lit: the slope of the ridge, smoothed over a few pixels (no stripes)
    slope = _smooth(np.gradient(top), max(4, width // 120))
    sun_side = np.sign(np.sin(2 * np.pi * (np.arange(width) / width - scene.sun_azimuth)))
    flank = np.exp(-np.clip(y - top[None, :], 0, None) / max(peak * 0.5, 1))   # the ridge's slope matters near the top
    light = 0.85 + 0.15 * np.tanh(-slope * sun_side * 0.5)[None, :] * flank
    gullies = field(rng, height, width, slope=2.0, stretch=0.35)               # features that run downhill
    texture = 0.6 * field(rng, height, width, slope=1.8) + 0.4 * gullies
    tint = ROCK * rng.uniform(0.85, 1.15, size=3)
    rock = tint * (0.78 + 0.44 * texture[..., None]) * light[..., None]
    # darker down the flanks, measured from a smoothed ridge (a jagged one would streak the shading)
    below_ridge = np.clip((y - _smooth(top, max(4, width // 200))[None, :]) / max(peak, 1), 0, 1)[..., None]
    color = rock * (1 - 0.35 * below_ridge)
    if snow:
        snowline = top + peak * (0.28 + 0.2 * ridge(rng, width, octaves=32, roughness=0.9))
        cover = np.clip((snowline[None, :] - y) / 3.0, 0, 1) * (texture > 0.3 - 0.2 * below_ridge[..., 0])
        color = color * (1 - cover[..., None]) + np.array([0.93, 0.95, 0.98]) * light[..., None] * cover[..., None]
    color = color * palette["light"]
    haze = 0.12 + 0.62 * depth ** 1.5
    if scene.fog > 0:
        valley = np.clip((y - top[None, :]) / max(peak * 0.6, 1), 0, 1)[..., None]
        haze = np.clip(haze + scene.fog * 0.55 * valley, 0, 0.95)
    color = color * (1 - haze) + palette["haze"] * haze
    rgba = np.zeros((height, width, 4))
    rgba[..., :3] = np.clip(color, 0, 1)
    rgba[..., 3] = inside
    return rgba


def _forest(scene: Scene, palette: dict, height: int, width: int, horizon_px: int, rng) -> np.ndarray:
    line = horizon_px - height * (0.015 + 0.025 * (ridge(rng, width, octaves=16, roughness=1.3) + 1))
    top = line.copy()
    x = 0.0
    while x < width:
        tree_w = rng.uniform(5, 12) * height / 512
        tree_h = rng.uniform(0.03, 0.075) * height
        columns = np.arange(int(x - tree_w), int(x + tree_w) + 1)
        profile = line[columns % width] - tree_h * (1 - np.abs(columns - x) / tree_w)
        top[columns % width] = np.minimum(top[columns % width], profile)
        x += tree_w * rng.uniform(0.7, 1.3)
    y = np.arange(height)[:, None]
    inside = (y >= top[None, :]) & (y < horizon_px + 1)
    texture = field(rng, height, width, slope=1.4)
    color = FOREST * (0.75 + 0.5 * texture[..., None]) * palette["light"]
    haze = 0.08 + scene.fog * 0.3
    color = color * (1 - haze) + palette["haze"] * haze
    rgba = np.zeros((height, width, 4))
    rgba[..., :3] = np.clip(color, 0, 1)
    rgba[..., 3] = inside
    return rgba


def _ground(scene: Scene, palette: dict, height: int, width: int, horizon_px: int, rng) -> np.ndarray:
    t = np.clip((np.arange(height)[:, None, None] - horizon_px) / max(height - horizon_px, 1), 0, 1)
    base = np.array([0.88, 0.90, 0.94]) if scene.snow and scene.time != "golden hour" else MEADOW
    texture = field(rng, height, width, slope=1.7, stretch=5.0)[..., None]     # long horizontal streaks
    color = base * (0.7 + 0.45 * texture) * (1 - 0.35 * t) * palette["light"]
    haze = (1 - t) * (0.35 + 0.4 * scene.fog)
    return np.clip(color * (1 - haze) + palette["haze"] * haze, 0, 1)


def paint_layers(scene: Scene, width: int, height: int) -> Layers:
    """Every layer of ``scene`` at panorama size ``width × height`` (deterministic from the scene)."""
    rng = np.random.default_rng([scene.seed, 7, width, height])
    palette = _palette(scene)
    horizon_px = int(round(scene.horizon * height))
    sky = _sky(scene, palette, height, width, horizon_px, rng)
    clouds = _clouds(scene, palette, height, width, horizon_px, rng)
    layers = []
    for index in range(scene.ranges):
        snow = scene.snow and index <= max(0, scene.ranges - 3)
        layers.append((_range(scene, palette, height, width, horizon_px, index, rng, snow),
                       0.08 + 0.55 * index / max(scene.ranges - 1, 1)))
    if scene.forest:
        layers.append((_forest(scene, palette, height, width, horizon_px, rng), 1.0))
    below = _ground(scene, palette, height, width, horizon_px, rng) if scene.water == "none" else None
    return Layers(scene, palette, sky, layers, below, horizon_px, clouds)


def _smooth(values: np.ndarray, radius: int) -> np.ndarray:
    """A periodic box filter of ``2 * radius + 1`` samples."""
    kernel = np.ones(2 * radius + 1) / (2 * radius + 1)
    padded = np.concatenate([values[-radius:], values, values[:radius]])
    return np.convolve(padded, kernel, mode="valid")


def _window(array: np.ndarray, start: float, width: int) -> np.ndarray:
    """Columns ``start .. start+width`` of a periodic panorama (whole pixels, wrapping around)."""
    columns = (np.arange(width) + int(round(start))) % array.shape[1]
    return array[:, columns]


def compose(painted: Layers, view_width: int, pan_px: float = 0.0, cloud_px: float = 0.0,
            sun_drop: float = 0.0) -> np.ndarray:
    """One picture ``[H, view_width, 3]`` in [0, 1]: the view ``pan_px`` columns into the panorama.

    ``cloud_px``: extra drift of the clouds; ``sun_drop``: how far the sun has sunk (share of the
    sky), which also dims the light a little.
    """
    scene, palette, h = painted.scene, painted.palette, painted.horizon_px
    sun_height = palette["sun_height"]
    light_scale = 1.0
    full_width = painted.sky.shape[1]
    sky_shift = pan_px * 0.02                        # the sky is at infinity: it barely moves
    sky = _window(painted.sky, sky_shift, view_width)
    # the sun (or moon) as seen in this view: its column relative to the view's first column
    in_view = dataclasses.replace(scene, sun_azimuth=(scene.sun_azimuth * full_width - round(sky_shift))
                                  % full_width / view_width)
    if sun_height is not None:
        light_scale = float(np.clip(1 - 0.8 * sun_drop, 0.2, 1))
        sky = _glow(sky, in_view, palette, h, sun_height - sun_drop, full_width, light_scale)
    elif scene.moon:
        sky = _glow(sky, in_view, palette, h, 0.6, full_width)
    picture = sky
    clouds = _window(painted.clouds, pan_px * 0.05 + cloud_px, view_width)
    picture = picture * (1 - clouds[..., 3:]) + clouds[..., :3] * clouds[..., 3:]
    for rgba, parallax in painted.layers:
        layer = _window(rgba, pan_px * parallax, view_width)
        picture = picture * (1 - layer[..., 3:]) + layer[..., :3] * layer[..., 3:] * light_scale
    if scene.water == "none":
        below = _window(painted.below, pan_px, view_width) * light_scale
        picture[h:] = below[h:]
    else:
        picture = _water(picture, h, scene, palette, pan_px)
    if scene.fog > 0:
        y = np.arange(picture.shape[0])[:, None, None]
        band = np.exp(-np.abs(y - h) / (0.06 * picture.shape[0])) * scene.fog * 0.6
        picture = picture * (1 - band) + palette["haze"] * light_scale * band
    return np.clip(picture, 0, 1)


def _water(picture: np.ndarray, horizon_px: int, scene: Scene, palette: dict, pan_px: float) -> np.ndarray:
    """Below the horizon: the picture above it mirrored, rippled, darkened toward the water colour."""
    height, width, _ = picture.shape
    rows = np.arange(horizon_px, height)
    k = rows - horizon_px
    source_rows = np.clip(horizon_px - 1 - k, 0, horizon_px - 1)
    depth = k / max(height - horizon_px, 1)
    calm = 0.4 if scene.water == "lake" else 1.6
    x = np.arange(width)[None, :]
    ripple = np.sin(x * _periodic(0.09, width) + k[:, None] ** 1.1 * 0.9 + pan_px * 0.3) * calm * (1 + 6 * depth[:, None])
    columns = (x + np.round(ripple).astype(int)) % width
    mirrored = picture[source_rows[:, None], columns]
    water = WATER * palette["light"] + palette["zenith"] * 0.25
    mix = (0.25 if scene.water == "lake" else 0.45) + 0.45 * depth[:, None, None]
    sparkle = 0.0
    if scene.water == "sea":
        waves = np.sin(x * _periodic(0.05, width) + k[:, None] * 1.7) * np.sin(x * _periodic(0.013, width)
                                                                              + k[:, None] * 0.4)
        sparkle = np.clip(waves, 0, 1)[..., None] * 0.08 * palette["light"]
    out = picture.copy()
    out[horizon_px:] = mirrored * (1 - mix) + water * mix + sparkle
    return out


def _periodic(frequency: float, width: int) -> float:
    """The angular frequency nearest ``frequency`` with a whole number of periods across ``width``."""
    return 2 * np.pi * max(1, round(frequency * width / (2 * np.pi))) / width


def panorama(scene: Scene, width: int, height: int) -> np.ndarray:
    """A seamless 360° panorama ``[height, width, 3]`` uint8."""
    return to_uint8(compose(paint_layers(scene, width, height), width))


def video(scene: Scene, width: int, height: int, frames: int, pan_px_per_frame: float = 4.0,
          cloud_px_per_frame: float = 1.5, sun_drop_per_frame: float = 0.0, panorama_width: int = 0) -> np.ndarray:
    """Frames ``[T, height, width, 3]`` uint8 of the camera panning over the scene's panorama
    (``panorama_width`` default: 4 × the view) while clouds drift and, optionally, the sun sinks."""
    painted = paint_layers(scene, panorama_width or 4 * width, height)
    return np.stack([to_uint8(compose(painted, width, pan_px=t * pan_px_per_frame, cloud_px=t * cloud_px_per_frame,
                                      sun_drop=t * sun_drop_per_frame)) for t in range(frames)])


def to_uint8(picture: np.ndarray) -> np.ndarray:
    return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)
