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
from typing import cast

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
    to_world,
)
from sim.types import CAR, DASHED, DOUBLE, TRUCK, CameraSpec
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
    prims: list[np.ndarray] = []
    bounds: list[np.ndarray] = []
    roles: list[np.ndarray] = []
    start: list[int] = []
    count: list[int] = []
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
    poses: tuple[np.ndarray, np.ndarray, np.ndarray]
    """World x, y, yaw of every actor row, as drawn."""


class Renderer:
    """Draws a `World` from the ego camera. Make one per camera; `render` is stateless
    apart from per-episode condition layers cached by scenario."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.camera = Camera(spec)
        self._cond_key: object = None
        self.conditions: Conditions | None = None
        self._clutter_pose: tuple[np.ndarray, ...] | None = None
        above = (np.arange(spec.height)[:, None] + 0.5) < spec.horizon_y  # as the image
        self._ids_background = np.where(above, ID_SKY, ID_GRASS).astype(np.int32).repeat(
            spec.width, axis=1)

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
        ids = self._ids_background.copy()
        self._draw_road(world, img, ids, cond)
        cond.ground_pass(img)
        out = RenderOutput(img, ids, {}, {}, world.actor_poses())
        self._draw_shadows(world, img, cond, out.poses)
        self._draw_objects(world, out, cond)
        cond.sensor_pass(img, world.state.step)
        return out

    # -- ground ---------------------------------------------------------------------
    def _project_polys(self, pc: np.ndarray) -> list[np.ndarray]:
        """Camera-frame polygons (Q, K, 3) -> fixed-point pixel polygons, near-clipped."""
        near = self.spec.near
        z_ok = pc[..., 2] >= near
        front = z_ok.all(axis=1)
        polys = list(np.round(self.camera.project(pc[front]) * SCALE).astype(np.int32))
        for q in np.flatnonzero(~front & z_ok.any(axis=1)):
            c = clip_near(pc[q], near)
            if len(c) >= 3:
                polys.append(np.round(self.camera.project(c) * SCALE).astype(np.int32))
        return polys

    def _strip_poly(self, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        """Polygon between two camera-frame polylines (S, 3) running away from the camera."""
        near = self.spec.near
        ca, cb = _clip_start(a, near), _clip_start(b, near)
        if ca is None or cb is None or (len(ca) == len(a)) != (len(cb) == len(b)):
            # the road bends behind the camera, or only one edge starts behind it (the ego
            # is turned across the road): clip the closed polygon in general
            return self._project_polys(np.concatenate([a, b[::-1]])[None])
        poly = np.concatenate([ca, cb[::-1]])
        if len(poly) < 3:
            return []
        return [np.round(self.camera.project(poly) * SCALE).astype(np.int32)]

    def _lines(self, world: World, s: np.ndarray, d: np.ndarray, z: float = 0.0) -> np.ndarray:
        """Camera-frame points (K, S, 3) of the lines at offsets d, sampled at s."""
        x, y, _ = world.road.to_world(s[None, :], d[:, None])
        pts = np.stack([x, y, np.full(x.shape, z)], axis=-1)
        return self.camera.to_camera(pts)

    def _fill(self, polys: list[np.ndarray], img: np.ndarray, ids: np.ndarray,
              color: tuple[int, int, int], id_value: int) -> None:
        if polys:
            cv2.fillPoly(img, polys, color, cv2.LINE_8, SHIFT)
            cv2.fillPoly(ids, polys, id_value, cv2.LINE_8, SHIFT)

    def _draw_road(self, world: World, img: np.ndarray, ids: np.ndarray, cond: Conditions) -> None:
        road, ego, pal = world.road, world.state.ego, cond.palette
        offsets = _ROAD_OFFSETS[_ROAD_OFFSETS < self.spec.far]
        heading_error = np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s)))))
        if abs(heading_error) > np.radians(40.0):  # turned across the road: draw behind too
            offsets = np.concatenate([-offsets[::-1][:-1], offsets[offsets > 8.0]])
        s = np.clip(ego.s + offsets, road.s[0], road.s_max)
        pw, hw = road.paved_half_width, road.half_width
        edges = self._lines(world, s, np.array([-pw, pw, -hw, hw]))
        self._fill(self._strip_poly(edges[0], edges[1]), img, ids, pal.shoulder, ID_SHOULDER)
        self._fill(self._strip_poly(edges[2], edges[3]), img, ids, pal.road, ID_ROAD)
        polys = self._marking_polys(world, s)
        for j, kind in enumerate(road.markings):
            color = pal.yellow if kind == DOUBLE else pal.marking
            self._fill(polys[j], img, ids, color, ID_MARKING - j)
        for side in world.clutter.rail_sides:
            d_rail = np.array([side * (pw + 0.6)])
            rs = s[s < ego.s + 120.0]
            lo, hi = self._lines(world, rs, d_rail, 0.35)[0], self._lines(world, rs, d_rail, 0.8)[0]
            self._fill(self._strip_poly(lo, hi), img, ids, (150, 152, 150), ID_RAIL)

    def _marking_polys(self, world: World, s: np.ndarray) -> list[list[np.ndarray]]:
        """Pixel polygons of every boundary's paint: strips for solid and double lines
        (one world-to-camera pass for all of them), quads for the dashes of dashed ones."""
        road, ego = world.road, world.state.ego
        polys: list[list[np.ndarray]] = [[] for _ in road.markings]
        offs: list[np.ndarray] = []
        owner: list[int] = []
        dashed: list[int] = []
        for j, kind in enumerate(road.markings):
            d = float(road.boundary_d(j))
            if kind == DASHED:
                dashed.append(j)
                continue
            if kind == DOUBLE:
                k = np.array([-0.19, -0.07, 0.05, 0.17]) * np.sign(d or 1.0) + d
            else:
                k = np.array([d - MARK_WIDTH / 2, d + MARK_WIDTH / 2])
            offs.append(k)
            owner += [j] * (len(k) // 2)
        if offs:
            near_s = np.append(s[s < ego.s + MARKING_RANGE], ego.s + MARKING_RANGE)
            lines = self._lines(world, near_s, np.concatenate(offs))
            for k, j in enumerate(owner):
                polys[j] += self._strip_poly(lines[2 * k], lines[2 * k + 1])
        if dashed:
            quads_all = self._dash_quads(world, dashed, float(s[0]))
            for j, quads in zip(dashed, quads_all, strict=True):
                polys[j] = self._project_polys(quads)
        return polys

    def _dash_quads(self, world: World, boundaries: list[int], s_from: float) -> np.ndarray:
        """Camera-frame quads (len(boundaries), D, 4, 3) of the dashes ahead."""
        road, ego = world.road, world.state.ego
        back = MARKING_RANGE if s_from < ego.s - 10.0 else 8.0  # turned across: both ways
        first = np.floor((ego.s - back) / road.dash_period) * road.dash_period
        n = int((MARKING_RANGE + back) / road.dash_period) + 1
        starts = first + road.dash_period * np.arange(n)
        starts = starts[(starts < ego.s + MARKING_RANGE) & (starts + road.dash_length < road.s_max)
                        & (starts >= road.s[0])]
        ss = np.stack([starts, starts + road.dash_length, starts + road.dash_length, starts], 1)
        d = road.boundary_d(np.array(boundaries))[:, None, None]
        dd = d + np.array([-1.0, -1.0, 1.0, 1.0]) * MARK_WIDTH / 2
        x, y, _ = road.to_world(np.broadcast_to(ss, dd.shape[:1] + ss.shape), dd)
        return self.camera.to_camera(np.stack([x, y, np.zeros_like(x)], axis=-1))

    def _draw_shadows(self, world: World, img: np.ndarray, cond: Conditions,
                      poses: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        if cond.time_of_day == "night":
            return
        a = world.state.actors
        rel = a.s - world.state.ego.s
        idx = np.flatnonzero(a.active & (rel > -5.0) & (rel < 90.0))
        if idx.size == 0:
            return
        x, y, yaw = poses
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
    def _visible_objects(self, world: World, poses: tuple[np.ndarray, np.ndarray, np.ndarray]
                         ) -> tuple[np.ndarray, ...]:
        """Objects in view: (shape id, x, y, yaw, size (N,3), color (N,3), id value, row)."""
        a, ego, cam = world.state.actors, world.state.ego, self.camera
        ax, ay, ayaw = poses
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

    def _object_faces(self, shape: np.ndarray, x: np.ndarray, y: np.ndarray, yaw: np.ndarray,
                      size: np.ndarray, color: np.ndarray, depth: np.ndarray,
                      cond: Conditions) -> tuple[np.ndarray, ...]:
        """Vectorized geometry of every part: owner, camera vertices, visible faces, colours."""
        obj = np.repeat(np.arange(shape.size), SHAPE_COUNT[shape])
        part = (np.arange(obj.size) - np.repeat(np.cumsum(SHAPE_COUNT[shape]) - SHAPE_COUNT[shape],
                                                SHAPE_COUNT[shape]) + SHAPE_START[shape][obj])
        local = part_vertices(PART_BOUNDS[part], PART_PRIM[part], size[obj])
        wv = to_world(local, x[obj], y[obj], yaw[obj])  # (P, 8, 3)
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
        body = roles == BODY
        base[body] = np.broadcast_to(color[obj][:, None], base.shape)[body]
        dist = np.repeat(np.maximum(depth[obj], 0.1), 5)
        cols = cond.object_color(base.reshape(-1, 3), shade.reshape(-1), dist)
        cols = np.round(cols).astype(np.int32).reshape(-1, 5, 3)
        return obj, pc, visible, cols

    def _draw_objects(self, world: World, out: RenderOutput, cond: Conditions) -> None:
        shape, x, y, yaw, size, color, idv, depth = self._visible_objects(world, out.poses)
        if shape.size == 0:
            return
        obj, pc, visible, cols = self._object_faces(shape, x, y, yaw, size, color, depth, cond)
        near = self.spec.near
        z = pc[..., 2]
        order = np.lexsort((-z.mean(axis=1), obj)).tolist()  # objects already far-to-near
        in_front = cast(list[bool], (z >= near).all(axis=1).tolist())
        behind = cast(list[bool], (z < near).all(axis=1).tolist())
        uv = np.round(self.camera.project(np.where(z[..., None] > 1e-3, pc, 1e-3)) * SCALE)
        face_uv = uv.astype(np.int32)[:, FACES]  # (P, 5, 4, 2)
        vis: list[list[bool]] = visible.tolist()
        col_list: list[list[list[int]]] = cols.tolist()
        idv_list, obj_list = idv.tolist(), obj.tolist()
        img, ids = out.image, out.ids
        for p in order:
            faces = [f for f in range(5) if vis[p][f]]
            if not faces or behind[p]:
                continue
            if in_front[p]:
                polys = list(face_uv[p, faces])
            else:
                polys = [self._clipped(pc[p, FACES[f]]) for f in faces]
                faces = [f for f, q in zip(faces, polys, strict=True) if len(q) >= 3]
                polys = [q for q in polys if len(q) >= 3]
                if not polys:
                    continue
            for f, poly in zip(faces, polys, strict=True):
                cv2.fillConvexPoly(img, poly, col_list[p][f], cv2.LINE_8, SHIFT)
            o = obj_list[p]
            cv2.fillPoly(ids, polys, idv_list[o], cv2.LINE_8, SHIFT)
            if idv_list[o] > 0:
                out.silhouettes.setdefault(idv_list[o] - 1, []).append(polys)
                out.depth[idv_list[o] - 1] = float(depth[o])
        if cond.time_of_day != "day":
            self._draw_taillights(world, out, x, y, yaw, size, idv)

    def _clipped(self, face_cam: np.ndarray) -> np.ndarray:
        pc = clip_near(face_cam, self.spec.near)
        if len(pc) < 3:
            return np.zeros((0, 2), np.int32)
        return np.round(self.camera.project(pc) * SCALE).astype(np.int32)

    def _draw_taillights(self, world: World, out: RenderOutput, x: np.ndarray, y: np.ndarray,
                         yaw: np.ndarray, size: np.ndarray, idv: np.ndarray) -> None:
        """Red lamps on the rear of cars and trucks seen from behind (dusk and night).
        They belong to their vehicle: the id buffer keeps the vehicle's id there."""
        cls = world.state.actors.cls
        veh = np.flatnonzero((idv > 0) & np.isin(cls[np.maximum(idv - 1, 0)], (CAR, TRUCK)))
        if veh.size == 0:
            return
        c, s = np.cos(yaw[veh]), np.sin(yaw[veh])
        rx = x[veh] - (0.5 * size[veh, 0] + 0.02) * c
        ry = y[veh] - (0.5 * size[veh, 0] + 0.02) * s
        cam = self.camera
        facing = (cam.position[0] - rx) * -c + (cam.position[1] - ry) * -s > 0
        lat = np.array([0.3, 0.45, 0.45, 0.3, -0.3, -0.45, -0.45, -0.3])[None] * size[veh, 1:2]
        height = np.minimum(size[veh, 2:3], 1.6)
        lz = np.array([0.42, 0.42, 0.52, 0.52] * 2)[None] * height + 0.15
        px = rx[:, None] - lat * s[:, None]
        py = ry[:, None] + lat * c[:, None]
        pcam = cam.to_camera(np.stack([px, py, lz], axis=-1)).reshape(-1, 4, 3)
        ok = np.repeat(facing, 2) & (pcam[..., 2] > self.spec.near).all(axis=1)
        if not ok.any():
            return
        q = np.round(cam.project(pcam[ok]) * SCALE).astype(np.int32)
        h, w = out.ids.shape
        here = out.ids[np.clip(q[..., 1] >> SHIFT, 0, h - 1), np.clip(q[..., 0] >> SHIFT, 0, w - 1)]
        owner = np.repeat(idv[veh], 2)[ok]
        for quad in q[(here == owner[:, None]).all(axis=1)]:
            cv2.fillConvexPoly(out.image, quad, (255, 40, 30), cv2.LINE_8, SHIFT)


def _clip_start(line: np.ndarray, near: float) -> np.ndarray | None:
    """Cut a polyline (S, 3) that starts behind the near plane where it enters it.
    None if it leaves the plane again (a general clip is needed then)."""
    ok = line[:, 2] >= near
    if ok.all():
        return line
    if not ok.any():
        return line[:0]
    k = int(np.argmax(ok))
    if not ok[k:].all():
        return None
    a, b = line[k - 1], line[k]
    p = a + (near - a[2]) / (b[2] - a[2]) * (b - a)
    return np.concatenate([p[None], line[k:]])
