"""What a snapshot holds, as files that cannot run code (JSON, npz without pickle, PNG),
and how to read them back checked.

    clip.json       the env (observation and action type, camera, dt), both seeds, the
                    scenario, the triggers that fired, actions, events, per-frame hashes
                    (raw RGB bytes and ground truth), model hashes, the code version
    state.json      the world state at the clip's first frame (sim.state_io)
    state.npz       its actor table
    frames/NNNNNN.png   lossless frames (unless frames: hash, then re-rendered by replay)
    truth.npz       ground-truth objects per frame (for the report; never read by relabel)
    perception.npz  the online perception's objects and lanes per frame

`truth.npz` sits apart so that the auto-labeler can be shown never to open it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from data_engine.moments import Boxes
from sim.state_io import state_from_plain, state_to_plain
from sim.world.world import WorldState

FORMAT = 1
CLIP = "clip.json"
STATE_JSON, STATE_NPZ = "state.json", "state.npz"
TRUTH, PERCEPTION = "truth.npz", "perception.npz"
MAX_JSON = 32 * 1024 * 1024


class ClipFormatError(ValueError):
    """A snapshot file that is not what drivestack writes; `str(err)` names it."""


def frame_name(i: int) -> str:
    """The file of the clip's frame `i` (0 = the clip's first frame)."""
    return f"frames/{i:06d}.png"


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of a frame's raw RGB bytes (with its shape), what replay compares."""
    a = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


TRUTH_FIELDS = ("boxes_xyxy", "class_ids", "track_ids", "distance", "visible_fraction",
                "truncation", "occluded")


def truth_digest(gt: Any) -> str:
    """SHA-256 of a frame's ground truth: its objects, lane polylines and ego lane
    values, each array with its dtype and shape."""
    h = hashlib.sha256()
    for name in TRUTH_FIELDS:
        _feed(h, np.asarray(getattr(gt, name)))
    for name in ("rows", "xs", "visible", "boundary_ids", "marking", "painted"):
        _feed(h, np.asarray(getattr(gt.lanes, name)))
    h.update(repr((float(gt.ego_lane_offset), float(gt.ego_heading_error),
                   int(gt.ego_lane), tuple(gt.lanes.ego_boundaries))).encode())
    return h.hexdigest()


