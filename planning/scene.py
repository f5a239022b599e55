"""What the planner knows about the road ahead: one `Scene`, built either from perception
(camera -> detections + lanes) or, for the privileged baseline, from the world itself.

Both sources describe the same things in the same frame, so that one feature function
(planning.features) serves both:

- objects ahead as (gap, left) on the ground [m]: `gap` from the ego's front bumper to
  the object's near side along the lane (what car following needs), `left` measured
  from the ego lane's centre line (Frenet-like: on a curve an object in the ego lane has
  left ~ 0), their lane relative to the ego (0 ego lane, +1 left, -1 right), class and
  gap rate;
- the ego lane: lateral offset and heading error of the ego, and whether a lane exists
  to the left and to the right.

The world source sees only what the camera could: objects in front of the camera within
its horizontal field of view and `MAX_RANGE`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from perception.geometry import box_foot, fit_boundary, to_ground
from perception.lanes import EGO_LEFT, EGO_RIGHT, NOMINAL_LANE_WIDTH, ground_points
from perception.perceiver import Perception
from sim.types import ABSENT, CameraSpec, EgoState
from sim.world.world import World

MAX_RANGE = 80.0
"""Objects farther ahead than this are not in a scene [m]."""


def front_from_camera(camera: CameraSpec, ego: EgoState | None = None) -> float:
    """How far the ego's front bumper is ahead of the camera [m] (the bicycle model's rear
    axle is the reference: body centre wheelbase/2 ahead of it, camera mount_forward)."""
    e = ego or EgoState(x=0.0, y=0.0, yaw=0.0, speed=0.0)
    return e.wheelbase / 2 + e.length / 2 - camera.mount_forward


@dataclass(frozen=True)
class Scene:
    """The road ahead as the planner sees it (SI units, ego reference point at origin)."""

    speed: float
    """Ego speed [m/s] (odometry: known to both sources)."""
    speed_limit: float
    """Speed limit of the road [m/s] (map knowledge: known to both sources)."""
    lane_offset: float
    """Ego offset from its lane's centre [m], left positive; 0 when unseen."""
    heading_error: float
    """Ego heading relative to its lane [rad], left positive; 0 when unseen."""
    lane_seen: bool
    """The ego lane was found."""
    left_lane: bool
    """A lane exists left of the ego lane."""
    right_lane: bool
    """A lane exists right of the ego lane."""
    lane_width: float
    """Width of the ego lane [m] (NOMINAL_LANE_WIDTH when unseen)."""
    objects: np.ndarray
    """(K, 5) float32 rows (gap [m], left of the ego lane centre [m], relative lane,
    class id, gap rate [m/s]: how fast the gap grows), sorted by gap. Perception fills the
    gap rate by tracking (`with_gap_rates`); the world knows it exactly."""
    tracked: np.ndarray | None = None
    """(K,) bool: the object's gap rate was measured (it was seen in the previous scene
    too); None: all measured (the privileged scene)."""
    target_speed: float | None = None
    """The meta controller's target speed [m/s]: the set point FASTER and SLOWER move (the
    car's own state, like odometry: known to every source; `DrivingEnv.target_speed`).
    None: not known (the features then take `speed`)."""
    lane_change: int = 0
    """The lane the controller steers to, relative to the ego's lane (+1 left, -1 right,
    0 none; `DrivingEnv.target_lane_change`)."""


def lane_of(left: np.ndarray, lane_width: float) -> np.ndarray:
    """Relative lane (0 ego, +1 left, -1 right, ...) of lateral positions from the ego
    lane's centre."""
    return np.round(np.asarray(left, np.float64) / max(lane_width, 1.0))


def scene_from_perception(p: Perception, speed: float, camera: CameraSpec,
                          speed_limit: float) -> Scene:
    """A scene from one frame's perception, the ego speed and the road's speed limit."""
    lanes = p.lanes
    fits: list[np.ndarray | None] = [None, None]
    left_lane = right_lane = False
    offset = heading = 0.0
    if lanes is not None:
        fits = [fit_boundary(ground_points(lanes.xs[s], lanes.rows, camera), 50.0)
                for s in (EGO_LEFT, EGO_RIGHT)]
        left_lane = bool((lanes.xs[0] != ABSENT).any())
        right_lane = bool((lanes.xs[3] != ABSENT).any())
        if np.isfinite(lanes.ego_offset):
            offset, heading = lanes.ego_offset, lanes.heading_error
    lane_seen = fits[0] is not None or fits[1] is not None
    width = NOMINAL_LANE_WIDTH
    if fits[0] is not None and fits[1] is not None:
        w = float(np.polyval(fits[0], 10.0) - np.polyval(fits[1], 10.0))
        width = w if 2.0 <= w <= 6.0 else NOMINAL_LANE_WIDTH

    def centre(x: np.ndarray) -> np.ndarray:
        """Left position of the ego lane centre at forward distances x (camera frame)."""
        if fits[0] is not None and fits[1] is not None:
            return (np.polyval(fits[0], x) + np.polyval(fits[1], x)) / 2
        if fits[0] is not None:
            return np.polyval(fits[0], x) - width / 2
        if fits[1] is not None:
            return np.polyval(fits[1], x) + width / 2
        return np.zeros_like(x)

    d = p.detections
    b = np.asarray(d.boxes_xyxy, np.float64).reshape(-1, 4)
    rows = np.empty((0, 5), np.float32)
    if len(b):
        foot = to_ground(*box_foot(b), camera)
        below = np.isfinite(foot[:, 0])
        foot, cls = foot[below], np.asarray(d.classes)[below]
        if len(foot):
            fwd = foot[:, 0]
            left = foot[:, 1] - centre(fwd)
            keep = fwd <= MAX_RANGE
            gap = fwd - front_from_camera(camera)
            rows = np.stack([gap, left, lane_of(left, width), cls, np.zeros_like(gap)],
                            axis=1)[keep].astype(np.float32)
    return Scene(speed=float(speed), speed_limit=float(speed_limit), lane_offset=float(offset),
                 heading_error=float(heading), lane_seen=lane_seen, left_lane=left_lane,
                 right_lane=right_lane, lane_width=width,
                 objects=rows[np.argsort(rows[:, 0], kind="stable")])


