"""Strict launch-file loading: every bad file raises one LaunchConfigError that names the
file, the dotted key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.config import (
    DEFAULT_RUN_LAUNCH,
    LaunchConfigError,
    RunConfig,
    load_launch,
)
from sim.config import family_config
from sim.types import CameraSpec


def _error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(LaunchConfigError) as info:
        load_launch(path, RunConfig, overrides)
    return str(info.value)


def test_default_run_launch_file_loads() -> None:
    cfg = load_launch(DEFAULT_RUN_LAUNCH, RunConfig)
    assert (cfg.family, cfg.episodes, cfg.seed, cfg.driver) == ("highway", 3, 0, "autopilot")
    assert cfg.video.enabled and cfg.video.episodes == 1 and cfg.overlays
    assert cfg.scenario == family_config("highway")
    assert cfg.camera.spec() == CameraSpec()
    assert cfg.env_id == "drivestack/Highway-v0"


def test_scenario_overrides_go_on_top_of_the_family_defaults(write_launch) -> None:
    path = write_launch("""
        family: rural
        scenario: {vehicles: [1, 2], weather: {fog: 1.0}}
        camera: {width: 160, height: 96}
    """)
    cfg = load_launch(path, RunConfig)
    assert cfg.scenario == family_config("rural", vehicles=(1, 2), weather={"fog": 1.0})
    assert cfg.scenario.lanes == family_config("rural").lanes
    assert (cfg.camera.spec().width, cfg.camera.spec().height) == (160, 96)


def test_env_id_is_accepted_for_family(write_launch) -> None:
    cfg = load_launch(write_launch("family: drivestack/Urban-v0\n"), RunConfig)
    assert cfg.family == "urban" and cfg.scenario == family_config("urban")


def test_empty_file_gives_the_defaults(write_launch) -> None:
    assert load_launch(write_launch(""), RunConfig) == RunConfig()


def test_unknown_top_level_key_lists_allowed_keys(write_launch) -> None:
    path = write_launch("episodes: 2\nepisdoes: 3\n", name="typo.yaml")
    msg = _error(path)
    assert "typo.yaml" in msg and "episdoes" in msg and "unknown key" in msg
    for key in ("family", "episodes", "seed", "max_steps", "scenario", "camera", "out",
                "video", "overlays", "driver"):
        assert key in msg


def test_unknown_nested_scenario_key_names_the_dotted_path(write_launch) -> None:
    path = write_launch("scenario:\n  lanes: [2, 3]\n  n_cars: 4\n", name="nested.yaml")
    msg = _error(path)
    assert "nested.yaml" in msg and "scenario.n_cars" in msg and "unknown key" in msg
    assert "vehicles" in msg and "weather" in msg and "episode_seconds" in msg


def test_bad_literal_lists_allowed_values(write_launch) -> None:
    msg = _error(write_launch("family: mars\n", name="mars.yaml"))
    assert "mars.yaml" in msg and "family" in msg and "'mars'" in msg
    for family in ("highway", "rural", "urban"):
        assert family in msg


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("scenario: {clutter: city}\n", "scenario.clutter", ["sparse", "rural", "urban"]),
    ("scenario: {weather: {snow: 1.0}}\n", "scenario.weather", ["clear", "fog", "rain"]),
    ("driver: mpc\n", "driver", ["autopilot", "rule", "rl", "privileged"]),
    ("camera: {near: 1.0}\n", "camera.near", ["width", "height", "fov_deg", "pitch_deg"]),
    ("video: {fps: 30, codec: h265}\n", "video.codec", ["enabled", "fps", "episodes"]),
])
def test_nested_bad_keys_and_values(write_launch, text: str, key: str, allowed: list[str]
                                    ) -> None:
    msg = _error(write_launch(text))
    assert "launch.yaml" in msg and key in msg
    for value in allowed:
        assert value in msg


@pytest.mark.parametrize(("text", "key", "words"), [
    ("episodes: 0\n", "episodes", "greater than or equal to 1"),
    ("seed: abc\n", "seed", "valid integer"),
    ("scenario: {lanes: [3, 1]}\n", "scenario.lanes", "above upper bound"),
    ("scenario: {road_length: 10}\n", "scenario.road_length", "greater than or equal to 200"),
    ("camera: {width: 8}\n", "camera", "16..4096"),
    ("scenario: [1, 2]\n", "scenario", "valid dictionary"),
    ("family: rural\nscenario: {family: urban}\n", "", "set the family once"),
])
def test_bad_values_name_key_and_reason(write_launch, text: str, key: str, words: str
                                        ) -> None:
    msg = _error(write_launch(text))
    assert key in msg and words in msg


def test_several_problems_are_reported_together(write_launch) -> None:
    msg = _error(write_launch("family: mars\nepisodes: -1\nfoo: 1\n"))
    assert "3 problems" in msg and "family" in msg and "episodes" in msg and "foo" in msg


def test_malformed_yaml(write_launch) -> None:
    msg = _error(write_launch("episodes: 3\nscenario: {lanes: [2, 3}\n", name="broken.yaml"))
    assert "broken.yaml" in msg and "not valid YAML" in msg and "line 2" in msg


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("just text\n", "string")])
def test_top_level_must_be_a_mapping(write_launch, text: str, kind: str) -> None:
    msg = _error(write_launch(text))
    assert "mapping" in msg and kind in msg


def test_missing_file(tmp_path: Path) -> None:
    msg = _error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg


def test_directory_is_not_a_launch_file(tmp_path: Path) -> None:
    assert "not a file" in _error(tmp_path)


def test_overrides_are_validated_and_marked(write_launch) -> None:
    path = write_launch("episodes: 2\nvideo: {fps: 10}\n")
    cfg = load_launch(path, RunConfig, {"episodes": 5, "seed": None, "video.fps": 30})
    assert (cfg.episodes, cfg.seed, cfg.video.fps) == (5, 0, 30)
    msg = _error(path, {"episodes": 0})
    assert "episodes" in msg and "set on the command line" in msg


def test_error_is_a_value_error_with_structured_problems(write_launch) -> None:
    path = write_launch("family: mars\n")
    with pytest.raises(ValueError) as info:
        load_launch(path, RunConfig)
    err = info.value
    assert isinstance(err, LaunchConfigError) and err.path == path
    assert [key for key, _ in err.problems] == ["family"]


def test_resolved_config_round_trips(write_launch) -> None:
    """metrics.json stores the resolved config; it validates back to the same config."""
    cfg = load_launch(write_launch("family: urban\nscenario: {lanes: [2, 2]}\n"), RunConfig)
    assert RunConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_every_shipped_launch_file_validates() -> None:
    """Each launch/*.yaml is valid for the command its name says it is for."""
    from data_engine.loop import LoopConfig
    from launch.cli_data import MineConfig
    from launch.config import (
        DatasetConfig,
        RunConfig,
        TrainPerceptionConfig,
        TrainPlannerConfig,
        load_launch,
    )
    from launch.eval_suite import EvalConfig, SuiteConfig

    # eval_quick / eval_smoke are scenario suites (`drivestack eval --suite FILE`)
    kinds = {"dataset": DatasetConfig, "run": RunConfig, "eval": EvalConfig,
             "eval_quick": SuiteConfig, "eval_smoke": SuiteConfig,
             "train_planner": TrainPlannerConfig, "train_perception": TrainPerceptionConfig,
             "train_lanes": TrainPerceptionConfig, "train_detector": TrainPerceptionConfig,
             "train_refiner": TrainPerceptionConfig, "mine": MineConfig, "loop": LoopConfig}
    files = sorted((Path(__file__).resolve().parents[2] / "launch").glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        kind = max((k for k in kinds if path.stem.startswith(k)), key=len)
        load_launch(path, kinds[kind])
