"""The camera frame and its instance-id buffer, drawn in one painter's-order pass.

Id buffer encoding (int32):
  actor row r            -> r + 1            (labelled objects)
  sky 0, grass -1, road -2, shoulder -3, guard rail -4, clutter -5
  marking of boundary j  -> -(100 + j)
Every polygon is filled into the image and the id buffer with the same call parameters,
so labels taken from the id buffer match the pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sim.render.camera import Camera, clip_near
from sim.render.conditions import SUN, Conditions
from sim.render.shapes import (
    BODY,
    FACE_IS_TOP,
    FACES,
    ROLE_COLORS,
    SHAPE_PARTS,
    part_vertices,
    shape_table,
)
from sim.types import CAR, DOUBLE, SOLID, TRUCK, CameraSpec
from sim.world.actors import SHAPE_NAMES, box_corners
from sim.world.scenario import CLUTTER_KINDS
from sim.world.world import World

ID_SKY, ID_GRASS, ID_ROAD, ID_SHOULDER, ID_RAIL, ID_CLUTTER = 0, -1, -2, -3, -4, -5
ID_MARKING = -100
SHIFT = 4
SCALE = float(1 << SHIFT)
MARK_WIDTH = 0.15
"""Painted line width [m]."""
MARKING_RANGE = 110.0
"""Lane markings are drawn (and labelled) up to this far ahead [m]."""
CLUTTER_RANGE = 140.0
"""Clutter is drawn up to this far ahead [m]."""
ALL_SHAPES: tuple[str, ...] = SHAPE_NAMES + CLUTTER_KINDS
_ROAD_OFFSETS = np.concatenate([np.arange(-8.0, 20.0, 2.0), np.arange(20.0, 60.0, 4.0),
                                np.arange(60.0, 400.0, 10.0)])


def _part_table() -> tuple[np.ndarray, ...]:
    prims, bounds, roles, start, count = [], [], [], [], []
    for name in ALL_SHAPES:
        p, b, r = shape_table(name)
        start.append(sum(len(x) for x in prims))
        count.append(len(p))
        prims.append(p)
        bounds.append(b)
        roles.append(r)
    return (np.concatenate(prims), np.concatenate(bounds), np.concatenate(roles),
            np.array(start), np.array(count))


PART_PRIM, PART_BOUNDS, PART_ROLES, SHAPE_START, SHAPE_COUNT = _part_table()
assert set(SHAPE_PARTS) >= set(ALL_SHAPES)


@dataclass
class RenderOutput:
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    ids: np.ndarray
    """(H, W) int32 id buffer."""
    silhouettes: dict[int, list[list[np.ndarray]]]
    """Actor row -> polygons (fixed point, SHIFT bits) of every visible face, for the
    unoccluded, untruncated silhouette used by the labels."""
    depth: dict[int, float]
    """Actor row -> camera z of the object's centre [m]."""


