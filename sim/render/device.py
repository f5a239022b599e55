"""Camera frames of a batch of worlds drawn into one tensor on a device (issue 17).

`BatchCamera` draws each world with the compiled kernels into host memory. `DeviceCamera`
splits the same work in two: the kernels make each world's polygons on the host
(`Renderer.record`: geometry, culling, shading, the labels' silhouette counts) into three
display lists for the whole batch, and the device fills them, one thread per row of
every frame (`sim.render.rowfill`), with the per-pixel passes of `Conditions` (headlights,
fog, rain, exposure, sensor noise) between and after them as torch operations on the
whole batch. The frames stay on the device as one (B, H, W, 3) uint8 tensor, with the id
buffer beside it ((B, H, W) int16), for a batched perception model to read without a
copy to the host.

Why numba-cuda for the fill and torch for the passes: the fill is the kernels' own
integer and double arithmetic, written once and compiled for both the CPU and CUDA (the
CPU path is what the tests check against the kernels, byte for byte); the passes are
table look-ups and saturating adds, which torch does on any device. The passes use
tables made by the very calls `Conditions` makes (OpenCV's multiply and
convertScaleAbs over every input value, numpy's float32 fog blend), so they give its
bytes exactly.

On a device without CUDA (`device="cpu"`) the fill runs compiled on the CPU, on the
tensors' memory: the same frames, for tests and for machines without a GPU. torch is
imported when a `DeviceCamera` is made, so `import sim` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from sim.render.camera import Camera, camera_poses
from sim.render.conditions import BANK, FOG_COLOR, FOG_VISIBILITY, Conditions
from sim.render.kernels import record_worlds
from sim.render.labels import ground_truth, lane_rows
from sim.render.raster import ROAD_OFFSETS, TABLES, Renderer, RenderOutput
from sim.render.rowfill import DisplayArrays, DisplayList, actor_pixels, fill_rows
from sim.types import CameraSpec, Frame, GroundTruth
from sim.world.batch import BatchWorld, WorldView
from sim.world.world import World

if TYPE_CHECKING:  # torch is imported where it is used: `import sim` stays torch-free
    import torch


def multiply_table() -> np.ndarray:
    """(256, 256) uint8: [g, v] = OpenCV's multiply(v, g, scale=1/255), what
    `Conditions.ground_pass` does with the headlight gain g."""
    v, g = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    return cv2.multiply(np.ascontiguousarray(v), np.ascontiguousarray(g), scale=1.0 / 255.0)


def exposure_table(alpha: float) -> np.ndarray:
    """(256,) uint8: OpenCV's convertScaleAbs(v, alpha) for every v."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return cv2.convertScaleAbs(v, alpha=alpha).reshape(256)


def fog_table(alpha: np.ndarray) -> np.ndarray:
    """(H, 3, 256) uint8: `kernels.fog_blend` of every value v in row y and channel c,
    uint8(float32(v) * (1 - a[y]) + fog[c] * a[y]) in float32, as it computes."""
    a = alpha.astype(np.float32).reshape(-1, 1, 1)
    keep = np.float32(1.0) - a
    fog = (FOG_COLOR.astype(np.float32).reshape(1, 3, 1) * a).astype(np.float32)
    v = np.arange(256, dtype=np.float32).reshape(1, 1, 256)
    return (v * keep + fog).astype(np.uint8)


