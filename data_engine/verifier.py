"""The track verifier: a learned check, from the frames and the teacher's boxes alone, of
whether a track the labeler would label is a real object.

The labeler's thresholds judge a track by its scores and length. At night the shipped
detectors hold some scenery (hedges, building corners) for vehicles over whole clips,
with scores a real far car also has; those tracks made most of the labels' false
positives. The verifier is a logistic regression over 13 features of a track
(`FEATURES`: its scores, length and density, class agreement, size, place in the image,
brightness and contrast under its boxes), fitted on clips of seeds of their own against
their ground truth (`drivestack fit-verifier`), as the detectors are fitted on simulator
frames. The labeler then never reads ground truth: a track the verifier gives less than
`LabelerSettings.verify` becomes ignore regions instead of labels (not a guessed
negative: it may be real).

    v = TrackVerifier.load(DEFAULT_VERIFIER)        # JSON, checked; nothing runs code
    p = v(np.stack([track_features(tr, frames, 3) for tr in tracks]))

The shipped verifier was fitted on the default teacher's boxes (its `meta["teacher"]`
names it): a labeler with another teacher should fit its own (`drivestack fit-verifier`)
or run without one (`LabelerSettings(verify=0)`).

`fit_verifier` fits one from features and each track's matched (true) and unmatched
(false) labels; `TrackVerifier.save` writes it atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_engine.tracking import Track
from sim.outputs import atomic_write_text, json_text

FEATURES = ("evidence", "mean_score", "max_score", "log_length", "density", "class_purity",
            "log_height", "log_width", "aspect", "bottom", "luminance", "contrast", "is_car")
"""The features of a track, in order (see `track_features`)."""
FORMAT = "drivestack-track-verifier-1"
DEFAULT_VERIFIER = Path(__file__).with_name("weights") / "track_verifier.json"
"""The shipped verifier (made by `drivestack fit-verifier`; its file says how)."""


class VerifierError(ValueError):
    """A verifier file that is missing, damaged or of another format (one message)."""


def track_features(track: Track, frames: Sequence[np.ndarray], top_k: int) -> np.ndarray:
    """(len(FEATURES),) float64 features of one track over the clip's `frames`:
    evidence (mean of the `top_k` best scores), mean and best score, log of the frames
    with a box, those frames over the track's span, the share of the class vote's winner,
    log of the median box height and width (+1, px), median aspect (w/h), median bottom
    edge over the frame height, and mean luminance and contrast (standard deviation)
    under the boxes over 255, and 1 when the vote says car."""
    n_cls = int(max(track.classes.max(initial=0) + 1, 4))
    votes = np.bincount(track.classes, track.scores, minlength=n_cls)
    wh = track.boxes[:, 2:] - track.boxes[:, :2]
    lum, con = [], []
    for t, b in zip(track.frames, track.boxes, strict=True):
        img = frames[int(t)]
        h, w = img.shape[:2]
        x0, y0 = max(int(round(b[0])), 0), max(int(round(b[1])), 0)
        x1, y1 = min(int(round(b[2])), w), min(int(round(b[3])), h)
        if x1 <= x0 or y1 <= y0:
            continue
        patch = img[y0:y1, x0:x1].astype(np.float32).mean(2)
        lum.append(float(patch.mean()))
        con.append(float(patch.std()))
    height = frames[int(track.frames[0])].shape[0]
    span = int(track.frames[-1] - track.frames[0]) + 1
    return np.array([
        track.evidence(top_k), float(track.scores.mean()), float(track.scores.max()),
        np.log(len(track.frames)), len(track.frames) / span,
        float(votes.max() / max(votes.sum(), 1e-9)),
        np.log(np.median(wh[:, 1]) + 1), np.log(np.median(wh[:, 0]) + 1),
        float(np.median(wh[:, 0] / np.maximum(wh[:, 1], 1))),
        float(np.median(track.boxes[:, 3]) / height),
        np.mean(lum) / 255 if lum else 0.0, np.mean(con) / 255 if con else 0.0,
        float(votes.argmax() == 0)], np.float64)


@dataclass(frozen=True, eq=False)
class TrackVerifier:
    """p(real) = sigmoid(((x - mean) / scale) . weights + bias) over `FEATURES`."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    meta: dict[str, Any] = field(default_factory=dict)
    """How it was made: command, seeds, teacher, settings, counts, fit figures."""

    def __post_init__(self) -> None:
        n = len(FEATURES)
        for name in ("mean", "scale", "weights"):
            v = np.asarray(getattr(self, name), np.float64)
            if v.shape != (n,) or not np.isfinite(v).all():
                raise VerifierError(f"{name}: expected {n} finite numbers, got shape "
                                    f"{v.shape}")
            object.__setattr__(self, name, v)
        if not (self.scale > 0).all():
            raise VerifierError("scale: every value must be > 0")
        if not isinstance(self.bias, int | float) or not np.isfinite(self.bias):
            raise VerifierError(f"bias: expected a finite number, got {self.bias!r}")

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N,) probability that each track (a row of (N, len(FEATURES))) is real."""
        x = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def doc(self) -> dict[str, Any]:
        return {"format": FORMAT, "features": list(FEATURES), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "bias": float(self.bias), "meta": self.meta}

    @property
    def version(self) -> str:
        """First 8 hex digits of the SHA-256 of its parameters (part of the labeler's
        name: labels made with another verifier are made again)."""
        d = self.doc()
        d.pop("meta")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        atomic_write_text(path, json_text(self.doc(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> TrackVerifier:
        """Read a verifier file (JSON: nothing in it runs); one `VerifierError` naming the
        file when it is missing, damaged or of another format."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise VerifierError(f"{path}: no such verifier file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VerifierError(f"{path}: not a verifier file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise VerifierError(f"{path}: not a verifier file (format must be {FORMAT!r})")
        if doc.get("features") != list(FEATURES):
            raise VerifierError(f"{path}: made for other features ({doc.get('features')!r}); "
                                f"this drivestack computes {list(FEATURES)}")
        meta = doc.get("meta")
        try:
            return cls(doc["mean"], doc["scale"], doc["weights"], doc["bias"],
                       meta if isinstance(meta, dict) else {})
        except KeyError as e:
            raise VerifierError(f"{path}: missing {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise VerifierError(f"{path}: {e}") from None


def fit_verifier(features: np.ndarray, real: np.ndarray, false: np.ndarray,
                 l2: float = 1.0, meta: dict[str, Any] | None = None) -> TrackVerifier:
    """A verifier fitted by weighted logistic regression: each track (a row of `features`)
    counts `real` times as real (its labels that matched an object) and `false` times as
    not (its false positives); an L2 penalty `l2` on the standardized weights."""
    from scipy.optimize import minimize

    x = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
    pos, neg = np.asarray(real, np.float64), np.asarray(false, np.float64)
    if not len(x) or len(pos) != len(x) or len(neg) != len(x):
        raise ValueError(f"{len(x)} tracks, {len(pos)} real and {len(neg)} false counts")
    if not np.isfinite(x).all() or (pos < 0).any() or (neg < 0).any():
        raise ValueError("features must be finite and the counts >= 0")
    if pos.sum() == 0 or neg.sum() == 0:
        raise ValueError("need tracks with true labels and tracks with false ones")
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.c_[(x - mean) / scale, np.ones(len(x))]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        a = z @ w
        lp, ln = -np.logaddexp(0, -a), -np.logaddexp(0, a)
        p = np.exp(lp)
        value = -(pos * lp + neg * ln).sum() + l2 * (w[:-1] ** 2).sum()
        grad = -z.T @ (pos * (1 - p) - neg * p)
        grad[:-1] += 2 * l2 * w[:-1]
        return float(value), grad

    w = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return TrackVerifier(mean, scale, w[:-1], float(w[-1]), dict(meta or {}))


_LOADED: dict[Path, TrackVerifier] = {}


def default_verifier() -> TrackVerifier:
    """The shipped verifier (read once per process)."""
    if DEFAULT_VERIFIER not in _LOADED:
        _LOADED[DEFAULT_VERIFIER] = TrackVerifier.load(DEFAULT_VERIFIER)
    return _LOADED[DEFAULT_VERIFIER]


__all__ = ["DEFAULT_VERIFIER", "FEATURES", "TrackVerifier", "VerifierError",
           "default_verifier", "fit_verifier", "track_features"]
