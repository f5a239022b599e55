"""RulePlanner on hand-made scenes (speed choice, lane changes, cooldown, memory of what
went out of view, pedestrians), on the privileged source against an IDLE policy, and
PolicyPlanner / load_policy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from planning.evaluate import Suite, SuiteSet, run_suite, summarize
from planning.features import FEATURE_DIM
from planning.policy import PolicyLoadError, PolicyPlanner, load_policy
from planning.rule_based import RuleParams, RulePlanner, safe_speed
from planning.scene import Scene
from planning.sources import PrivilegedSource
from sim.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER, SPEED_STEP
from sim.types import CAR, CONE, PEDESTRIAN

NO_WARMUP = RuleParams(warmup=0.0)
"""Lane changes allowed from the first decision (hand-made scenes start mid-drive)."""


def scene(objects: list[tuple[float, float, int, float]] = (), speed: float = 25.0,
          limit: float = 30.0, left: bool = True, right: bool = True,
          offset: float = 0.0) -> Scene:
    """A scene on 3.5 m lanes; objects are (gap [m], left [m], class, speed [m/s])."""
    rows = np.array([[g, lat, np.round(lat / 3.5), c, v - speed] for g, lat, c, v in objects],
                    np.float32).reshape(-1, 5)
    return Scene(speed=speed, speed_limit=limit, lane_offset=offset, heading_error=0.0,
                 lane_seen=True, left_lane=left, right_lane=right, lane_width=3.5,
                 objects=rows[np.argsort(rows[:, 0])])


SLOW_AHEAD = (22.0, 0.0, CAR, 15.0)
"""A car 22 m ahead in the ego lane at 15 m/s (the ego drives 25)."""


def test_safe_speed_is_gipps() -> None:
    p = RuleParams(reaction=1.0, decel=3.0, standstill=5.0)
    assert safe_speed(5.0, 0.0, p) == pytest.approx(0.0)
    # room 45 m, stopped leader: -3 + sqrt(9 + 2*3*45)
    assert safe_speed(50.0, 0.0, p) == pytest.approx(-3.0 + np.sqrt(9.0 + 270.0))
    assert safe_speed(50.0, 20.0, p) > safe_speed(50.0, 0.0, p)


def test_slow_car_close_ahead_and_free_left_lane_changes_left() -> None:
    assert RulePlanner(NO_WARMUP).act(scene([SLOW_AHEAD])) == LANE_LEFT


def test_slow_car_ahead_and_no_free_lane_slows_down() -> None:
    assert RulePlanner(NO_WARMUP).act(scene([SLOW_AHEAD], left=False, right=False)) == SLOWER
    busy = scene([SLOW_AHEAD, (6.0, 3.5, CAR, 24.0), (8.0, -3.5, CAR, 24.0)])
    assert RulePlanner(NO_WARMUP).act(busy) == SLOWER, "both neighbour lanes are taken"


def test_an_object_without_a_gap_rate_yet_is_taken_as_stopped() -> None:
    """Perception's tracker gives a newly seen object the gap rate -speed (standing)."""
    from planning.scene import with_gap_rates

    tracked = scene([(35.0, 0.0, CAR, 25.0)], left=False, right=False)
    new = with_gap_rates(None, tracked, 0.2)
    assert not new.tracked[0] and new.objects[0, 4] == -25.0
    assert RulePlanner().act(new) == SLOWER
    assert RulePlanner().act(tracked) == IDLE


def test_no_lane_change_in_the_warm_up() -> None:
    """Right after reset, what is beside the ego was never seen: no discretionary change
    (a car far enough ahead that staying only needs moderate braking)."""
    far_slow = scene([(45.0, 0.0, CAR, 20.0)])
    assert RulePlanner(NO_WARMUP).act(far_slow) == LANE_LEFT
    assert RulePlanner().act(far_slow) != LANE_LEFT