@dataclass
class DeviceFrames:
    """One step's frames of a batch, on the device."""

    images: torch.Tensor
    """(B, H, W, 3) uint8 RGB."""
    ids: torch.Tensor
    """(B, H, W) int16 id buffers (`sim.render.raster`)."""
    outputs: list[RenderOutput]
    """Per world, the label inputs made on the host (silhouettes, boxes, poses)."""
    worlds: list[World]
    cameras: list[Camera]

    def ground_truth(self) -> list[GroundTruth]:
        """Every world's labels: each actor's visible pixels counted on the device
        (`rowfill.actor_pixels`), the id buffers' lane label rows copied to the host, the
        rest from the recorded geometry; `BatchCamera`'s labels (tested on the CPU)."""
        import torch

        n = len(self.outputs)
        spec = self.cameras[0].spec
        k = max(1, max(len(o.actor_boxes) for o in self.outputs))
        boxes = np.zeros((n, k, 4), np.int64)  # empty boxes for padding rows
        for b, o in enumerate(self.outputs):
            boxes[b, :len(o.actor_boxes)] = o.actor_boxes
        if self.ids.is_cuda:
            dev = self.ids.device
            count_t = torch.zeros((n, k), dtype=torch.int64, device=dev)
            vbox_t = torch.zeros((n, k, 4), dtype=torch.int64, device=dev)
            actor_pixels(self.ids, torch.from_numpy(boxes).to(dev), count_t, vbox_t)
            count, vbox = count_t.cpu().numpy(), vbox_t.cpu().numpy()
        else:
            count, vbox = np.zeros((n, k), np.int64), np.zeros((n, k, 4), np.int64)
            actor_pixels(self.ids.numpy(), boxes, count, vbox)
        rows = lane_rows(spec.height, spec.horizon_y)
        at_rows = self.ids[:, torch.from_numpy(rows).to(self.ids.device)].cpu().numpy()
        buffer = np.zeros((spec.height, spec.width), np.int16)  # only the lane rows read
        gts = []
        for b, (out, world, cam) in enumerate(zip(self.outputs, self.worlds, self.cameras,
                                                 strict=True)):
            buffer[rows] = at_rows[b]
            filled = RenderOutput(None, buffer, out.silhouette_px,  # type: ignore[arg-type]
                                  out.silhouette_in_image, out.actor_boxes, out.poses)
            m = len(out.actor_boxes)
            gts.append(ground_truth(world, filled, cam, (count[b, :m], vbox[b, :m])))
        return gts

    def frames(self) -> list[Frame]:
        """Host copies as `BatchCamera.render` gives them (image, labels, ids)."""
        images, ids = self.images.cpu().numpy(), self.ids.cpu().numpy()
        return [Frame(image=images[b], ground_truth=gt, step=self.worlds[b].state.step,
                      ids=ids[b]) for b, gt in enumerate(self.ground_truth())]


