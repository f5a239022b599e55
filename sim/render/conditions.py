"""Time of day, weather and sensor effects as precomputed layers (cheap per frame).

Everything here depends only on (camera, scenario); per-frame variation (rain streaks,
sensor noise) is drawn from banks made once per episode from the scenario seed, indexed
by the step, so frames stay deterministic and cost a few array operations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from sim.config import Scenario
from sim.render.kernels import fog_blend
from sim.types import CameraSpec

BANK = 8
"""Number of precomputed noise / rain layers cycled through."""


@dataclass(frozen=True)
class Palette:
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    grass: tuple[int, int, int]
    road: tuple[int, int, int]
    shoulder: tuple[int, int, int]
    marking: tuple[int, int, int]
    yellow: tuple[int, int, int]
    ambient: float
    diffuse: float


PALETTES: dict[str, Palette] = {
    "day": Palette((70, 125, 205), (185, 208, 235), (78, 122, 52), (98, 98, 104),
                   (128, 124, 116), (235, 235, 230), (235, 190, 45), 0.6, 0.45),
    "dusk": Palette((55, 55, 105), (235, 150, 95), (52, 78, 42), (78, 76, 84),
                    (98, 92, 90), (205, 200, 195), (210, 165, 50), 0.42, 0.35),
    "night": Palette((4, 6, 16), (18, 22, 38), (10, 16, 10), (22, 22, 26),
                     (28, 27, 26), (120, 120, 118), (120, 100, 30), 0.35, 0.1),
}
FOG_COLOR = np.array([188, 192, 198], np.float32)
FOG_VISIBILITY = 55.0
"""Distance at which fog hides 63 % of an object's colour [m]."""
SUN = np.array([0.45, 0.35, 0.82]) / np.linalg.norm([0.45, 0.35, 0.82])


