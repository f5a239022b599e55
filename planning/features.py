"""The planner's observation: one fixed-size float32 vector from a `Scene`, whatever its
source (perception or the world), so training and deployment see the same features.

Layout (`FEATURE_NAMES`; each value is divided by its scale in `FEATURE_SCALES`, then
clipped to [-CLIP, CLIP]):

- ego: speed, speed limit, lane offset, heading error, lane seen, lane to the left, lane
  to the right;
- per lane (left, ego, right): gap to the nearest object ahead in it (MAX_GAP when none)
  and that object's gap rate (how fast the gap grows; negative when closing);
- the N_OBJECTS nearest objects: present, gap, left of the ego lane centre, relative
  lane, gap rate, and its class group (vehicle, vulnerable road user, static);
- the meta controller (`CONTROL_FEATURES`, appended last): its target speed (FASTER and
  SLOWER move it by 2.5 m/s and the speed follows it with a lag, so without it a policy
  cannot tell whether the car is about to speed up), the Gipps safe speed behind the
  nearest object in the ego lane (`planning.rule_based.safe_speed`, its leader taken at
  speed + gap rate), and the lane change under way (+1 left, -1 right, 0 none);
- the paths (`PATH_FEATURES`, appended after them): for a path along the left, the ego
  and the right lane centre (the ego's path also along the body wherever it is in its
  lane), as wide as the ego plus each object's class half width plus
  `RuleParams.corridor_margin` (`planning.rule_based.in_corridor`, the rule planner's
  corridor): the gap to the nearest object in it, that object's gap rate, and the
  slowest Gipps safe speed behind any object in it. Unlike the per-lane gaps these count
  an object by its body, not by the lane its centre is in: a broken-down car half on the
  shoulder or a car straddling two lanes blocks the paths it overlaps.

- the memory (`planning.memory.MEMORY_FEATURES`, last): time since the episode started
  and, per side, whether an object seen close in that lane is predicted beside the ego
  now, out of the camera's view, and how long ago it was seen. The memory is the
  caller's state (`NeighbourMemory`, updated once per decision); `features(scene)`
  without it gives the memory of an ego that has driven a while and remembers nothing.

Policies trained before the controller features (LEGACY_FEATURE_DIM inputs), the path
features (CONTROL_FEATURE_DIM) or the memory (PATH_FEATURE_DIM) read that prefix of the
features: the layout before them is unchanged.
"""

from __future__ import annotations

import numpy as np

from planning.memory import MEMORY_FEATURES, NEUTRAL_MEMORY
from planning.memory import SCALES as MEMORY_SCALES
from planning.scene import Scene
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK

N_OBJECTS = 6
MAX_GAP = 80.0
"""Gap given to an empty lane [m]."""
CLIP = 5.0
EGO_FEATURES: tuple[str, ...] = ("speed", "speed_limit", "lane_offset", "heading_error",
                                 "lane_seen", "left_lane", "right_lane")
LANES: tuple[str, ...] = ("left", "ego", "right")
OBJECT_FEATURES: tuple[str, ...] = ("present", "gap", "left", "lane", "gap_rate", "vehicle",
                                    "vulnerable", "static")
CONTROL_FEATURES: tuple[str, ...] = ("target_speed", "safe_speed", "lane_change")
PATH_FEATURES: tuple[str, ...] = tuple(f"{lane}_path_{f}" for lane in LANES
                                       for f in ("gap", "gap_rate", "safe_speed"))
LEGACY_FEATURE_NAMES: tuple[str, ...] = (
    EGO_FEATURES
    + tuple(f"{lane}_{f}" for lane in LANES for f in ("gap", "gap_rate"))
    + tuple(f"obj{k}_{f}" for k in range(N_OBJECTS) for f in OBJECT_FEATURES))
FEATURE_NAMES: tuple[str, ...] = (LEGACY_FEATURE_NAMES + CONTROL_FEATURES + PATH_FEATURES
                                  + MEMORY_FEATURES)
