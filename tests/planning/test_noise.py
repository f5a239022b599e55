"""Perception noise: the figures file, the measurement against ground truth (with fake
perceivers), the pure `corrupt` statistics, and the emulated scene source on a real env."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers the drivestack/ ids)
from perception.datasets import DatasetPlan, generate
from perception.lanes import NOMINAL_LANE_WIDTH, slot_targets
from perception.perceiver import Detections, LaneEstimate, Perception
from planning.noise import (
    DEFAULT_NOISE,
    MISS_BUCKETS,
    EmulatedSource,
    PerceptionNoise,
    corrupt,
    match_boxes,
    measure_noise,
)
from planning.scene import Scene, front_from_camera, lane_of
from planning.sources import PrivilegedSource
from sim.types import ABSENT, CAR, TRUCK, CameraSpec

FRONT = front_from_camera(CameraSpec())
"""Camera to front bumper [m]."""


def _scene(objects: list[list[float]], **kw: Any) -> Scene:
    base: dict[str, Any] = dict(
        speed=20.0, speed_limit=25.0, lane_offset=0.4, heading_error=0.02, lane_seen=True,
        left_lane=True, right_lane=False, lane_width=3.5,
        objects=np.array(objects, np.float32).reshape(-1, 5))
    base.update(kw)
    return Scene(**base)


# -- the figures file ---------------------------------------------------------------------
NOISY = PerceptionNoise(miss_rate=(0.1, 0.2, 0.3), distance_rel_bias=-0.05,
                        distance_rel_std=0.08, lateral_std=0.25, false_alarm_rate=0.5,
                        false_alarm_range=(8.0, 55.0), false_alarm_classes=(0.5, 0.5, 0, 0, 0),
                        lane_miss_rate=0.05, offset_std=0.1, heading_std=0.01,
                        side_lane_miss_rate=0.2, side_lane_false_rate=0.05, measured_on="test")


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "noise.json"
    NOISY.save(path)
    assert PerceptionNoise.load(path) == NOISY
    assert [p.name for p in path.parent.iterdir()] == ["noise.json"]  # no temporary left


def test_corrupted_json_gives_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.json"
    path.write_text('{"miss_rate": [0.1, ')
    with pytest.raises(ValueError, match=r"noise\.json is not valid JSON"):
        PerceptionNoise.load(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("lateral_std"), r"missing key\(s\) \['lateral_std'\]"),
    (lambda d: d.update(lateral_sd=0.1), r"unknown key\(s\) \['lateral_sd'\]"),
    (lambda d: d.update(miss_rate=[0.1, 2.0, 0.1]), "miss_rate: 3 numbers in"),
    (lambda d: d.update(offset_std=-1.0), "offset_std: a number in"),
    (lambda d: d.update(false_alarm_range=[50.0, 10.0]), "false_alarm_range"),
])
def test_bad_key_or_value_is_named(tmp_path: Path, edit: Any, message: str) -> None:
    doc = asdict(NOISY)
    edit(doc)
    path = tmp_path / "noise.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as err:
        PerceptionNoise.load(path)
    assert str(path) in str(err.value)


def test_missing_file_names_it_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.json.*python -m planning.noise"):
        PerceptionNoise.load(tmp_path / "nothing.json")


def test_shipped_figures_load_and_come_from_the_val_split() -> None:
    noise = PerceptionNoise.load(DEFAULT_NOISE)
    assert "split val" in noise.measured_on
    assert noise != PerceptionNoise()  # a real perceiver is not perfect


# -- measurement --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("noise") / "data"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4), out)
    return out


class FakePerceiver:
    """Returns the ground truth of each image (found by its pixels), optionally with
    every other object dropped, distances scaled and one false alarm per frame."""

    def __init__(self, data: Path, split: str, drop_every_other: bool = False,
                 scale: float = 1.0) -> None:
        doc = json.loads((data / "annotations" / f"{split}.json").read_text())
        lines = (data / "lanes" / f"{split}.jsonl").read_text().splitlines()
        by_image = {r["image"]: r for r in map(json.loads, lines)}
        self.truth: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
        for im in doc["images"]:
            bgr = cv2.imread(str(data / im["file_name"]), cv2.IMREAD_COLOR)
            key = hashlib.sha1(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).tobytes()).hexdigest()
            anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
            self.truth[key] = (anns, by_image[im["file_name"]])
        self.drop, self.scale = drop_every_other, scale

    def __call__(self, frames: list[np.ndarray]) -> list[Perception]:
        return [self._one(f) for f in frames]

    def _one(self, frame: np.ndarray) -> Perception:
        anns, rec = self.truth[hashlib.sha1(frame.tobytes()).hexdigest()]
        anns = anns[::2] if self.drop else anns
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]] for a in anns]
        dist = [a["distance"] * self.scale for a in anns]
        classes = [a["category_id"] - 1 for a in anns]
        if self.drop:  # a false alarm in the sky corner, 30 m away
            boxes, dist, classes = boxes + [[0.0, 0.0, 6.0, 6.0]], dist + [30.0], classes + [0]
        det = Detections(np.array(boxes, np.float32).reshape(-1, 4),
                         np.ones(len(boxes), np.float32), np.array(classes, np.int64),
                         np.array(dist, np.float32))
        lanes = LaneEstimate(rows=np.array(rec["h_samples"]), xs=slot_targets(rec),
                             scores=np.ones(4, np.float32), ego_offset=rec["ego_lane_offset"],
                             heading_error=rec["ego_heading_error"])
        return Perception(det, lanes)


def test_perfect_perceiver_measures_no_noise(dataset: Path) -> None:
    noise = measure_noise(FakePerceiver(dataset, "train"), dataset, "train")
    assert "4 images" in noise.measured_on
    assert noise.miss_rate == (0.0, 0.0, 0.0)
    assert noise.distance_rel_bias == pytest.approx(0.0, abs=1e-6)
    assert noise.distance_rel_std == pytest.approx(0.0, abs=1e-6)
    assert noise.lateral_std == pytest.approx(0.0, abs=1e-6)
    assert noise.false_alarm_rate == 0.0 and noise.lane_miss_rate == 0.0
    assert noise.offset_std == 0.0 and noise.heading_std == 0.0
    assert noise.side_lane_false_rate == 0.0
    # a side lane that exists but whose boundary is hidden counts as missed, even here
    exists = seen = 0
    for line in (dataset / "lanes" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ids = rec["boundary_ids"]
        right, left = (ids[i] for i in rec["ego_boundaries"])
        slots = slot_targets(rec)
        for slot, there in ((0, left + 1 in ids), (3, right - 1 in ids)):
            exists += there
            seen += there and bool((slots[slot] != ABSENT).any())
    assert noise.side_lane_miss_rate == pytest.approx(1 - seen / exists if exists else 0.0)


def test_imperfect_perceiver_is_measured(dataset: Path) -> None:
    doc = json.loads((dataset / "annotations" / "train.json").read_text())
    total, missed = np.zeros(3), np.zeros(3)
    for im in doc["images"]:
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        for k, a in enumerate(anns):  # the fake drops every other object of an image
            if a["distance"] <= 80 and not a["ignore"]:  # ignored objects: never missed
                b = int(np.searchsorted(MISS_BUCKETS, a["distance"], side="right")) - 1
                total[b] += 1
                missed[b] += k % 2
    assert total.sum() >= 4 and missed.sum() >= 1, "the tiny dataset should hold objects"
    assert any(a["ignore"] for a in doc["annotations"]), "and objects under the ignore rule"
    noise = measure_noise(FakePerceiver(dataset, "train", True, 1.1), dataset, "train")
    want = np.divide(missed, total, out=np.zeros(3), where=total > 0)
    np.testing.assert_allclose(noise.miss_rate, want)
    assert noise.distance_rel_bias == pytest.approx(0.1, abs=1e-4)
    assert noise.false_alarm_rate == 1.0 and noise.false_alarm_range[0] == pytest.approx(30.0)


def test_match_boxes_is_greedy_by_score() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    det = np.array([[0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60], [21, 0, 30, 10]], float)
    owner = match_boxes(det, np.array([0.5, 0.9, 0.8, 0.7]), gt)
    assert owner.tolist() == [-1, 0, -1, 1]


# -- corrupt: statistics ------------------------------------------------------------------
def _runs(scene: Scene, noise: PerceptionNoise, n: int = 3000) -> list[Scene]:
    rng = np.random.default_rng(7)
    return [corrupt(scene, noise, rng, FRONT) for _ in range(n)]


def test_misses_follow_the_distance_buckets() -> None:
    objs = [[d - FRONT, 0.4, 0, CAR, 1.0] for d in (10.0, 30.0, 60.0)]
    out = _runs(_scene(objs), PerceptionNoise(miss_rate=(0.1, 0.3, 0.6)))
    for k, want in enumerate((0.1, 0.3, 0.6)):
        kept = np.mean([np.isclose(s.objects[:, 0], objs[k][0]).any() for s in out])
        assert 1 - kept == pytest.approx(want, abs=0.03)


def test_distance_and_lateral_errors_follow_the_noise() -> None:
    noise = PerceptionNoise(distance_rel_bias=-0.1, distance_rel_std=0.05, lateral_std=0.3)
    out = _runs(_scene([[40.0 - FRONT, 3.0, 1, TRUCK, 2.0]], lane_offset=0.0), noise, 4000)
    rows = np.concatenate([s.objects for s in out])
    rel = (rows[:, 0] + FRONT) / 40.0 - 1
    assert rel.mean() == pytest.approx(-0.1, abs=0.005)
    assert rel.std() == pytest.approx(0.05, abs=0.005)
    assert (rows[:, 1] - 3.0).std() == pytest.approx(0.3, abs=0.02)
    np.testing.assert_array_equal(rows[:, 2], lane_of(rows[:, 1], 3.5))  # lanes recomputed
    assert (rows[:, 3] == TRUCK).all() and (rows[:, 4] == 0).all()  # rates left to tracking


def test_false_alarms_follow_rate_range_and_classes() -> None:
    noise = PerceptionNoise(false_alarm_rate=0.8, false_alarm_range=(10.0, 50.0),
                            false_alarm_classes=(0.5, 0.5, 0.0, 0.0, 0.0))
    out = _runs(_scene([]), noise, 4000)
    rows = np.concatenate([s.objects for s in out])
    assert len(rows) / len(out) == pytest.approx(0.8, abs=0.05)
    assert (rows[:, 0] + FRONT >= 10.0 - 1e-4).all() and (rows[:, 0] + FRONT <= 50.0 + 1e-4).all()
    assert set(np.unique(rows[:, 3])) == {CAR, TRUCK}
    assert np.mean(rows[:, 3] == CAR) == pytest.approx(0.5, abs=0.05)
    assert all((np.diff(s.objects[:, 0]) >= 0).all() for s in out)  # sorted by gap


def test_lane_noise_and_losses() -> None:
    noise = PerceptionNoise(lane_miss_rate=0.2, offset_std=0.1, heading_std=0.01,
                            side_lane_miss_rate=0.3, side_lane_false_rate=0.1)
    scene = _scene([[20.0, 0.0, 0, CAR, 0.0]])
    out = _runs(scene, noise, 4000)
    lost = np.array([not s.lane_seen for s in out])
    assert lost.mean() == pytest.approx(0.2, abs=0.03)
    assert all(s.lane_offset == 0 and s.heading_error == 0 and s.lane_width == NOMINAL_LANE_WIDTH
               for s, x in zip(out, lost, strict=True) if x)
    found = [s for s in out if s.lane_seen]
    assert np.std([s.lane_offset for s in found]) == pytest.approx(0.1, abs=0.01)
    assert np.mean([s.lane_offset for s in found]) == pytest.approx(0.4, abs=0.01)
    assert np.std([s.heading_error for s in found]) == pytest.approx(0.01, abs=0.001)
    # a lane centre perceived e to the right makes the ego's offset read e larger, and
    # every object's left of that centre too
    shift = [(s.objects[0, 1] - 0.0, s.lane_offset - 0.4) for s in found]
    np.testing.assert_allclose(*zip(*shift, strict=True), atol=1e-5)
    assert np.mean([not s.left_lane for s in out]) == pytest.approx(0.3, abs=0.03)
    assert np.mean([s.right_lane for s in out]) == pytest.approx(0.1, abs=0.03)
    # an object seen without a lane is placed from the camera: the ego offset shows
    lost_objs = np.concatenate([s.objects for s, x in zip(out, lost, strict=True) if x])
    assert np.median(lost_objs[:, 1]) == pytest.approx(-0.4 - np.tan(0.02) * (20 + FRONT),
                                                       abs=0.01)


def test_zero_noise_changes_nothing_but_gap_rates() -> None:
    scene = _scene([[5.0, 0.1, 0, CAR, -1.0], [30.0, 3.6, 1, TRUCK, 2.0]])
    [out] = _runs(scene, PerceptionNoise(), 1)
    np.testing.assert_array_equal(out.objects[:, :4], scene.objects[:, :4])
    assert replace(out, objects=scene.objects) == replace(scene, objects=scene.objects)


# -- the emulated source on a real env ----------------------------------------------------
def _env(seed: int = 0, **scenario: Any) -> gym.Env:
    config = sim.family_config("highway", vehicles=(25, 30), **scenario)
    env = gym.make("drivestack/Highway-v0", scenario=config, obs_type="state",
                   action_type="meta").unwrapped
    env.reset(seed=seed)
    return env


def test_emulated_miss_rate_over_a_drive() -> None:
    env = _env()
    noise = PerceptionNoise(miss_rate=(0.3, 0.3, 0.3))
    emulated, exact = EmulatedSource(noise, seed=1), PrivilegedSource()
    n_exact = n_seen = 0
    for _ in range(200):
        env.step(1)
        n_exact += len(exact(env).objects)
        n_seen += len(emulated(env).objects)
    assert n_exact > 1000
    assert n_seen / n_exact == pytest.approx(0.7, abs=0.05)


def test_zero_noise_matches_privileged_and_rates_come_from_tracking() -> None:
    env = _env(3)
    emulated, exact = EmulatedSource(PerceptionNoise()), PrivilegedSource()
    first = emulated(env)
    truth = exact(env)
    # first sight: no rate measured yet, every object assumed standing (-ego speed)
    assert (truth.objects[:, 4] != 0).any() and not first.tracked.any()
    np.testing.assert_allclose(first.objects[:, 4], -truth.speed)
    errors = []
    for _ in range(60):
        env.step(1)
        e, x = emulated(env), exact(env)
        np.testing.assert_array_equal(e.objects[:, :4], x.objects[:, :4])
        assert replace(e, objects=x.objects, tracked=None) == x
        errors += np.abs(e.objects[:, 4] - x.objects[:, 4]).tolist()
    assert np.median(errors) < 0.3  # tracked rates near the true ones


def test_privileged_scenes_are_sorted_by_gap() -> None:
    """Scene.objects is sorted by gap (not by centre distance: a truck's near end can be
    closer than a car's whose centre is nearer); `corrupt` and the features rely on it."""
    env = _env(0, truck_fraction=0.5, lanes=(4, 4))
    exact = PrivilegedSource()
    for _ in range(300):
        env.step(1)
        gaps = exact(env).objects[:, 0]
        assert (np.diff(gaps) >= 0).all()


def test_emulated_source_is_deterministic_per_seed_and_episode() -> None:
    def drive(seed: int, env_seed: int = 0, steps: int = 30) -> list[np.ndarray]:
        env = _env(env_seed)
        src = EmulatedSource(NOISY, seed=seed)
        out = []
        for _ in range(steps):
            env.step(1)
            out.append(src(env).objects)
        return out

    a, b, c = drive(3), drive(3), drive(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_reset_clears_the_tracker_and_replays_the_episode_noise() -> None:
    env = _env(5)
    src = EmulatedSource(NOISY, seed=0)
    first = src(env).objects
    env.step(1)
    src(env)
    assert src._prev is not None
    env.reset(seed=5)
    src.reset()
    assert src._prev is None and src._rng is None
    np.testing.assert_array_equal(src(env).objects, first)


def test_emulated_source_rejects_a_bad_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        EmulatedSource(PerceptionNoise(), seed=-1)

