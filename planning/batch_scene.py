"""The planner's scenes, emulated perception and feature vectors for a whole batch of
worlds at once: the array versions of `planning.scene.scene_from_world`,
`planning.noise.corrupt`, `planning.scene.with_gap_rates` and `planning.features.features`,
for training on `sim.world.batch.BatchWorld` (`planning.batch_vec.BatchPlannerVecEnv`).

A `BatchScene` holds B scenes as arrays: the ego fields as (B,) arrays and the objects as
(B, M, 5) rows sorted by gap within each scene, of which the first `count[b]` are real.
Each function gives, for world b, exactly what its one-scene counterpart gives
(tests/planning/test_batch_scene.py checks every one of them value for value), except that
`batch_corrupt` draws its noise from one generator for the whole batch: the same
distributions, other draws.

    scenes = batch_scene_from_world(batch_world, camera)             # privileged
    noisy = batch_corrupt(scenes, noise, rng, front)                   # emulated perception
    noisy = batch_gap_rates(previous, noisy, dt)                       # tracked gap rates
    obs = batch_features(noisy)                                        # (B, FEATURE_DIM)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perception.lanes import NOMINAL_LANE_WIDTH
from planning.features import (
    _SCALES,
    CLIP,
    CONTROL_FEATURE_DIM,
    FEATURE_DIM,
    GROUPS,
    LANES,
    MAX_GAP,
    N_OBJECTS,
    OBJECT_FEATURES,
    control_features,
    path_features,
)
from planning.memory import NEUTRAL_MEMORY
from planning.noise import FALSE_ALARM_SPREAD, PerceptionNoise, _bucket
from planning.scene import MAX_RANGE, Scene
from sim.types import CameraSpec

_GROUP_OF = np.zeros(max(GROUPS) + 1, np.int64)
for _cls, _group in GROUPS.items():
    _GROUP_OF[_cls] = _group


@dataclass
class BatchScene:
    """B scenes as arrays (the fields of `planning.scene.Scene`)."""

    speed: np.ndarray
    speed_limit: np.ndarray
    lane_offset: np.ndarray
    heading_error: np.ndarray
    lane_seen: np.ndarray
    """(B,) bool"""
    left_lane: np.ndarray
    right_lane: np.ndarray
    lane_width: np.ndarray
    objects: np.ndarray
    """(B, M, 5) float32 rows (gap, left, relative lane, class id, gap rate), sorted by
    gap; rows past `count[b]` are padding (zeros)."""
    count: np.ndarray
    """(B,) int64 real rows of each scene."""
    tracked: np.ndarray | None = None
    """(B, M) bool: the gap rate was measured; None: all measured (privileged)."""
    target_speed: np.ndarray | None = None
    """(B,) the meta controller's target speed [m/s]; None: not known (`speed` is taken)."""
    lane_change: np.ndarray | None = None
    """(B,) int: the lane change under way (+1 left, -1 right, 0); None: none."""

    def __len__(self) -> int:
        return len(self.speed)

    @property
    def valid(self) -> np.ndarray:
        """(B, M) bool: the real rows."""
        return np.arange(self.objects.shape[1])[None, :] < self.count[:, None]

    def scene(self, b: int) -> Scene:
        """Scene b as a `planning.scene.Scene`."""
        k = int(self.count[b])
        return Scene(speed=float(self.speed[b]), speed_limit=float(self.speed_limit[b]),
                     lane_offset=float(self.lane_offset[b]),
                     heading_error=float(self.heading_error[b]),
                     lane_seen=bool(self.lane_seen[b]), left_lane=bool(self.left_lane[b]),
                     right_lane=bool(self.right_lane[b]),
                     lane_width=float(self.lane_width[b]),
                     objects=self.objects[b, :k].copy(),
                     tracked=None if self.tracked is None else self.tracked[b, :k].copy(),
                     target_speed=(None if self.target_speed is None
                                   else float(self.target_speed[b])),
                     lane_change=0 if self.lane_change is None else int(self.lane_change[b]))

    def take(self, rows: np.ndarray | Sequence[int]) -> BatchScene:
        """The scenes of `rows`, as a new batch."""
        r = np.asarray(rows, np.int64)
        return BatchScene(self.speed[r], self.speed_limit[r], self.lane_offset[r],
                          self.heading_error[r], self.lane_seen[r], self.left_lane[r],
                          self.right_lane[r], self.lane_width[r], self.objects[r],
                          self.count[r], None if self.tracked is None else self.tracked[r],
                          None if self.target_speed is None else self.target_speed[r],
                          None if self.lane_change is None else self.lane_change[r])

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> BatchScene:
        """Stack one-scene `Scene`s (objects padded to the longest)."""
        m = max([len(s.objects) for s in scenes] + [0])
        objects = np.zeros((len(scenes), m, 5), np.float32)
        tracked = np.ones((len(scenes), m), bool)
        any_tracked = any(s.tracked is not None for s in scenes)
        for b, s in enumerate(scenes):
            objects[b, :len(s.objects)] = s.objects
            if s.tracked is not None:
                tracked[b, :len(s.objects)] = s.tracked

        def col(name: str, dtype: type) -> np.ndarray:
            return np.array([getattr(s, name) for s in scenes], dtype)

        known = all(s.target_speed is not None for s in scenes)
        return cls(col("speed", np.float64), col("speed_limit", np.float64),
                   col("lane_offset", np.float64), col("heading_error", np.float64),
                   col("lane_seen", bool), col("left_lane", bool), col("right_lane", bool),
                   col("lane_width", np.float64), objects,
                   np.array([len(s.objects) for s in scenes], np.int64),
                   tracked if any_tracked else None,
                   np.array([s.target_speed if s.target_speed is not None else s.speed
                             for s in scenes], np.float64) if known else None,
                   col("lane_change", np.int64))


