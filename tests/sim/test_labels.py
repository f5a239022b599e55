"""Labels from pixels: boxes, visibility and lanes checked against the id buffer drawn
by the real renderer (camera 320x192), over several families, seeds and conditions."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest

from sim.autopilot import Autopilot
from sim.config import family_config
from sim.env import DrivingEnv
from sim.render.labels import lane_rows
from sim.render.raster import ID_MARKING
from sim.types import (
    ABSENT,
    CAR,
    DASHED,
    DOUBLE,
    SOLID,
    TRUCK,
    CameraSpec,
    EgoState,
    GroundTruth,
)
from sim.world.actors import SHAPE_NAMES, SHAPE_SIZE, ActorTable
from sim.world.road import Road
from tests.conftest import FAMILY_IDS, LABEL_CAMERA

W, H = LABEL_CAMERA["width"], LABEL_CAMERA["height"]
STEPS = 40
# (seed, scenario overrides): default draws plus a forced night-rain and a dusk-fog run
RUNS: list[tuple[int, dict[str, object]]] = [
    (0, {}),
    (1, {}),
    (2, {"time_of_day": {"night": 1.0}, "weather": {"rain": 1.0}}),
    (3, {"time_of_day": {"dusk": 1.0}, "weather": {"fog": 1.0}}),
]
PNG_PATTERN = "/tmp/drivestack_label_check_{}.png"


@dataclass
class Shot:
    """One rendered frame with the world state it was drawn from."""

    tag: str
    image: np.ndarray
    ids: np.ndarray
    gt: GroundTruth
    actors: ActorTable
    ego: EgoState
    road: Road


def _collect(family: str) -> list[Shot]:
    shots: list[Shot] = []
    for seed, overrides in RUNS:
        env = gym.make(FAMILY_IDS[family], camera=dict(LABEL_CAMERA),
                       scenario=family_config(family, **overrides))
        env.reset(seed=seed)
        u: DrivingEnv = env.unwrapped  # type: ignore[assignment]
        ap = Autopilot()
        for t in range(STEPS):
            fr = u.frame
            assert fr is not None and fr.ids is not None
            assert fr.step == u.world.state.step
            shots.append(Shot(f"{family} seed={seed} step={t}", fr.image.copy(), fr.ids.copy(),
                              fr.ground_truth, u.world.state.actors.copy(),
                              copy.copy(u.world.state.ego), u.world.road))
            _, _, term, trunc, _ = env.step(ap.act(u.world))
            if term or trunc:
                break
        env.close()
    return shots


@pytest.fixture(scope="module", params=list(FAMILY_IDS))
def shots(request: pytest.FixtureRequest) -> list[Shot]:
    out = _collect(request.param)
    assert len(out) >= 3 * STEPS
    return out


def _row_of(shot: Shot, track_id: int) -> int:
    rows = np.flatnonzero(shot.actors.active & (shot.actors.track_id == track_id))
    assert rows.size == 1, f"{shot.tag}: track id {track_id} maps to rows {rows}"
    return int(rows[0])


def test_every_box_is_the_exact_bounding_box_of_its_id_pixels(shots: list[Shot]) -> None:
    n_boxes = 0
    for sh in shots:
        gt = sh.gt
        assert gt.boxes_xyxy.dtype == np.float32 and gt.boxes_xyxy.shape == (len(gt), 4)
        for k, tid in enumerate(gt.track_ids):
            r = _row_of(sh, int(tid))
            ys, xs = np.nonzero(sh.ids == r + 1)
            assert xs.size > 0, f"{sh.tag}: box for row {r} without pixels"
            expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert gt.boxes_xyxy[k].tolist() == expected, sh.tag
            assert gt.class_ids[k] == sh.actors.cls[r]
            n_boxes += 1
    assert n_boxes > 100, "the runs should show plenty of objects"


def test_every_object_with_pixels_is_labelled_once(shots: list[Shot]) -> None:
    for sh in shots:
        drawn = set((np.unique(sh.ids[sh.ids > 0]) - 1).tolist())
        labelled = [_row_of(sh, int(t)) for t in sh.gt.track_ids]
        assert len(labelled) == len(set(labelled)), f"{sh.tag}: duplicate labels"
        assert set(labelled) == drawn, sh.tag
        assert all(sh.actors.active[r] for r in drawn)


def test_boxes_are_clipped_and_fractions_in_range(shots: list[Shot]) -> None:
    for sh in shots:
        gt = sh.gt
        b = gt.boxes_xyxy
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 2] <= W) and np.all(b[:, 3] <= H)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        vf = gt.visible_fraction
        assert vf.dtype == np.float32
        assert np.all((vf > 0) & (vf <= 1.0 + 1e-6)), sh.tag
        assert np.all((gt.truncation >= 0) & (gt.truncation <= 1.0))
        assert gt.occluded.dtype == bool
        assert not (gt.occluded & (vf >= 0.5)).any(), f"{sh.tag}: half seen yet occluded"


def test_visible_fraction_never_exceeds_the_in_image_fraction(shots: list[Shot]) -> None:
    """visible pixels <= silhouette pixels inside the image, i.e. visible_fraction <=
    1 - truncation: the id buffer and the silhouette mask must rasterize alike."""
    worst: tuple[float, str] = (0.0, "")
    for sh in shots:
        gt = sh.gt
        excess = gt.visible_fraction - (1.0 - gt.truncation)
        for k in np.flatnonzero(excess > 1e-6):
            n_seen = int((sh.ids == _row_of(sh, int(gt.track_ids[k])) + 1).sum())
            total = n_seen / float(gt.visible_fraction[k])
            in_image = (1.0 - float(gt.truncation[k])) * total
            ratio = n_seen / max(in_image, 1e-9)
            if ratio > worst[0]:
                worst = (ratio, f"{sh.tag} box {gt.boxes_xyxy[k].tolist()}: {n_seen} id pixels "
                                f"but {in_image:.0f} silhouette pixels in the image")
    assert worst[0] <= 1.0 + 1e-6, worst[1]


def test_distance_is_to_the_nearest_footprint_point(shots: list[Shot]) -> None:
    for sh in shots:
        a, e = sh.actors, sh.ego
        cam_xy = np.array([e.x, e.y]) + 1.8 * np.array([np.cos(e.yaw), np.sin(e.yaw)])
        for k, tid in enumerate(sh.gt.track_ids):
            r = _row_of(sh, int(tid))
            x, y, _ = sh.road.to_world(a.s[r], a.d[r])
            centre = float(np.hypot(x - cam_xy[0], y - cam_xy[1]))
            half_diag = 0.5 * float(np.hypot(a.length[r], a.width[r]))
            dist = float(sh.gt.distance[k])
            assert centre - half_diag - 1e-3 <= dist <= centre + 1e-3, sh.tag


def _marking_hits(ids_row: np.ndarray, x: float, value: int, reach: int) -> tuple[bool, bool]:
    """Whether marking pixels of `value` lie within `reach` px left / right of x."""
    xi = int(round(x))
    left = ids_row[max(0, xi - reach): xi + 1] == value
    right = ids_row[xi: xi + reach + 1] == value
    return bool(left.any()), bool(right.any())


def test_lane_polylines_lie_on_painted_markings(shots: list[Shot]) -> None:
    near_rows_from = 2 * H // 3  # markings are >= 2 px wide there
    checked = {SOLID: 0, DASHED: 0, DOUBLE: 0}
    for sh in shots:
        lanes = sh.gt.lanes
        for j, (bid, kind) in enumerate(zip(lanes.boundary_ids, lanes.marking, strict=True)):
            value = ID_MARKING - int(bid)
            for i, row in enumerate(lanes.rows):
                if row < near_rows_from or not lanes.visible[j, i]:
                    continue
                x = float(lanes.xs[j, i])
                ids_row = sh.ids[row]
                if kind == DASHED and not lanes.painted[j, max(i - 1, 0): i + 2].all():
                    continue  # a gap, or the row where a dash ends (sub-pixel either way)
                if kind == DOUBLE:
                    # two yellow lines with the boundary between them
                    left, right = _marking_hits(ids_row, x, value, 16)
                    assert left and right, f"{sh.tag} boundary {bid} row {row} x {x:.1f}"
                else:
                    left, right = _marking_hits(ids_row, x, value, 1)
                    assert left or right, f"{sh.tag} boundary {bid} row {row} x {x:.1f}"
                checked[int(kind)] += 1
    assert checked[SOLID] > 100 and checked[DASHED] > 30, checked


def test_lane_points_are_absent_outside_and_hidden_under_objects(shots: list[Shot]) -> None:
    for sh in shots:
        lanes = sh.gt.lanes
        assert np.array_equal(lanes.rows, lane_rows(H, CameraSpec(**LABEL_CAMERA).horizon_y))
        assert lanes.rows[-1] == H - 1 and np.all(np.diff(lanes.rows) > 0)
        assert lanes.xs.dtype == np.float32 and lanes.xs.shape == lanes.visible.shape
        finite = lanes.xs != ABSENT
        assert np.all((lanes.xs[finite] >= 0) & (lanes.xs[finite] <= W - 1))
        assert not (lanes.visible & ~finite).any()
        assert not (lanes.painted & ~finite).any()
        cols = np.clip(np.round(lanes.xs).astype(int), 0, W - 1)
        under = sh.ids[np.broadcast_to(lanes.rows, lanes.xs.shape), cols]
        assert not (lanes.visible & (under > 0)).any(), f"{sh.tag}: lane visible through a car"
        assert np.array_equal(lanes.boundary_ids, np.arange(sh.road.n_lanes + 1))
        assert lanes.marking.tolist() == list(sh.road.markings)


def test_ego_boundaries_bracket_the_ego(shots: list[Shot]) -> None:
    n_checked = 0
    for sh in shots:
        lanes, gt = sh.gt.lanes, sh.gt
        right, left = lanes.ego_boundaries
        assert (right, left) == (gt.ego_lane, gt.ego_lane + 1)
        near = lanes.rows >= 2 * H // 3
        both = np.flatnonzero(near & (lanes.xs[right] != ABSENT) & (lanes.xs[left] != ABSENT))
        if (both.size == 0 or abs(gt.ego_lane_offset) > 0.5 * sh.road.lane_width - 0.5
                or abs(gt.ego_heading_error) > 0.05):
            continue  # changing lanes, or the lines run out of the image
        i = both[-1]  # the lowest row where both are in the image
        # boundary 0 is the right road edge, indices grow to the left: smaller x
        assert lanes.xs[left, i] < W / 2 < lanes.xs[right, i], sh.tag
        finite_bottom = lanes.xs[:, -1][lanes.xs[:, -1] != ABSENT]
        assert np.all(np.diff(finite_bottom) < 0), f"{sh.tag}: boundaries not right-to-left"
        n_checked += 1
    assert n_checked > len(shots) // 2


def test_ego_offset_and_heading_error_match_the_world(shots: list[Shot]) -> None:
    for sh in shots:
        e, road, gt = sh.ego, sh.road, sh.gt
        off = 0.5 * e.wheelbase
        s, d = road.to_frenet(e.x + off * np.cos(e.yaw), e.y + off * np.sin(e.yaw), e.s)
        lane = int(road.lane_of(d[0]))
        assert gt.ego_lane == lane
        assert gt.ego_lane_offset == pytest.approx(d[0] - float(road.lane_center(lane)),
                                                   abs=0.02)
        i = int((s[0] - road.s[0]) / 0.5)
        tangent = np.arctan2(road.y[i + 1] - road.y[i], road.x[i + 1] - road.x[i])
        err = np.angle(np.exp(1j * (e.yaw - tangent)))
        assert gt.ego_heading_error == pytest.approx(err, abs=2e-3)


# -- constructed scenes: occlusion, full hiding, truncation ------------------------------

@pytest.fixture
def staged() -> DrivingEnv:
    """A clear-day highway env at 320x192 with every actor removed (rows free to stage)."""
    env = gym.make(FAMILY_IDS["highway"], camera=dict(LABEL_CAMERA),
                   scenario={"time_of_day": {"day": 1.0}, "weather": {"clear": 1.0},
                             "sensor_noise": (0.0, 0.0), "vehicles": (6, 6),
                             "cone_groups": (0, 0), "stalled": (0, 0)})
    env.reset(seed=3)
    u: DrivingEnv = env.unwrapped  # type: ignore[assignment]
    u.world.state.actors.active[:] = False
    return u


def _place(u: DrivingEnv, row: int, shape: str, ahead: float, lateral: float = 0.0) -> int:
    a, e = u.world.state.actors, u.world.state.ego
    a.active[row] = True
    a.cls[row] = TRUCK if shape in ("box_truck", "semi") else CAR
    a.shape[row] = SHAPE_NAMES.index(shape)
    a.length[row], a.width[row], a.height[row] = SHAPE_SIZE[shape]
    a.s[row], a.d[row] = e.s + ahead, e.d + lateral
    a.v_lat[row], a.speed[row] = 0.0, 10.0
    return int(a.track_id[row])


def _label(gt: GroundTruth, tid: int) -> int | None:
    hits = np.flatnonzero(gt.track_ids == tid)
    return int(hits[0]) if hits.size else None


@pytest.mark.parametrize("lateral,heavy", [(0.8, False), (0.25, True)])
def test_occluded_object_gets_its_visible_box_only(staged: DrivingEnv, lateral: float,
                                                   heavy: bool) -> None:
    u = staged
    front = _place(u, 0, "sedan", 15.0)
    back = _place(u, 1, "van" if heavy else "box_truck", 30.0, lateral)
    u.world.state.actors.active[0] = False
    alone = u._render_frame()
    ka = _label(alone.ground_truth, back)
    assert ka is not None
    full_box = alone.ground_truth.boxes_xyxy[ka]
    n_alone = int((alone.ids == 2).sum())
    assert alone.ground_truth.visible_fraction[ka] == pytest.approx(1.0)
    assert not alone.ground_truth.occluded[ka]

    u.world.state.actors.active[0] = True
    fr = u._render_frame()
    gt = fr.ground_truth
    kf, kb = _label(gt, front), _label(gt, back)
    assert kf is not None and kb is not None
    box = gt.boxes_xyxy[kb]
    n_seen = int((fr.ids == 2).sum())
    assert 0 < n_seen < n_alone
    # the visible box sits inside the full silhouette's box and is smaller
    assert np.all(box[:2] >= full_box[:2]) and np.all(box[2:] <= full_box[2:])
    assert (box[2] - box[0]) * (box[3] - box[1]) < (full_box[2] - full_box[0]) * (
        full_box[3] - full_box[1])
    assert box[3] < full_box[3], "the near car hides the bottom of the far one"
    assert gt.visible_fraction[kb] == pytest.approx(n_seen / n_alone, abs=1e-3)
    assert gt.visible_fraction[kb] < 1.0
    assert bool(gt.occluded[kb]) is heavy
    assert gt.visible_fraction[kf] == pytest.approx(1.0)
    assert gt.distance[kf] < gt.distance[kb]


def test_fully_hidden_car_gets_no_box(staged: DrivingEnv) -> None:
    u = staged
    truck = _place(u, 0, "semi", 16.0)
    car = _place(u, 1, "sedan", 40.0)
    fr = u._render_frame()
    assert _label(fr.ground_truth, truck) is not None
    assert not (fr.ids == 2).any()
    assert _label(fr.ground_truth, car) is None
    u.world.state.actors.active[0] = False  # without the truck the car is seen
    assert _label(u._render_frame().ground_truth, car) is not None


def test_truncated_object_box_is_clipped_to_the_image(staged: DrivingEnv) -> None:
    u = staged
    tid = _place(u, 0, "box_truck", 9.0, 4.5)  # close and to the left: cut by the edge
    fr = u._render_frame()
    k = _label(fr.ground_truth, tid)
    assert k is not None
    gt = fr.ground_truth
    assert gt.boxes_xyxy[k][0] == 0.0
    assert 0.0 < gt.truncation[k] < 1.0
    assert gt.visible_fraction[k] == pytest.approx(1.0 - gt.truncation[k], abs=1e-3)
    assert not gt.occluded[k]
    ys, xs = np.nonzero(fr.ids == 1)
    assert gt.boxes_xyxy[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
