"""Camera frames and exact labels for every world of a `BatchWorld`.

The scale-out path for the camera: `BatchWorld.step` moves all worlds in one set of
arrays, the actor poses of all of them come from one pass, and each world is drawn by its
own `Renderer` (whose per-episode layers stay cached) with the compiled kernels. World b's
frame is byte for byte the frame a `DrivingEnv` on the same scenario would draw
(tests/sim/test_batch.py).
"""

from __future__ import annotations

from typing import cast

from sim.render.labels import ground_truth
from sim.render.raster import Renderer
from sim.types import CameraSpec, Frame
from sim.world.batch import BatchWorld
from sim.world.world import World


class BatchCamera:
    """One camera per world of a batch: `render(batch)` gives every world's `Frame`."""

    def __init__(self, spec: CameraSpec, n_worlds: int) -> None:
        if n_worlds < 1:
            raise ValueError(f"n_worlds={n_worlds} must be >= 1")
        self.spec = spec
        self.renderers = [Renderer(spec) for _ in range(n_worlds)]

    def render(self, batch: BatchWorld) -> list[Frame]:
        if len(batch) != len(self.renderers):
            raise ValueError(f"the batch has {len(batch)} worlds, this camera "
                             f"{len(self.renderers)}")
        poses = batch.actor_poses()
        frames = []
        for b, renderer in enumerate(self.renderers):
            view = cast(World, batch.view(b, poses))  # reads as a World (duck-typed)
            out = renderer.render(view)
            gt = ground_truth(view, out, renderer.camera)
            frames.append(Frame(image=out.image, ground_truth=gt, step=batch.steps,
                                ids=out.ids))
        return frames
