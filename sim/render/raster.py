"""The camera frame and its instance-id buffer, drawn in one painter's-order pass.

Id buffer encoding (int16: half the memory traffic of int32, room for 32,767 actor rows):
  actor row r            -> r + 1            (labelled objects)
  sky 0, grass -1, road -2, shoulder -3, guard rail -4, clutter -5
  marking of boundary j  -> -(100 + j)
The geometry and the fills run in compiled kernels (`sim.render.kernels`): the ground in
one call, shadows and objects in another, which also counts every actor's unoccluded
silhouette with the same rasterizer, so labels taken from the id buffer match the pixels
exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from sim.render.camera import Camera
from sim.render.conditions import FOG_COLOR, FOG_VISIBILITY, SUN, Conditions
from sim.render.kernels import (
    CLUTTER_RANGE,
    ID_CLUTTER,
    ID_MARKING,
    ID_RAIL,
    ID_ROAD,
    ID_SHOULDER,
    MARK_WIDTH,
    MARKING_RANGE,
    draw_ground,
    draw_objects,
    draw_taillights,
)
from sim.render.rowfill import DisplayList
from sim.render.shapes import (
    BODY,
    FACE_IS_TOP,
    FACES,
    PYRAMID,
    ROLE_COLORS,
    SHAPE_PARTS,
    shape_table,
)
from sim.types import CameraSpec
from sim.world.actors import SHAPE_NAMES
from sim.world.scenario import CLUTTER_KINDS
from sim.world.world import World

ID_SKY, ID_GRASS = 0, -1
_T = TypeVar("_T")
ALL_SHAPES: tuple[str, ...] = SHAPE_NAMES + CLUTTER_KINDS
_ROAD_OFFSETS = np.concatenate([np.arange(-8.0, 20.0, 2.0), np.arange(20.0, 60.0, 4.0),
                                np.arange(60.0, 400.0, 10.0)])
_RAIL_COLOR = (150, 152, 150)


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
    return (np.concatenate(prims), np.ascontiguousarray(np.concatenate(bounds)),
            np.concatenate(roles), np.array(start), np.array(count))


PART_PRIM, PART_BOUNDS, PART_ROLES, SHAPE_START, SHAPE_COUNT = _part_table()
assert set(SHAPE_PARTS) >= set(ALL_SHAPES)
_TABLES = (PART_PRIM, PART_BOUNDS, PART_ROLES, SHAPE_START, SHAPE_COUNT,
           ROLE_COLORS.astype(np.float64), FACES, FACE_IS_TOP, SUN, PYRAMID, BODY)
TABLES, ROAD_OFFSETS = _TABLES, _ROAD_OFFSETS
"""The shape tables and road sampling `draw_objects` / `draw_ground` take (for
`sim.render.device`, which calls the kernels for a batch)."""


@dataclass
class RenderOutput:
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    ids: np.ndarray
    """(H, W) int16 id buffer."""
    silhouette_px: np.ndarray
    """(N,) pixels of each actor row's unoccluded silhouette, inside the image or out
    (up to two image sizes around it); 0 for actors not drawn; -1 where the silhouette is
    exactly the actor's pixels in `ids` (inside the image, nothing nearer overlaps it)."""
    silhouette_in_image: np.ndarray
    """(N,) of those, the pixels inside the image."""
    actor_boxes: np.ndarray
    """(N, 4) per actor row (x0, y0, x1, y1): none of its pixels lies outside
    [x0, x1) x [y0, y1) (empty for actors not drawn)."""
    poses: tuple[np.ndarray, np.ndarray, np.ndarray]
    """World x, y, yaw of every actor row, as drawn."""


@dataclass
class _Episode:
    """Per-episode inputs of the kernels, made once per road and scenario."""

    conditions: Conditions
    road: tuple
    """The road as `kernels.draw_ground` takes it."""
    ground_colors: np.ndarray
    shadow_color: np.ndarray
    clutter: tuple[np.ndarray, ...]


