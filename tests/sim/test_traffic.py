"""Traffic: IDM and MOBIL as functions, lane occupancy, and free-traffic behaviour
(no NPC-NPC collisions, lane changes, moving cyclists and pedestrians, crossings)."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest

from sim.autopilot import Autopilot
from sim.config import family_config, sample_scenario
from sim.types import CYCLIST, PEDESTRIAN
from sim.world.road import make_road
from sim.world.traffic import COMFORT_DECEL, MAX_DECEL, PED_SPEED, S0, idm, lane_occupancy
from sim.world.world import World

A = np.asarray


def _idm(v: float, v0: float, gap: float, dv: float, headway: float = 1.5,
         a_max: float = 1.8) -> float:
    return float(idm(A([v]), A([v0]), A([headway]), A([a_max]), A([gap]), A([dv]))[0])


@pytest.mark.parametrize("v,v0", [(0.0, 30.0), (15.0, 30.0), (20.0, 30.0), (30.0, 30.0),
                                  (33.0, 30.0)])
def test_idm_free_road(v: float, v0: float) -> None:
    assert _idm(v, v0, np.inf, 0.0) == pytest.approx(1.8 * (1.0 - (v / v0) ** 4))


def test_idm_free_road_hand_values() -> None:
    assert _idm(0.0, 30.0, np.inf, 0.0) == pytest.approx(1.8)
    assert _idm(15.0, 30.0, np.inf, 0.0) == pytest.approx(1.6875)  # 1.8 * 15/16
    assert _idm(30.0, 30.0, np.inf, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_idm_hand_computed_closing_case() -> None:
    # v=20, v0=30, T=1.5, a=1.8, b=2.5, gap=40, closing at 5 m/s:
    # s* = 2.5 + 20*1.5 + 20*5 / (2*sqrt(1.8*2.5)) = 32.5 + 100/4.2426 = 56.0702
    # a = 1.8 * (1 - (2/3)^4 - (56.0702/40)^2) = 1.8 * (0.80247 - 1.96492) = -2.0924
    assert S0 == 2.5 and COMFORT_DECEL == 2.5
    assert _idm(20.0, 30.0, 40.0, 5.0) == pytest.approx(-2.0924, abs=1e-3)


@pytest.mark.parametrize("v", [5.0, 15.0, 25.0])
def test_idm_equilibrium_gap_gives_zero_acceleration(v: float) -> None:
    v0, headway = 30.0, 1.5
    s_star = S0 + v * headway
    gap = s_star / np.sqrt(1.0 - (v / v0) ** 4)
    assert _idm(v, v0, gap, 0.0, headway) == pytest.approx(0.0, abs=1e-9)
    assert _idm(v, v0, gap * 1.2, 0.0, headway) > 0.0
    assert _idm(v, v0, gap * 0.8, 0.0, headway) < 0.0


def test_idm_brakes_harder_when_closing_and_is_bounded() -> None:
    free_gap = _idm(20.0, 30.0, 60.0, 0.0)
    closing = _idm(20.0, 30.0, 60.0, 8.0)
    opening = _idm(20.0, 30.0, 60.0, -8.0)
    assert closing < free_gap < opening
    assert closing < 0.0
    assert _idm(30.0, 30.0, 0.5, 20.0) == pytest.approx(-MAX_DECEL)
    out = idm(A([10.0, 10.0]), A([20.0, 20.0]), A([1.5, 1.5]), A([1.8, 1.8]),
              A([np.inf, 5.0]), A([0.0, 3.0]))
    assert out.shape == (2,) and out[0] > 0 > out[1]


def _road3():  # 3 lanes of 3.5 m: boundaries at -5.25, -1.75, 1.75, 5.25
    return make_road(np.random.default_rng(0), n_lanes=3, lane_width=3.5, shoulder_width=2.0,
                     min_radius=400.0, route_length=500.0)


def test_lane_occupancy_of_centred_straddling_and_off_road_vehicles() -> None:
    road = _road3()
    d = A([-3.5, -1.75, 0.0, 1.0, 3.5, 9.0, -1.75 + 0.95])
    w = A([1.8, 1.8, 1.8, 1.8, 1.8, 1.8, 1.8])
    occ = lane_occupancy(road, d, w)
    assert occ.shape == (7, 3)
    assert occ.tolist() == [
        [True, False, False],   # centred in lane 0
        [True, True, False],    # straddling boundary 1
        [False, True, False],   # centred in lane 1
        [False, True, True],    # 1.0 + 0.9 > 1.75: pokes into lane 2
        [False, False, True],
        [False, False, False],  # beyond the left edge
        [False, True, False],   # right side just touches the boundary: not in lane 0
    ]
    wide = lane_occupancy(road, A([0.0]), A([8.0]))
    assert wide.tolist() == [[True, True, True]]


def _run_autopilot(env: gym.Env, steps: int, seed: int) -> dict[str, int]:
    ap = Autopilot()
    env.reset(seed=seed)
    counts = {"steps": 0, "npc_collisions": 0, "episodes": 0, "ego_collisions": 0,
              "off_road": 0}
    for _ in range(steps):
        _, reward, terminated, truncated, info = env.step(ap.act(env.unwrapped.world))
        assert np.isfinite(reward)
        ev = info["events"]
        counts["steps"] += 1
        counts["npc_collisions"] += ev["npc_collisions"]
        if terminated or truncated:
            counts["episodes"] += 1
            counts["ego_collisions"] += int(ev["collision"])
            counts["off_road"] += int(ev["off_road"])
            ap.reset()
            env.reset()
    counts["episodes"] += 1  # the one running at the end
    return counts


def test_free_traffic_has_no_npc_collisions_over_10k_steps(
    make_env: Callable[..., gym.Env],
) -> None:
    totals: dict[str, int] = {}
    per_family = {"highway": 3334, "rural": 3333, "urban": 3333}
    for family, steps in per_family.items():
        env = make_env(family, obs_type="state", action_type="continuous",
                       scenario=family_config(family, episode_seconds=30.0))
        counts = _run_autopilot(env, steps, seed=11)
        print(family, counts)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    print("totals", totals)
    assert totals["steps"] == 10000
    assert totals["npc_collisions"] == 0
    assert totals["episodes"] >= 20
    assert totals["ego_collisions"] < 0.05 * totals["episodes"]
    assert totals["off_road"] < 0.05 * totals["episodes"]


def _drive(world: World, steps: int, on_step: Callable[[World], None] | None = None) -> None:
    ap = Autopilot()
    for _ in range(steps):
        world.step(*ap.controls(world))
        if on_step is not None:
            on_step(world)


def test_mobil_lane_changes_happen_on_the_highway(make_world: Callable[..., World]) -> None:
    world = make_world("highway", 3, vehicles=(20, 20), lanes=(3, 3))
    a = world.state.actors
    start_lane = {int(t): int(lane) for t, lane, v in
                  zip(a.track_id, world.road.lane_of(a.d), a.is_vehicle, strict=True) if v}
    changed: set[int] = set()
    moved: set[int] = set()

    def watch(w: World) -> None:
        act = w.state.actors
        lanes = w.road.lane_of(act.d)
        for t, target, lane, v in zip(act.track_id, act.target_lane, lanes, act.is_vehicle,
                                      strict=True):
            t = int(t)
            if v and t in start_lane:
                if target != start_lane[t]:
                    changed.add(t)
                if lane != start_lane[t]:
                    moved.add(t)

    _drive(world, 600, watch)
    assert changed, "no vehicle ever chose another lane"
    assert moved & changed, "a chosen lane change is also driven"


def test_cyclists_and_walking_pedestrians_move(make_world: Callable[..., World]) -> None:
    world = make_world("urban", 5, cyclists=(3, 3), pedestrians=(4, 4), crossing_fraction=0.0)
    a = world.state.actors
    rows = np.flatnonzero(a.active & np.isin(a.cls, [CYCLIST, PEDESTRIAN]))
    assert set(a.cls[rows]) == {CYCLIST, PEDESTRIAN}
    tid0 = a.track_id[rows].copy()
    s0, d0, v0 = a.s[rows].copy(), a.d[rows].copy(), a.speed[rows].copy()
    steps = 45  # 3 s, short enough that nobody is recycled
    _drive(world, steps)
    a = world.state.actors
    assert np.array_equal(a.track_id[rows], tid0)
    t = steps * world.dt
    ds = a.s[rows] - s0
    cyc = a.cls[rows] == CYCLIST
    ped = ~cyc
    assert np.all(ds[cyc] > 1.0), "cyclists ride forward"
    assert np.all(np.abs(ds[ped]) > 0.5 * 0.8 * t), "pedestrians walk"
    # walkers keep their pace and their side of the road
    assert ds[ped] == pytest.approx(v0[ped] * t, rel=1e-6)
    assert a.d[rows][ped] == pytest.approx(d0[ped])
    assert a.d[rows][cyc] == pytest.approx(d0[cyc]), "cyclists keep their line"


def test_crossing_pedestrians_cross(make_world: Callable[..., World]) -> None:
    world = make_world("urban", 2, pedestrians=(6, 6), crossing_fraction=1.0, vehicles=(0, 0),
                       cyclists=(0, 0), cone_groups=(0, 0), stalled=(0, 0))
    a = world.state.actors
    peds = np.flatnonzero(a.active & (a.cls == PEDESTRIAN))
    assert len(peds) == 6 and np.all(a.cross_state[peds] == 1)
    side0 = {int(a.track_id[i]): np.sign(a.d[i]) for i in peds}
    kerb = world.road.paved_half_width
    seen_crossing: set[int] = set()
    crossed: set[int] = set()

    def watch(w: World) -> None:
        act = w.state.actors
        for i in np.flatnonzero(act.active & (act.cls == PEDESTRIAN)):
            t = int(act.track_id[i])
            if t not in side0:
                continue
            if act.cross_state[i] == 2:
                seen_crossing.add(t)
                assert abs(act.v_lat[i]) == pytest.approx(PED_SPEED)
                assert act.speed[i] == 0.0, "a crossing pedestrian walks straight across"
            elif t in seen_crossing and act.cross_state[i] == 0:
                # finished: beyond the far kerb, walking along it
                assert np.sign(act.d[i]) == -side0[t]
                assert abs(act.d[i]) > kerb
                assert act.v_lat[i] == 0.0 and abs(act.speed[i]) == pytest.approx(PED_SPEED)
                crossed.add(t)

    _drive(world, 900, watch)
    assert seen_crossing, "nobody started to cross"
    assert crossed, "nobody reached the other side"
    assert crossed <= seen_crossing


def _overlapping_pairs(world: World) -> list[str]:
    """Describe every overlapping pair of active non-pedestrian-pair actors."""
    from sim.world.actors import box_corners, boxes_overlap

    a = world.state.actors
    x, y, yaw = world.actor_poses()
    idx = np.flatnonzero(a.active)
    out = []
    for n, i in enumerate(idx):
        for j in idx[n + 1:]:
            if a.cls[i] == PEDESTRIAN and a.cls[j] == PEDESTRIAN:
                continue
            ci = box_corners(x[[i]], y[[i]], yaw[[i]], a.length[[i]], a.width[[i]])
            cj = box_corners(x[[j]], y[[j]], yaw[[j]], a.length[[j]], a.width[[j]])
            if boxes_overlap(ci, cj)[0]:
                out.append(" / ".join(
                    f"track {a.track_id[k]} cls {a.cls[k]} s={a.s[k]:.1f} d={a.d[k]:.2f} "
                    f"v={a.speed[k]:.1f} v_lat={a.v_lat[k]:.2f}" for k in (i, j)))
    return out


@pytest.mark.parametrize("family", ["highway", "rural", "urban"])
def test_no_actors_overlap_at_reset(family: str) -> None:
    """Static obstacles (cone tapers, stalled vehicles) and spawned traffic never start
    on top of each other. Seeds 187 and 246 (highway) are known offenders."""
    cfg = family_config(family)
    bad = {}
    for seed in range(300):
        world = World(sample_scenario(cfg, seed))
        if world.events().npc_collisions:
            bad[seed] = _overlapping_pairs(world)
    assert not bad, f"{len(bad)} of 300 {family} scenarios start with overlaps: " + "; ".join(
        f"seed {s}: {p}" for s, p in list(bad.items())[:3])


# (family, scenario seed, steps): episodes driven by the autopilot in which NPCs ran
# into each other, found by long free-traffic runs.
TRAFFIC_CASES = [
    ("highway", 612176793, 430),   # lane change into a lane with a close follower
    ("highway", 1026816910, 175),  # a slow semi changing lanes swings into the next lane
    ("urban", 2132991552, 450),    # a stopped car keeps creeping sideways into a car
]


@pytest.mark.parametrize("family,seed,steps", TRAFFIC_CASES)
def test_known_traffic_episodes_stay_collision_free(family: str, seed: int,
                                                    steps: int) -> None:
    world = World(sample_scenario(family_config(family), seed))
    ap = Autopilot()
    for _ in range(steps):
        ev = world.step(*ap.controls(world))
        assert ev.npc_collisions == 0, (
            f"{family} scenario seed {seed} step {world.state.step}: "
            f"{_overlapping_pairs(world)}")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["highway", "rural", "urban"])
def test_free_traffic_long_run_has_no_npc_collisions(make_env: Callable[..., gym.Env],
                                                      family: str) -> None:
    env = make_env(family, obs_type="state",
                   scenario=family_config(family, episode_seconds=30.0))
    counts = _run_autopilot(env, 30000, seed=7)
    print(family, counts)
    assert counts["npc_collisions"] == 0
    assert counts["ego_collisions"] < 0.05 * counts["episodes"]