def _compact(rows: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B, K, 5) with `keep` (B, K) moved to the front of each scene, sorted by gap
    (stable: equal gaps keep their order), the rest zeroed; and the counts."""
    key = np.where(keep, rows[..., 0], np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    count = keep.sum(axis=1).astype(np.int64)
    m = int(count.max()) if len(count) else 0
    order = order[:, :m]
    out = np.take_along_axis(rows, order[..., None], axis=1)
    out[np.arange(m)[None, :] >= count[:, None]] = 0.0
    return out, count


def lane_of(left: np.ndarray, lane_width: np.ndarray) -> np.ndarray:
    """`planning.scene.lane_of` with one lane width per scene: (B, K) lateral positions and
    (B,) widths."""
    return np.round(np.asarray(left, np.float64) / np.maximum(lane_width, 1.0)[:, None])


def batch_scene_from_world(batch: object, camera: CameraSpec,
                           speed_limit: np.ndarray | None = None) -> BatchScene:
    """`scene_from_world` of every world of a `BatchWorld` (exact lanes and objects,
    limited to the camera's view). `speed_limit`: (B,) [m/s], default read from each
    world's scenario."""
    from sim.world.batch import BatchWorld

    assert isinstance(batch, BatchWorld)
    roads, ego, a = batch.roads, batch.ego, batch.actors
    n = len(batch)
    if speed_limit is None:
        speed_limit = np.array([w.scenario.speed_limit for w in batch.worlds], np.float64)
    lane = roads.lane_of(ego.d[:, None])[:, 0]
    centre = roads.lane_center(lane[:, None])[:, 0]
    road_heading = roads.to_world(ego.s[:, None], np.zeros((n, 1)))[2][:, 0]
    herr = np.angle(np.exp(1j * (ego.yaw - road_heading)))
    ds = a.s - ego.s[:, None]
    left = a.d - centre[:, None]
    cam_fwd = ds - (camera.mount_forward - ego.wheelbase[:, None] / 2)
    cam_left = a.d - ego.d[:, None] - np.tan(herr)[:, None] * cam_fwd
    half = np.radians(camera.fov_deg) / 2
    reach = np.abs(cam_left) - a.width / 2
    seen = a.active & (cam_fwd > 1.0) & (ds <= MAX_RANGE) & (reach < np.tan(half) * cam_fwd)
    gap = ds - a.length / 2 - ego.length[:, None] / 2
    width = roads.lane_width[:, 0]
    rows = np.stack([gap, left, lane_of(left, width), a.cls.astype(np.float64),
                     a.speed - ego.speed[:, None]], axis=-1).astype(np.float32)
    # sort by the float64 gap, as scene_from_world does
    key = np.where(seen, gap, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    count = seen.sum(axis=1).astype(np.int64)
    m = int(count.max()) if n else 0
    objects = np.take_along_axis(rows, order[:, :m, None], axis=1)
    objects[np.arange(m)[None, :] >= count[:, None]] = 0.0
    n_lanes = roads.n_lanes[:, 0]
    return BatchScene(speed=ego.speed.astype(np.float64).copy(),
                      speed_limit=np.asarray(speed_limit, np.float64),
                      lane_offset=ego.d - centre, heading_error=herr,
                      lane_seen=np.ones(n, bool), left_lane=lane < n_lanes - 1,
                      right_lane=lane > 0, lane_width=width.astype(np.float64),
                      objects=objects, count=count)


def batch_corrupt(scene: BatchScene, noise: PerceptionNoise, rng: np.random.Generator,
                  front: np.ndarray) -> BatchScene:
    """`planning.noise.corrupt` of every scene (lane flags flipped, offset and heading
    noise or the lane lost, objects missed by distance, distance and lateral errors, false
    alarms, relative lanes recomputed, gap rates zeroed), with draws from one generator for
    the whole batch. `front`: (B,) camera-to-front-bumper distances [m]."""
    n = len(scene)
    u = rng.random((n, 3))
    err = rng.normal(0.0, 1.0, (n, 2))
    seen = scene.lane_seen & (u[:, 0] >= noise.lane_miss_rate)
    left_lane = np.where(scene.left_lane, u[:, 1] >= noise.side_lane_miss_rate,
                         u[:, 1] < noise.side_lane_false_rate)
    right_lane = np.where(scene.right_lane, u[:, 2] >= noise.side_lane_miss_rate,
                          u[:, 2] < noise.side_lane_false_rate)
    offset = np.where(seen, scene.lane_offset + err[:, 0] * noise.offset_std, 0.0)
    heading = np.where(seen, scene.heading_error + err[:, 1] * noise.heading_std, 0.0)
    width = np.where(seen, scene.lane_width, NOMINAL_LANE_WIDTH)
    # the objects
    o = scene.objects.astype(np.float64)
    m = o.shape[1]
    valid = scene.valid
    uo, eps, lat = rng.random((n, m)), rng.normal(0.0, 1.0, (n, m)), rng.normal(0.0, 1.0, (n, m))
    fr = np.asarray(front, np.float64)[:, None]
    fwd = o[..., 0] + fr
    dist = np.hypot(fwd, o[..., 1] - scene.lane_offset[:, None])
    keep = valid & (uo >= np.asarray(noise.miss_rate)[_bucket(dist)])
    out = o.copy()
    out[..., 0] = fwd * (1.0 + noise.distance_rel_bias + eps * noise.distance_rel_std) - fr
    out[..., 1] = np.where(seen[:, None], o[..., 1] + (offset - scene.lane_offset)[:, None],
                           o[..., 1] - scene.lane_offset[:, None]
                           - np.tan(scene.heading_error)[:, None] * fwd)
    out[..., 1] += lat * noise.lateral_std
    out[..., 4] = 0.0
    # false alarms: a Poisson count per scene, uniform in range and across the lanes
    k = rng.poisson(noise.false_alarm_rate, n)
    kmax = int(k.max()) if n else 0
    lo, hi = noise.false_alarm_range
    fa_dist = rng.uniform(lo, hi, (n, kmax))
    fa_left = rng.uniform(-1.0, 1.0, (n, kmax)) * (FALSE_ALARM_SPREAD * width)[:, None]
    shares = np.asarray(noise.false_alarm_classes, np.float64)
    fa_cls = rng.choice(len(shares), size=(n, kmax), p=shares / shares.sum())
    fa = np.stack([fa_dist - fr, fa_left, np.zeros((n, kmax)), fa_cls.astype(np.float64),
                   np.zeros((n, kmax))], axis=-1)
    rows = np.concatenate([out, fa], axis=1)
    keep = np.concatenate([keep, np.arange(kmax)[None, :] < k[:, None]], axis=1)
    keep &= rows[..., 0] + fr <= MAX_RANGE
    rows[..., 2] = lane_of(rows[..., 1], width)
    objects, count = _compact(rows, keep)
    return BatchScene(speed=scene.speed, speed_limit=scene.speed_limit, lane_offset=offset,
                      heading_error=heading, lane_seen=seen, left_lane=left_lane,
                      right_lane=right_lane, lane_width=width,
                      objects=objects.astype(np.float32), count=count,
                      target_speed=scene.target_speed, lane_change=scene.lane_change)


def batch_gap_rates(prev: BatchScene | None, cur: BatchScene, dt: np.ndarray,
                    smoothing: float = 0.5) -> BatchScene:
    """`planning.scene.with_gap_rates` of every scene: `prev` (or None) the scenes `dt`
    (B,) seconds before; a scene with dt <= 0 has no previous one (a new episode)."""
    objs = cur.objects.copy()
    n, m = objs.shape[:2]
    valid = cur.valid
    tracked = np.zeros((n, m), bool)
    objs[..., 4] = np.where(valid, -cur.speed[:, None], 0.0)
    dt = np.asarray(dt, np.float64)
    if prev is None or prev.objects.shape[1] == 0 or m == 0:
        return _with_rates(cur, objs, tracked)
    p = prev.objects
    p_valid = prev.valid & (dt > 0)[:, None]
    p_tracked = prev.tracked if prev.tracked is not None else np.ones(p.shape[:2], bool)
    used = np.zeros(p.shape[:2], bool)
    rows = np.arange(n)
    limit = 3.0 + 40.0 * dt
    dt32 = dt.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(m):  # object by object, in gap order, as the one-scene loop
            o = objs[:, i]
            cand = p_valid & ~used & (p[..., 2] == o[:, None, 2]) & (p[..., 3] == o[:, None, 3])
            diff = np.where(cand, np.abs(p[..., 0] - o[:, None, 0]), np.inf)
            j = np.argmin(diff, axis=1)
            ok = valid[:, i] & (diff[rows, j] < limit)
            if not ok.any():
                continue
            used[rows[ok], j[ok]] = True
            raw = (o[:, 0] - p[rows, j, 0]) / dt32
            keep = np.where(p_tracked[rows, j], np.float32(smoothing), np.float32(0.0))
            rate = keep * p[rows, j, 4] + (np.float32(1.0) - keep) * raw
            objs[ok, i, 4] = rate[ok]
            tracked[ok, i] = True
    return _with_rates(cur, objs, tracked)


def _with_rates(cur: BatchScene, objs: np.ndarray, tracked: np.ndarray) -> BatchScene:
    return BatchScene(cur.speed, cur.speed_limit, cur.lane_offset, cur.heading_error,
                      cur.lane_seen, cur.left_lane, cur.right_lane, cur.lane_width, objs,
                      cur.count, tracked, cur.target_speed, cur.lane_change)


def batch_features(scene: BatchScene, memory: np.ndarray | None = None,
                   dim: int = FEATURE_DIM) -> np.ndarray:
    """(B, dim) float32: the first `dim` of `planning.features.features` of every scene
    (a feature set of `FEATURE_SETS`; the path features are only computed when asked
    for); `memory`: (B, len(MEMORY_FEATURES)) unscaled (`NeighbourMemory.update`; None:
    neutral)."""
    n = len(scene)
    obj = scene.objects
    valid = scene.valid
    ego = np.stack([scene.speed, scene.speed_limit, scene.lane_offset, scene.heading_error,
                    scene.lane_seen, scene.left_lane, scene.right_lane], axis=1
                   ).astype(np.float64)
    gaps = np.empty((n, len(LANES), 2))
    rows = np.arange(n)
    for r, rel in enumerate((1, 0, -1)):
        hit = valid & (obj[..., 2] == rel) & (obj[..., 0] > -2.0)
        key = np.where(hit, obj[..., 0], np.inf)
        k = np.argmin(key, axis=1) if obj.shape[1] else np.zeros(n, np.int64)
        any_hit = hit.any(axis=1)
        g = obj[rows, k, 0] if obj.shape[1] else np.zeros(n)
        rate = obj[rows, k, 4] if obj.shape[1] else np.zeros(n)
        gaps[:, r, 0] = np.where(any_hit, np.minimum(g.astype(np.float64), MAX_GAP), MAX_GAP)
        gaps[:, r, 1] = np.where(any_hit, rate.astype(np.float64), 0.0)
    objects = np.zeros((n, N_OBJECTS, len(OBJECT_FEATURES)))
    k = min(N_OBJECTS, obj.shape[1])
    present = valid[:, :k]
    first = obj[:, :k].astype(np.float64)
    objects[:, :k, 0] = present
    objects[:, :k, 1:5] = np.where(present[..., None], first[..., [0, 1, 2, 4]], 0.0)
    group = _GROUP_OF[np.clip(first[..., 3].astype(np.int64), 0, len(_GROUP_OF) - 1)]
    for g in range(3):
        objects[:, :k, 5 + g] = present & (group == g)
    target = scene.speed if scene.target_speed is None else scene.target_speed
    change = np.zeros(n) if scene.lane_change is None else scene.lane_change
    control = control_features(scene.speed.astype(np.float64),
                               np.asarray(target, np.float64), gaps[:, 1, 0], gaps[:, 1, 1],
                               np.asarray(change, np.float64))
    paths = (path_features(obj, valid, scene.lane_width, scene.lane_offset, scene.speed)
             if dim > CONTROL_FEATURE_DIM else np.zeros((n, 3, 3)))
    mem = (np.broadcast_to(NEUTRAL_MEMORY, (n, len(NEUTRAL_MEMORY))) if memory is None
           else np.asarray(memory, np.float64))
    vec = np.concatenate([ego, gaps.reshape(n, -1), objects.reshape(n, -1), control,
                          paths.reshape(n, -1), mem], axis=1) / _SCALES
    out = np.clip(vec[:, :dim], -CLIP, CLIP).astype(np.float32)
    assert out.shape == (n, dim)
    return out


__all__ = ["BatchScene", "batch_corrupt", "batch_features",
           "batch_gap_rates", "batch_scene_from_world", "lane_of"]
