"""Ground-truth overlays and video frame layout (pure functions: arrays in, new arrays out).

Images are (H, W, 3) uint8 RGB. Coordinates given to the drawing functions are in the
pixels of the camera frame the labels belong to; `scale` maps them onto an image that
was upscaled by that factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from sim.render.birdseye import CLASS_COLORS
from sim.types import ABSENT, CLASS_NAMES

UNKNOWN_COLOR = (255, 0, 255)
"""Box color of a class id without an entry in CLASS_COLORS (RGB)."""
EGO_LANE_COLOR = (60, 240, 120)
"""Color of the two boundaries of the ego lane (RGB)."""
LANE_COLOR = (250, 210, 40)
"""Color of the other lane boundaries (RGB)."""
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_boxes(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    class_ids: np.ndarray,
    *,
    scale: float = 1.0,
    labels: bool = True,
    thickness: int = 1,
) -> np.ndarray:
    """A copy of `image` with each box outlined in its class color, with its class name.

    `boxes_xyxy` is (N, 4) [px] with exclusive max corners (x1, y1), as in GroundTruth.
    """
    out = np.ascontiguousarray(image).copy()
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) * scale
    for (x0, y0, x1, y1), cls in zip(boxes, np.asarray(class_ids).reshape(-1), strict=True):
        color = CLASS_COLORS.get(int(cls), UNKNOWN_COLOR)
        p0 = (int(round(x0)), int(round(y0)))
        p1 = (max(int(round(x1)) - 1, p0[0]), max(int(round(y1)) - 1, p0[1]))
        cv2.rectangle(out, p0, p1, color, thickness, cv2.LINE_8)
        if labels:
            name = CLASS_NAMES[int(cls)] if 0 <= int(cls) < len(CLASS_NAMES) else str(int(cls))
            _label(out, name, p0, color)
    return out


def _label(image: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, ...]) -> None:
    """Class name on a filled tag just above the box corner (inside if at the top edge)."""
    font_scale = 0.35
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, 1)
    x, y = corner
    top = y - th - base - 1 if y - th - base - 1 >= 0 else y
    cv2.rectangle(image, (x, top), (x + tw + 1, top + th + base), color, cv2.FILLED)
    cv2.putText(image, text, (x + 1, top + th), FONT, font_scale, (0, 0, 0), 1, cv2.LINE_AA)


def draw_lanes(
    image: np.ndarray,
    rows: np.ndarray,
    xs: np.ndarray,
    visible: np.ndarray,
    *,
    ego_boundaries: Sequence[int] | None = None,
    scale: float = 1.0,
    thickness: int = 1,
) -> np.ndarray:
    """A copy of `image` with each lane boundary drawn as a polyline through its visible
    points only: `rows` (R,), `xs` (B, R) with ABSENT where missing, `visible` (B, R).

    A segment joins two consecutive sampled rows when both points are visible; the ego
    lane's boundaries (indices into B) get their own color.
    """
    out = np.ascontiguousarray(image).copy()
    rows = np.asarray(rows, dtype=np.float64)
    xs = np.asarray(xs, dtype=np.float64).reshape(-1, rows.size)
    ok = np.asarray(visible, dtype=bool).reshape(xs.shape) & (xs != ABSENT) & np.isfinite(xs)
    ego = set(int(b) for b in (ego_boundaries or ()))
    line_type = cv2.LINE_AA if thickness > 1 else cv2.LINE_8  # 1 px: exact colors
    for b in range(xs.shape[0]):
        color = EGO_LANE_COLOR if b in ego else LANE_COLOR
        pts = np.round(np.stack([xs[b], rows], axis=1) * scale).astype(np.int32)
        for run in _runs(ok[b]):
            if run.size == 1:
                cv2.circle(out, tuple(int(v) for v in pts[run[0]]), thickness, color, -1)
            else:
                cv2.polylines(out, [pts[run]], False, color, thickness, line_type)
    return out


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of consecutive True values."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    return np.split(idx, breaks)


def annotate(image: np.ndarray, ground_truth: Mapping[str, Any], scale: int = 2) -> np.ndarray:
    """The camera frame upscaled by `scale` with its ground-truth lanes and boxes drawn
    (`ground_truth` as in `info["ground_truth"]`)."""
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    lanes = ground_truth["lanes"]
    big = draw_lanes(big, lanes["rows"], lanes["xs"], lanes["visible"],
                     ego_boundaries=lanes.get("ego_boundaries"), scale=scale, thickness=2)
    return draw_boxes(big, ground_truth["boxes_xyxy"], ground_truth["class_ids"],
                      scale=scale, thickness=max(1, scale // 2))


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`left` and `right` (resized to `left`'s height) in one image, padded with black to
    even width and height so that H.264 (yuv420p) can encode it unchanged."""
    h = left.shape[0]
    rh, rw = right.shape[:2]
    new_w = max(1, int(round(rw * h / rh)))
    interp = cv2.INTER_AREA if h < rh else cv2.INTER_LINEAR
    right = cv2.resize(right, (new_w, h), interpolation=interp)
    out = np.concatenate([left, right], axis=1)
    pad_h, pad_w = out.shape[0] % 2, out.shape[1] % 2
    if pad_h or pad_w:
        out = np.pad(out, ((0, pad_h), (0, pad_w), (0, 0)))
    return out


def video_frame(
    camera_image: np.ndarray,
    ground_truth: Mapping[str, Any] | None,
    human_view: np.ndarray,
    *,
    overlays: bool = True,
    scale: int = 2,
    predicted: tuple[np.ndarray, np.ndarray] | None = None,
    predicted_lanes: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """One video frame: the (annotated) camera frame upscaled by `scale`, left, then, if
    `predicted` (boxes_xyxy, class ids) is given, the frame with perception's boxes and
    `predicted_lanes` (rows (R,), xs (4, R) in the slots of perception.lanes.LANE_SLOTS,
    ABSENT where not seen; slots 1 and 2 bound the ego lane), and the bird's-eye human
    view at the same height, right."""
    h, w = camera_image.shape[:2]
    plain = cv2.resize(camera_image, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    left = annotate(camera_image, ground_truth, scale) if (
        overlays and ground_truth is not None) else plain
    if predicted is not None:
        seen = plain
        if predicted_lanes is not None:
            rows, xs = predicted_lanes
            seen = draw_lanes(plain, rows, xs, np.asarray(xs) != ABSENT, ego_boundaries=(1, 2),
                              scale=scale, thickness=2)
        left = side_by_side(left, draw_boxes(seen, predicted[0], predicted[1], scale=scale))
    return side_by_side(left, human_view)


def video_frame_shape(camera_hw: tuple[int, int], human_hw: tuple[int, int],
                      scale: int = 2) -> tuple[int, int, int]:
    """(H, W, 3) of `video_frame` for a camera and a human view of these sizes."""
    h, w = camera_hw[0] * scale, camera_hw[1] * scale
    rw = max(1, int(round(human_hw[1] * h / human_hw[0])))
    return h + h % 2, (w + rw) + (w + rw) % 2, 3