def scene_from_world(world: World, camera: CameraSpec) -> Scene:
    """The privileged scene: exact lanes and objects, limited to the camera's view."""
    road, ego, a = world.road, world.state.ego, world.state.actors
    lane = int(road.lane_of(ego.d))
    centre = float(road.lane_center(lane))
    herr = float(np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s))))))
    ds = a.s - ego.s
    left = a.d - centre
    # in view: ahead of the camera and inside its horizontal field of view
    cam_fwd = ds - (camera.mount_forward - ego.wheelbase / 2)  # body centre -> camera
    cam_left = a.d - ego.d - np.tan(herr) * cam_fwd
    half = np.radians(camera.fov_deg) / 2
    reach = np.abs(cam_left) - a.width / 2
    seen = a.active & (cam_fwd > 1.0) & (ds <= MAX_RANGE) & (reach < np.tan(half) * cam_fwd)
    idx = np.flatnonzero(seen)
    gap_all = ds - a.length / 2 - ego.length / 2
    idx = idx[np.argsort(gap_all[idx], kind="stable")]  # by gap, as Scene.objects promises
    gap = gap_all[idx]
    rows = np.stack([gap, left[idx], lane_of(left[idx], road.lane_width), a.cls[idx],
                     a.speed[idx] - ego.speed], axis=1).astype(np.float32)
    return Scene(speed=float(ego.speed), speed_limit=float(world.scenario.speed_limit),
                 lane_offset=float(ego.d - centre),
                 heading_error=herr, lane_seen=True, left_lane=lane < road.n_lanes - 1,
                 right_lane=lane > 0, lane_width=float(road.lane_width), objects=rows)


def with_gap_rates(prev: Scene | None, cur: Scene, dt: float, smoothing: float = 0.5
                   ) -> Scene:
    """`cur` with each object's gap rate estimated from `prev` (the scene `dt` seconds
    before): an object is matched to the nearest previous one of the same lane and class
    whose gap differs by less than 3 m + 40 m/s * dt. The raw rate (gap change / dt) is
    blended with the previous estimate (`smoothing` of the old) when that one was itself
    measured. An object seen for the first time is assumed to stand still (gap rate =
    -ego speed: the safe guess) and marked untracked in `Scene.tracked`."""
    objs = cur.objects.copy()
    tracked = np.zeros(len(objs), bool)
    objs[:, 4] = -cur.speed
    prev_objs = prev.objects if prev is not None and dt > 0 else np.empty((0, 5), np.float32)
    prev_tracked = (prev.tracked if prev is not None and prev.tracked is not None
                    else np.ones(len(prev_objs), bool))
    used: set[int] = set()
    for i, o in enumerate(objs):
        same = np.flatnonzero((prev_objs[:, 2] == o[2]) & (prev_objs[:, 3] == o[3]))
        same = np.array([j for j in same if j not in used], np.int64)
        if not same.size:
            continue
        j = int(same[np.argmin(np.abs(prev_objs[same, 0] - o[0]))])
        if abs(prev_objs[j, 0] - o[0]) < 3.0 + 40.0 * dt:
            used.add(j)
            raw = (o[0] - prev_objs[j, 0]) / dt
            keep = smoothing if prev_tracked[j] else 0.0
            objs[i, 4] = keep * prev_objs[j, 4] + (1 - keep) * raw
            tracked[i] = True
    return replace(cur, objects=objs, tracked=tracked)


def with_controller(scene: Scene, env: Any) -> Scene:
    """`scene` with the meta controller's state of `env` (a `DrivingEnv`): its target
    speed and the lane change under way."""
    return replace(scene, target_speed=env.target_speed, lane_change=env.target_lane_change)
