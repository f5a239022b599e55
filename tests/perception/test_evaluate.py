"""Detection evaluation on a dataset split: perfect predictions score 1, buckets work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perception.datasets import DatasetPlan, generate
from perception.evaluate import evaluate_detections, predict_split
from perception.metrics import ImageBoxes
from sim.types import CameraSpec


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ev") / "ds"
    generate(DatasetPlan(frames=24, frames_per_episode=2, stride=3, warmup=6,
                         camera=CameraSpec(width=160, height=96)), out)
    return out


def _perfect(data: Path, split: str) -> dict[int, ImageBoxes]:
    doc = json.loads((data / "annotations" / f"{split}.json").read_text())
    preds = {im["id"]: ImageBoxes(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))
             for im in doc["images"]}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        p = preds[a["image_id"]]
        preds[a["image_id"]] = ImageBoxes(np.vstack([p.boxes, [x, y, x + w, y + h]]),
                                          np.append(p.classes, a["category_id"] - 1),
                                          np.append(p.scores, 0.9))
    return preds


def test_perfect_predictions_score_one_everywhere(data: Path) -> None:
    report = evaluate_detections(_perfect(data, "train"), data, "train")
    assert report["all"]["objects"] > 0
    for key, r in report.items():
        if isinstance(r, dict) and r.get("objects"):
            assert r["mAP50-95"] == pytest.approx(1.0), key


def test_no_predictions_score_zero(data: Path) -> None:
    doc = json.loads((data / "annotations" / "train.json").read_text())
    empty = {im["id"]: ImageBoxes(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))
             for im in doc["images"]}
    assert evaluate_detections(empty, data, "train")["all"]["mAP50"] == 0.0


def test_missing_weights_is_one_clear_error(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    with pytest.raises(FileNotFoundError, match="weights .*none.pt not found"):
        predict_split(tmp_path / "none.pt", data, "test")


def test_a_stray_detection_counts_only_in_its_own_buckets(data: Path) -> None:
    """A false alarm high in every frame (its foot above the horizon: infinitely far,
    8 px) lowers the overall score and its own buckets, not the near or large ones."""
    preds = _perfect(data, "train")
    for k, p in preds.items():
        preds[k] = ImageBoxes(np.vstack([p.boxes, [0, 0, 8, 8]]), np.append(p.classes, 0),
                              np.append(p.scores, 0.99))
    report = evaluate_detections(preds, data, "train")
    assert report["all"]["mAP50"] < 0.9
    for key in ("distance 0-20m", "distance 20-40m", "size 10-20px", "size 20px+"):
        if report[key].get("objects"):
            assert report[key]["mAP50-95"] == pytest.approx(1.0), key
    assert report["size 6-10px"]["mAP50"] < 1.0
