"""Run under NUMBA_ENABLE_CUDASIM=1 (tests/sim/test_device_render.py): fills the display
lists of two small frames with the CUDA kernel in numba's CUDA simulator and with the
CPU path, ground then objects then taillights on the same buffers, and prints one JSON
line: whether they agree and how many pixels each list changed."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

from sim.config import family_config, sample_scenario  # noqa: E402
from sim.render.raster import Renderer  # noqa: E402
from sim.render.rowfill import DisplayArrays, DisplayList, actor_pixels, fill_rows  # noqa: E402
from sim.types import CameraSpec  # noqa: E402
from sim.world.world import World  # noqa: E402


def main() -> None:
    spec = CameraSpec(width=96, height=56)
    scenarios = [dataclasses.replace(sample_scenario(family_config("highway"), 1),
                                     time_of_day="night"),
                 sample_scenario(family_config("urban"), 2)]
    lists = DisplayList(), DisplayList(), DisplayList()
    bounds = np.zeros((3, len(scenarios) + 1), np.int64)
    outputs = []
    for b, sc in enumerate(scenarios):
        world = World(sc)
        for _ in range(25):
            world.step(0.0, 0.6)
        outputs.append(Renderer(spec).record(world, *lists))
        bounds[:, b + 1] = [d.polygons for d in lists]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (len(scenarios), spec.height, spec.width, 3), dtype=np.uint8)
    ids = np.zeros((len(scenarios), spec.height, spec.width), np.int16)
    cpu_img, cpu_ids = img.copy(), ids.copy()
    d_img, d_ids = cuda.to_device(img), cuda.to_device(ids)
    changed = []
    equal = True
    for i, d in enumerate(lists):
        a = d.arrays()
        before = cpu_img.copy()
        fill_rows(cpu_img, cpu_ids, a, bounds[i])
        dev = DisplayArrays(*(cuda.to_device(np.ascontiguousarray(x)) for x in (
            a.verts, a.starts, a.rows, a.colors, a.ids, a.modes, a.conds)))
        fill_rows(d_img, d_ids, dev, cuda.to_device(bounds[i]))
        equal = (equal and np.array_equal(d_img.copy_to_host(), cpu_img)
                 and np.array_equal(d_ids.copy_to_host(), cpu_ids))
        changed.append(int((before != cpu_img).any(-1).sum()))
    k = max(len(o.actor_boxes) for o in outputs)
    boxes = np.zeros((len(outputs), k, 4), np.int64)
    for b, o in enumerate(outputs):
        boxes[b, :len(o.actor_boxes)] = o.actor_boxes
    count, vbox = np.zeros((len(outputs), k), np.int64), np.zeros((len(outputs), k, 4), np.int64)
    actor_pixels(cpu_ids, boxes, count, vbox)
    d_count, d_vbox = cuda.to_device(np.zeros_like(count)), cuda.to_device(np.zeros_like(vbox))
    actor_pixels(d_ids, cuda.to_device(boxes), d_count, d_vbox)
    pixels_equal = (np.array_equal(d_count.copy_to_host(), count)
                    and np.array_equal(d_vbox.copy_to_host(), vbox))
    print(json.dumps({"equal": bool(equal), "changed": changed,
                      "polygons": bounds[:, -1].tolist(), "pixels_equal": bool(pixels_equal),
                      "actors_seen": int((count > 0).sum())}))


if __name__ == "__main__":
    main()