FEATURE_DIM = len(FEATURE_NAMES)
LEGACY_FEATURE_DIM = len(LEGACY_FEATURE_NAMES)
"""Inputs of the policies trained before `CONTROL_FEATURES` (the first features)."""
CONTROL_FEATURE_DIM = LEGACY_FEATURE_DIM + len(CONTROL_FEATURES)
"""Inputs of the policies trained before `PATH_FEATURES` (the first features)."""
PATH_FEATURE_DIM = CONTROL_FEATURE_DIM + len(PATH_FEATURES)
"""Inputs of the policies trained before `MEMORY_FEATURES` (the first features)."""
OBSERVATION_DIMS: tuple[int, ...] = (FEATURE_DIM, PATH_FEATURE_DIM, CONTROL_FEATURE_DIM,
                                     LEGACY_FEATURE_DIM)
FEATURE_SETS: dict[str, int] = {"control": CONTROL_FEATURE_DIM, "path": PATH_FEATURE_DIM,
                                "memory": FEATURE_DIM}
"""Observations a planner env can give (the first that many features): "control" (the
shipped policies'), "path" (+ PATH_FEATURES), "memory" (+ MEMORY_FEATURES: all)."""
DEFAULT_FEATURE_SET = "control"
"""Observation sizes a policy may have: today's, or an older policy's prefix."""
SAFE_SPEED_CAP = 40.0
"""Largest `safe_speed` feature [m/s] (an empty lane's Gipps speed is large)."""
_SCALE_BY_KIND = {"speed": 30.0, "speed_limit": 30.0, "lane_offset": 2.0,
                  "target_speed": 30.0, "safe_speed": 30.0,
                  "heading_error": 0.3, "gap": MAX_GAP, "gap_rate": 10.0, "left": 5.0,
                  "lane": 2.0}


def _kind(name: str) -> str:
    """`obj3_gap` -> `gap`, `left_gap_rate` -> `gap_rate`; ego features keep their name."""
    if name.startswith("obj"):
        return name.split("_", 1)[1]
    head, _, rest = name.partition("_")
    if head in LANES and rest.startswith("path_"):
        return rest[len("path_"):]
    return rest if head in LANES and rest.startswith("gap") else name


FEATURE_SCALES: dict[str, float] = {n: MEMORY_SCALES[n] if n in MEMORY_SCALES
                                    else _SCALE_BY_KIND.get(_kind(n), 1.0)
                                    for n in FEATURE_NAMES}
"""Divisor of each feature (units: m, m/s, rad; flags and one-hots are 1)."""
_SCALES = np.array([FEATURE_SCALES[n] for n in FEATURE_NAMES])
GROUPS = {CAR: 0, TRUCK: 0, PEDESTRIAN: 1, CYCLIST: 1, CONE: 2}
"""Class id -> group: 0 vehicle, 1 vulnerable road user, 2 static."""
_MAX_CLASS = max(GROUPS)


def lane_gaps(scene: Scene) -> np.ndarray:
    """(3, 2) gap [m] and gap rate [m/s] of the nearest object ahead in the left, ego and
    right lane (MAX_GAP and 0 when none)."""
    out = np.array([[MAX_GAP, 0.0]] * len(LANES))
    obj = scene.objects
    for row, rel in enumerate((1, 0, -1)):
        hit = obj[(obj[:, 2] == rel) & (obj[:, 0] > -2.0)]
        if len(hit):
            k = int(np.argmin(hit[:, 0]))
            out[row] = [min(float(hit[k, 0]), MAX_GAP), float(hit[k, 4])]
    return out


def gipps_speed(gap: np.ndarray, leader_speed: np.ndarray) -> np.ndarray:
    """`planning.rule_based.safe_speed` with the rule planner's default parameters, for
    arrays, capped at SAFE_SPEED_CAP [m/s]."""
    from planning.rule_based import RuleParams

    p = RuleParams()
    b, tau = p.decel, p.reaction
    disc = (b * tau) ** 2 + np.maximum(leader_speed, 0.0) ** 2 + 2.0 * b * (gap - p.standstill)
    v = np.maximum(0.0, -b * tau + np.sqrt(np.maximum(disc, 0.0)))
    return np.minimum(v, SAFE_SPEED_CAP)


def control_features(speed: np.ndarray, target_speed: np.ndarray, ego_gap: np.ndarray,
                     ego_gap_rate: np.ndarray, lane_change: np.ndarray) -> np.ndarray:
    """(..., 3) unscaled CONTROL_FEATURES from arrays of one shape (the ego lane's gap and
    gap rate as `lane_gaps` gives them)."""
    safe = gipps_speed(ego_gap, speed + ego_gap_rate)
    return np.stack([target_speed, safe, np.sign(lane_change)], axis=-1)


