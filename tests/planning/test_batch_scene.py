"""The batched scene, emulated perception, gap-rate tracking and features give, world by
world, exactly what their one-scene counterparts give."""

from __future__ import annotations

import numpy as np
import pytest

from perception.lanes import NOMINAL_LANE_WIDTH
from planning.batch_scene import (
    BatchScene,
    batch_corrupt,
    batch_features,
    batch_gap_rates,
    batch_scene_from_world,
)
from planning.features import features
from planning.noise import DEFAULT_NOISE, PerceptionNoise, corrupt
from planning.scene import front_from_camera, scene_from_world, with_gap_rates
from sim.vector import BatchDrivingEnv


def _same_scene(a, b) -> None:  # noqa: ANN001
    for name in ("speed", "speed_limit", "lane_offset", "heading_error", "lane_seen",
                 "left_lane", "right_lane", "lane_width"):
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_array_equal(a.objects, b.objects)
    if a.tracked is None or b.tracked is None:
        assert a.tracked is None and b.tracked is None
    else:
        np.testing.assert_array_equal(a.tracked, b.tracked)


@pytest.fixture(scope="module")
def worlds() -> list[BatchDrivingEnv]:
    """Urban and highway batches some way into their episodes (traffic, curves, lanes)."""
    out = []
    for family, seed in (("urban", 3), ("highway", 11)):
        env = BatchDrivingEnv(6, family=family, obs_type="state", action_type="meta")
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        for _ in range(40):
            env.step(rng.integers(0, 5, 6))
        out.append(env)
    return out


def test_scene_from_world_matches_one_world_at_a_time(worlds) -> None:  # noqa: ANN001
    for env in worlds:
        bw = env.batch
        batch = batch_scene_from_world(bw, env.camera_spec)
        assert batch.count.sum() > 0, "the check needs objects in view"
        for b in range(len(bw)):
            _same_scene(batch.scene(b), scene_from_world(bw.view(b), env.camera_spec))


def test_features_match(worlds) -> None:  # noqa: ANN001
    env = worlds[0]
    scenes = [scene_from_world(env.batch.view(b), env.camera_spec) for b in range(6)]
    noise = PerceptionNoise.load(DEFAULT_NOISE)
    rng = np.random.default_rng(0)
    noisy = [corrupt(s, noise, rng, 2.0) for s in scenes] + [
        corrupt(s, PerceptionNoise(false_alarm_rate=3.0), rng, 2.0) for s in scenes]
    noisy.append(scenes[0].__class__(**{**scenes[0].__dict__,
                                        "objects": np.zeros((0, 5), np.float32)}))
    everything = scenes + noisy
    got = batch_features(BatchScene.from_scenes(everything))
    want = np.stack([features(s) for s in everything])
    np.testing.assert_array_equal(got, want)
    # a feature set is the prefix (the path features then are not computed)
    from planning.features import FEATURE_SETS

    for dim in FEATURE_SETS.values():
        np.testing.assert_array_equal(
            batch_features(BatchScene.from_scenes(everything), dim=dim), want[:, :dim])


def test_gap_rates_match() -> None:
    noise = PerceptionNoise.load(DEFAULT_NOISE)
    env = BatchDrivingEnv(5, family="urban", obs_type="state", action_type="meta")
    env.reset(seed=5)
    rng = np.random.default_rng(1)
    cam = env.camera_spec
    prev: list = [None] * 5
    prev_batch = None
    for step in range(12):
        env.step(np.full(5, 1 if step % 4 else 3))
        bw = env.batch
        fronts = [front_from_camera(cam, bw.ego.one(b)) for b in range(5)]
        cur = [corrupt(scene_from_world(bw.view(b), cam), noise, rng, fronts[b])
               for b in range(5)]
        dt = np.full(5, 0.2)
        dt[step % 5] = 0.0  # a world whose previous scene does not count (a new episode)
        want = [with_gap_rates(prev[b] if dt[b] > 0 else None, cur[b], float(dt[b]))
                for b in range(5)]
        got = batch_gap_rates(prev_batch, BatchScene.from_scenes(cur), dt)
        for b in range(5):
            _same_scene(got.scene(b), want[b])
        assert got.tracked is not None
        prev = want
        prev_batch = got
    assert any(w.tracked.any() for w in want if len(w.objects)), "nothing was tracked"


