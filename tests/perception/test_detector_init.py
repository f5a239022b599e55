"""`DetectorTraining.init`: a fine-tune starts from the given weights, not from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from perception.datasets import DatasetPlan, generate
from sim.types import CameraSpec

pytest.importorskip("ultralytics")
SHIPPED = Path(__file__).resolve().parents[2] / "perception" / "weights" / "detector.pt"


def _conv_weights(path: Path | str) -> dict[str, object]:
    from perception.offline import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    state = YOLO(str(path)).model.float().state_dict()  # type: ignore[union-attr]
    return {k: v for k, v in state.items() if k.endswith("conv.weight")}


def _max_diff(x: dict[str, object], y: dict[str, object]) -> float:
    return max(float((x[k] - y[k]).abs().max()) for k in x)  # type: ignore[operator]


def test_fine_tune_starts_from_init_weights(tmp_path: Path) -> None:
    from perception.detector import DetectorTraining, train_detector

    data = tmp_path / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    # a vanishing learning rate: each run ends where it started
    common = dict(data=data / "data.yaml", epochs=1, imgsz=96, batch=4, workers=0,
                  device="cpu", lr0=1e-9)
    tuned = train_detector(DetectorTraining(out=tmp_path / "tuned", init=SHIPPED,
                                            fraction=0.5, close_mosaic=0, nbs=4,
                                            freeze=3, **common))
    scratch = train_detector(DetectorTraining(out=tmp_path / "scratch", **common))
    assert not list(data.rglob("*.cache")), "ultralytics' label caches: never written"
    shipped = _conv_weights(SHIPPED)
    assert _max_diff(shipped, _conv_weights(tuned["weights"])) < 0.01  # fp16 checkpoints
    assert _max_diff(shipped, _conv_weights(scratch["weights"])) > 0.1
    args = (tmp_path / "tuned" / "args.yaml").read_text()
    assert "fraction: 0.5" in args and "close_mosaic: 0" in args
    assert "nbs: 4" in args and "freeze: 3" in args
    scratch_args = (tmp_path / "scratch" / "args.yaml").read_text()
    assert "nbs: 64" in scratch_args and "freeze: null" in scratch_args

    # the weights remember their input size; an export for a camera of half that size
    # takes frames scaled by 2 (what RawDetector then does)
    from perception.detector import export_onnx, trained_imgsz
    from perception.raw_detector import RawDetector

    assert trained_imgsz(tuned["weights"]) == 96
    import torch

    from sim.fanout import cores

    torch.set_num_threads(cores())
    onnx = export_onnx(Path(tuned["weights"]), 32, 48)
    assert torch.get_num_threads() == cores(), "ultralytics' export left its thread count"
    raw = RawDetector(onnx, "cpu", 32, 48)
    assert raw.input_hw == (64, 96) and raw.scale == 2.0
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(Path(tuned["weights"]), 40, 50)  # 77x96


def test_missing_init_weights_give_one_clear_error(tmp_path: Path) -> None:
    from perception.detector import DetectorTraining, train_detector

    with pytest.raises(FileNotFoundError, match="init weights"):
        train_detector(DetectorTraining(data=SHIPPED, out=tmp_path / "r",
                                        init=tmp_path / "nope.pt"))


@pytest.mark.parametrize(("field", "value"), [("nbs", 0), ("freeze", -1), ("nbs", 2.5)])
def test_bad_nbs_or_freeze_names_the_field(field: str, value: float) -> None:
    from perception.detector import DetectorTraining

    with pytest.raises(ValueError, match=field):
        DetectorTraining(data=SHIPPED, out=Path("unused"), **{field: value})


class _Stop(Exception):
    pass


@pytest.mark.parametrize("share", ["", "1"])
def test_training_runs_on_every_core_or_the_workers_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: str) -> None:
    """ultralytics sets torch's pool to cores - 1 threads for CPU training (1 of 2 cores);
    train_detector gives it every core (at most 8), or `$DRIVESTACK_CPU_THREADS` in a
    worker, and leaves this process's pool as it found it, even when training fails."""
    import torch
    from ultralytics.engine.trainer import BaseTrainer

    from perception.detector import DetectorTraining, train_detector
    from sim.fanout import CPU_THREADS_ENV, cores

    seen: list[int] = []

    def setup(self: object, *args: object) -> None:
        seen.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(BaseTrainer, "_setup_train", setup)
    monkeypatch.setenv(CPU_THREADS_ENV, share)
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=4, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before > 1 else 2)
    pool = torch.get_num_threads()
    try:
        with pytest.raises(_Stop):
            train_detector(DetectorTraining(data=data / "data.yaml", out=tmp_path / "r",
                                            epochs=1, imgsz=96, batch=2, workers=0,
                                            device="cpu"))
        assert torch.get_num_threads() == pool
    finally:
        torch.set_num_threads(before)
    assert seen == [int(share) if share else min(8, cores())]
