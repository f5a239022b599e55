"""`drivestack eval` on tiny suites: the table, the files, the JSON last line, seed offset
and episode cap, and one clear error (exit 2) for bad launch or suite files, a bad
planner name and a missing or corrupted policy file."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from launch.cli_eval import eval_command
from launch.config import load_launch
from launch.eval_suite import DEFAULT_EVAL_LAUNCH, SMOKE_SUITE, EvalConfig, SuiteConfig
from planning.evaluate import HEADLINE

app = typer.Typer()
app.command("eval")(eval_command)


@app.callback()
def _main() -> None:
    """A local app, as launch/cli.py registers the command."""


runner = CliRunner()
WriteLaunch = Callable[..., Path]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["eval", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.output


def test_packaged_launch_and_smoke_suite_are_valid() -> None:
    cfg = load_launch(DEFAULT_EVAL_LAUNCH, EvalConfig)
    assert cfg.planner == "all" and len(cfg.kinds) == 5
    suite = cfg.suite.suite()
    assert [s.name for s in suite.sets] == ["nominal", "adverse", "route_nominal",
                                            "route_adverse"]
    assert [s.route for s in suite.sets] == [False, False, True, True]
    assert suite.sets[0].conditions == (("day", "clear"),)
    bad = {"nominal": {"seeds": [1], "road_length": 500}}
    with pytest.raises(ValueError, match="nominal.road_length"):
        SuiteConfig.model_validate(bad)
    assert len(load_launch(SMOKE_SUITE, SuiteConfig).suite().cases()) == 2


def test_a_suite_file_runs_only_the_sets_it_names() -> None:
    """A suite of routes only runs no survival set (it ran the default nominal one);
    without any set the default nominal set stays; naming none is an error."""
    routes = SuiteConfig.model_validate({"route_nominal": {"seeds": [1, 2]}}).suite()
    assert [s.name for s in routes.sets] == ["route_nominal"]
    assert [s.name for s in SuiteConfig.model_validate({}).suite().sets] == ["nominal"]
    both = SuiteConfig.model_validate({"nominal": {"seeds": [3]}, "adverse": {"seeds": [4]}})
    assert [s.name for s in both.suite().sets] == ["nominal", "adverse"]
    with pytest.raises(ValueError, match="at least one set"):
        SuiteConfig.model_validate({"nominal": None})


def test_eval_writes_table_files_and_a_json_last_line(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code, stdout, output = _invoke("--suite", str(SMOKE_SUITE), "--planner",
                                   "rule-privileged", "--out", str(out))
    assert code == 0, output
    last = json.loads(stdout.strip().splitlines()[-1])
    assert set(last) == {"planner", "set", *HEADLINE}
    assert last["planner"] == "rule-privileged" and last["set"] == "nominal"
    assert last["success_rate"] == 1.0 and 0.0 < last["route_completion"] < 0.2
    assert "drivestack eval" in output and "rule-privi" in output  # the table (stderr)
    assert {p.name for p in out.iterdir()} == {".drivestack.json", "eval.json", "episodes.csv",
                                                "summary.csv",
                                                "summary.md", "summary.png"}


def test_seed_offsets_every_seed_and_episodes_caps(tmp_path: Path) -> None:
    code, _, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "rule-privileged",
                              "--seed", "5", "--episodes", "1", "--out", str(tmp_path))
    assert code == 0, output
    with open(tmp_path / "episodes.csv", newline="") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["1005"]


def test_bad_planner_name_is_one_clear_error(tmp_path: Path) -> None:
    code, stdout, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "fast",
                                   "--out", str(tmp_path))
    assert code == 2 and stdout == ""
    assert "planner: 'fast' is not allowed" in output and "'rule-privileged'" in output
    assert "set on the command line" in output


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("suite: {nominal: {famlies: [highway], seeds: [1]}}", "suite.nominal.famlies",
     "allowed keys: families, conditions, seeds"),
    ("suite: {nominal: {families: [mars], seeds: [1]}}", "suite.nominal.families[0]",
     "'highway'"),
    ("suite: {nominal: {conditions: [{weather: snow}], seeds: [1]}}",
     "suite.nominal.conditions[0].weather", "'fog'"),
    ("suite: {max_steps: 0}", "suite.max_steps", "greater than or equal to 1"),
    ("planer: rl", "planer", "allowed keys: planner"),
])
def test_bad_launch_file_names_the_key(write_launch: WriteLaunch, text: str, key: str,
                                       allowed: str) -> None:
    path = write_launch(text, "eval.yaml")
    code, stdout, output = _invoke(str(path))
    assert code == 2 and stdout == ""
    assert str(path) in output and f"{key}:" in output and allowed in output


def test_bad_suite_file_names_the_file_and_key(write_launch: WriteLaunch) -> None:
    path = write_launch("max_steps: 10\nnominal: {seeds: [1]}\nextra: {seeds: [2]}\n",
                        "suite.yaml")
    code, _, output = _invoke("--suite", str(path), "--planner", "rule-privileged")
    assert code == 2 and str(path) in output
    assert "extra: unknown key; allowed keys: max_steps, nominal, adverse" in output


def test_missing_policy_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.zip"
    code, stdout, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "rl",
                                   "--policy", str(missing), "--out", str(tmp_path / "o"))
    assert code == 2 and stdout == ""
    assert f"policy file {missing} not found" in output
    assert output.count("error:") == 1


def test_corrupted_privileged_policy_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"\x00 definitely not a zip")
    code, _, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "privileged",
                              "--policy", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a readable SB3 PPO zip" in output and str(bad) in output


def test_privileged_policy_option_names_its_file_with_any_planner(tmp_path: Path) -> None:
    """`--privileged-policy` sets the privileged planner's policy whatever `--planner`
    says (with `all`, `--policy` goes to the rl planners); a bad file is one error
    naming the option."""
    bad = tmp_path / "priv.zip"
    bad.write_bytes(b"\x00 not a zip")
    code, _, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "all",
                              "--privileged-policy", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a readable SB3 PPO zip" in output and str(bad) in output
    missing = tmp_path / "none.zip"
    code, _, output = _invoke("--suite", str(SMOKE_SUITE), "--planner", "privileged",
                              "--privileged-policy", str(missing), "--out",
                              str(tmp_path / "o2"))
    assert code == 2 and "--privileged-policy" in output and str(missing) in output