class Conditions:
    """Per-episode layers: background, fog by row, headlight gain, rain and noise banks."""

    def __init__(self, spec: CameraSpec, scenario: Scenario) -> None:
        self.spec = spec
        self.time_of_day = scenario.time_of_day
        self.weather = scenario.weather
        pal = PALETTES[scenario.time_of_day]
        if scenario.weather == "rain":
            pal = _darken(pal, 0.75, sky=(110, 115, 125))
        self.palette = pal
        self.exposure = float(scenario.exposure)
        self.noise_std = float(scenario.noise_std)
        h, w = spec.height, spec.width
        rows = np.arange(h, dtype=np.float64) + 0.5
        self.row_distance = _row_distance(spec, rows)
        self.background = self._background(rows)
        self.fog_alpha: np.ndarray | None = None
        if scenario.weather == "fog":
            a = 1.0 - np.exp(-self.row_distance / FOG_VISIBILITY)
            self.fog_alpha = a.astype(np.float32)[:, None, None]
        self.headlight: np.ndarray | None = None
        if scenario.time_of_day == "night":
            self.headlight = _headlight_gain(spec, self.row_distance)
        self.rain = _rain_bank(h, w) if scenario.weather == "rain" else None
        std_q = round(self.noise_std * 2.0) / 2.0  # banks are shared per 0.5 of std
        self.noise = _noise_bank(h, w, std_q) if std_q > 0.0 else None

    def _background(self, rows: np.ndarray) -> np.ndarray:
        pal, spec = self.palette, self.spec
        hy = spec.horizon_y
        t = np.clip(rows / max(hy, 1.0), 0.0, 1.0)[:, None]
        sky = (1 - t) * np.array(pal.sky_top) + t * np.array(pal.sky_horizon)
        ground = np.broadcast_to(np.array(pal.grass, np.float64), sky.shape)
        col = np.where((rows < hy)[:, None], sky, ground)
        img = np.repeat(col[:, None, :], spec.width, axis=1)
        return np.clip(img, 0, 255).astype(np.uint8)

    def object_color(self, base: np.ndarray, shade: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """Colours (N, 3) of faces with base colour, Lambert shade and distance [m]."""
        col = base * shade[:, None]
        if self.headlight is not None:
            col = col * (0.35 + 1.6 * np.clip(14.0 / np.maximum(dist, 1.0), 0, 1.2))[:, None]
        if self.fog_alpha is not None:
            a = (1.0 - np.exp(-dist / FOG_VISIBILITY))[:, None]
            col = col * (1 - a) + FOG_COLOR * a
        return np.clip(col, 0, 255)

    def ground_pass(self, img: np.ndarray) -> None:
        """Effects on the road and sky before objects are drawn (fog by row, headlights)."""
        if self.headlight is not None:
            cv2.multiply(img, self.headlight, dst=img, scale=1.0 / 255.0)
        if self.fog_alpha is not None:
            fog_blend(img, self.fog_alpha[:, 0, 0], FOG_COLOR)

    def sensor_pass(self, img: np.ndarray, step: int) -> None:
        """Rain streaks, exposure and noise after everything is drawn."""
        if self.rain is not None:
            cv2.add(img, self.rain[step % BANK], dst=img)
        if abs(self.exposure - 1.0) > 1e-3:
            cv2.convertScaleAbs(img, dst=img, alpha=self.exposure)
        if self.noise is not None:
            pos, neg = self.noise[0][step % BANK], self.noise[1][step % BANK]
            cv2.add(img, pos, dst=img)
            cv2.subtract(img, neg, dst=img)


def _darken(p: Palette, k: float, sky: tuple[int, int, int]) -> Palette:
    def dk(c: tuple[int, int, int]) -> tuple[int, int, int]:
        return (int(c[0] * k), int(c[1] * k), int(c[2] * k))

    return Palette(dk(sky), sky, dk(p.grass), dk(p.road), dk(p.shoulder), dk(p.marking),
                   dk(p.yellow), p.ambient * 0.9, p.diffuse * 0.5)


def _row_distance(spec: CameraSpec, rows: np.ndarray) -> np.ndarray:
    """Ground distance seen at each image row (inf at and above the horizon) [m]."""
    angle = np.arctan((rows - spec.height / 2.0) / spec.focal_px) + np.radians(spec.pitch_deg)
    with np.errstate(divide="ignore"):
        return np.where(angle > 1e-3, spec.mount_height / np.tan(np.maximum(angle, 1e-3)), np.inf)


def _headlight_gain(spec: CameraSpec, row_distance: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 gain: a lit cone on the road ahead, darkness elsewhere."""
    w = spec.width
    x = (np.arange(w) - w / 2.0) / (w / 2.0)
    dist = np.where(np.isfinite(row_distance), row_distance, 1e9)[:, None]
    lateral = np.abs(x)[None, :] * dist * np.tan(np.radians(spec.fov_deg) / 2)
    beam = np.exp(-(lateral / (2.5 + 0.12 * dist)) ** 2) * np.clip(40.0 / dist, 0, 1.0) ** 1.2
    gain = 0.45 + 2.2 * beam
    g = np.clip(gain * 255 / 2.6, 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


@functools.lru_cache(maxsize=4)
def _rain_bank(h: int, w: int) -> np.ndarray:
    """Rain streak layers (read-only, shared by all episodes of this size)."""
    rng = np.random.default_rng(0xCA3)
    bank = np.zeros((BANK, h, w, 3), np.uint8)
    for k in range(BANK):
        n = int(h * w / 300)
        x0, y0 = rng.uniform(0, w, n), rng.uniform(-10, h, n)
        length = rng.uniform(4, 12, n)
        for xs, ys, ln in zip(x0, y0, length, strict=True):
            p0 = (int(xs), int(ys))
            p1 = (int(xs - 0.25 * ln), int(ys + ln))
            cv2.line(bank[k], p0, p1, (55, 58, 62), 1, cv2.LINE_AA)
    bank.flags.writeable = False
    return bank


@functools.lru_cache(maxsize=32)
def _noise_bank(h: int, w: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts of Gaussian pixel noise (read-only, shared)."""
    rng = np.random.default_rng([0xCA4, int(std * 10)])
    noise = rng.normal(0.0, std, (BANK, h, w, 3)).astype(np.float32)
    pos = np.clip(noise, 0, 255).astype(np.uint8)
    neg = np.clip(-noise, 0, 255).astype(np.uint8)
    pos.flags.writeable = False
    neg.flags.writeable = False
    return pos, neg
