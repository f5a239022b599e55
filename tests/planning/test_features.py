"""The planner's feature builder and scenes: hand-made perception in, known vector out;
both sources agree on a real frame."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from perception.lanes import slot_targets
from perception.perceiver import Detections, LaneEstimate, Perception
from planning.features import (
    CLIP,
    FEATURE_DIM,
    FEATURE_NAMES,
    FEATURE_SCALES,
    MAX_GAP,
    features,
    lane_gaps,
)
from planning.scene import (
    Scene,
    front_from_camera,
    scene_from_perception,
    scene_from_world,
    with_gap_rates,
)
from sim.autopilot import Autopilot
from sim.types import ABSENT, CAR, PEDESTRIAN, CameraSpec

CAM = CameraSpec()


def _scene(objects: list[list[float]], **kw: object) -> Scene:
    base = dict(speed=20.0, speed_limit=25.0, lane_offset=0.3, heading_error=-0.03,
                lane_seen=True, left_lane=True, right_lane=False, lane_width=3.5,
                objects=np.array(objects, np.float32).reshape(-1, 5))
    base.update(kw)
    return Scene(**base)  # type: ignore[arg-type]


def test_hand_made_scene_gives_the_known_vector() -> None:
    scene = _scene([[30.0, 0.2, 0, CAR, -4.0], [12.0, 3.4, 1, PEDESTRIAN, 1.0]])
    v = dict(zip(FEATURE_NAMES, features(scene), strict=True))
    assert len(FEATURE_NAMES) == FEATURE_DIM == features(scene).shape[0]
    assert v["speed"] == pytest.approx(20 / 30) and v["speed_limit"] == pytest.approx(25 / 30)
    assert v["lane_offset"] == pytest.approx(0.15) and v["heading_error"] == pytest.approx(-0.1)
    assert (v["lane_seen"], v["left_lane"], v["right_lane"]) == (1.0, 1.0, 0.0)
    assert v["ego_gap"] == pytest.approx(30 / MAX_GAP)
    assert v["ego_gap_rate"] == pytest.approx(-0.4)
    assert v["left_gap"] == pytest.approx(12 / MAX_GAP)
    assert v["right_gap"] == 1.0 and v["right_gap_rate"] == 0.0  # empty lane
    # objects sorted as given (the scene keeps them by gap; here by hand)
    assert v["obj0_present"] == 1.0 and v["obj0_vehicle"] == 1.0 and v["obj0_vulnerable"] == 0
    assert v["obj1_vulnerable"] == 1.0 and v["obj1_left"] == pytest.approx(3.4 / 5)
    assert v["obj2_present"] == 0.0 and v["obj5_gap"] == 0.0
    assert FEATURE_SCALES["obj3_gap"] == MAX_GAP and FEATURE_SCALES["left_lane"] == 1.0


def test_values_are_clipped() -> None:
    v = features(_scene([], speed=500.0))
    assert v.max() <= CLIP and v[0] == CLIP


def test_lane_gaps_take_the_nearest_object_of_each_lane() -> None:
    g = lane_gaps(_scene([[50.0, 0.0, 0, CAR, 0.0], [20.0, 0.1, 0, CAR, -2.0],
                          [5.0, -3.5, -1, CAR, 1.0]]))
    np.testing.assert_allclose(g, [[MAX_GAP, 0.0], [20.0, -2.0], [5.0, 1.0]])


def _perception(boxes: list[list[float]], lanes: np.ndarray | None) -> Perception:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    det = Detections(boxes_xyxy=b, scores=np.ones(len(b), np.float32),
                     classes=np.zeros(len(b), np.int64), distance=np.zeros(len(b), np.float32))
    est = None
    if lanes is not None:
        est = LaneEstimate(rows=ROWS, xs=lanes, scores=np.ones(4, np.float32),
                           ego_offset=0.1, heading_error=0.01)
    return Perception(det, est)


ROWS = np.arange(100, 192, 4)


def _straight_lanes(width: float = 3.6) -> np.ndarray:
    """Image x of straight boundaries at left = +1.5w, +0.5w, -0.5w, -1.5w (ego centred)."""
    f, cy = CAM.focal_px, CAM.height / 2
    pitch = np.radians(CAM.pitch_deg)
    b = (ROWS - cy) / f
    t = CAM.mount_height / (b * np.cos(pitch) + np.sin(pitch))
    fwd = t * (np.cos(pitch) - b * np.sin(pitch))
    xs = np.stack([CAM.width / 2 - f * (k * width) / fwd for k in (1.5, 0.5, -0.5, -1.5)])
    return np.where((xs >= 0) & (xs < CAM.width), xs, ABSENT).astype(np.float32)


def test_scene_from_hand_made_perception() -> None:
    """A box whose bottom centre lies 20 m ahead, 3.6 m left, on a straight road: a gap of
    20 m minus the bumper, one lane to the left."""
    f, cy = CAM.focal_px, CAM.height / 2
    pitch = np.radians(CAM.pitch_deg)
    fwd, left = 20.0, 3.6
    # pixel of the ground point (fwd, left) for the pitched camera
    zc = fwd * np.cos(pitch) + CAM.mount_height * np.sin(pitch)
    yc = -fwd * np.sin(pitch) + CAM.mount_height * np.cos(pitch)
    u, v = CAM.width / 2 - f * left / zc, cy + f * yc / zc
    # boxes have exclusive max corners: the lowest object pixel row is y1 - 1
    box = [u - 10, v - 12, u + 11, v + 1]
    scene = scene_from_perception(_perception([box], _straight_lanes()),
                                  speed=15.0, camera=CAM, speed_limit=20.0)
    assert scene.lane_seen and scene.left_lane and scene.right_lane
    assert scene.lane_width == pytest.approx(3.6, abs=0.05)
    assert scene.lane_offset == 0.1 and scene.speed_limit == 20.0
    [(gap, lat, lane, cls, rate)] = scene.objects.tolist()
    assert gap == pytest.approx(fwd - front_from_camera(CAM), abs=0.05)
    assert lat == pytest.approx(left, abs=0.05) and lane == 1 and cls == CAR and rate == 0


def test_scene_without_lanes_assumes_the_object_frame_of_the_camera() -> None:
    scene = scene_from_perception(_perception([], None), 10.0, CAM, 20.0)
    assert not scene.lane_seen and scene.objects.shape == (0, 5)
    assert features(scene)[FEATURE_NAMES.index("lane_seen")] == 0.0


def test_gap_rates_come_from_tracking() -> None:
    prev = _scene([[30.0, 0.0, 0, CAR, 0.0], [10.0, 3.5, 1, CAR, 0.0]])
    cur = _scene([[29.0, 0.0, 0, CAR, 0.0], [10.5, 3.5, 1, CAR, 0.0],
                  [60.0, -3.5, -1, CAR, 0.0]])
    out = with_gap_rates(prev, cur, dt=0.2, smoothing=0.5)
    # prev had no tracked flags (all measured): blended half with its rate 0
    np.testing.assert_allclose(out.objects[:, 4], [-2.5, 1.25, -20.0])
    assert out.tracked.tolist() == [True, True, False]  # the new one is assumed standing
    first = with_gap_rates(None, cur, 0.2)
    assert not first.tracked.any() and (first.objects[:, 4] == -cur.speed).all()
    # an object first seen (untracked) gets its raw rate on the next scene, not a blend
    nxt = replace(cur, objects=cur.objects.copy())
    nxt.objects[:, 0] += 1.0
    again = with_gap_rates(first, nxt, dt=0.2, smoothing=0.5)
    np.testing.assert_allclose(again.objects[:, 4], [5.0, 5.0, 5.0])


def test_both_sources_agree_on_a_real_frame() -> None:
    """The privileged scene and the scene perceived from the *true* labels (boxes and
    lane polylines as a perfect perceiver would return them) describe the same road."""
    env = gym.make("drivestack/Highway-v0", obs_type="camera").unwrapped
    env.reset(seed=2)
    pilot = Autopilot()
    checked = 0
    for step in range(90):
        _, _, term, trunc, info = env.step(pilot.act(env.world))
        if step % 15 or term or trunc:
            continue
        gt = info["ground_truth"]
        world = scene_from_world(env.world, env.camera_spec)
        rec = {"h_samples": gt.lanes.rows.tolist(),
               "lanes": np.where(gt.lanes.visible, gt.lanes.xs, ABSENT).tolist(),
               "boundary_ids": gt.lanes.boundary_ids.tolist(),
               "ego_boundaries": list(gt.lanes.ego_boundaries)}
        xs = slot_targets(rec)
        near = (gt.distance < 40) & (gt.visible_fraction > 0.9) & (gt.truncation == 0)
        det = Detections(gt.boxes_xyxy[near], np.ones(int(near.sum()), np.float32),
                         gt.class_ids[near], gt.distance[near])
        est = LaneEstimate(rows=gt.lanes.rows, xs=xs, scores=np.ones(4, np.float32),
                           ego_offset=gt.ego_lane_offset, heading_error=gt.ego_heading_error)
        seen = scene_from_perception(Perception(det, est), env.world.state.ego.speed,
                                     env.camera_spec, env.world.scenario.speed_limit)
        assert (seen.left_lane, seen.right_lane) == (world.left_lane, world.right_lane)
        assert seen.lane_width == pytest.approx(world.lane_width, abs=0.3)
        for gap, _, lane, _, _ in seen.objects:
            # each perceived object has a privileged twin in the same lane, near in gap
            twin = world.objects[world.objects[:, 2] == lane]
            assert len(twin) and np.min(np.abs(twin[:, 0] - gap)) < 0.1 * gap + 2.0
            checked += 1
    assert checked >= 3


def test_controller_features_give_the_set_point_the_safe_speed_and_the_lane_change() -> None:
    from planning.features import LEGACY_FEATURE_DIM, LEGACY_FEATURE_NAMES, SAFE_SPEED_CAP
    from planning.rule_based import RuleParams, safe_speed

    objects = [[30.0, 0.2, 0, CAR, -4.0], [12.0, 3.4, 1, PEDESTRIAN, 1.0]]
    scene = _scene(objects, target_speed=27.5, lane_change=-1)
    vec = features(scene)
    v = dict(zip(FEATURE_NAMES, vec, strict=True))
    assert v["target_speed"] == pytest.approx(27.5 / 30)
    # Gipps behind the car 30 m ahead in the ego lane, which drives at 20 - 4 m/s
    assert v["safe_speed"] * 30 == pytest.approx(safe_speed(30.0, 16.0, RuleParams()), abs=1e-4)
    assert v["lane_change"] == -1.0
    # the legacy layout is the prefix, unchanged by the controller's state
    assert FEATURE_NAMES[:LEGACY_FEATURE_DIM] == LEGACY_FEATURE_NAMES
    assert np.array_equal(vec[:LEGACY_FEATURE_DIM], features(_scene(objects))[:LEGACY_FEATURE_DIM])
    # an unknown set point is the speed; an empty lane is capped; a stopped car close by: 0
    v = dict(zip(FEATURE_NAMES, features(_scene([])), strict=True))
    assert v["target_speed"] == pytest.approx(20 / 30) and v["lane_change"] == 0.0
    assert v["safe_speed"] * 30 == pytest.approx(min(safe_speed(MAX_GAP, 20.0, RuleParams()),
                                                      SAFE_SPEED_CAP), abs=1e-4)
    v = dict(zip(FEATURE_NAMES, features(_scene([[4.0, 0.0, 0, CAR, -20.0]])), strict=True))
    assert v["safe_speed"] == 0.0


def test_the_env_reports_its_controller_set_point_and_lane_change() -> None:
    from sim.actions import FASTER, IDLE, LANE_LEFT, SLOWER, SPEED_STEP
    from sim.env import DrivingEnv

    env = DrivingEnv(obs_type="state", action_type="meta")
    assert env.target_speed is None and env.target_lane_change == 0
    env.reset(seed=3, options={"scenario_seed": 3})
    assert env.world is not None
    start = env.target_speed
    assert start == pytest.approx(env.world.state.ego.speed)
    env.step(SLOWER)
    env.step(SLOWER)
    env.step(FASTER)
    assert env.target_speed == pytest.approx(max(start - 2 * SPEED_STEP, 0) + SPEED_STEP)
    lanes = env.world.road.n_lanes
    here = int(env.world.road.lane_of(env.world.state.ego.d))
    env.step(LANE_LEFT)
    assert env.target_lane_change == (1 if here < lanes - 1 else 0)
    for _ in range(120):  # the change ends: the ego is in the target lane
        env.step(IDLE)
    assert env.target_lane_change == 0
    env.close()
    cont = DrivingEnv(obs_type="state", action_type="continuous")
    cont.reset(seed=3)
    assert cont.target_speed is None and cont.target_lane_change == 0


def test_a_legacy_policy_reads_the_first_features() -> None:
    from gymnasium import spaces

    from planning.features import LEGACY_FEATURE_DIM
    from planning.policy import PolicyPlanner

    seen = []

    class Legacy:
        observation_space = spaces.Box(-CLIP, CLIP, shape=(LEGACY_FEATURE_DIM,))

        def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[int, None]:
            seen.append(obs)
            return 2, None

    scene = _scene([[30.0, 0.2, 0, CAR, -4.0]], target_speed=30.0, lane_change=1)
    assert PolicyPlanner(Legacy()).act(scene) == 2
    assert np.array_equal(seen[0], features(scene)[:LEGACY_FEATURE_DIM])


def test_path_features_count_an_object_by_its_body_not_its_lane() -> None:
    from planning.features import (
        CONTROL_FEATURE_DIM,
        PATH_FEATURE_DIM,
        PATH_FEATURES,
        SAFE_SPEED_CAP,
    )
    from planning.rule_based import RuleParams, safe_speed

    # a broken-down car 25 m ahead, its centre 2.0 m right of the ego lane's centre: its
    # lane is the right one (round(2.0 / 3.5) = 1 lane), but its body (half width 1.0)
    # reaches into the ego's path (0.95 + 1.0 + 0.5 margin = 2.45 m from the centre line)
    stalled = [25.0, -2.0, -1, CAR, -20.0]
    v = dict(zip(FEATURE_NAMES, features(_scene([stalled], lane_offset=0.0)), strict=True))
    assert v["ego_gap"] == 1.0  # the lane feature misses it ...
    assert v["ego_path_gap"] == pytest.approx(25 / MAX_GAP)  # ... the path does not
    assert v["ego_path_gap_rate"] == pytest.approx(-2.0)
    assert v["ego_path_safe_speed"] * 30 == pytest.approx(safe_speed(25.0, 0.0, RuleParams()),
                                                           abs=1e-4)
    assert v["right_path_gap"] == pytest.approx(25 / MAX_GAP)  # right lane centre -3.5 m
    assert v["left_path_gap"] == 1.0 and v["left_path_gap_rate"] == 0.0  # left centre +3.5
    assert v["left_path_safe_speed"] * 30 == pytest.approx(SAFE_SPEED_CAP)
    # 3.0 m right is outside the ego's path (2.45 m); a pedestrian (half width 0.3) at
    # 1.6 m is inside (1.75 m) and behind it, the path's safe speed is the slowest of both
    far = [25.0, -3.0, -1, CAR, -20.0]
    walker = [40.0, 1.6, 0, PEDESTRIAN, -19.0]
    v = dict(zip(FEATURE_NAMES, features(_scene([far, walker], lane_offset=0.0)), strict=True))
    assert v["ego_path_gap"] == pytest.approx(40 / MAX_GAP)
    assert v["ego_path_safe_speed"] * 30 == pytest.approx(safe_speed(40.0, 1.0, RuleParams()),
                                                           abs=1e-4)
    # the body's own path counts too: the ego 1.0 m left of its lane centre sees a car
    # 2.8 m left of it (1.8 m from the body, inside 2.45) that the centre line's path misses
    side = [15.0, 2.8, 1, CAR, 0.0]
    assert features(_scene([side], lane_offset=1.0))[FEATURE_NAMES.index("ego_path_gap")] \
        == pytest.approx(15 / MAX_GAP)
    assert features(_scene([side], lane_offset=0.0))[FEATURE_NAMES.index("ego_path_gap")] \
        == pytest.approx(1.0)
    # objects behind (gap <= -2 m) are in no path; the features are appended last, so a
    # policy trained before them reads an unchanged prefix
    v = dict(zip(FEATURE_NAMES, features(_scene([[-3.0, 0.0, 0, CAR, 2.0]])), strict=True))
    assert v["ego_path_gap"] == 1.0
    assert FEATURE_NAMES[CONTROL_FEATURE_DIM:PATH_FEATURE_DIM] == PATH_FEATURES
