"""The `--ray [ADDRESS]` option: a bare `--ray` means a local cluster, the per-task
resource options need it, and an address nothing listens on is one clear error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from launch.cli import app
from launch.entry import normalize


@pytest.mark.parametrize("argv, expected", [
    (["eval", "--ray"], ["eval", "--ray", "local"]),
    (["eval", "--ray", "--workers", "2"], ["eval", "--ray", "local", "--workers", "2"]),
    (["eval", "--ray", "auto"], ["eval", "--ray", "auto"]),
    (["eval", "--ray=10.0.0.1:6379"], ["eval", "--ray=10.0.0.1:6379"]),
    (["run", "--", "--ray"], ["run", "--", "--ray"]),
    (["dataset"], ["dataset"]),
])
def test_bare_ray_means_a_local_cluster(argv: list[str], expected: list[str]) -> None:
    assert normalize(argv) == expected


@pytest.mark.parametrize("command", ["dataset", "eval", "mine", "relabel"])
def test_every_fanned_out_command_has_the_options(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--ray", "--task-cpus", "--task-gpus", "--workers"):
        assert option in result.output, (command, option)


def test_task_resources_need_ray(tmp_path) -> None:
    result = CliRunner().invoke(app, ["dataset", "--out", str(tmp_path / "d"), "--frames",
                                      "2", "--task-gpus", "1"])
    assert result.exit_code == 2 and "need --ray" in result.output
    assert not (tmp_path / "d").exists()


def test_unreachable_cluster_is_one_clear_error(tmp_path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process")
    result = CliRunner().invoke(app, ["dataset", "--out", str(tmp_path / "d"), "--frames",
                                      "2", "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "cannot connect" in result.output and "Traceback" not in result.output