class DeviceCamera:
    """One camera per world of a batch, drawn on `device` ("cuda", "cuda:1", "cpu"):
    `render(batch)` gives the frames as `DeviceFrames`; on the host, world b's image, id
    buffer and labels are those of `BatchCamera` (byte for byte on the CPU)."""

    def __init__(self, spec: CameraSpec, n_worlds: int, device: str | torch.device = "cpu",
                 threads: int = 1) -> None:
        import torch

        if n_worlds < 1:
            raise ValueError(f"n_worlds={n_worlds} must be >= 1")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an int >= 1")
        self.threads = min(threads, n_worlds)
        """Host threads that record the worlds' polygons (the kernels release the GIL),
        each a contiguous share of the worlds into display lists of its own."""
        self._pool: ThreadPoolExecutor | None = None
        self._statics: Any = None  # numba typed list of (road, ground colours, clutter)
        self._static_keys: list[object] = [None] * n_worlds
        self._look_f = np.zeros((n_worlds, 2))
        self._look_b = np.zeros((n_worlds, 4), np.bool_)
        self._shadow = np.zeros((n_worlds, 3), np.uint8)
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None
        self.spec = spec
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device} is neither cpu nor cuda")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device}: torch sees no CUDA device here")
        self.renderers = [Renderer(spec) for _ in range(n_worlds)]
        self.lists = (DisplayList(), DisplayList(), DisplayList())
        self._thread_lists = [(DisplayList(), DisplayList(), DisplayList())
                              for _ in range(self.threads)]
        h, w = spec.height, spec.width
        dev = self.device
        self.images = torch.zeros((n_worlds, h, w, 3), dtype=torch.uint8, device=dev)
        self.ids = torch.zeros((n_worlds, h, w), dtype=torch.int16, device=dev)
        self._backgrounds = torch.zeros_like(self.images)
        self._ids_background = torch.from_numpy(self.renderers[0]._ids_background).to(dev)
        self._keys: list[object] = [None] * n_worlds
        self._conditions: list[Conditions | None] = [None] * n_worlds
        self._exposure = torch.zeros((n_worlds, 256), dtype=torch.uint8, device=dev)
        self._multiply = torch.from_numpy(multiply_table()).to(dev).reshape(-1)
        self._tables: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.renderers)

    def _table(self, array: np.ndarray, make: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> torch.Tensor:
        """`array` (or `make(array)`) on the device, once per host array (the condition
        layers are shared, cached arrays)."""
        import torch

        hit = self._tables.get(id(array))
        if hit is None or hit[0] is not array:
            value = array if make is None else make(array)
            hit = (array, torch.from_numpy(np.array(value, order="C")).to(self.device))
            self._tables[id(array)] = hit
        return hit[1]

    def _episode(self, b: int) -> None:
        """World b's per-episode layers on the device when its episode changed."""
        r = self.renderers[b]
        if r._key == self._keys[b]:
            return
        cond = r.conditions
        assert cond is not None
        import torch

        self._backgrounds[b] = torch.from_numpy(cond.background)
        self._exposure[b] = torch.from_numpy(exposure_table(cond.exposure))
        self._conditions[b] = cond
        self._keys[b] = r._key

    def render(self, batch: BatchWorld, views: list[WorldView] | None = None) -> DeviceFrames:
        """Every world's frame, drawn on the device (the batch's polygons recorded in
        one compiled call per thread: `record_batch`)."""
        n = len(self.renderers)
        if len(batch) != n:
            raise ValueError(f"the batch has {len(batch)} worlds, this camera {n}")
        if views is None:
            poses = batch.actor_poses()
            views = [batch.view(b, poses) for b in range(n)]
        worlds = [views[b] for b in range(n)]  # each reads as a World
        outputs, bounds = self.record_batch(batch, views)
        return self._draw(worlds, outputs, bounds)  # type: ignore[arg-type]

    def render_worlds(self, worlds: list[World]) -> DeviceFrames:
        """The frames of `worlds` (one per camera, e.g. `DrivingEnv` worlds)."""
        n = len(self.renderers)
        if len(worlds) != n:
            raise ValueError(f"{len(worlds)} worlds for {n} cameras")
        outputs, bounds = self.record(worlds)
        return self._draw(worlds, outputs, bounds)

    def _draw(self, worlds: list[World], outputs: list[RenderOutput], bounds: np.ndarray
              ) -> DeviceFrames:
        """The device half: fills and passes of the recorded lists."""
        import torch

        n = len(worlds)

        steps = [int(w.state.step) for w in worlds]
        for b in range(n):
            self._episode(b)
        img, ids = self.images, self.ids
        img.copy_(self._backgrounds)
        ids.copy_(self._ids_background.expand_as(ids))
        ground, objects, lights = (self._upload(d) for d in self.lists)
        fp = torch.from_numpy(bounds).to(self.device)
        self._fill(ground, fp[0])
        self._ground_pass()
        self._fill(objects, fp[1])
        if bounds[2, -1]:
            self._fill(lights, fp[2])
        self._sensor_pass(steps)
        return DeviceFrames(img, ids, outputs, list(worlds),
                            [r.camera for r in self.renderers])

    def record(self, worlds: list[World]) -> tuple[list[RenderOutput], np.ndarray]:
        """The host half of `render_worlds`: every world's polygons into `self.lists`
        (in `threads` threads); returns the label inputs and, per list, the polygon count
        after each world ((3, B + 1))."""
        n = len(worlds)
        bounds = np.zeros((3, n + 1), np.int64)
        outputs: list[RenderOutput] = [None] * n  # type: ignore[list-item]
        cuts = np.linspace(0, n, self.threads + 1).astype(int)

        def record(k: int) -> None:  # worlds cuts[k]:cuts[k + 1] into lists k
            lists = self._thread_lists[k] if self.threads > 1 else self.lists
            for d in lists:
                d.clear()
            for b in range(cuts[k], cuts[k + 1]):
                outputs[b] = self.renderers[b].record(worlds[b], *lists)
                bounds[:, b + 1] = [d.polygons for d in lists]

        self._each_thread(record)
        if self.threads > 1:
            self._merge(cuts, bounds)
        return outputs, bounds

    def _each_thread(self, work: Callable[[int], None]) -> None:
        """work(k) for every recording thread k (here when there is one)."""
        if self.threads == 1:
            work(0)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="record")
        list(self._pool.map(work, range(self.threads)))

    def record_batch(self, batch: BatchWorld, views: list[WorldView]
                     ) -> tuple[list[RenderOutput], np.ndarray]:
        """`record` for the worlds of a `BatchWorld` (`views`: its `view(b)` for every b):
        each thread records its share of the worlds in one compiled call
        (`kernels.record_worlds`, no Python between worlds), from the batch's arrays,
        with the camera poses computed for all worlds at once; the same lists and label
        inputs as `record` (tested)."""
        from numba.typed import List

        n, spec = len(batch), self.spec
        for b in range(n):  # per-episode inputs, when a world's episode changed
            r = self.renderers[b]
            ep = r._prepare(batch.worlds[b])
            if self._static_keys[b] != r._key:
                cond = ep.conditions
                item = (ep.road, ep.ground_colors, ep.clutter)
                if self._statics is None:
                    self._statics = List([item] * n)
                self._statics[b] = item
                self._look_f[b] = cond.palette.ambient, cond.palette.diffuse
                self._look_b[b] = (cond.headlight is not None, cond.fog_alpha is not None,
                                   cond.time_of_day != "night", cond.time_of_day != "day")
                self._shadow[b] = ep.shadow_color
                self._static_keys[b] = r._key
        ego, a = batch.ego, batch.actors
        m = a.active.shape[1]
        if m >= np.iinfo(np.int16).max:
            raise ValueError(f"{m} actor rows: the int16 id buffer holds at most "
                             f"{np.iinfo(np.int16).max - 1}")
        pos, rot = camera_poses(spec, ego.x, ego.y, ego.yaw)
        for b in range(n):  # the labels read each camera's pose
            cam = self.renderers[b].camera
            cam.position, cam.R = pos[b], rot[b]
        poses = [v.actor_poses() for v in views]
        x, y, yaw = (np.stack([p[i] for p in poses]) for i in range(3))
        out = (np.zeros((n, m), np.int64), np.zeros((n, m), np.int64),
               np.zeros((n, m, 4), np.int64), np.zeros((n, m), np.int64),
               np.zeros(n, np.int64), np.zeros((3, n), np.int64))
        c = self.renderers[0].camera
        cam_t = (c.f, c.cx, c.cy, spec.near, spec.far, c.tan_half,
                 c.tan_half * spec.height / spec.width)
        actors = (a.active, a.shape, a.s, x, y, yaw, a.length, a.width, a.height, a.color)
        if self._scratch is None:
            self._scratch = (np.zeros((spec.height, spec.width, 3), np.uint8),
                             np.zeros((spec.height, spec.width), np.int16))
        img, ids = self._scratch
        cuts = np.linspace(0, n, self.threads + 1).astype(int)

        def record(k: int) -> None:  # worlds cuts[k]:cuts[k + 1] into lists k
            lists = self._thread_lists[k] if self.threads > 1 else self.lists
            for d in lists:
                d.clear()
            b = int(cuts[k])
            while b < cuts[k + 1]:
                recs = tuple(d.as_rec() for d in lists)
                b = record_worlds(b, int(cuts[k + 1]), cam_t, pos, rot, ego.s, ego.yaw,
                                  self._statics, self._look_f, self._look_b, self._shadow,
                                  actors, a.cls, ROAD_OFFSETS, TABLES,
                                  (FOG_COLOR, FOG_VISIBILITY), True, img, ids, recs, out)
                if b < cuts[k + 1]:  # world b did not fit: twice the room, go on from it
                    for d in lists:
                        d.rewind(d.mark(), grow=True)

        self._each_thread(record)
        bounds = np.zeros((3, n + 1), np.int64)
        bounds[:, 1:] = out[5]
        if self.threads > 1:
            self._merge(cuts, bounds)
        total, inside, boxes = out[0], out[1], out[2]
        outputs = [RenderOutput(None, None, total[b], inside[b], boxes[b],  # type: ignore[arg-type]
                                (x[b], y[b], yaw[b])) for b in range(n)]
        return outputs, bounds

    def _merge(self, cuts: np.ndarray, bounds: np.ndarray) -> None:
        """The threads' display lists, in world order, into `self.lists`; `bounds` (per
        list, the polygon count after each world, counted per thread) become global."""
        for j, merged in enumerate(self.lists):
            parts = [self._thread_lists[k][j] for k in range(self.threads)]
            p_off = v_off = 0
            merged.clear()
            for k, part in enumerate(parts):
                bounds[j, cuts[k] + 1: cuts[k + 1] + 1] += p_off
                merged.extend(part, v_off)
                p_off += part.polygons
                v_off += int(part.n[1])

    def close(self) -> None:
        """Stop the recording threads (a later `render` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _upload(self, display: DisplayList) -> DisplayArrays:
        import torch

        a = display.arrays()
        dev = self.device

        def put(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=False)

        return DisplayArrays(put(a.verts), put(a.starts), put(a.rows), put(a.colors),
                             put(a.ids), put(a.modes), put(a.conds))

    def _fill(self, display: DisplayArrays, frame_poly: torch.Tensor) -> None:
        if self.device.type == "cuda":
            fill_rows(self.images, self.ids, display, frame_poly)
            return
        host = DisplayArrays(*(t.numpy() for t in (
            display.verts, display.starts, display.rows, display.colors, display.ids,
            display.modes, display.conds)))
        fill_rows(self.images.numpy(), self.ids.numpy(), host, frame_poly.numpy())

    def _worlds(self, test: Callable[[Conditions], object]) -> list[tuple[int, Conditions]]:
        """(b, conditions) of the worlds whose conditions pass `test`."""
        return [(b, c) for b, c in enumerate(self._conditions) if c is not None and test(c)]

    def _index(self, worlds: list[tuple[int, Conditions]]) -> torch.Tensor:
        import torch

        return torch.tensor([b for b, _ in worlds], dtype=torch.long, device=self.device)

    def _ground_pass(self) -> None:
        """`Conditions.ground_pass` for every world: headlights, then fog by row."""
        import torch

        img = self.images
        night = [(b, c, c.headlight) for b, c in self._worlds(lambda c: c.headlight is not None)]
        if night:
            first = night[0][2]
            assert first is not None
            if any(g is None or not np.array_equal(g, first) for _, _, g in night[1:]):
                raise ValueError("night worlds with different headlight layers")
            k = self._index([(b, c) for b, c, _ in night])
            index = self._table(first).long() * 256 + img[k].long()
            img[k] = torch.take(self._multiply, index)
        fog = [(b, c, c.fog_alpha) for b, c in self._worlds(lambda c: c.fog_alpha is not None)]
        if fog:
            alpha = fog[0][2]
            assert alpha is not None  # the same rows for every world of one camera spec
            k = self._index([(b, c) for b, c, _ in fog])
            table = self._table(alpha, lambda a: fog_table(a[:, 0, 0])).reshape(-1)
            h = img.shape[1]
            base = (torch.arange(h, device=self.device).view(1, h, 1, 1) * 3
                    + torch.arange(3, device=self.device).view(1, 1, 1, 3)) * 256
            img[k] = torch.take(table, base + img[k].long())

    def _layers(self, worlds: list[tuple[int, Conditions]], bank: Callable[[Conditions], object],
                steps: list[int]) -> torch.Tensor:
        """The bank layer of each world's step, stacked."""
        import torch

        out = []
        for b, c in worlds:
            layers = bank(c)
            assert isinstance(layers, np.ndarray)
            out.append(self._table(layers)[steps[b] % BANK])
        return torch.stack(out)

    def _sensor_pass(self, steps: list[int]) -> None:
        """`Conditions.sensor_pass` for every world: rain, exposure, sensor noise."""
        import torch

        img = self.images
        rain = self._worlds(lambda c: c.rain is not None)
        if rain:
            k = self._index(rain)
            layers = self._layers(rain, lambda c: c.rain, steps)
            img[k] = (img[k].to(torch.int16) + layers).clamp_(max=255).to(torch.uint8)
        exposed = self._worlds(lambda c: abs(c.exposure - 1.0) > 1e-3)
        if exposed:
            k = self._index(exposed)
            flat = img[k].reshape(len(exposed), -1).long()
            img[k] = torch.gather(self._exposure[k], 1, flat).reshape(img[k].shape)
        noisy = self._worlds(lambda c: c.noise is not None)
        if noisy:
            k = self._index(noisy)
            pos = self._layers(noisy, lambda c: c.noise and c.noise[0], steps)
            neg = self._layers(noisy, lambda c: c.noise and c.noise[1], steps)
            v = img[k].to(torch.int16) + pos
            img[k] = (v.clamp_(max=255) - neg).clamp_(min=0).to(torch.uint8)


__all__ = ["DeviceCamera", "DeviceFrames", "multiply_table", "exposure_table", "fog_table"]
