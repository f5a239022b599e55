"""Camera frames and exact labels for every world of a `BatchWorld`.

The scale-out path for the camera: `BatchWorld.step` moves all worlds in one set of
arrays, the actor poses of all of them come from one pass, and each world is drawn by its
own `Renderer` (whose per-episode layers stay cached) with the compiled kernels. World b's
frame is byte for byte the frame a `DrivingEnv` on the same scenario would draw
(tests/sim/test_batch.py).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from sim.render.labels import ground_truth
from sim.render.raster import Renderer
from sim.types import CameraSpec, Frame
from sim.world.batch import BatchWorld, WorldView
from sim.world.world import World


class BatchCamera:
    """One camera per world of a batch: `render(batch)` gives every world's `Frame`."""

    def __init__(self, spec: CameraSpec, n_worlds: int) -> None:
        if n_worlds < 1:
            raise ValueError(f"n_worlds={n_worlds} must be >= 1")
        self.spec = spec
        self.renderers = [Renderer(spec) for _ in range(n_worlds)]

    def render(self, batch: BatchWorld, views: list[WorldView] | None = None,
               out: np.ndarray | None = None) -> list[Frame]:
        """Every world's frame; `views`: the batch's `view(b)` for every b, when the caller
        made them for this step already; `out`: a (B, H, W, 3) uint8 array to draw the
        images into (the frames' images are then its rows)."""
        if len(batch) != len(self.renderers):
            raise ValueError(f"the batch has {len(batch)} worlds, this camera "
                             f"{len(self.renderers)}")
        if views is None:
            poses = batch.actor_poses()
            views = [batch.view(b, poses) for b in range(len(batch))]
        return [self.render_one(b, views[b], None if out is None else out[b])
                for b in range(len(batch))]

    def render_one(self, b: int, view: WorldView, out: np.ndarray | None = None) -> Frame:
        """World b's frame from its view (`BatchWorld.view(b)`), into `out` if given."""
        renderer, world = self.renderers[b], cast(World, view)  # reads as a World
        drawn = renderer.render(world, out)
        gt = ground_truth(world, drawn, renderer.camera)
        return Frame(image=drawn.image, ground_truth=gt, step=world.state.step, ids=drawn.ids)
