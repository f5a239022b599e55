"""Lane model: slot targets, decoding, ground-plane geometry against the simulator, a tiny
training run with resume, weights round trip and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from perception.datasets import DatasetPlan, generate, lane_record
from perception.lanes import (
    LANE_SLOTS,
    LaneModelSpec,
    build_model,
    decode,
    ground_points,
    lane_geometry,
    lane_loss,
    load_lane_model,
    save_weights,
    slot_targets,
)
from sim.autopilot import Autopilot
from sim.types import ABSENT, CameraSpec

torch = pytest.importorskip("torch")
ROWS = (40, 48, 56, 63)


def test_slot_targets_pick_the_ego_lane_and_its_neighbours() -> None:
    # 4 lanes -> boundaries 0 (right edge) .. 4 (left edge); ego in lane 1 (boundaries 1, 2)
    lanes = [[float(10 * b + r) for r in range(3)] for b in range(5)]
    record = {"h_samples": [10, 20, 30], "lanes": lanes, "boundary_ids": [0, 1, 2, 3, 4],
              "ego_boundaries": [1, 2]}
    t = slot_targets(record)
    assert t.shape == (len(LANE_SLOTS), 3)
    np.testing.assert_array_equal(t[:, 0], [30, 20, 10, 0])  # left outer .. right outer
    record["ego_boundaries"] = [0, 1]  # rightmost lane: no right outer boundary
    assert (slot_targets(record)[3] == ABSENT).all()


def test_decode_reads_the_peaked_cell_and_drops_short_lanes() -> None:
    spec = LaneModelSpec(rows=ROWS, width=320, height=192, cells=64)
    logits = torch.full((1, 4, len(ROWS), 65), -20.0)
    logits[..., 64] = 20.0  # absent everywhere
    logits[0, 1, :, 10] = 30.0  # slot 1 present in every row, cell 10
    logits[0, 2, :2, 20] = 30.0  # slot 2 in only two rows: fewer than MIN_POINTS
    xs, scores = decode(logits, spec)
    np.testing.assert_allclose(xs[0, 1], (10 + 0.5) * 5.0, atol=1e-3)
    assert (xs[0, 0] == ABSENT).all() and (xs[0, 2] == ABSENT).all()
    assert scores[0, 1] > 0.99 and scores[0, 0] < 0.01


def test_ground_points_invert_the_pinhole_projection() -> None:
    cam = CameraSpec(width=320, height=192, pitch_deg=0.0, mount_height=1.5)
    f = cam.focal_px
    forward, left = 20.0, 2.0
    u = cam.width / 2 - f * left / forward
    v = cam.height / 2 + f * cam.mount_height / forward
    pts = ground_points(np.array([u, 10.0]), np.array([v, cam.height / 2 - 5]), cam)
    assert pts.shape == (1, 2)  # the point above the horizon is dropped
    assert pts[0] == pytest.approx([forward, left], rel=1e-9)


def _frames(family: str, seed: int, n: int, every: int = 12):
    env = gym.make(f"drivestack/{family}-v0", obs_type="camera").unwrapped
    env.reset(seed=seed)
    pilot = Autopilot()
    out = []
    for step in range(1, n * every + 1):
        _, _, term, trunc, info = env.step(pilot.act(env.world))
        if step % every == 0:
            out.append((env.frame.image.copy(), info["ground_truth"]))
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("family", ["Highway", "Rural", "Urban"])
def test_geometry_from_true_polylines_matches_the_simulator(family: str) -> None:
    """Cast the labelled ego-lane polylines onto the ground: offset and heading agree with
    the simulator's own values (this checks lanes, camera and back-projection together)."""
    cam = CameraSpec()
    checked = 0
    for _, gt in _frames(family, seed=5, n=8):
        record = lane_record(gt, "x")
        xs = slot_targets(record)
        if (xs[1:3] == ABSENT).all(axis=1).any():
            continue
        offset, heading = lane_geometry(xs, np.array(record["h_samples"]), cam)
        assert offset == pytest.approx(gt.ego_lane_offset, abs=0.15)
        assert heading == pytest.approx(gt.ego_heading_error, abs=0.02)
        checked += 1
    assert checked >= 4


def test_geometry_without_the_ego_lane_is_nan() -> None:
    xs = np.full((4, 3), ABSENT, np.float32)
    offset, heading = lane_geometry(xs, np.array([120, 150, 180]), CameraSpec())
    assert np.isnan(offset) and np.isnan(heading)


