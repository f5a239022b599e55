"""Edge cases found in review: turned-around egos, wide lenses, strict inputs, state
restore across settings and vehicles that could not be placed at first."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest

from sim.config import family_config, sample_scenario
from sim.render.raster import ID_MARKING, ID_ROAD, ID_SHOULDER, Renderer
from sim.types import CameraSpec
from sim.world.world import World


def test_road_is_drawn_under_an_ego_turned_across_it(make_env: Callable[..., gym.Env]) -> None:
    """Full steer on a wide empty road: the ego circles on the asphalt, so the bottom
    row of the frame (ground ~3 m ahead) must be paved whichever way it faces."""
    cfg = family_config("highway", lanes=(5, 5), lane_width=(3.8, 3.8), vehicles=(0, 0),
                        cone_groups=(0, 0), stalled=(0, 0))
    env = make_env("highway", scenario=cfg, camera={"width": 320, "height": 192}).unwrapped
    env.reset(seed=3)
    turned = 0
    for _ in range(40):
        _, _, terminated, _, info = env.step(np.array([1.0, -0.2], np.float32))
        assert not terminated
        ego, road = env.world.state.ego, env.world.road
        herr = info["ground_truth"]["ego_heading_error"]
        if abs(herr) > 1.0 and abs(ego.d) < road.half_width - 3:
            turned += 1
            bottom = env.frame.ids[-1]
            paved = (bottom == ID_ROAD) | (bottom == ID_SHOULDER) | (bottom <= ID_MARKING)
            assert paved.all(), f"{(~paved).sum()} bottom-row pixels not paved"
    assert turned >= 5, "the test must see the ego turned across the road"


def test_wide_lens_culling_drops_nothing_visible() -> None:
    """Frustum culling must be conservative: the id buffer equals one drawn without it."""
    spec = CameraSpec(width=64, height=48, fov_deg=120.0, pitch_deg=20.0)
    world = World(sample_scenario(family_config("urban"), 0))
    culled, full = Renderer(spec), Renderer(spec)
    full.cull_to_view = False  # only the far plane cuts, a designed limit of the view
    from sim.actions import continuous_to_controls
    from sim.autopilot import Autopilot
    pilot = Autopilot()
    for _ in range(60):
        world.step(*continuous_to_controls(pilot.act(world)))
        assert np.array_equal(culled.render(world).ids, full.render(world).ids)


@pytest.mark.parametrize("action", [
    np.zeros((1, 2), np.float32), np.zeros((2, 1), np.float32), np.array(["0.1", "0.2"]),
    [0.1, 0.2, 0.3],
])
def test_continuous_action_shape_and_type_are_enforced(make_env: Callable[..., gym.Env],
                                                      action: object) -> None:
    env = make_env("highway", obs_type="state").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="continuous action must"):
        env.step(action)


@pytest.mark.parametrize(("options", "match"), [
    ({"scenario_sed": 3}, "unknown reset option"),
    ({"scenario_seed": -3}, "non-negative int"),
    ({"scenario_seed": 1.7}, "non-negative int"),
])
def test_bad_reset_options_are_rejected(make_env: Callable[..., gym.Env], options: dict,
                                        match: str) -> None:
    env = make_env("highway", obs_type="state").unwrapped
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)


def test_state_from_another_dt_is_refused(make_env: Callable[..., gym.Env]) -> None:
    a = make_env("highway", obs_type="state", dt=0.1).unwrapped
    a.reset(seed=0)
    b = make_env("highway", obs_type="state").unwrapped
    b.reset(seed=0)
    with pytest.raises(ValueError, match="dt"):
        b.set_state(a.get_state())


def test_bare_world_state_drives_a_meta_env(make_env: Callable[..., gym.Env]) -> None:
    """A state taken from World (no controller memory) restores into a meta-action env."""
    env = make_env("highway", obs_type="state", action_type="meta").unwrapped
    env.reset(seed=0)
    bare = World(sample_scenario(family_config("highway"), 5)).get_state()
    env.set_state(bare)
    obs, *_ = env.step(1)
    assert np.isfinite(obs).all()
    assert env.world.state.step == 1


def test_ground_truth_is_truthy_without_objects(make_env: Callable[..., gym.Env]) -> None:
    cfg = family_config("highway", vehicles=(0, 0), cone_groups=(0, 0), stalled=(0, 0))
    env = make_env("highway", scenario=cfg)
    _, info = env.reset(seed=0)
    gt = info["ground_truth"]
    assert len(gt) == 0 and bool(gt) and gt["lanes"]["xs"].shape[0] >= 2


def test_vehicles_that_could_not_be_placed_are_retried() -> None:
    """80 vehicles on 5 lanes do not all fit at reset; the rows that failed are placed
    later by the recycling instead of staying empty for the whole episode."""
    from sim.actions import continuous_to_controls
    from sim.autopilot import Autopilot

    world = World(sample_scenario(family_config("highway", lanes=(5, 5), vehicles=(80, 80)), 0))
    failed = np.flatnonzero(~world.state.actors.active)
    assert failed.size > 0, "the scenario must be too dense to place everyone at once"
    pilot = Autopilot()
    ever_placed = np.zeros(failed.size, bool)
    for _ in range(300):
        world.step(*continuous_to_controls(pilot.act(world)))
        ever_placed |= world.state.actors.active[failed]
    assert ever_placed.any()
