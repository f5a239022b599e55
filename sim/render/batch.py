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
        frames = []
        for b, (renderer, world_view) in enumerate(zip(self.renderers, views, strict=True)):
            view = cast(World, world_view)  # reads as a World (duck-typed)
            drawn = renderer.render(view, None if out is None else out[b])
            gt = ground_truth(view, drawn, renderer.camera)
            frames.append(Frame(image=drawn.image, ground_truth=gt, step=view.state.step,
                                ids=drawn.ids))
        return frames