@pytest.mark.parametrize("backbone", ["cnn", "vit"])
def test_both_backbones_give_logits_of_the_spec_shape(backbone: str) -> None:
    spec = LaneModelSpec(backbone=backbone, height=64, width=96, rows=ROWS, cells=16,
                         hidden=16)
    model = build_model(spec).eval()
    out = model(torch.zeros((2, 64, 96, 3), dtype=torch.uint8))
    assert tuple(out.shape) == (2, 4, len(ROWS), 17)


def test_a_few_steps_fit_a_fixed_batch() -> None:
    torch.manual_seed(0)
    spec = LaneModelSpec(height=64, width=96, rows=ROWS, cells=16, hidden=32)
    model = build_model(spec)
    images = torch.randint(0, 255, (4, 64, 96, 3), dtype=torch.uint8)
    target = torch.full((4, 4, len(ROWS)), float(ABSENT))
    target[:, 1] = torch.tensor([30.0, 35.0, 40.0, 45.0])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(lane_loss(model(images), target, spec).detach())
    for _ in range(40):
        loss = lane_loss(model(images), target, spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3 * first


def test_weights_round_trip_and_bad_files(tmp_path: Path) -> None:
    spec = LaneModelSpec(height=64, width=96, rows=ROWS, cells=16, hidden=16)
    model = build_model(spec).eval()
    path = tmp_path / "lanes.pt"
    save_weights(model, spec, path, {"metrics": {"val_f1": 0.5}})
    loaded, spec2, meta = load_lane_model(path)
    assert spec2 == spec and meta["metrics"]["val_f1"] == 0.5
    x = torch.randint(0, 255, (1, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=0.05)  # stored in fp16
    with pytest.raises(FileNotFoundError, match="lane weights .* not found"):
        load_lane_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a PyTorch zip checkpoint"):
        load_lane_model(tmp_path / "junk.pt")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lanes") / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), out)
    return out


def test_training_writes_weights_and_resumes(tiny_data: Path, tmp_path: Path) -> None:
    from perception.lane_train import LaneTraining, evaluate_lane_weights, train_lanes

    job = LaneTraining(data=tiny_data, out=tmp_path / "run", epochs=2, batch=4)
    first = train_lanes(job)
    assert Path(first["weights"]).is_file() and len(first["history"]) == 2
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # a longer run resumed from last.pt must be the same run: a clear error
    with pytest.raises(ValueError, match="resume"):
        train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "run", epochs=3, batch=4,
                                 resume=True))
    again = train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "run", epochs=2, batch=4,
                                     resume=True))
    assert len(again["history"]) == 2  # nothing left to do: the history is the saved one
    # a fresh run into the same folder replaces the log, it does not append to it
    train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "run", epochs=1, batch=4))
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    report = evaluate_lane_weights(Path(first["weights"]), tiny_data, "val")
    assert report["all"]["images"] == 2 and 0.0 <= report["all"]["f1"] <= 1.0
    assert any(k.startswith("time_of_day=") for k in report)


def test_fine_tune_starts_from_the_given_weights(tiny_data: Path, tmp_path: Path) -> None:
    """`init` loads the weights before the first step: with lr ~0 the result is the init."""
    from perception.lane_train import LaneTraining, train_lanes

    first = train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "a", epochs=1, batch=4))
    tuned = train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "b", epochs=1, batch=4,
                                     lr=1e-12, seed=5, init=Path(first["weights"])))
    a, _, _ = load_lane_model(first["weights"])
    b, _, meta = load_lane_model(tuned["weights"])
    x = torch.zeros((1, 64, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-2)
    assert meta["init"] == first["weights"]
    other = LaneModelSpec(backbone="cnn", height=64, width=96, rows=(10, 20, 30))
    save_weights(build_model(other), other, tmp_path / "other.pt", {})
    with pytest.raises(ValueError, match="init"):
        train_lanes(LaneTraining(data=tiny_data, out=tmp_path / "c", epochs=1, batch=4,
                                 init=tmp_path / "other.pt"))


def test_training_without_lane_labels_is_a_clear_error(tmp_path: Path) -> None:
    from perception.lane_train import LaneTraining, train_lanes

    with pytest.raises(FileNotFoundError, match="drivestack dataset"):
        train_lanes(LaneTraining(data=tmp_path, out=tmp_path / "run", epochs=1))


def test_a_spec_without_anchor_rows_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="anchor row"):
        LaneModelSpec(rows=())
    with pytest.raises(ValueError, match="backbone"):
        LaneModelSpec(rows=ROWS, backbone="resnet")
