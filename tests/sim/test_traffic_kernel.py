"""The compiled NPC vehicle step (`sim.world.traffic_kernels.vehicle_step`, behind
`sim.world.traffic.step_vehicles`) against the array formulation it replaced
(tests/sim/_traffic_reference.py): the same worlds, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import sim.world.batch as batch_module
import sim.world.traffic as traffic
import sim.world.traffic_kernels as kernels
from sim.config import family_config, sample_scenario
from sim.world.batch import BatchWorld
from tests.sim import _traffic_reference as reference

CHANGED = ("s", "d", "speed", "v_lat", "accel", "target_lane", "lc_timer")


def test_the_kernel_s_cyclist_class_is_sim_types_s() -> None:
    from sim.types import CYCLIST
    assert kernels.CYCLIST == CYCLIST


def test_kernel_steps_worlds_exactly_as_the_array_formulation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    picks = [(f, s) for f in ("highway", "rural", "urban") for s in range(5)]
    scenarios = [sample_scenario(family_config(f), s) for f, s in picks]
    compiled, arrays = BatchWorld(scenarios), BatchWorld(scenarios)
    rng = np.random.default_rng(3)
    lane_changes = clamps = 0
    for step in range(300):
        steer, accel = rng.normal(0.0, 0.02, len(scenarios)), rng.uniform(-2, 1.5, len(scenarios))
        before = compiled.actors.target_lane.copy()
        monkeypatch.setattr(batch_module, "step_vehicles", traffic.step_vehicles)
        compiled.step(steer, accel)
        monkeypatch.setattr(batch_module, "step_vehicles", reference.step_vehicles)
        arrays.step(steer, accel)
        for f in CHANGED:
            np.testing.assert_array_equal(getattr(compiled.actors, f),
                                          getattr(arrays.actors, f), err_msg=f"{f} {step}")
        lane_changes += int((compiled.actors.target_lane != before).sum())
        clamps += int((compiled.actors.accel <= -traffic.MAX_DECEL).sum())
    assert lane_changes > 0, "the comparison must cover MOBIL lane changes"
    assert clamps > 0, "... and vehicles braking as hard as they can"


def test_one_world_is_a_batch_of_one() -> None:
    """A single World's step goes through the same kernel (a (1, N) batch) and leaves
    the caller's old arrays untouched (new arrays, as before)."""
    from sim.world.world import World

    w = World(sample_scenario(family_config("highway"), 4))
    old_s = w.state.actors.s
    kept = old_s.copy()
    for _ in range(5):
        w.step(0.0, 0.5)
    assert w.state.actors.s is not old_s
    np.testing.assert_array_equal(old_s, kept)
    assert w.state.actors.s.shape == kept.shape