def path_features(objects: np.ndarray, valid: np.ndarray, lane_width: np.ndarray,
                  lane_offset: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """(B, 3, 3) unscaled PATH_FEATURES (per path left, ego, right: gap [m], its gap rate
    [m/s], safe speed [m/s]) of B scenes: `objects` (B, M, 5) scene rows of which `valid`
    (B, M) are real, and (B,) lane widths, ego lane offsets and speeds. An object is in a
    path when `planning.rule_based.in_corridor` says so; the safe speed is the slowest
    `gipps_speed` behind the path's objects, each led at speed + gap rate (an untracked
    object, gap rate -speed, is taken as stopped, as the rule planner does)."""
    from planning.rule_based import EGO_HALF_WIDTH, HALF_WIDTH, RuleParams

    p = RuleParams()
    half_of = np.ones(_MAX_CLASS + 1)
    for cls, half in HALF_WIDTH.items():
        half_of[cls] = half
    obj = np.asarray(objects, np.float64)
    n, m = obj.shape[:2]
    out = np.empty((n, 3, 3))
    out[:] = (MAX_GAP, 0.0, SAFE_SPEED_CAP)
    if m == 0:
        return out
    reach = EGO_HALF_WIDTH + half_of[np.clip(obj[..., 3].astype(np.int64), 0, _MAX_CLASS)] \
        + p.corridor_margin
    ahead = np.asarray(valid, bool) & (obj[..., 0] > -2.0)
    speed = np.asarray(speed, np.float64)[:, None]
    safe = gipps_speed(obj[..., 0], np.maximum(speed + obj[..., 4], 0.0))
    rows = np.arange(n)
    for r, rel in enumerate((1, 0, -1)):
        centre = rel * np.asarray(lane_width, np.float64)[:, None]
        mask = ahead & (np.abs(obj[..., 1] - centre) < reach)
        if rel == 0:
            body = np.asarray(lane_offset, np.float64)[:, None]
            mask |= ahead & (np.abs(obj[..., 1] - body) < reach)
        k = np.argmin(np.where(mask, obj[..., 0], np.inf), axis=1)
        hit = mask.any(axis=1)
        out[:, r, 0] = np.where(hit, np.minimum(obj[rows, k, 0], MAX_GAP), MAX_GAP)
        out[:, r, 1] = np.where(hit, obj[rows, k, 4], 0.0)
        out[:, r, 2] = np.min(np.where(mask, safe, SAFE_SPEED_CAP), axis=1)
    return out


def features(scene: Scene, memory: np.ndarray | None = None) -> np.ndarray:
    """(FEATURE_DIM,) float32 observation of `scene`, named by FEATURE_NAMES; `memory`:
    the unscaled MEMORY_FEATURES of this decision (`NeighbourMemory.update`; None:
    `NEUTRAL_MEMORY`)."""
    ego = [scene.speed, scene.speed_limit, scene.lane_offset, scene.heading_error,
           float(scene.lane_seen), float(scene.left_lane), float(scene.right_lane)]
    objects = np.zeros((N_OBJECTS, len(OBJECT_FEATURES)))
    obj = scene.objects[:N_OBJECTS]
    k = len(obj)
    objects[:k, 0] = 1.0
    objects[:k, 1:5] = obj[:, [0, 1, 2, 4]]
    groups = np.array([GROUPS.get(int(c), 0) for c in obj[:, 3]], np.int64)
    objects[np.arange(k), 5 + groups] = 1.0
    gaps = lane_gaps(scene)
    target = scene.speed if scene.target_speed is None else scene.target_speed
    control = control_features(np.float64(scene.speed), np.float64(target), gaps[1, 0],
                               gaps[1, 1], np.float64(scene.lane_change))
    paths = path_features(scene.objects[None], np.ones((1, len(scene.objects)), bool),
                          np.array([scene.lane_width]), np.array([scene.lane_offset]),
                          np.array([scene.speed]))
    mem = NEUTRAL_MEMORY if memory is None else np.asarray(memory, np.float64)
    vec = np.concatenate([ego, gaps.reshape(-1), objects.reshape(-1), control,
                          paths.reshape(-1), mem]) / _SCALES
    return np.clip(vec, -CLIP, CLIP).astype(np.float32)