def _feed(h: Any, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def png_bytes(image: np.ndarray) -> bytes:
    """A lossless PNG of an RGB frame."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("could not encode a frame as PNG")
    return bytes(buf)


def png_image(data: bytes, name: str = "frame") -> np.ndarray:
    """The RGB frame of PNG bytes; ClipFormatError when they are not a colour PNG."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ClipFormatError(f"{name}: not a PNG file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3:
        raise ClipFormatError(f"{name}: not a readable colour PNG")
    return np.ascontiguousarray(image[..., ::-1])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def npz_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    """The arrays of npz bytes, read without pickle."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ClipFormatError(f"{name}: not a readable npz file ({exc})") from None


def json_doc(data: bytes, name: str) -> dict[str, Any]:
    """A JSON object of bytes (strict: no NaN), size-capped."""
    if len(data) > MAX_JSON:
        raise ClipFormatError(f"{name}: larger than {MAX_JSON} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ClipFormatError(f"{name}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise ClipFormatError(f"{name}: must hold a JSON object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def boxes_arrays(per_frame: list[Boxes | None], prefix: str) -> dict[str, np.ndarray]:
    """Per-frame boxes as flat arrays with a `frame` column (frames without boxes or not
    computed: `present` False)."""
    rows = [(i, b) for i, b in enumerate(per_frame) if b is not None]
    out: dict[str, np.ndarray] = {
        f"{prefix}present": np.array([b is not None for b in per_frame], bool)}
    out[f"{prefix}frame"] = np.concatenate(
        [np.full(len(b), i, np.int32) for i, b in rows] or [np.zeros(0, np.int32)])
    out[f"{prefix}xyxy"] = np.concatenate([b.xyxy for _, b in rows] or
                                         [np.zeros((0, 4), np.float32)]).astype(np.float32)
    out[f"{prefix}classes"] = np.concatenate([b.classes for _, b in rows] or
                                            [np.zeros(0, np.int64)]).astype(np.int64)
    for name in ("scores", "distance", "track_ids", "visible"):
        parts = [getattr(b, name) for _, b in rows]
        if parts and all(p is not None for p in parts):
            out[f"{prefix}{name}"] = np.concatenate(parts)
    return out


def boxes_per_frame(arrays: dict[str, np.ndarray], prefix: str, n: int, name: str
                    ) -> list[Boxes | None]:
    """The inverse of `boxes_arrays`, checked."""
    try:
        present = arrays[f"{prefix}present"].astype(bool)
        frame = arrays[f"{prefix}frame"].astype(np.int64)
        xyxy = arrays[f"{prefix}xyxy"].astype(np.float32).reshape(-1, 4)
        classes = arrays[f"{prefix}classes"].astype(np.int64)
    except KeyError as exc:
        raise ClipFormatError(f"{name}: {exc.args[0]} is missing") from None
    if present.shape != (n,) or not (len(frame) == len(xyxy) == len(classes)):
        raise ClipFormatError(f"{name}: arrays of inconsistent lengths")
    if len(frame) and (frame.min() < 0 or frame.max() >= n):
        raise ClipFormatError(f"{name}: a frame index outside the clip")
    if not np.isfinite(xyxy).all():
        raise ClipFormatError(f"{name}: boxes hold NaN or infinity")
    out: list[Boxes | None] = []
    for i in range(n):
        if not present[i]:
            out.append(None)
            continue
        k = frame == i
        extra = {key: arrays[f"{prefix}{key}"][k] for key in
                 ("scores", "distance", "track_ids", "visible") if f"{prefix}{key}" in arrays}
        out.append(Boxes(xyxy[k], classes[k], **extra))
    return out


@dataclass
class Clip:
    """A snapshot's clip read back: the document, the start state and accessors."""

    doc: dict[str, Any]
    state: WorldState

    @property
    def n_frames(self) -> int:
        return int(self.doc["n_frames"])

    @property
    def actions(self) -> list[Any]:
        return list(self.doc["actions"])

    @property
    def image_digests(self) -> list[str]:
        return [f["image_sha256"] for f in self.doc["frames"]]

    @property
    def truth_digests(self) -> list[str | None]:
        return [f.get("truth_sha256") for f in self.doc["frames"]]


def state_files(state: WorldState) -> dict[str, bytes]:
    doc, arrays = state_to_plain(state)
    return {STATE_JSON: json.dumps(doc, allow_nan=False).encode(), STATE_NPZ: npz_bytes(arrays)}


def read_clip(read: Any, name: str = "snapshot") -> Clip:
    """The `Clip` of a snapshot, through `read(file) -> bytes` (a verified reader, e.g.
    `Snapshot.read`); ClipFormatError naming what is wrong."""
    doc = json_doc(read(CLIP), f"{name}/{CLIP}")
    if doc.get("format") != FORMAT:
        raise ClipFormatError(f"{name}/{CLIP}: format {doc.get('format')!r:.20}, this "
                              f"drivestack reads {FORMAT}")
    n = doc.get("n_frames")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise ClipFormatError(f"{name}/{CLIP}: n_frames must be an int in 1..100000")
    for key, length in (("actions", n), ("frames", n), ("events", n)):
        if not isinstance(doc.get(key), list) or len(doc[key]) != length:
            raise ClipFormatError(f"{name}/{CLIP}: {key} must be a list of {length}")
    for k, f in enumerate(doc["frames"]):
        if not isinstance(f, dict) or not isinstance(f.get("image_sha256"), str):
            raise ClipFormatError(f"{name}/{CLIP}: frames[{k}] has no image_sha256")
    for k, a in enumerate(doc["actions"][:-1]):
        ok = (isinstance(a, int) and not isinstance(a, bool)) or (
            isinstance(a, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                        and math.isfinite(x) for x in a))
        if not ok:
            raise ClipFormatError(f"{name}/{CLIP}: actions[{k}] is {a!r:.40}, not an action")
    env = doc.get("env")
    if not isinstance(env, dict) or not isinstance(env.get("camera"), dict):
        raise ClipFormatError(f"{name}/{CLIP}: env must name the camera, dt and types")
    state = state_from_plain(json_doc(read(STATE_JSON), f"{name}/{STATE_JSON}"),
                             npz_arrays(read(STATE_NPZ), f"{name}/{STATE_NPZ}"))
    return Clip(doc, state)
