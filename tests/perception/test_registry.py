"""perception.registry: one place names the current detector; promotion, rollback,
checked files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launch.cli import app
from perception.detector import DEFAULT_WEIGHTS, FAST_WEIGHTS
from perception.registry import SHIPPED, Registry, RegistryError, current_detector, sha256_file

runner = CliRunner()


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("DRIVESTACK_REGISTRY", str(tmp_path / "registry"))
    return Registry()


def test_the_shipped_detector_is_current_in_an_empty_registry(reg: Registry) -> None:
    assert current_detector() == DEFAULT_WEIGHTS
    assert [e.name for e in reg.entries()] == [SHIPPED]


def test_promote_and_rollback(reg: Registry) -> None:
    entry = reg.register(FAST_WEIGHTS, "fast-1", metrics={"map": 0.5}, run="test")
    assert current_detector() == DEFAULT_WEIGHTS, "registering does not promote"
    assert entry.sha256 == sha256_file(FAST_WEIGHTS) and entry.path.is_file()
    reg.promote("fast-1")
    assert current_detector() == entry.path
    reg.register(FAST_WEIGHTS, "fast-2")
    reg.promote("fast-2")
    assert reg.rollback().name == "fast-1" and current_detector() == entry.path
    assert reg.rollback().name == SHIPPED and current_detector() == DEFAULT_WEIGHTS
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_the_perceiver_loads_the_promoted_detector(reg: Registry) -> None:
    from perception.perceiver import Perceiver

    entry = reg.register(FAST_WEIGHTS, "fast")
    reg.promote("fast")
    p = Perceiver(device="cpu", lanes=False, refine=False)
    assert p.source_weights == entry.path


def test_an_entry_carries_its_refiner_score_exponent(reg: Registry) -> None:
    from perception.perceiver import Perceiver

    assert Perceiver(device="cpu", lanes=False).refiner.spec.iou_weight == 0.5  # shipped
    entry = reg.register(FAST_WEIGHTS, "fast", refiner_iou_weight=0.125)
    assert entry.refiner_iou_weight == 0.125 and reg.get("fast").refiner_iou_weight == 0.125
    assert reg.register(FAST_WEIGHTS, "plain").refiner_iou_weight is None
    reg.promote("fast")
    assert Perceiver(device="cpu", lanes=False).refiner.spec.iou_weight == 0.125
    # an explicit exponent wins; other weights than the current ones keep the refiner's
    assert Perceiver(device="cpu", lanes=False, refiner_iou_weight=0.0
                     ).refiner.spec.iou_weight == 0.0
    assert Perceiver(weights=FAST_WEIGHTS, device="cpu", lanes=False
                     ).refiner.spec.iou_weight == 0.5
    reg.promote("plain")
    assert Perceiver(device="cpu", lanes=False).refiner.spec.iou_weight == 0.5
    for bad in (-0.1, 11.0, float("nan")):
        with pytest.raises(ValueError, match="refiner_iou_weight"):
            reg.register(FAST_WEIGHTS, "bad", refiner_iou_weight=bad)
    assert "bad" not in [e.name for e in reg.entries()]
    doc = json.loads(reg.file.read_text())
    doc["models"]["fast"]["refiner_iou_weight"] = "high"
    reg.file.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="entry 'fast' is damaged"):
        reg.get("fast")


def test_a_changed_file_is_refused_not_used(reg: Registry) -> None:
    entry = reg.register(FAST_WEIGHTS, "fast")
    reg.promote("fast")
    data = bytearray(entry.path.read_bytes())
    data[1000] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="changed since it was registered"):
        current_detector()
    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 0 and current_detector() == DEFAULT_WEIGHTS


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-x", "x" * 65, SHIPPED])
def test_bad_or_taken_names(reg: Registry, name: str) -> None:
    with pytest.raises(RegistryError):
        reg.register(FAST_WEIGHTS, name)
    assert not (reg.root / "models").exists() or not any((reg.root / "models").iterdir())


def test_a_damaged_registry_file_is_one_clear_error(reg: Registry) -> None:
    reg.root.mkdir(parents=True)
    reg.file.write_text('{"format": 1, "current": "ghost", "history": [], "models": {}}')
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 2 and "not a drivestack registry" in result.stderr
    reg.file.write_text("{nope")
    with pytest.raises(RegistryError, match="not valid JSON"):
        current_detector()


def test_cli_register_promote_list(reg: Registry, tmp_path: Path) -> None:
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["models", "register", str(bad), "--name", "bad"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["models", "register", str(FAST_WEIGHTS), "--name", "f"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["models", "promote", "f"]).exit_code == 0
    doc = json.loads(runner.invoke(app, ["models", "list"]).stdout.strip().splitlines()[-1])
    assert doc["current"] == "f" and [m["name"] for m in doc["models"]] == [SHIPPED, "f"]
    result = runner.invoke(app, ["models", "promote", "nope"])
    assert result.exit_code == 2 and "no model 'nope'" in result.stderr
    args = ["models", "register", str(FAST_WEIGHTS), "--name", "g", "--refiner-iou-weight"]
    for bad in ("nan", "11"):
        result = runner.invoke(app, [*args, bad])
        assert result.exit_code == 2 and "refiner_iou_weight" in result.stderr
    assert runner.invoke(app, [*args, "0.25"]).exit_code == 0
    doc = json.loads(runner.invoke(app, ["models", "list"]).stdout.strip().splitlines()[-1])
    assert [m["refiner_iou_weight"] for m in doc["models"]] == [None, None, 0.25]
