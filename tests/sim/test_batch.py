"""BatchWorld: B worlds in one set of arrays evolve exactly like B separate Worlds."""

from __future__ import annotations

import numpy as np
import pytest

from sim.actions import continuous_to_controls
from sim.autopilot import Autopilot
from sim.config import family_config, sample_scenario
from sim.world.batch import BatchWorld
from sim.world.world import World

FIELDS = ("s", "d", "speed", "v_lat", "target_lane", "active", "track_id", "cross_state")


def _scenarios() -> list:
    # urban 12 and 32: pedestrians cross within the 300 steps (checked below)
    picks = [("highway", 1), ("urban", 2), ("rural", 0), ("highway", 7), ("urban", 5),
             ("urban", 12), ("urban", 32)]
    return [sample_scenario(family_config(f), s) for f, s in picks]


def test_batch_matches_separate_worlds_step_by_step() -> None:
    scenarios = _scenarios()
    singles = [World(sc) for sc in scenarios]
    batch = BatchWorld(scenarios)
    pilots = [Autopilot() for _ in singles]
    first_ids = [w.state.next_track_id for w in singles]
    crossing = lane_changes = 0
    for step in range(300):
        controls = np.array([continuous_to_controls(p.act(w)) for p, w in zip(
            pilots, singles, strict=True)])
        events = [w.step(*c) for w, c in zip(singles, controls, strict=True)]
        targets = batch.actors.target_lane.copy()
        batch_events = batch.step(controls[:, 0], controls[:, 1])
        crossing += int((batch.actors.cross_state == 2).sum())
        lane_changes += int((batch.actors.target_lane != targets).sum())
        for b, (w, ev) in enumerate(zip(singles, events, strict=True)):
            n = len(w.state.actors)
            for f in FIELDS:
                got, want = getattr(batch.actors, f)[b, :n], getattr(w.state.actors, f)
                np.testing.assert_allclose(got, want, atol=1e-9, err_msg=f"{f} step {step}")
            assert not batch.actors.active[b, n:].any(), "padding rows stay empty"
            for k in ("x", "y", "yaw", "speed", "s", "d"):
                assert getattr(batch.ego, k)[b] == pytest.approx(getattr(w.state.ego, k),
                                                                 abs=1e-9), (k, step)
            assert batch_events["collision"][b] == ev.collision
            assert batch_events["off_road"][b] == ev.off_road
            assert batch_events["npc_collisions"][b] == ev.npc_collisions
            assert batch_events["min_ttc"][b] == pytest.approx(ev.min_ttc)
    respawns = sum(w.state.next_track_id - f for w, f in zip(singles, first_ids, strict=True))
    assert respawns > 0, "the comparison must cover respawned actors"
    assert crossing > 0, "... and pedestrians crossing"
    assert lane_changes > 0, "... and NPC lane changes (MOBIL)"


def test_world_state_of_a_batch_member_restores_into_a_world() -> None:
    scenarios = _scenarios()[:2]
    batch = BatchWorld(scenarios)
    for _ in range(20):
        batch.step(np.zeros(2), np.full(2, 0.5))
    w = World(scenarios[1])
    w.set_state(batch.world_state(1))
    assert w.state.ego.s == pytest.approx(batch.ego.s[1])
    n = len(w.state.actors)
    np.testing.assert_array_equal(w.state.actors.s, batch.actors.s[1, :n])


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BatchWorld([])


def test_batch_camera_frames_equal_single_world_frames() -> None:
    """World b of a batch renders byte for byte as a World driven the same way."""
    from sim.render.batch import BatchCamera
    from sim.render.labels import ground_truth
    from sim.render.raster import Renderer
    from sim.types import CameraSpec

    scenarios = _scenarios()[:3]
    singles = [World(sc) for sc in scenarios]
    batch = BatchWorld(scenarios)
    camera = BatchCamera(CameraSpec(), len(scenarios))
    renderers = [Renderer(CameraSpec()) for _ in singles]
    pilots = [Autopilot() for _ in singles]
    compared = 0
    for step in range(40):
        controls = np.array([continuous_to_controls(p.act(w)) for p, w in zip(
            pilots, singles, strict=True)])
        for w, c in zip(singles, controls, strict=True):
            w.step(*c)
        batch.step(controls[:, 0], controls[:, 1])
        if step % 8:
            continue
        frames = camera.render(batch)
        for w, r, fr in zip(singles, renderers, frames, strict=True):
            out = r.render(w)
            gt = ground_truth(w, out, r.camera)
            np.testing.assert_array_equal(fr.image, out.image)
            np.testing.assert_array_equal(fr.ids, out.ids)
            for key in ("boxes_xyxy", "track_ids", "visible_fraction", "truncation"):
                np.testing.assert_array_equal(fr.ground_truth[key], gt[key], err_msg=key)
            np.testing.assert_array_equal(fr.ground_truth.lanes.xs, gt.lanes.xs)
            compared += len(gt.track_ids)
    assert compared > 20, "the frames must show objects"


def test_batch_camera_rejects_a_batch_of_another_size() -> None:
    from sim.render.batch import BatchCamera
    from sim.types import CameraSpec

    with pytest.raises(ValueError, match="3 worlds"):
        BatchCamera(CameraSpec(), 2).render(BatchWorld(_scenarios()[:3]))


def test_replaced_world_restarts_exactly_as_a_new_world() -> None:
    """After `replace`, world b runs as a fresh World (its own MOBIL and respawn clock);
    the others carry on as before."""
    scenarios = _scenarios()[:3]
    singles = [World(sc) for sc in scenarios]
    batch = BatchWorld(scenarios)
    pilots = [Autopilot() for _ in singles]

    def step_both(n: int) -> None:
        for _ in range(n):
            controls = np.array([continuous_to_controls(p.act(w)) for p, w in zip(
                pilots, singles, strict=True)])
            for w, c in zip(singles, controls, strict=True):
                w.step(*c)
            batch.step(controls[:, 0], controls[:, 1])

    step_both(7)  # an offset that puts the restarted clock out of phase with the batch's
    fresh = sample_scenario(family_config("rural"), 11)
    singles[1], pilots[1] = World(fresh), Autopilot()
    batch.replace(1, fresh)
    assert batch.world_steps.tolist() == [7, 0, 7]
    step_both(120)
    for b, w in enumerate(singles):
        n = len(w.state.actors)
        for f in FIELDS:
            np.testing.assert_allclose(getattr(batch.actors, f)[b, :n], getattr(w.state.actors, f),
                                       atol=1e-9, err_msg=f"world {b} {f}")
        assert batch.ego.s[b] == pytest.approx(w.state.ego.s, abs=1e-9)
        assert batch.world_state(b).step == w.state.step


def test_npc_collision_counting_can_be_switched_off() -> None:
    """`count_npc_collisions = False` gives zeros there and changes nothing else."""
    scenarios = _scenarios()
    counted, skipped = BatchWorld(scenarios), BatchWorld(scenarios)
    skipped.count_npc_collisions = False
    steer, accel = np.zeros(len(scenarios)), np.full(len(scenarios), 0.5)
    for _ in range(30):
        a, b = counted.step(steer, accel), skipped.step(steer, accel)
        assert not b["npc_collisions"].any()
        for k in ("collision", "off_road", "hard_brake", "min_ttc"):
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(counted.actors.s, skipped.actors.s)
