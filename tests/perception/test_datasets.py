"""Perception datasets: YOLO / COCO / lane files, split by episode, one ignore rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perception import datasets
from perception.datasets import MIN_BOX_PX, MIN_VISIBLE, DatasetPlan, generate, keep_mask, split_of
from sim.outputs import MARKER
from sim.types import CLASS_NAMES, CameraSpec, GroundTruth, LaneLabels

SMALL = CameraSpec(width=160, height=96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "tiny"
    generate(DatasetPlan(frames=36, frames_per_episode=3, stride=3, warmup=6, camera=SMALL), out)
    return out


def _meta(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "meta.jsonl").read_text().splitlines()]


def test_layout_and_one_label_file_per_image(tiny: Path) -> None:
    assert (tiny / "data.yaml").exists() and (tiny / "summary.json").exists()
    for split in datasets.SPLITS:
        images = sorted(p.stem for p in (tiny / "images" / split).glob("*.jpg"))
        labels = sorted(p.stem for p in (tiny / "labels" / split).glob("*.txt"))
        assert images == labels
    assert not list(tiny.parent.glob(".tiny.partial-*")), "no temporary folder left"


def test_splits_hold_whole_episodes(tiny: Path) -> None:
    by_split: dict[str, set[int]] = {}
    for m in _meta(tiny):
        by_split.setdefault(m["split"], set()).add(m["episode_seed"])
        assert m["split"] == split_of(m["episode_seed"])
    assert set(by_split) == set(datasets.SPLITS), "36 frames of 3 cover 12 episodes"
    train, val, test = (by_split[s] for s in datasets.SPLITS)
    assert not (train & val) and not (train & test) and not (val & test)


def test_yolo_labels_are_normalized_boxes_of_known_classes(tiny: Path) -> None:
    n = 0
    for txt in (tiny / "labels").rglob("*.txt"):
        for line in txt.read_text().splitlines():
            cls, *box = line.split()
            assert 0 <= int(cls) < len(CLASS_NAMES)
            cx, cy, w, h = map(float, box)
            assert 0 < w <= 1 and 0 < h <= 1
            assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6
            assert w * SMALL.width >= MIN_BOX_PX - 1e-3 and h * SMALL.height >= MIN_BOX_PX - 1e-3
            n += 1
    assert n > 20, "the tiny set has objects"
    yaml_text = (tiny / "data.yaml").read_text()
    assert all(f"{i}: {name}" in yaml_text for i, name in enumerate(CLASS_NAMES))


def test_coco_matches_yolo_and_loads_in_pycocotools(tiny: Path) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    for split in datasets.SPLITS:
        coco = coco_mod.COCO(str(tiny / "annotations" / f"{split}.json"))
        yolo = sum(len(p.read_text().splitlines()) for p in (tiny / "labels" / split).glob("*"))
        assert len(coco.getAnnIds(iscrowd=False)) == yolo
        assert len(coco.getImgIds()) == len(list((tiny / "images" / split).glob("*")))
        for ann in coco.loadAnns(coco.getAnnIds()):
            kept = ann["visible_fraction"] >= MIN_VISIBLE and min(ann["bbox"][2:]) >= MIN_BOX_PX
            # objects under the ignore rule stay as don't-care regions, not as objects
            assert ann["iscrowd"] == ann["ignore"] == int(not kept)
            assert ann["visible_fraction"] > 0 and min(ann["bbox"][2:]) > 0
            assert 1 <= ann["category_id"] <= len(CLASS_NAMES)
    summary = json.loads((tiny / "summary.json").read_text())
    assert sum(summary["ignored"].values()) > 0, "the tiny set has objects under the rule"


def test_lane_lines_one_per_image(tiny: Path) -> None:
    for split in datasets.SPLITS:
        lines = (tiny / "lanes" / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == len(list((tiny / "images" / split).glob("*")))
        for rec in map(json.loads, lines):
            xs = np.array(rec["lanes"])
            assert xs.shape == (len(rec["boundary_ids"]), len(rec["h_samples"]))
            assert ((xs == -2) | ((xs >= 0) & (xs < SMALL.width))).all()
            lo, hi = rec["ego_boundaries"]
            assert hi == lo + 1


def _gt(boxes: list[list[float]], vis: list[float]) -> GroundTruth:
    n = len(boxes)
    lanes = LaneLabels(rows=np.arange(2), xs=np.zeros((2, 2), np.float32),
                       visible=np.zeros((2, 2), bool), boundary_ids=np.arange(2),
                       marking=np.zeros(2, np.int64), ego_boundaries=(0, 1),
                       painted=np.zeros((2, 2), bool))
    return GroundTruth(boxes_xyxy=np.array(boxes, np.float32).reshape(-1, 4),
                       class_ids=np.zeros(n, np.int64), track_ids=np.arange(n),
                       distance=np.ones(n, np.float32), visible_fraction=np.array(vis, np.float32),
                       truncation=np.zeros(n, np.float32), occluded=np.zeros(n, bool),
                       lanes=lanes, ego_lane_offset=0.0, ego_heading_error=0.0, ego_lane=0)


def test_ignore_rule_hand_cases() -> None:
    gt = _gt([[0, 0, 10, 10], [0, 0, 3, 10], [0, 0, 10, 3.5], [0, 0, 4, 4], [0, 0, 20, 20]],
             [0.9, 0.9, 0.9, 0.25, 0.2])
    assert keep_mask(gt).tolist() == [True, False, False, True, False]


def test_split_rule_and_seed_offsets() -> None:
    splits = [split_of(s) for s in range(1000)]
    assert splits.count("val") == 100 and splits.count("test") == 100
    assert split_of(10) == "val" and split_of(21) == "test" and split_of(35) == "train"


def test_seed_offsets_every_episode(tmp_path: Path) -> None:
    generate(DatasetPlan(frames=4, frames_per_episode=2, stride=2, warmup=2, seed=5000,
                         camera=SMALL), tmp_path / "offset")
    seeds = {m["episode_seed"] for m in _meta(tmp_path / "offset")}
    assert seeds == {5000, 5001}


def test_worker_processes_write_the_same_dataset(tiny: Path, tmp_path: Path) -> None:
    """Episodes rendered in 2 processes, written in episode order: byte-identical files."""
    out = tmp_path / "tiny"
    generate(DatasetPlan(frames=36, frames_per_episode=3, stride=3, warmup=6, camera=SMALL), out,
             workers=2)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    for rel in files:
        if rel.name not in ("data.yaml", MARKER):  # own folder's path; time and pid
            assert (out / rel).read_bytes() == (tiny / rel).read_bytes(), rel
    with pytest.raises(ValueError, match="workers"):
        generate(DatasetPlan(frames=2, camera=SMALL), tmp_path / "x", workers=0)


def test_a_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(datasets._Writer, "add", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(DatasetPlan(frames=2, camera=SMALL), tmp_path / "broken")
    assert list(tmp_path.iterdir()) == []


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="families"):
        DatasetPlan(families={"mars": 1.0})
    with pytest.raises(ValueError, match="image_format"):
        DatasetPlan(image_format="gif")