def test_empty_road_speeds_up_to_the_limit_in_steps_then_holds() -> None:
    planner = RulePlanner()
    actions = [planner.act(scene(speed=20.0, limit=30.0)) for _ in range(6)]
    steps = int((30.0 - 20.0 + 0.25) // SPEED_STEP)
    assert actions == [FASTER] * steps + [IDLE] * (6 - steps)
    assert planner.mem.target_speed == pytest.approx(20.0 + steps * SPEED_STEP)


def test_above_the_limit_slows_down() -> None:
    assert RulePlanner().act(scene(speed=35.0, limit=30.0)) == SLOWER


def _cross_left(planner: RulePlanner) -> None:
    """The ego moves into the left lane: offset grows, jumps at the line, then settles."""
    for offset in (0.8, 1.6, -1.6, -0.8, 0.0):
        planner.act(scene([SLOW_AHEAD], offset=offset, left=False))


def test_cooldown_holds_between_lane_changes() -> None:
    planner = RulePlanner(NO_WARMUP)
    assert planner.act(scene([SLOW_AHEAD])) == LANE_LEFT
    _cross_left(planner)
    assert planner.mem.lane == 1 == planner.mem.target_lane
    waited = 6 * NO_WARMUP.decision_dt
    actions = []
    while waited < NO_WARMUP.cooldown - 1e-9:
        actions.append(planner.act(scene([SLOW_AHEAD])))
        waited += NO_WARMUP.decision_dt
    assert actions and LANE_LEFT not in actions and LANE_RIGHT not in actions
    assert planner.act(scene([SLOW_AHEAD])) == LANE_LEFT, "the cooldown is over"


def test_a_car_seen_beside_is_remembered_after_it_leaves_the_view() -> None:
    planner = RulePlanner(NO_WARMUP)
    passing = (3.0, 3.5, CAR, 22.0)  # left lane, the ego closes in at 3 m/s
    assert planner.act(scene([SLOW_AHEAD, passing], right=False)) == SLOWER
    # out of the camera's view now; it is still beside the ego for a few seconds
    held = [planner.act(scene([SLOW_AHEAD], right=False)) for _ in range(15)]
    assert LANE_LEFT not in held
    later = [planner.act(scene([SLOW_AHEAD], right=False)) for _ in range(40)]
    assert LANE_LEFT in later, "once it has fallen behind, the lane is free again"


def test_lane_change_is_aborted_when_a_car_shows_up_beside() -> None:
    planner = RulePlanner(NO_WARMUP)
    assert planner.act(scene([SLOW_AHEAD])) == LANE_LEFT
    assert planner.act(scene([SLOW_AHEAD, (-1.0, 3.5, CAR, 30.0)], offset=0.4)) == LANE_RIGHT
    assert planner.mem.target_lane == planner.mem.lane == 0


def test_returns_right_only_after_the_right_lane_looked_empty_long() -> None:
    planner = RulePlanner(RuleParams(warmup=0.0, keep_right_after=2.0))
    free = scene(left=False, speed=30.0)
    actions = [planner.act(free) for _ in range(12)]
    assert actions[:9].count(LANE_RIGHT) == 0 and LANE_RIGHT in actions


def test_stops_for_a_pedestrian_by_the_road_but_not_for_one_walking_along() -> None:
    standing = scene([(20.0, -3.5, PEDESTRIAN, 0.0)], speed=12.0, limit=14.0)
    assert RulePlanner().act(standing) == SLOWER
    walking = scene([(20.0, -3.5, PEDESTRIAN, 1.2)], speed=12.0, limit=16.0)
    assert RulePlanner().act(walking) == FASTER


CLOSURE = [(8.0 + 4.0 * k, 0.0, CONE, 0.0) for k in range(6)]
"""Cones across the ego lane from 8 m on: the lane is closed."""


def test_standing_before_a_closed_lane_leaves_it_though_slow() -> None:
    """Standing still, the ego is far below `min_change_speed`; a closure is the one case
    that lets it change lanes anyway (without the closure it stays)."""
    stopped = scene(CLOSURE, speed=0.0, limit=30.0, right=False)
    planner = RulePlanner()  # warm-up and all: the closure overrides it
    assert planner.act(stopped) == LANE_LEFT
    assert planner.mem.leaving
    slow_car = scene([(8.0, 0.0, CAR, 0.5 + RuleParams().standing_speed)], speed=0.0,
                     right=False)
    assert RulePlanner().act(slow_car) != LANE_LEFT, "a moving car is no closure"
    fast = scene([(50.0 + 4 * k, 0.0, CONE, 0.0) for k in range(4)], speed=14.0,
                 limit=30.0, right=False)
    assert RulePlanner().act(fast) != LANE_LEFT, "at speed the blind-spot guards hold"


def test_leaving_a_closed_lane_only_the_body_path_limits_the_speed() -> None:
    """Steering out from behind a standing car, the ego creeps on while its own body's
    path is clear, and stops for what still stands in that path."""
    planner = RulePlanner()
    first = scene([(9.0, 0.0, CAR, 0.0)], speed=0.0, right=False)
    assert planner.act(first) == LANE_LEFT
    p = planner.params
    # half way out: the car no longer overlaps the body's path (with change_margin)
    out = 0.95 + 1.0 + p.change_margin + 0.1
    clear = scene([(9.0, 0.0, CAR, 0.0)], speed=0.0, offset=out, right=False)
    assert planner.desired_speed(clear) == pytest.approx(30.0)
    still = scene([(9.0, 0.0, CAR, 0.0)], speed=0.0, offset=0.5, right=False)
    v = planner.desired_speed(still)
    assert 0.0 < v < 5.0, "creeps up to `change_standstill` behind it"


def test_from_a_stop_a_crawl_is_enough_for_one_speed_step() -> None:
    """Standing, a safe speed above `creep_speed` but below one SPEED_STEP still asks for
    FASTER (the ego creeps on and brakes again at the next decision); below
    `creep_speed` it stays."""
    p = RuleParams()
    room = p.closure_standstill + 2.0  # a standing car: Gipps speed ~1.6 m/s
    crawl = scene([(room, 0.0, CAR, 0.0)], speed=0.0, left=False, right=False)
    planner = RulePlanner()
    assert planner.act(crawl) == FASTER
    assert p.creep_speed <= planner.desired_speed(crawl) < SPEED_STEP
    near = scene([(p.closure_standstill + 0.1, 0.0, CAR, 0.0)], speed=0.0, left=False,
                 right=False)
    assert RulePlanner().act(near) == IDLE


def test_a_pedestrian_who_waits_at_the_kerb_lets_the_stopped_ego_go() -> None:
    """The ego stops for a pedestrian standing by the road; once it has waited
    `ped_wait` and the pedestrian still stands off the road, it drives on."""
    planner = RulePlanner()
    waiting = scene([(6.0, -5.5, PEDESTRIAN, 0.0)], speed=0.0, limit=14.0)
    assert planner.act(waiting) == IDLE
    assert planner.desired_speed(waiting) < 1.0
    steps = int(np.ceil(planner.params.ped_wait / planner.params.decision_dt))
    actions = [planner.act(waiting) for _ in range(steps)]
    assert planner.desired_speed(waiting) == pytest.approx(14.0)
    assert FASTER not in actions[:-1]
    assert FASTER in [planner.act(waiting) for _ in range(planner.params.settle)]
    on_road = scene([(6.0, -1.0, PEDESTRIAN, 0.0)], speed=0.0, limit=14.0)
    planner.act(on_road)
    assert planner.desired_speed(on_road) < 1.0, "one in the path still stops it"


class _Idle:
    def reset(self) -> None:
        pass

    def act(self, scene: Scene) -> int:
        return IDLE


def test_rule_planner_beats_idle_on_the_privileged_source() -> None:
    suite = Suite((SuiteSet("nominal", ("highway", "urban"), (("day", "clear"),),
                            (100, 101)),), max_steps=300)
    rule = summarize(run_suite(RulePlanner(), PrivilegedSource(), suite, name="rule"))
    idle = summarize(run_suite(_Idle(), PrivilegedSource(), suite, name="idle"))
    assert rule["success_rate"] == 1.0 and rule["collisions_per_100km"] == 0.0
    assert rule["driving_score"] > idle["driving_score"]


class _FakeModel:
    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, None]:
        self.seen.append(obs)
        return np.array(FASTER), None


def test_policy_planner_feeds_features_and_returns_an_int() -> None:
    model = _FakeModel()
    action = PolicyPlanner(model).act(scene([SLOW_AHEAD]))
    assert action == FASTER and isinstance(action, int)
    assert model.seen[0].shape == (FEATURE_DIM,) and model.seen[0].dtype == np.float32


def test_load_policy_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="not found") as err:
        load_policy(tmp_path / "nope.zip")
    assert str(tmp_path / "nope.zip") in str(err.value)


@pytest.mark.parametrize("content", [b"not a zip at all", "zip"])
def test_load_policy_reports_a_corrupted_file(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.zip"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data", "{broken json")
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(PolicyLoadError, match="not a readable SB3 PPO zip"):
        load_policy(path)