def test_corrupt_without_noise_and_with_total_misses(worlds) -> None:  # noqa: ANN001
    env = worlds[0]
    cam = env.camera_spec
    batch = batch_scene_from_world(env.batch, cam)
    fronts = np.array([front_from_camera(cam, env.batch.ego.one(b)) for b in range(6)])
    perfect = PerceptionNoise()
    got = batch_corrupt(batch, perfect, np.random.default_rng(0), fronts)
    for b in range(6):
        want = corrupt(batch.scene(b), perfect, np.random.default_rng(0), float(fronts[b]))
        _same_scene(got.scene(b), want)
    blind = PerceptionNoise(miss_rate=(1.0, 1.0, 1.0), lane_miss_rate=1.0)
    got = batch_corrupt(batch, blind, np.random.default_rng(0), fronts)
    assert (got.count == 0).all() and not got.lane_seen.any()
    assert (got.lane_width == NOMINAL_LANE_WIDTH).all()


def test_corrupt_draws_the_same_distributions() -> None:
    """Miss rates, false alarms and distance errors of the batched emulation against the
    one-scene one, over many draws of one scene."""
    noise = PerceptionNoise(miss_rate=(0.1, 0.3, 0.6), distance_rel_bias=0.02,
                            distance_rel_std=0.05, lateral_std=0.3, false_alarm_rate=0.5,
                            lane_miss_rate=0.2, offset_std=0.1, heading_std=0.02,
                            side_lane_miss_rate=0.1, side_lane_false_rate=0.05)
    objects = np.array([[8.0, 0.2, 0, 0, 0], [30.0, -3.4, -1, 1, 0], [60.0, 3.6, 1, 2, 0]],
                       np.float32)
    from planning.scene import Scene

    scene = Scene(speed=10.0, speed_limit=14.0, lane_offset=0.3, heading_error=0.01,
                  lane_seen=True, left_lane=True, right_lane=False, lane_width=3.6,
                  objects=objects)
    n = 4000
    rng = np.random.default_rng(2)
    one = [corrupt(scene, noise, rng, 2.0) for _ in range(n)]
    many = batch_corrupt(BatchScene.from_scenes([scene] * n), noise,
                         np.random.default_rng(3), np.full(n, 2.0))

    def stats(count: np.ndarray, seen: np.ndarray, left: np.ndarray, near: np.ndarray
              ) -> np.ndarray:
        return np.array([count.mean(), seen.mean(), left.mean(), near.mean()])

    a = stats(np.array([len(s.objects) for s in one]), np.array([s.lane_seen for s in one]),
              np.array([s.left_lane for s in one]),
              np.array([((s.objects[:, 0] < 12) & (s.objects[:, 3] == 0)).sum() for s in one]))
    v = many.valid
    b = stats(many.count, many.lane_seen, many.left_lane,
              ((many.objects[..., 0] < 12) & (many.objects[..., 3] == 0) & v).sum(1))
    np.testing.assert_allclose(a, b, atol=0.05)
    # the near car's distance error: mean and spread
    near_one = np.concatenate([s.objects[(s.objects[:, 0] < 12) & (s.objects[:, 3] == 0), 0]
                               for s in one])
    near_many = many.objects[..., 0][(many.objects[..., 0] < 12) & (many.objects[..., 3] == 0)
                                     & v]
    assert abs(near_one.mean() - near_many.mean()) < 0.05
    assert abs(near_one.std() - near_many.std()) < 0.05
