"""The labeler's track verifier: features, fitting, the file (JSON, checked, one error),
and what it does to labels (a doubted track becomes ignore regions)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.autolabel import LabelerSettings, hindsight_labels, relabel_clip
from data_engine.tracking import Track
from data_engine.verifier import (
    DEFAULT_VERIFIER,
    FEATURES,
    TrackVerifier,
    VerifierError,
    default_verifier,
    fit_verifier,
    track_features,
)
from launch.cli import app

runner = CliRunner()
N = len(FEATURES)


def _const(bias: float) -> TrackVerifier:
    """A verifier that says `bias` (logit) for every track."""
    return TrackVerifier(np.zeros(N), np.ones(N), np.zeros(N), bias)


def _clip(n: int = 24) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and teacher boxes of one car driving across the clip, sure every frame."""
    frames = [np.full((96, 160, 3), 30, np.uint8) for _ in range(n)]
    dets = []
    for t in range(n):
        x = 20 + 3 * t
        frames[t][40:60, x:x + 30] = 200
        dets.append(np.array([[x, 40, x + 30, 60, 0.9, 0]], np.float32))
    return frames, dets


def test_features_of_a_track() -> None:
    frames, dets = _clip()
    tr = Track(np.arange(24), np.concatenate(dets)[:, :4].astype(np.float64),
               np.full(24, 0.9), np.zeros(24, np.int64))
    f = dict(zip(FEATURES, track_features(tr, frames, 3), strict=True))
    assert f["evidence"] == pytest.approx(0.9) and f["max_score"] == pytest.approx(0.9)
    assert f["log_length"] == pytest.approx(np.log(24)) and f["density"] == 1.0
    assert f["class_purity"] == 1.0 and f["is_car"] == 1.0
    assert f["log_height"] == pytest.approx(np.log(21)) and f["aspect"] == pytest.approx(1.5)
    assert f["bottom"] == pytest.approx(60 / 96)
    assert f["luminance"] == pytest.approx(200 / 255) and f["contrast"] == pytest.approx(0)


def test_a_doubted_track_becomes_ignore_regions() -> None:
    frames, dets = _clip()
    s = LabelerSettings(verify=0.5)
    plain = hindsight_labels(dets, 96, 160, s)
    trusted = hindsight_labels(dets, 96, 160, s, frames=frames, verifier=_const(+20))
    doubted = hindsight_labels(dets, 96, 160, s, frames=frames, verifier=_const(-20))
    assert sum(len(b) for b in plain["boxes"]) == 24
    for k in ("boxes", "classes", "ignore"):
        assert all(np.array_equal(a, b) for a, b in zip(plain[k], trusted[k], strict=True))
    assert sum(len(b) for b in doubted["boxes"]) == 0
    # every box it would have labelled is now a don't-care region
    for t in range(24):
        assert any(np.allclose(r, dets[t][0, :4]) for r in doubted["ignore"][t])
    # verify 0: no verifier, whatever is passed
    off = hindsight_labels(dets, 96, 160, replace(s, verify=0.0), frames=frames,
                           verifier=_const(-20))
    assert sum(len(b) for b in off["boxes"]) == 24
    with pytest.raises(ValueError, match="needs the clip's frames"):
        hindsight_labels(dets, 96, 160, s, verifier=_const(-20))


def test_fit_learns_which_tracks_are_real() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, N))
    real_track = x[:, 0] + 0.5 * x[:, 11] > 0  # evidence and contrast decide
    pos = np.where(real_track, rng.integers(5, 20, 400), 0)
    neg = np.where(real_track, 0, rng.integers(5, 20, 400))
    v = fit_verifier(x, pos, neg)
    p = v(x)
    assert ((p >= 0.5) == real_track).mean() > 0.95
    assert v.weights[0] > 0 and v.weights[11] > 0 and abs(v.weights[5]) < v.weights[0] / 4
    with pytest.raises(ValueError, match="true labels and tracks with false"):
        fit_verifier(x, pos, np.zeros(400))
    with pytest.raises(ValueError, match="finite"):
        fit_verifier(np.full((400, N), np.nan), pos, neg)


def test_file_round_trip_and_version(tmp_path: Path) -> None:
    v = _const(1.5)
    back = TrackVerifier.load(v.save(tmp_path / "v.json"))
    assert back.version == v.version and back.bias == 1.5
    assert _const(1.0).version != v.version


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "not a verifier file"),
    (lambda d: json.dumps({**d, "format": "pickle"}), "format must be"),
    (lambda d: json.dumps({**d, "features": ["x"]}), "made for other features"),
    (lambda d: json.dumps({**d, "weights": [float("nan")] * N}), "weights: expected"),
    (lambda d: json.dumps({**d, "scale": [0.0] * N}), "scale: every value"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "bias"}), "missing 'bias'"),
])
def test_a_bad_verifier_file_is_one_error(tmp_path: Path, mutate, message: str) -> None:
    good = _const(0.0).doc()
    path = tmp_path / "v.json"
    path.write_text(mutate(good))
    with pytest.raises(VerifierError, match=message) as e:
        TrackVerifier.load(path)
    assert str(path) in str(e.value)
    with pytest.raises(VerifierError, match="no such verifier file"):
        TrackVerifier.load(tmp_path / "missing.json")


def test_the_shipped_verifier_says_how_it_was_made() -> None:
    v = default_verifier()
    assert DEFAULT_VERIFIER.is_file()
    assert v.meta["command"].startswith("drivestack fit-verifier")
    assert v.meta["false_labels"] > 0 and v.meta["scenario_seeds"]
    # made on mining seeds, never the loop's default mining seeds or a held-out seed
    assert all(500_006 <= s < 900_000 for s in v.meta["scenario_seeds"])


def test_relabel_clip_names_the_verifier() -> None:
    frames, dets = _clip(8)

    class _Teacher:
        version = "fixed"

        def detect(self, fr: list[np.ndarray]) -> list[np.ndarray]:
            return dets

    a = relabel_clip(frames, _Teacher(), lanes=False, verifier=_const(-20))
    b = relabel_clip(frames, _Teacher(), lanes=False, verifier=_const(20))
    assert a.labeler != b.labeler and "verifier:" in a.labeler
    assert sum(len(x) for x in a.boxes) == 0 and sum(len(x) for x in b.boxes) == 8


def test_fit_verifier_cli_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["fit-verifier", "--store", str(tmp_path / "none"),
                            "--out", str(tmp_path / "v")])
    assert r.exit_code == 2
    assert "error:" in r.output and r.output.count("error:") == 1
