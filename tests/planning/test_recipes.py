"""The shipped planner training recipes (`launch/train_planner*.yaml`): each loads and
becomes a training job, and the batched recipes' closure curriculum reaches the worlds
the policy trains in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from launch.cli import planner_job
from launch.config import TrainPlannerConfig, load_launch
from planning.batch_vec import BatchPlannerVecEnv
from sim.types import CAR, TRUCK

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
RECIPES = sorted(LAUNCH.glob("train_planner*.yaml"))
CURRICULUM = ("train_planner_batch.yaml", "train_planner_batch_gpu.yaml",
              "train_planner_memory.yaml")


def test_the_recipes_are_found() -> None:
    assert {p.name for p in RECIPES} >= set(CURRICULUM)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_planner_recipe_loads_as_a_training_job(path: Path) -> None:
    job = planner_job(load_launch(path, TrainPlannerConfig))
    assert job.total_timesteps >= 100_000 and job.families


def _static_obstacles(vec: BatchPlannerVecEnv) -> list[tuple[int, int]]:
    """(cone groups, stalled vehicles) of each world's scenario after a reset."""
    worlds = vec.env.batch.worlds  # type: ignore[union-attr]
    return [(w.scenario.n_cone_groups, w.scenario.n_stalled) for w in worlds]


@pytest.mark.parametrize("name", CURRICULUM)
def test_the_batch_recipes_put_a_closure_in_every_training_episode(name: str) -> None:
    """The recipes draw 1-2 cone closures and one stalled vehicle per episode in every
    family (the default ranges leave many episodes without one, and rural without
    stalled vehicles): every training episode holds blocked lanes."""
    job = planner_job(load_launch(LAUNCH / name, TrainPlannerConfig))
    scenario = job.env_kwargs["scenario"]
    vec = BatchPlannerVecEnv(9, families=job.families, source="privileged",
                             scenario=scenario)
    vec.seed(11)
    vec.reset()
    drawn = np.array(_static_obstacles(vec))
    assert (drawn[:, 0] >= 1).all() and (drawn[:, 0] <= 2).all(), drawn
    assert (drawn[:, 1] == 1).all(), drawn
    # the stalled vehicles are in the worlds, standing
    for w in vec.env.batch.worlds:  # type: ignore[union-attr]
        a = w.state.actors
        assert int(((np.asarray(a.desired_speed) == 0) & np.isin(a.cls, (CAR, TRUCK))).sum()) >= 1

    plain = BatchPlannerVecEnv(9, families=job.families, source="privileged")
    plain.seed(11)
    plain.reset()
    default = np.array(_static_obstacles(plain))
    assert (default[:, 0] == 0).any(), default  # the default ranges: some without cones


def test_the_feature_set_reaches_the_training_envs(tmp_path: Path) -> None:
    """`feature_set` in a launch file sets the observation of both training paths; the
    default is the shipped policies' (so the recipes reproduce them); a bad name is one
    clear error naming the allowed ones."""
    from planning.features import FEATURE_SETS
    from planning.train import make_vec

    job = planner_job(TrainPlannerConfig(out=tmp_path))
    assert job.feature_set == "control"
    job = planner_job(TrainPlannerConfig(out=tmp_path, feature_set="memory", n_envs=2))
    for kind in ("batch", "dummy"):
        vec = make_vec(job, 0, 2, kind)
        assert vec.observation_space.shape == (FEATURE_SETS["memory"],)
        assert vec.reset().shape == (2, FEATURE_SETS["memory"])
        vec.close()
    with pytest.raises(ValueError, match="feature_set"):
        TrainPlannerConfig(out=tmp_path, feature_set="all")  # type: ignore[arg-type]