class Renderer:
    """Draws a `World` from the ego camera. Make one per camera; `render` is stateless
    apart from per-episode inputs cached by road, clutter and scenario.

    `cull_to_view=False` draws objects outside the view frustum too (only the far plane
    cuts); the tests use it to check that culling never drops a visible pixel."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.camera = Camera(spec)
        self.cull_to_view = True
        self._key: object = None
        self._episode: _Episode | None = None
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None
        above = (np.arange(spec.height)[:, None] + 0.5) < spec.horizon_y  # as the image
        self._ids_background = np.where(above, ID_SKY, ID_GRASS).astype(np.int16).repeat(
            spec.width, axis=1)

    @property
    def conditions(self) -> Conditions | None:
        return None if self._episode is None else self._episode.conditions

    def _prepare(self, world: World) -> _Episode:
        key = (id(world.road), id(world.clutter), world.scenario)
        if key != self._key or self._episode is None:
            cond = Conditions(self.spec, world.scenario)
            road, c, pal = world.road, world.clutter, cond.palette
            x, y, h = road.to_world(c.s, c.d)
            k = 0.55 if cond.time_of_day == "day" else 0.75
            self._episode = _Episode(
                conditions=cond,
                road=(float(road.s[0]), np.ascontiguousarray(road.x, np.float64),
                      np.ascontiguousarray(road.y, np.float64),
                      np.ascontiguousarray(road.heading, np.float64), road.s_max,
                      road.paved_half_width, road.half_width,
                      road.boundaries().astype(np.float64), np.array(road.markings, np.int64),
                      float(road.dash_length), float(road.dash_period),
                      np.array(c.rail_sides, np.float64)),
                ground_colors=np.array([pal.shoulder, pal.road, pal.marking, pal.yellow,
                                        _RAIL_COLOR], np.uint8),
                shadow_color=np.array([int(v * k) for v in pal.road], np.uint8),
                clutter=(np.ascontiguousarray(c.s, np.float64),
                         (len(SHAPE_NAMES) + c.kind).astype(np.int64), x, y, h,
                         np.ascontiguousarray(c.size, np.float64),
                         np.ascontiguousarray(c.color, np.uint8)),
            )
            self._key = key
        return self._episode

    def _inputs(self, world: World) -> _Inputs:
        """The kernels' inputs for `world`'s frame (the camera posed on its ego)."""
        ep = self._prepare(world)
        cond, spec, cam = ep.conditions, self.spec, self.camera
        ego, a = world.state.ego, world.state.actors
        if a.active.size >= np.iinfo(np.int16).max:
            raise ValueError(f"{a.active.size} actor rows: the int16 id buffer holds at most "
                             f"{np.iinfo(np.int16).max - 1}")
        cam.set_pose(ego)
        cam_t = (cam.position, cam.R, cam.f, cam.cx, cam.cy, spec.near, spec.far, cam.tan_half,
                 cam.tan_half * spec.height / spec.width)
        poses = world.actor_poses()
        actors = (a.active, a.shape, a.s, *poses, a.length, a.width, a.height, a.color)
        look = (cond.palette.ambient, cond.palette.diffuse, cond.headlight is not None,
                cond.fog_alpha is not None, FOG_COLOR, FOG_VISIBILITY,
                cond.time_of_day != "night", ep.shadow_color)
        lights = (a.cls, *poses, a.length, a.width, a.height)
        return _Inputs(ep, cam_t, ego.s, ego.yaw, poses, actors, look, lights,
                       cond.time_of_day != "day")

    def render(self, world: World, out: np.ndarray | None = None) -> RenderOutput:
        """The frame of `world`; drawn into `out` ((H, W, 3) uint8, e.g. a row of a
        batch's observation array) when given, else into a new array."""
        x = self._inputs(world)
        ep, cond = x.episode, x.episode.conditions
        if out is None:
            img = cond.background.copy()
        else:
            if out.shape != cond.background.shape or out.dtype != np.uint8:
                raise ValueError(f"out must be a {cond.background.shape} uint8 array, got "
                                 f"{out.shape} {out.dtype}")
            img = out
            np.copyto(img, cond.background)
        ids = self._ids_background.copy()
        draw_ground(img, ids, x.cam, ep.road, x.ego_s, x.ego_yaw, _ROAD_OFFSETS,
                    ep.ground_colors, None)
        cond.ground_pass(img)
        total, inside, drawn, boxes = draw_objects(img, ids, x.cam, x.ego_s, self.cull_to_view,
                                                   x.actors, ep.clutter, _TABLES, x.look, None)
        if x.taillights and drawn.size:
            cls, lx, ly, lyaw, ll, lw, lh = x.lights
            draw_taillights(img, ids, x.cam, drawn, cls, lx, ly, lyaw, ll, lw, lh, None)
        cond.sensor_pass(img, world.state.step)
        return RenderOutput(img, ids, total, inside, boxes, x.poses)

    def record(self, world: World, ground: DisplayList, objects: DisplayList,
               lights: DisplayList) -> RenderOutput:
        """`render` without the fills and the per-pixel passes: the polygons go to the
        display lists instead (appended: the ground, the shadows and objects, the
        taillights), for `sim.render.rowfill` to fill with the passes between them as
        `render` does (`sim.render.device`). The output's image and ids are None; its
        silhouette counts and boxes are `render`'s."""
        x = self._inputs(world)
        ep, spec = x.episode, self.spec
        if self._scratch is None:  # never written while recording; gives the kernels h, w
            self._scratch = (np.zeros((spec.height, spec.width, 3), np.uint8),
                             np.zeros((spec.height, spec.width), np.int16))
        img, ids = self._scratch
        _recorded(ground, lambda rec: draw_ground(img, ids, x.cam, ep.road, x.ego_s, x.ego_yaw,
                                                  _ROAD_OFFSETS, ep.ground_colors, rec))
        total, inside, drawn, boxes = _recorded(
            objects, lambda rec: draw_objects(img, ids, x.cam, x.ego_s, self.cull_to_view,
                                              x.actors, ep.clutter, _TABLES, x.look, rec))
        if x.taillights and drawn.size:
            cls, lx, ly, lyaw, ll, lw, lh = x.lights
            _recorded(lights, lambda rec: draw_taillights(img, ids, x.cam, drawn, cls, lx, ly,
                                                          lyaw, ll, lw, lh, rec))
        return RenderOutput(None, None, total, inside, boxes, x.poses)  # type: ignore[arg-type]


@dataclass
class _Inputs:
    """What the kernels take for one frame (`Renderer._inputs`)."""

    episode: _Episode
    cam: tuple
    ego_s: float
    ego_yaw: float
    poses: tuple[np.ndarray, np.ndarray, np.ndarray]
    actors: tuple
    look: tuple
    lights: tuple
    """`draw_taillights`' actor arrays (class, x, y, yaw, length, width, height)."""
    taillights: bool
    """Dusk or night: the lamps are drawn."""


def _recorded(display: DisplayList, call: Callable[[tuple], _T]) -> _T:
    """`call(rec)` into `display`, again with twice the room while it overflows."""
    mark = display.mark()
    while True:
        result = call(display.as_rec())
        if not display.overflowed:
            return result
        display.rewind(mark, grow=True)


__all__ = ["Renderer", "RenderOutput", "ID_SKY", "ID_GRASS", "ID_ROAD", "ID_SHOULDER",
           "ID_RAIL", "ID_CLUTTER", "ID_MARKING", "MARK_WIDTH", "MARKING_RANGE",
           "CLUTTER_RANGE", "ALL_SHAPES"]