class Renderer:
    """Draws a `World` from the ego camera. Make one per camera; `render` is stateless
    apart from per-episode condition layers cached by scenario."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.camera = Camera(spec)
        self._cond_key: object = None
        self.conditions: Conditions | None = None
        self._clutter_pose: tuple[np.ndarray, ...] | None = None

    def _prepare(self, world: World) -> Conditions:
        key = (id(world.clutter), world.scenario)
        if key != self._cond_key or self.conditions is None:
            self.conditions = Conditions(self.spec, world.scenario)
            c = world.clutter
            x, y, h = world.road.to_world(c.s, c.d)
            self._clutter_pose = (x, y, h)
            self._cond_key = key
        return self.conditions

    def render(self, world: World) -> RenderOutput:
        cond = self._prepare(world)
        cam = self.camera
        cam.set_pose(world.state.ego)
        img = cond.background.copy()
        ids = np.where(np.arange(self.spec.height)[:, None] < self.spec.horizon_y,
                       ID_SKY, ID_GRASS).astype(np.int32).repeat(self.spec.width, axis=1)
        self._draw_road(world, img, ids, cond)
        cond.ground_pass(img)
        out = RenderOutput(img, ids, {}, {})
        self._draw_shadows(world, img, cond)
        self._draw_objects(world, out, cond)
        cond.sensor_pass(img, world.state.step)
        return out

    # -- ground ---------------------------------------------------------------------
    def _fill_ground(self, polys: list[np.ndarray], img: np.ndarray, ids: np.ndarray,
                     color: tuple[int, int, int], id_value: int) -> None:
        """Clip ground polygons (K, 3 world) to the near plane, project and fill."""
        pts = []
        for poly in polys:
            pc = clip_near(self.camera.to_camera(poly), self.spec.near)
            if len(pc) >= 3:
                pts.append(np.round(self.camera.project(pc) * SCALE).astype(np.int32))
        if pts:
            cv2.fillPoly(img, pts, color, cv2.LINE_8, SHIFT)
            cv2.fillPoly(ids, pts, id_value, cv2.LINE_8, SHIFT)

    def _strip(self, world: World, s: np.ndarray, d0: float, d1: float, z: float = 0.0,
               z1: float | None = None) -> np.ndarray:
        """Polygon of a band between offsets d0 and d1 (or a wall from z to z1 at d0)."""
        road = world.road
        xa, ya, _ = road.to_world(s, d0)
        if z1 is None:
            xb, yb, _ = road.to_world(s, d1)
            za = zb = np.full(s.shape, z)
        else:
            xb, yb = xa, ya
            za, zb = np.full(s.shape, z), np.full(s.shape, z1)
        a = np.stack([xa, ya, za], axis=1)
        b = np.stack([xb, yb, zb], axis=1)[::-1]
        return np.concatenate([a, b])

    def _draw_road(self, world: World, img: np.ndarray, ids: np.ndarray, cond: Conditions) -> None:
        road, ego, pal = world.road, world.state.ego, cond.palette
        s = np.clip(ego.s + _ROAD_OFFSETS[_ROAD_OFFSETS < self.spec.far], road.s[0], road.s_max)
        pw, hw = road.paved_half_width, road.half_width
        self._fill_ground([self._strip(world, s, -pw, pw)], img, ids, pal.shoulder, ID_SHOULDER)
        self._fill_ground([self._strip(world, s, -hw, hw)], img, ids, pal.road, ID_ROAD)
        near_s = np.append(s[s < ego.s + MARKING_RANGE], ego.s + MARKING_RANGE)
        for j, kind in enumerate(road.markings):
            d = float(road.boundary_d(j))
            color = pal.yellow if kind == DOUBLE else pal.marking
            if kind == DOUBLE:
                offs = [d - 0.13 * np.sign(d or 1.0), d + 0.05 * np.sign(d or 1.0)]
                polys = [self._strip(world, near_s, o - 0.06, o + 0.06) for o in offs]
            elif kind == SOLID:
                polys = [self._strip(world, near_s, d - MARK_WIDTH / 2, d + MARK_WIDTH / 2)]
            else:
                polys = self._dashes(world, d)
            self._fill_ground(polys, img, ids, color, ID_MARKING - j)
        for side in world.clutter.rail_sides:
            d_rail = side * (pw + 0.6)
            rail = self._strip(world, s[s < ego.s + 120.0], d_rail, d_rail, 0.35, 0.8)
            self._fill_ground([rail], img, ids, (150, 152, 150), ID_RAIL)

    def _dashes(self, world: World, d: float) -> list[np.ndarray]:
        road, ego = world.road, world.state.ego
        first = np.floor((ego.s - 8.0) / road.dash_period) * road.dash_period
        starts = first + road.dash_period * np.arange(int((MARKING_RANGE + 8.0) / road.dash_period) + 1)
        starts = starts[starts < ego.s + MARKING_RANGE]
        starts = starts[starts + road.dash_length < road.s_max]
        polys = []
        for s0 in starts:
            polys.append(self._strip(world, np.array([s0, s0 + road.dash_length]),
                                     d - MARK_WIDTH / 2, d + MARK_WIDTH / 2))
        return polys

    def _draw_shadows(self, world: World, img: np.ndarray, cond: Conditions) -> None:
        if cond.time_of_day == "night":
            return
        a = world.state.actors
        rel = a.s - world.state.ego.s
        idx = np.flatnonzero(a.active & (rel > -5.0) & (rel < 90.0))
        if idx.size == 0:
            return
        x, y, yaw = world.actor_poses()
        k = 0.55 if cond.time_of_day == "day" else 0.75
        color = tuple(int(c * k) for c in cond.palette.road)
        c = box_corners(x[idx] + 0.25, y[idx] + 0.2, yaw[idx], a.length[idx] * 1.05 + 0.2,
                        a.width[idx] * 1.1 + 0.2)
        world_pts = np.concatenate([c, np.full(c.shape[:2] + (1,), 0.01)], axis=-1)
        pc = self.camera.to_camera(world_pts)
        for poly in pc:
            if (poly[:, 2] > self.spec.near).all():
                p = np.round(self.camera.project(poly) * SCALE).astype(np.int32)
                cv2.fillConvexPoly(img, p, color, cv2.LINE_8, SHIFT)

    # -- objects --------------------------------------------------------------------
    def _visible_objects(self, world: World) -> tuple[np.ndarray, ...]:
        """Objects in view: (shape id, x, y, yaw, size (N,3), color (N,3), id value, row)."""
        a, ego, cam = world.state.actors, world.state.ego, self.camera
        ax, ay, ayaw = world.actor_poses()
        arows = np.flatnonzero(a.active)
        c = world.clutter
        lo, hi = np.searchsorted(c.s, [ego.s - 20.0, ego.s + CLUTTER_RANGE])
        crows = np.arange(lo, hi)
        assert self._clutter_pose is not None
        cx, cy, cyaw = (v[crows] for v in self._clutter_pose)
        shape = np.concatenate([a.shape[arows], len(SHAPE_NAMES) + c.kind[crows]])
        x = np.concatenate([ax[arows], cx])
        y = np.concatenate([ay[arows], cy])
        yaw = np.concatenate([ayaw[arows], cyaw])
        size = np.concatenate([np.stack([a.length, a.width, a.height], 1)[arows], c.size[crows]])
        color = np.concatenate([a.color[arows], c.color[crows]]).astype(np.float32)
        idv = np.concatenate([arows + 1, np.full(crows.size, ID_CLUTTER)])
        centre = np.stack([x, y, 0.5 * size[:, 2]], axis=1)
        pc = cam.to_camera(centre)
        keep = cam.in_frustum(pc, 0.5 * np.linalg.norm(size, axis=1))
        depth = pc[:, 2]
        order = np.argsort(-depth[keep], kind="stable")
        sel = np.flatnonzero(keep)[order]
        return shape[sel], x[sel], y[sel], yaw[sel], size[sel], color[sel], idv[sel], depth[sel]

    def _draw_objects(self, world: World, out: RenderOutput, cond: Conditions) -> None:
        shape, x, y, yaw, size, color, idv, depth = self._visible_objects(world)
        if shape.size == 0:
            return
        obj = np.repeat(np.arange(shape.size), SHAPE_COUNT[shape])
        part = np.concatenate([np.arange(s, s + n) for s, n in
                               zip(SHAPE_START[shape], SHAPE_COUNT[shape], strict=True)])
        local = part_vertices(PART_BOUNDS[part], PART_PRIM[part], size[obj])
        c, s = np.cos(yaw[obj])[:, None], np.sin(yaw[obj])[:, None]
        wv = np.stack([x[obj][:, None] + local[..., 0] * c - local[..., 1] * s,
                       y[obj][:, None] + local[..., 0] * s + local[..., 1] * c,
                       local[..., 2]], axis=-1)  # (P, 8, 3)
        cam = self.camera
        pc = cam.to_camera(wv)
        fv = wv[:, FACES]  # (P, 5, 4, 3)
        normal = np.cross(fv[:, :, 2] - fv[:, :, 0], fv[:, :, 3] - fv[:, :, 1])
        centre = fv.mean(axis=2)
        outward = np.einsum("pfk,pfk->pf", normal, centre - wv.mean(axis=1)[:, None])
        normal *= np.where(outward < 0, -1.0, 1.0)[..., None]
        norm = np.linalg.norm(normal, axis=-1)
        facing = np.einsum("pfk,pfk->pf", normal, cam.position - centre)
        visible = (norm > 1e-9) & (facing > 1e-9)
        n_hat = normal / np.maximum(norm, 1e-12)[..., None]
        pal = cond.palette
        shade = pal.ambient + pal.diffuse * np.clip(n_hat @ SUN, 0.0, 1.0) + 0.08 * FACE_IS_TOP
        roles = PART_ROLES[part][:, np.where(FACE_IS_TOP, 1, 0)]  # (P, 5)
        base = ROLE_COLORS[roles]
        base[roles == BODY] = np.repeat(color[obj][:, None], 5, axis=1)[roles == BODY]
        dist = np.repeat(np.maximum(depth[obj], 0.1)[:, None], 5, axis=1)
        cols = cond.object_color(base.reshape(-1, 3), shade.reshape(-1), dist.reshape(-1))
        cols = cols.reshape(-1, 5, 3)
        part_depth = pc[..., 2].mean(axis=1)
        order = np.lexsort((-part_depth, obj))  # objects already far-to-near
        in_front = (pc[..., 2] >= self.spec.near).all(axis=1)
        uv = np.round(cam.project(np.where(pc[..., 2:3] > 1e-3, pc, 1e-3)) * SCALE).astype(np.int32)
        night = cond.time_of_day != "day"
        for p in order:
            faces = np.flatnonzero(visible[p])
            if faces.size == 0 or (pc[p, :, 2] < self.spec.near).all():
                continue
            if in_front[p]:
                polys = [uv[p, FACES[f]] for f in faces]
            else:
                polys = [self._clipped(pc[p, FACES[f]]) for f in faces]
            o = obj[p]
            for f, poly in zip(faces, polys, strict=True):
                if len(poly) >= 3:
                    cv2.fillConvexPoly(out.image, poly, cols[p, f].tolist(), cv2.LINE_8, SHIFT)
            polys = [q for q in polys if len(q) >= 3]
            if not polys:
                continue
            cv2.fillPoly(out.ids, polys, int(idv[o]), cv2.LINE_8, SHIFT)
            if idv[o] > 0:
                out.silhouettes.setdefault(int(idv[o]) - 1, []).append(polys)
                out.depth[int(idv[o]) - 1] = float(depth[o])
        if night:
            self._draw_taillights(world, out, shape, x, y, yaw, size, idv)

    def _clipped(self, face_cam: np.ndarray) -> np.ndarray:
        pc = clip_near(face_cam, self.spec.near)
        if len(pc) < 3:
            return np.zeros((0, 2), np.int32)
        return np.round(self.camera.project(pc) * SCALE).astype(np.int32)

    def _draw_taillights(self, world: World, out: RenderOutput, shape: np.ndarray,
                         x: np.ndarray, y: np.ndarray, yaw: np.ndarray, size: np.ndarray,
                         idv: np.ndarray) -> None:
        """Red lamps on the rear of cars and trucks seen from behind (dusk and night).
        They belong to their vehicle: the id buffer keeps the vehicle's id there."""
        a = world.state.actors
        cam = self.camera
        for o in np.flatnonzero(idv > 0):
            row = int(idv[o]) - 1
            if a.cls[row] not in (CAR, TRUCK):
                continue
            c, s = np.cos(yaw[o]), np.sin(yaw[o])
            rear = np.array([x[o] - 0.5 * size[o, 0] * c, y[o] - 0.5 * size[o, 0] * s])
            if np.dot(cam.position[:2] - rear, [-c, -s]) <= 0:
                continue  # rear not facing the camera
            for side in (-1.0, 1.0):
                ly = side * np.array([0.3, 0.45, 0.45, 0.3]) * size[o, 1]
                lz = np.array([0.42, 0.42, 0.52, 0.52]) * min(size[o, 2], 1.6) + 0.15
                px = rear[0] - 0.02 * c - ly * s
                py = rear[1] - 0.02 * s + ly * c
                pcam = cam.to_camera(np.stack([px, py, lz], axis=1))
                if (pcam[:, 2] < self.spec.near).any():
                    continue
                q = np.round(cam.project(pcam) * SCALE).astype(np.int32)
                visible_here = out.ids[np.clip(q[:, 1] >> SHIFT, 0, self.spec.height - 1),
                                       np.clip(q[:, 0] >> SHIFT, 0, self.spec.width - 1)]
                if (visible_here == idv[o]).all():
                    cv2.fillConvexPoly(out.image, q, (255, 40, 30), cv2.LINE_8, SHIFT)
