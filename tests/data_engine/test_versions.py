"""Dataset versions: manifests over frames with hashes and label sources, old frames
mixed in at least as many as new ones, seeded sampling (not the first N), ignore regions
painted, mining seeds disjoint from held-out ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_engine.versions import (
    IGNORE_GREY,
    NewFrame,
    assert_disjoint,
    base_train_images,
    build_version,
    read_manifest,
    verify_version,
    yolo_text,
)
from perception.datasets import DatasetPlan, generate
from sim.outputs import OutputFolderError


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v") / "base"
    generate(DatasetPlan(frames=30, frames_per_episode=3, image_format="png",
                         families={"highway": 1.0}), out)
    return out


def _frames(n: int) -> list[NewFrame]:
    rng = np.random.default_rng(0)
    return [NewFrame(f"20261206T000000-0000000{i}/00000{i}",
                     rng.integers(0, 255, (192, 320, 3), dtype=np.uint8),
                     np.array([[10, 20, 50, 60]], np.float32), np.array([i % 5]), "auto",
                     "labeler-1", np.array([[100, 100, 120, 130]], np.float32), 500_000 + i,
                     {"time_of_day": "night"}) for i in range(n)]


def test_a_version_is_a_manifest_with_hashes_and_sources(base: Path, tmp_path: Path) -> None:
    frames = _frames(3)
    m = build_version(tmp_path / "v1", base, frames, seed=0)
    assert m["counts"] == {"ground_truth": 3, "auto": 3} and m["old_frames"] == 3
    listed = (tmp_path / "v1" / "train.txt").read_text().split()
    assert len(listed) == 6 and all(Path(p).is_absolute() and Path(p).is_file()
                                    for p in listed)
    old = [str(p) for p in base_train_images(base)]
    assert listed[:3] != old[:3], "a seeded sample, not the first N paths"
    assert set(listed[:3]) <= set(old)
    assert verify_version(tmp_path / "v1") == []
    auto = [e for e in m["frames"] if e["source"] == "auto"]
    assert all(e["labeler"] == "labeler-1" and e["image_sha256"] for e in auto)
    assert "train: " + str((tmp_path / "v1" / "train.txt").resolve()) in (
        tmp_path / "v1" / "data.yaml").read_text()
    import cv2

    img = cv2.imread(auto[0]["image"])
    assert (img[101:129, 101:119] == IGNORE_GREY).all(), "ignore regions painted grey"
    assert not (img[21:59, 11:49] == IGNORE_GREY).all()
    assert Path(auto[0]["label"]).read_text().startswith("0 0.093750 0.208333")


def test_a_changed_frame_is_found(base: Path, tmp_path: Path) -> None:
    m = build_version(tmp_path / "v", base, _frames(2), seed=1)
    target = Path(m["frames"][-1]["image"])
    data = bytearray(target.read_bytes())
    data[200] ^= 0xFF
    target.write_bytes(bytes(data))
    assert [p for p in verify_version(tmp_path / "v") if str(target) in p]


def test_old_frames_at_least_as_many_and_not_more_than_there_are(base: Path,
                                                                 tmp_path: Path) -> None:
    m = build_version(tmp_path / "a", base, _frames(4), old_frames=1)
    assert m["old_frames"] == 4
    with pytest.raises(ValueError, match="train frames"):
        build_version(tmp_path / "b", base, _frames(4), old_frames=10_000)


def test_a_folder_drivestack_did_not_write_is_refused(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError):
        build_version(out, base, _frames(1))
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_bad_labels_are_refused(base: Path, tmp_path: Path) -> None:
    f = _frames(1)
    f[0].boxes[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_version(tmp_path / "n", base, f)
    with pytest.raises(ValueError, match="class id"):
        yolo_text(np.array([[0, 0, 5, 5]]), np.array([9]), 10, 10)
    g = _frames(1)
    g[0].key = "../escape"
    with pytest.raises(ValueError, match="frame key"):
        build_version(tmp_path / "k", base, g)


def test_mining_seeds_must_not_be_held_out() -> None:
    assert_disjoint([500_000, 500_001], range(900_000, 901_000))
    with pytest.raises(ValueError, match="900001"):
        assert_disjoint([500_000, 900_001], range(900_000, 901_000))


def test_manifest_round_trip(base: Path, tmp_path: Path) -> None:
    build_version(tmp_path / "r", base, _frames(1))
    doc = read_manifest(tmp_path / "r")
    assert doc["new_frames"] == 1 and len(doc["frames"]) == 2
    (tmp_path / "r" / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="manifest"):
        read_manifest(tmp_path / "r")
