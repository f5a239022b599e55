"""No code from data, and damaged weights are one clear error: every model loader refuses a
crafted file whose unpickling would run code (the code never runs), and every loader checks
the weights it reads (checksums, finite values, the model's keys and shapes).

The crafted files carry a payload that creates a marker file when unpickled; each test
checks the marker stays absent. `test_the_payloads_run_code_when_unpickled` shows that the
payloads are real: a plain `torch.load` or SB3's `PPO.load` runs them.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.onnx_cpu import UnreadableModel
from planning.policy import PolicyLoadError

pytest.importorskip("ultralytics")
pytest.importorskip("stable_baselines3")
ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / "perception" / "weights" / "detector.pt"
LANES = ROOT / "perception" / "weights" / "lanes.pt"
POLICIES = sorted((ROOT / "planning" / "weights").glob("*.zip"))
POLICY = ROOT / "planning" / "weights" / "planner.zip"
NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


class Payload:
    """Unpickling this creates `marker` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def evil_pt(tmp_path: Path, marker: Path) -> Path:
    """A torch checkpoint shaped like drivestack's and ultralytics' (spec, state_dict,
    model, ...) whose unpickling runs the payload."""
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "spec": {"backbone": "cnn"},
                "state_dict": {"w": Payload(marker)}, "epochs": 1}, path)
    return path


def _zip_with(src: Path, dst: Path, entries: dict[str, bytes]) -> Path:
    """A copy of zip `src` with some entries replaced."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info.filename, entries.get(info.filename, a.read(info.filename)))
    return dst


@pytest.fixture
def evil_zip(tmp_path: Path, marker: Path) -> Path:
    """The shipped policy zip with its policy.pth replaced by a payload."""
    buf = io.BytesIO()
    torch.save({"mlp_extractor.policy_net.0.weight": Payload(marker)}, buf)
    return _zip_with(POLICY, tmp_path / "evil.zip", {"policy.pth": buf.getvalue()})


def _pickled_data(marker: Path) -> bytes:
    """The shipped policy's `data` entry with its observation space replaced by a payload
    (what SB3's cloudpickle reads)."""
    data = json.loads(zipfile.ZipFile(POLICY).read("data"))
    blob = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data["observation_space"] = {":type:": "<class 'gymnasium.spaces.box.Box'>",
                                 ":serialized:": blob}
    return json.dumps(data).encode()


def test_the_payloads_run_code_when_unpickled(evil_pt: Path, tmp_path: Path,
                                              marker: Path) -> None:
    torch.load(evil_pt, weights_only=False)
    assert marker.is_file()
    marker.unlink()
    from stable_baselines3 import PPO

    with pytest.raises(Exception):  # noqa: B017  (the payload runs first, then SB3 fails)
        PPO.load(_zip_with(POLICY, tmp_path / "d.zip", {"data": _pickled_data(marker)}))
    assert marker.is_file()


# ---------------------------------------------------------------- detector (.pt)


def test_ultralytics_loads_in_its_safe_mode_even_when_imported_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics.nn import tasks

    from perception.offline import safe_load_active, ultralytics_offline

    monkeypatch.setattr(tasks, "SAFE_LOAD", False)  # an import before ultralytics_offline()
    assert not safe_load_active()
    ultralytics_offline()
    assert tasks.SAFE_LOAD and tasks._SafeLoad.SUPPORTED and safe_load_active()


def test_shipped_detectors_load_with_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch.load behind loading the shipped detectors is a weights_only one."""
    from perception.detector import DEFAULT_WEIGHTS, FAST_WEIGHTS, load_detector

    calls: list[object] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for weights, size in ((DEFAULT_WEIGHTS, 480), (FAST_WEIGHTS, 320)):
        model = load_detector(weights)
        assert model.task == "detect" and model.overrides["imgsz"] == size
    assert calls and all(flag is True for flag in calls), calls


def _detector_loaders(path: Path, tmp_path: Path) -> dict[str, Any]:
    from perception.detector import (
        DetectorTraining,
        cached_onnx,
        train_detector,
        trained_imgsz,
    )
    from perception.evaluate import predict_split
    from perception.perceiver import Perceiver
    from perception.raw_detector import RawDetector

    return {
        "Perceiver": lambda: Perceiver(weights=path, device="cpu", lanes=False,
                                       refine=False),
        "predict_split": lambda: predict_split(path, tmp_path, "val"),
        "RawDetector": lambda: RawDetector(path, "cpu", 192, 320),
        "train init": lambda: train_detector(DetectorTraining(
            data=DETECTOR, out=tmp_path / "run", init=path, device="cpu")),
        "trained_imgsz": lambda: trained_imgsz(path),
        "cached_onnx": lambda: cached_onnx(path, 192, 320),
    }


@pytest.mark.parametrize("loader", ["Perceiver", "predict_split", "RawDetector",
                                    "train init", "trained_imgsz", "cached_onnx"])
def test_detector_loaders_refuse_a_crafted_pt(loader: str, evil_pt: Path, tmp_path: Path,
                                              marker: Path) -> None:
    with pytest.raises(UnreadableModel, match=r"evil.pt hold Python objects \(exec\)"
                       ".*would run code.*refused"):
        _detector_loaders(evil_pt, tmp_path)[loader]()
    assert not marker.exists()


def test_without_a_safe_mode_no_detector_pt_is_loaded(monkeypatch: pytest.MonkeyPatch,
                                                      evil_pt: Path, tmp_path: Path,
                                                      marker: Path) -> None:
    import perception.offline as offline
    from perception.detector import load_detector

    monkeypatch.setattr(offline, "safe_load_active", lambda: False)  # an old ultralytics
    for path in (evil_pt, DETECTOR):
        with pytest.raises(offline.SafeLoadUnavailable, match=r"ultralytics>=8\.4\.67"):
            load_detector(path)
    assert not marker.exists()


def _flip(src: Path, dst: Path, entry_suffix: str, byte: int = 1, mask: int = 0x7C) -> Path:
    """A copy of torch zip `src` with bits set in one entry's data (in place: the zip's
    CRC no longer matches)."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(entry_suffix))
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                   info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + byte] |= mask
    dst.write_bytes(bytes(raw))
    return dst


def test_a_damaged_or_non_finite_detector_is_one_clear_error(tmp_path: Path) -> None:
    from perception.detector import load_detector

    with pytest.raises(UnreadableModel, match="flipped.pt is damaged: its entry .* fails its "
                                              "checksum"):
        load_detector(_flip(DETECTOR, tmp_path / "flipped.pt", "data/5"))
    ckpt = torch.load(DETECTOR, weights_only=False)  # the shipped file: trusted
    next(ckpt["model"].parameters()).data[0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(UnreadableModel, match=r"nan.pt: model\.0\.conv\.weight holds NaN"):
        load_detector(tmp_path / "nan.pt")
    (tmp_path / "x.engine").write_bytes(b"")
    with pytest.raises(UnreadableModel, match="expected a .pt file or an .onnx export"):
        load_detector(tmp_path / "x.engine")


def test_an_onnx_export_with_non_finite_weights_is_one_clear_error(tmp_path: Path) -> None:
    from perception.onnx_cpu import check_onnx, export_module

    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    path = export_module(net, torch.zeros(1, 3), tmp_path / "inf.onnx", "x", "y")
    with pytest.raises(UnreadableModel, match="inf.onnx: weight .* holds NaN or infinite"):
        check_onnx(path)


# ---------------------------------------------------------------- lanes and refiner


@pytest.fixture(scope="module")
def tiny_lanes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from perception.datasets import DatasetPlan, generate
    from sim.types import CameraSpec

    out = tmp_path_factory.mktemp("lanes") / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), out)
    return out


def test_lane_and_refiner_loaders_refuse_a_crafted_pt(evil_pt: Path, marker: Path,
                                                      tiny_lanes: Path, tmp_path: Path
                                                      ) -> None:
    from perception.lane_train import LaneTraining, train_lanes
    from perception.lanes import load_lane_model
    from perception.refine import load_refiner

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(evil_pt, run / "last.pt")
    for load in (lambda: load_lane_model(evil_pt), lambda: load_refiner(evil_pt),
                 lambda: train_lanes(LaneTraining(data=tiny_lanes, out=tmp_path / "i",
                                                  epochs=1, batch=4, init=evil_pt)),
                 lambda: train_lanes(LaneTraining(data=tiny_lanes, out=run, epochs=1,
                                                  batch=4, resume=True))):
        with pytest.raises(UnreadableModel, match=r"evil.pt|last.pt") as err:
            load()
        assert "(exec)" in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_eval_perception_exits_2_naming_a_crafted_or_damaged_file(
        evil_pt: Path, marker: Path, tiny_lanes: Path, tmp_path: Path) -> None:
    """The issue's case: `eval-perception` gave NaN lane offsets from a bit-flipped
    lanes.pt and exited 0."""
    from typer.testing import CliRunner

    from launch.cli import app

    flipped = _flip(LANES, tmp_path / "flipped.pt", "data/24")
    common = ["eval-perception", "--data", str(tiny_lanes), "--device", "cpu", "--no-refine"]
    for extra, needle in ((["--weights", str(evil_pt)], "evil.pt hold Python objects"),
                          (["--lane-weights", str(flipped)], "flipped.pt is damaged")):
        result = CliRunner().invoke(app, [*common, *extra])
        assert result.exit_code == 2 and needle in result.stderr, result.output
        assert "Traceback" not in result.output
    assert not marker.exists()


def test_a_bit_flipped_or_non_finite_lane_model_is_one_clear_error(tmp_path: Path) -> None:
    """The issue's case: a bit-flipped lanes.pt loaded and gave NaN offsets."""
    from perception.lanes import LaneModelSpec, build_model, load_lane_model, save_weights

    with pytest.raises(UnreadableModel, match="flipped.pt is damaged"):
        load_lane_model(_flip(LANES, tmp_path / "flipped.pt", "data/24"))
    spec = LaneModelSpec(height=64, width=96, rows=(20, 40, 60), cells=8, hidden=8)
    model = build_model(spec)
    with torch.no_grad():
        model.head[2].bias[0] = float("nan")
    save_weights(model, spec, tmp_path / "nan.pt", {})
    with pytest.raises(UnreadableModel, match=r"nan.pt: head\.2\.bias holds NaN"):
        load_lane_model(tmp_path / "nan.pt")
    blob = torch.load(tmp_path / "nan.pt", weights_only=True)
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if k != "head.2.bias"}
    torch.save(blob, tmp_path / "short.pt")
    with pytest.raises(UnreadableModel, match="short.pt are not a drivestack lane model: "
                                              ".*Missing key.*head.2.bias"):
        load_lane_model(tmp_path / "short.pt")


def test_a_non_finite_lane_resume_checkpoint_is_one_clear_error(tiny_lanes: Path,
                                                                tmp_path: Path) -> None:
    from perception.lane_train import LaneTraining, train_lanes

    (tmp_path / "run").mkdir()
    torch.save({"epochs": 1, "backbone": "cnn", "epoch": 0, "best_f1": 0.0, "history": [],
                "state_dict": {"head.2.bias": torch.tensor([math.inf])},
                "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "run" / "last.pt")
    with pytest.raises(UnreadableModel, match=r"last.pt: head\.2\.bias holds NaN or inf"):
        train_lanes(LaneTraining(data=tiny_lanes, out=tmp_path / "run", epochs=1, batch=4,
                                 resume=True))


def test_a_non_finite_refiner_is_one_clear_error(tmp_path: Path) -> None:
    from perception.refine import RefinerSpec, build_refiner, load_refiner, save_refiner

    model = build_refiner(RefinerSpec(width=4))
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    save_refiner(model, RefinerSpec(width=4), tmp_path / "inf.pt", {})
    with pytest.raises(UnreadableModel, match="inf.pt: .* holds NaN or infinite"):
        load_refiner(tmp_path / "inf.pt", backend="torch")
    blob = torch.load(tmp_path / "inf.pt", weights_only=True)
    blob["spec"]["iou_weight"] = float("nan")
    torch.save(blob, tmp_path / "spec.pt")
    with pytest.raises(UnreadableModel, match="spec.pt are not a drivestack refiner: .*"
                                              "iou_weight"):
        load_refiner(tmp_path / "spec.pt", backend="torch")


# ---------------------------------------------------------------- policies


def test_load_policy_never_unpickles(evil_zip: Path, marker: Path, tmp_path: Path) -> None:
    from planning.policy import load_policy

    with pytest.raises(PolicyLoadError, match=r"evil.zip: its entry policy.pth holds Python "
                                              r"objects \(exec\).*refused"):
        load_policy(evil_zip)
    # SB3 would unpickle `data` (spaces, schedules): we read only its plain fields
    crafted = _zip_with(POLICY, tmp_path / "d.zip", {"data": _pickled_data(marker)})
    assert load_policy(crafted).num_timesteps == load_policy(POLICY).num_timesteps
    assert not marker.exists()


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policies_act_exactly_as_sb3_loads_them(path: Path) -> None:
    from stable_baselines3 import PPO

    from planning.features import CLIP, OBSERVATION_DIMS
    from planning.policy import load_policy

    ours, sb3 = load_policy(path), PPO.load(path, device="cpu")  # trusted: shipped
    dim = int(sb3.observation_space.shape[0])
    assert dim in OBSERVATION_DIMS
    x = np.random.default_rng(0).uniform(-CLIP, CLIP, (512, dim)).astype(np.float32)
    assert np.array_equal(ours.predict(x, deterministic=True)[0],
                          sb3.predict(x, deterministic=True)[0])
    with torch.no_grad():
        logits = [m.policy.get_distribution(torch.from_numpy(x)).distribution.logits
                  for m in (ours, sb3)]
    assert torch.equal(*logits)
    assert ours.num_timesteps == sb3.num_timesteps
    assert ours.observation_space == sb3.observation_space
    assert ours.action_space == sb3.action_space


def _policy_with(tmp_path: Path, name: str, change: Any) -> Path:
    state = torch.load(io.BytesIO(zipfile.ZipFile(POLICY).read("policy.pth")),
                       weights_only=True)
    change(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return _zip_with(POLICY, tmp_path / name, {"policy.pth": buf.getvalue()})


def test_a_damaged_or_mismatched_policy_is_one_clear_error(tmp_path: Path) -> None:
    from planning.policy import load_policy

    def nan(s: dict) -> None:
        s["action_net.bias"][2] = float("nan")

    def narrow(s: dict) -> None:
        s["mlp_extractor.policy_net.0.weight"] = s["mlp_extractor.policy_net.0.weight"][:, :10]

    def extra(s: dict) -> None:
        s["log_std"] = torch.zeros(5)

    cases = {"nan.zip": (nan, r"policy.action_net.bias holds NaN"),
             "narrow.zip": (narrow, r"pi layers \(out, in\) \[\(128, 10\).*\(\d+,\) feature "
                                    r"vectors \(or the first 73, 64 or 61"),
             "extra.zip": (extra, r"missing none, unexpected \['log_std'\]")}
    for name, (change, message) in cases.items():
        with pytest.raises(PolicyLoadError, match=f"policy file .*{name}.*{message}"):
            load_policy(_policy_with(tmp_path, name, change))
    raw = bytearray(POLICY.read_bytes())
    with zipfile.ZipFile(POLICY) as z:
        info = z.getinfo("policy.pth")
    raw[info.header_offset + 200] ^= 0x10  # inside policy.pth's data
    (tmp_path / "flip.zip").write_bytes(bytes(raw))
    with pytest.raises(PolicyLoadError, match="flip.zip is not a readable SB3 PPO zip: "
                                              "BadZipFile: Bad CRC-32"):
        load_policy(tmp_path / "flip.zip")


def _tiny_run(out: Path, **kw: Any) -> Any:
    from planning.train import PlannerTraining

    kw = {"total_timesteps": 32, "eval_every": 10_000, "checkpoint_every": 10_000,
          "net_arch": (8,), **kw}
    return PlannerTraining(out=out, families=("highway",), n_envs=1,
                           n_steps=32, batch_size=32,
                           eval_episodes=1, vec_env="dummy",
                           env_kwargs={"scenario": {"episode_seconds": 2}}, **kw)


def test_train_planner_resume_never_unpickles(evil_zip: Path, marker: Path,
                                              tmp_path: Path) -> None:
    from planning.train import train_planner

    out = tmp_path / "run"
    with pytest.raises(PolicyLoadError, match="evil.zip: its entry policy.pth holds Python"):
        train_planner(_tiny_run(out), resume=evil_zip)
    assert not marker.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is False and "PolicyLoadError" in summary["error"]
    assert summary["final"] is None and summary["best"] is None
    # a policy of another feature set (61 or 73 inputs; the run observes 64) can be
    # driven, not trained on
    from planning.features import (
        DEFAULT_FEATURE_SET,
        FEATURE_SETS,
        LEGACY_FEATURE_DIM,
        PATH_FEATURE_DIM,
    )
    from planning.policy import fresh_ppo, load_policy

    for dim in (LEGACY_FEATURE_DIM, PATH_FEATURE_DIM):
        legacy = tmp_path / f"legacy{dim}.zip"
        fresh_ppo([8], obs_dim=dim).save(legacy)
        assert load_policy(legacy).observation_space.shape == (dim,)
        with pytest.raises(PolicyLoadError, match=rf"legacy{dim}.zip takes {dim} features, this "
                                                  r"run's feature_set 64"):
            train_planner(_tiny_run(out), resume=legacy)
    # a checkpoint of another network: the launch file's net_arch is (8,), this one's (4,)
    dim = FEATURE_SETS[DEFAULT_FEATURE_SET]
    other = tmp_path / "other"
    train_planner(_tiny_run(other, net_arch=(4,)))
    with pytest.raises(PolicyLoadError, match=r"final.zip: policy mlp_extractor.policy_net.0"
                                              rf".weight has shape \(4, {dim}\), the model "
                                              rf"\(8, {dim}\)"):
        train_planner(_tiny_run(out), resume=other / "final.zip")


def test_train_planner_names_only_files_it_wrote(tmp_path: Path) -> None:
    """A best_model.zip left by an earlier run is not this run's best (no evaluation ran
    here); a resumed run continues the checkpoint's step count and weights."""
    from planning.policy import load_policy
    from planning.train import train_planner

    out = tmp_path / "run"
    out.mkdir()
    (out / "best_model.zip").write_bytes(b"an earlier run's")
    summary = train_planner(_tiny_run(out))
    assert summary["best"] is None and summary["evaluations"] == 0
    assert summary["completed"] is True and Path(summary["final"]).is_file()
    assert json.loads((out / "summary.json").read_text())["best_mean_reward"] is None
    assert (out / "best_model.zip").read_bytes() == b"an earlier run's"
    first = load_policy(out / "final.zip")
    resumed = train_planner(_tiny_run(tmp_path / "more", total_timesteps=64),
                            resume=out / "final.zip")
    assert resumed["timesteps"] == 64 and resumed["trained_now"] == 32
    again = load_policy(tmp_path / "more" / "final.zip")
    assert again.num_timesteps == 64
    w0, w1 = (m.policy.state_dict()["action_net.weight"] for m in (first, again))
    assert w0.shape == w1.shape and not torch.equal(w0, w1)  # trained on from there
    evaluated = train_planner(_tiny_run(tmp_path / "evaluated", eval_every=16))
    assert evaluated["evaluations"] == 2 and evaluated["best"] is not None
    assert load_policy(evaluated["best"]).num_timesteps in (16, 32)  # this run's own


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "banana", "", "cuda:", "cuda:-1",
                                    "0.5", "cpu cpu"])
def test_a_free_form_device_lists_the_allowed_names(device: str) -> None:
    from perception.detector import resolve_device

    with pytest.raises(ValueError, match=r"allowed: auto \| cpu \| cuda \| cuda:N \| N \| mps"):
        resolve_device(device)


def test_device_names_resolve() -> None:
    from perception.detector import resolve_device

    assert resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") in ("cpu", "mps", "0")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0", "0"):
            with pytest.raises(ValueError, match="0 CUDA device"):
                resolve_device(name)


@settings(max_examples=25, deadline=None)
@given(st.one_of(NOT_FINITE, st.floats(allow_nan=False).filter(lambda v: not 0 <= v <= 1)))
def test_perceiver_conf_outside_0_1_is_refused(conf: float) -> None:
    from perception.perceiver import Perceiver
    from perception.raw_detector import RawDetector

    with pytest.raises(ValueError, match=r"conf: must be a finite number in \[0, 1\]"):
        Perceiver(conf=conf, device="cpu")
    with pytest.raises(ValueError, match=r"conf: must be a finite number in \[0, 1\]"):
        RawDetector(DETECTOR, "cpu", 192, 320, conf=conf)
    with pytest.raises(ValueError, match=r"iou: must be a finite number in \[0, 1\]"):
        RawDetector(DETECTOR, "cpu", 192, 320, iou=conf)


@settings(max_examples=10, deadline=None)
@given(NOT_FINITE)
def test_float_arguments_must_be_finite(value: float) -> None:
    from perception.detector import DetectorTraining
    from perception.evaluate import predict_split
    from perception.lane_train import LaneTraining
    from perception.refine import RefinerSpec, load_refiner
    from perception.refine_train import RefinerTraining
    from planning.train import PlannerTraining

    here = Path(".")
    cases = {
        "iou_weight": lambda: RefinerSpec(iou_weight=value),
        "iou_weight ": lambda: load_refiner(iou_weight=value),
        "fraction": lambda: DetectorTraining(data=here, out=here, fraction=value),
        "lr0": lambda: DetectorTraining(data=here, out=here, lr0=value),
        "hours": lambda: DetectorTraining(data=here, out=here, hours=value),
        "lr": lambda: LaneTraining(data=here, out=here, lr=value),
        "min_conf": lambda: RefinerTraining(data=here, out=here, min_conf=value),
        "learning_rate": lambda: PlannerTraining(out=here, learning_rate=value),
        "conf": lambda: predict_split(DETECTOR, here, "val", conf=value),
    }
    for name, make in cases.items():
        with pytest.raises(ValueError, match=f"{name.strip()}: must be a finite number in"):
            make()


# ---------------------------------------------------------------- dtypes, values, warnings


def _as(dtype: torch.dtype, nan: bool = False) -> Any:
    """A state-dict change: every floating tensor cast to `dtype` (a NaN first when
    `nan`)."""
    def change(state: dict) -> None:
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                if nan:
                    v = v.clone()
                    v.view(-1)[0] = float("nan")
                state[k] = v.to(dtype)
    return change


def test_policy_weights_of_another_dtype_or_not_tensors_are_one_clear_error(
        tmp_path: Path) -> None:
    """QA: int64 weights loaded as a meaningless policy (`eval` exited 0), complex64 ones
    with a NaN loaded and failed later, a list or an int was an AttributeError."""
    from planning.policy import (
        fresh_ppo,
        load_parameters,
        load_policy,
        net_arch,
        observation_dim,
        read_policy_zip,
    )

    def values(make: Any) -> Any:
        def change(state: dict) -> None:
            for k in state:
                state[k] = make(state[k])
        return change

    cases = {
        "int64.zip": (_as(torch.int64), r"policy\.\S+ holds torch.int64 values; the model's "
                                         r"are torch.float32 \(floating\)"),
        "c64.zip": (_as(torch.complex64, nan=True), r"policy\.\S+ holds torch.complex64 "
                                                     "values, not real numbers"),
        "list.zip": (values(lambda v: v.tolist()), r"policy\.\S+ is a list, not a tensor"),
        "int.zip": (values(lambda v: 3), r"policy\.\S+ is an int, not a tensor"),
    }
    state0 = read_policy_zip(POLICY).params["policy"]
    arch, dim = net_arch(state0, POLICY), observation_dim(state0)
    for name, (change, message) in cases.items():
        path = _policy_with(tmp_path, name, change)
        with pytest.raises(PolicyLoadError, match=f"policy file .*{name}: {message}"):
            load_policy(path)
        with pytest.raises(PolicyLoadError, match=f"policy file .*{name}: {message}"):
            load_parameters(fresh_ppo(arch, obs_dim=dim), path)
    # the optimizer's moments: floating, as the parameters
    state = torch.load(io.BytesIO(zipfile.ZipFile(POLICY).read("policy.optimizer.pth")),
                       weights_only=True)
    moments = next(iter(state["state"].values()))
    moments["exp_avg"] = moments["exp_avg"].to(torch.int32)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = _zip_with(POLICY, tmp_path / "opt.zip", {"policy.optimizer.pth": buf.getvalue()})
    with pytest.raises(PolicyLoadError, match=r"opt.zip: policy.optimizer state exp_avg of "
                                              r"parameter \d+ holds torch.int32 values"):
        load_parameters(fresh_ppo(arch, obs_dim=dim), path)


def test_lane_and_refiner_weights_of_another_dtype_are_one_clear_error(
        tiny_lanes: Path, tmp_path: Path) -> None:
    """QA: a lanes.pt with complex-NaN or int32 weights loaded (eval-perception exited 0
    with lane F1 0.000), a complex one as training `init` loaded with a ComplexWarning.
    BatchNorm's integer counters stay integers."""
    from perception.lane_train import LaneTraining, train_lanes
    from perception.lanes import LaneModelSpec, build_model, load_lane_model, save_weights
    from perception.refine import RefinerSpec, build_refiner, load_refiner, save_refiner

    spec = LaneModelSpec(height=64, width=96, rows=(20, 40, 60), cells=8, hidden=8)
    save_weights(build_model(spec), spec, tmp_path / "good.pt", {})
    load_lane_model(tmp_path / "good.pt")  # fp16 weights, int64 counters: fine
    blob = torch.load(tmp_path / "good.pt", weights_only=True)
    cases = {"int32.pt": (_as(torch.int32), r"holds torch.int32 values; the model's are "
                                            r"torch.float32 \(floating\)"),
             "complex.pt": (_as(torch.complex64, nan=True), "holds torch.complex64 values"),
             "counter.pt": (lambda s: s.update({k: v.float() for k, v in s.items()
                                                if k.endswith("num_batches_tracked")}),
                            r"num_batches_tracked holds torch.float32 values; the model's "
                            r"are torch.int64 \(integer\)")}
    for name, (change, message) in cases.items():
        state = dict(blob["state_dict"])
        change(state)
        torch.save({**blob, "state_dict": state}, tmp_path / name)
        with pytest.raises(UnreadableModel, match=f"lane weights .*{name}: .*{message}"):
            load_lane_model(tmp_path / name)
    with pytest.raises(UnreadableModel, match="complex.pt: .*complex64"):
        train_lanes(LaneTraining(data=tiny_lanes, out=tmp_path / "i", epochs=1, batch=4,
                                 init=tmp_path / "complex.pt"))
    save_refiner(build_refiner(RefinerSpec(width=4)), RefinerSpec(width=4),
                 tmp_path / "ref.pt", {})
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    _as(torch.int64)(ref["state_dict"])
    torch.save(ref, tmp_path / "ref_int.pt")
    with pytest.raises(UnreadableModel, match="refiner weights .*ref_int.pt: .*torch.int64"):
        load_refiner(tmp_path / "ref_int.pt", backend="torch")


def test_a_lane_resume_checkpoint_of_another_dtype_is_one_clear_error(
        tiny_lanes: Path, tmp_path: Path) -> None:
    from perception.lane_train import LaneTraining, train_lanes

    run = tmp_path / "run"
    train_lanes(LaneTraining(data=tiny_lanes, out=run, epochs=1, batch=4, limit=4))
    good = torch.load(run / "last.pt", weights_only=True)
    for change in (lambda b: _as(torch.complex64)(b["state_dict"]),
                   lambda b: _as(torch.int64)(next(iter(b["optimizer"]["state"].values())))):
        blob = torch.load(run / "last.pt", weights_only=True)
        change(blob)
        torch.save(blob, run / "last.pt")
        with pytest.raises(UnreadableModel, match=r"resume checkpoint .*last.pt: .* holds "
                                                  r"torch.(complex64|int64) values"):
            train_lanes(LaneTraining(data=tiny_lanes, out=run, epochs=1, batch=4, limit=4,
                                     resume=True))
        torch.save(good, run / "last.pt")


def _protocol4_pth(marker: Path) -> bytes:
    """A torch zip whose data.pkl is a protocol-4 pickle of the payload (torch warns about
    the protocol before refusing it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Payload(marker)}, protocol=4))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_a_refused_crafted_file_is_one_message_without_torch_warnings(
        marker: Path, tmp_path: Path) -> None:
    """QA: torch printed "Detected pickle protocol 4" before drivestack's error line."""
    import warnings

    from perception.lanes import load_lane_model
    from planning.policy import load_policy

    evil = _zip_with(POLICY, tmp_path / "evil4.zip", {"policy.pth": _protocol4_pth(marker)})
    (tmp_path / "evil4.pt").write_bytes(_protocol4_pth(marker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PolicyLoadError, match="evil4.zip: .*refused"):
            load_policy(evil)
        with pytest.raises(UnreadableModel, match="evil4.pt holds Python objects.*refused"):
            load_lane_model(tmp_path / "evil4.pt")
    assert not [str(w.message) for w in caught]
    assert not marker.exists()


# ---------------------------------------------------------------- datasets


def _lane_dataset(src: Path, dst: Path, line: int, record: Any) -> Path:
    """A copy of dataset `src` with line `line` (1-based) of lanes/train.jsonl replaced by
    `record` (JSON text as it is)."""
    shutil.copytree(src, dst)
    path = dst / "lanes" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[line - 1] = record if isinstance(record, str) else json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    return dst


def test_a_damaged_lane_dataset_names_the_file_and_line(tiny_lanes: Path,
                                                        tmp_path: Path) -> None:
    """QA: {"image": 5} was a TypeError in load_split, a ragged lanes row a numpy
    ValueError in slot_targets."""
    from perception.lane_train import LaneTraining, load_split, train_lanes
    from perception.lanes import slot_targets

    first = json.loads((tiny_lanes / "lanes" / "train.jsonl").read_text().splitlines()[0])
    ragged = {**first, "lanes": [first["lanes"][0][:-1], *first["lanes"][1:]]}
    cases = [({"image": 5}, "expected a JSON object with an image path"),
             (ragged, "lanes must be a list of boundaries, each a list of"),
             ({**first, "ego_boundaries": [0, 99]}, "ego_boundaries must be two indices"),
             ({**first, "h_samples": "x"}, "h_samples must be a list of row indices"),
             ({**first, "ego_lane_offset": None}, "ego_lane_offset must be a finite number"),
             ({k: v for k, v in first.items() if k != "boundary_ids"},
              "lane record without boundary_ids"),
             ("{not json", "not a JSON line"),
             ("[1, 2]", "expected a JSON object")]
    for i, (record, message) in enumerate(cases):
        data = _lane_dataset(tiny_lanes, tmp_path / f"d{i}", 2, record)
        with pytest.raises(ValueError, match=f"lanes/train.jsonl line 2: {message}"):
            load_split(data, "train")
    with pytest.raises(ValueError, match="train.jsonl line 2: lanes must be"):
        train_lanes(LaneTraining(data=tmp_path / "d1", out=tmp_path / "run", epochs=1,
                                 batch=4))
    with pytest.raises(ValueError, match="lanes must be a list of boundaries"):
        slot_targets(ragged)


# ---------------------------------------------------------------- Perceiver arguments


@pytest.fixture(scope="module")
def plain_perceiver() -> Any:
    """The PyTorch detector through ultralytics' predict: no export, no lanes."""
    from perception.perceiver import Perceiver

    return Perceiver(weights=DETECTOR, device="cpu", lanes=False, refine=False)


def test_perceiver_camera_is_a_camera_spec_or_a_mapping_of_its_fields() -> None:
    """QA: camera={"width": 96, "height": 64} or camera="cam" was an AttributeError."""
    from types import MappingProxyType

    from perception.perceiver import Perceiver
    from sim.types import CameraSpec

    for camera in ({"width": 96, "height": 64}, MappingProxyType({"width": 96, "height": 64})):
        p = Perceiver(weights=DETECTOR, device="cpu", lanes=False, refine=np.False_,
                      camera=camera)
        assert p.camera == CameraSpec(width=96, height=64)
        assert len(p([np.zeros((64, 96, 3), np.uint8)])) == 1
    for camera, error, message in (
            ("cam", TypeError, "camera must be a CameraSpec, a dict of its fields or None, "
                               "got str"),
            (5, TypeError, "camera must be a CameraSpec"),
            ({"width": 96, "lens": 1}, ValueError, r"camera: unknown key\(s\) \['lens'\]"),
            ({"width": -1}, ValueError, "width, height")):
        with pytest.raises(error, match=message):
            Perceiver(weights=DETECTOR, device="cpu", lanes=False, refine=False, camera=camera)


def test_perceiver_frames_that_are_not_a_batch_of_images_are_one_clear_error(
        plain_perceiver: Any) -> None:
    """QA: Perceiver()(None) was "'NoneType' object is not iterable"."""
    shape = r"uint8 RGB .*of shape \(192, 320, 3\)"
    for frames in (None, 5, "frames", b"x", {"a": 1}):
        with pytest.raises(TypeError, match=f"frames: expected a list of {shape}.* got "
                                            f"{type(frames).__name__}"):
            plain_perceiver(frames)
    nan = np.full((192, 320, 3), np.nan, np.float32)
    for frames in ([nan], [np.zeros((192, 320, 3), np.int64)], [np.zeros((192, 320, 4),
                   np.uint8)], [None], [[[1, 2], [3]]], ["img"],
                   np.zeros((2, 192, 320)), np.zeros(5, np.uint8),
                   np.zeros((1, 2, 192, 320, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"expected .*uint8 .*\(192, 320, 3\)|"
                                             r"\(B, 192, 320, 3\)"):
            plain_perceiver(frames)
    assert plain_perceiver([]) == []
    assert len(plain_perceiver(np.zeros((2, 192, 320, 3), np.uint8))) == 2


def test_perceiver_flags_must_be_bools() -> None:
    """QA: lanes="no" and refine="no" (truthy strings) were taken as True."""
    from perception.perceiver import Perceiver

    for name in ("lanes", "refine", "int8", "bf16"):
        for value in ("no", 0, None, 1.0):
            with pytest.raises(TypeError, match=f"{name} must be True or False, got "
                                                f"{type(value).__name__}"):
                Perceiver(weights=DETECTOR, device="cpu", **{name: value})


def test_perceiver_imgsz_is_the_size_that_runs_or_refused() -> None:
    """QA: Perceiver(imgsz=64|640|8192, device="cpu") ran the cached ONNX export at its own
    size and said nothing."""
    from perception.detector import DEFAULT_WEIGHTS, trained_imgsz
    from perception.perceiver import Perceiver

    size = trained_imgsz(DEFAULT_WEIGHTS)
    for imgsz in (64, 640):
        with pytest.raises(ValueError, match=f"imgsz={imgsz}: the detector runs as the ONNX "
                                             r"export .*fixed at 480x288.*weights= a \.pt"):
            Perceiver(imgsz=imgsz, device="cpu", lanes=False, refine=False)
    assert Perceiver(imgsz=size, device="cpu", lanes=False, refine=False).imgsz == (288, 480)
    honored = Perceiver(weights=DETECTOR, imgsz=320, device="cpu", lanes=False, refine=False)
    assert honored.imgsz == 320  # the .pt on the CPU: ultralytics' predict at that size


@pytest.mark.parametrize("imgsz", [100_000, 8192, 16, 100, 0, -32, 320.0, True])
def test_imgsz_is_bounded_before_anything_runs(imgsz: Any, tmp_path: Path) -> None:
    """QA: `eval-perception --imgsz 100000` exhausted 24 GB of memory."""
    from perception.evaluate import predict_split
    from perception.perceiver import Perceiver
    from perception.raw_detector import RawDetector

    message = r"imgsz: must be an? (integer|multiple of 32).* in \[32, 4096\] px"
    for make in (lambda: predict_split(DETECTOR, tmp_path, "val", imgsz=imgsz),
                 lambda: RawDetector(DETECTOR, "cpu", 192, 320, imgsz=imgsz),
                 lambda: Perceiver(weights=DETECTOR, device="cpu", imgsz=imgsz)):
        with pytest.raises(ValueError, match=message):
            make()


def test_a_rerun_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """SB3's callbacks wrote best_model.zip and checkpoints in place, so a hard link to
    them (a cache, a `cp -al` snapshot) changed with the next run; now every zip is
    written to a new file and renamed."""
    from planning.train import train_planner

    out = tmp_path / "run"
    train_planner(_tiny_run(out, eval_every=16, checkpoint_every=16))
    kept = {}
    for name in ("best_model.zip", "final.zip", "checkpoints/planner_32_steps.zip"):
        link = tmp_path / name.replace("/", "_")
        os.link(out / name, link)
        kept[link] = link.read_bytes()
    train_planner(_tiny_run(out, eval_every=16, checkpoint_every=16, seed=7))
    for link, data in kept.items():
        assert link.read_bytes() == data, link.name
    assert (out / "checkpoints" / "planner_32_steps.zip").read_bytes() != kept[
        tmp_path / "checkpoints_planner_32_steps.zip"], "the run saved a new one"


class _TouchWhenUnpickled:
    """Unpickling this creates the file `path`: code running from data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_training_runs_no_code_from_a_datasets_files(tmp_path: Path) -> None:
    """ultralytics unpickles `labels/*.cache` and runs a data.yaml's `download:` entry as
    code; a dataset from elsewhere could hold either. Detector training reads neither: it
    writes its own dataset file and scans the labels again."""
    import numpy as np

    from perception.datasets import DatasetPlan, generate
    from perception.detector import DetectorTraining, train_detector
    from sim.types import CameraSpec

    data = tmp_path / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    by_cache, by_yaml = tmp_path / "ran_from_cache", tmp_path / "ran_from_yaml"
    for split in ("train", "val"):
        with open(data / "labels" / f"{split}.cache", "wb") as f:
            np.save(f, np.array(_TouchWhenUnpickled(by_cache), dtype=object),
                    allow_pickle=True)
    (data / "data.yaml").write_text(
        f"path: {data}\ntrain: images/train\nval: images/val_missing\nnames: {{0: car}}\n"
        f"download: \"import pathlib; pathlib.Path('{by_yaml}').touch()\"\n")
    result = train_detector(DetectorTraining(data=data / "data.yaml", out=tmp_path / "det",
                                             epochs=1, imgsz=96, batch=4, workers=0,
                                             device="cpu"))
    assert Path(result["weights"]).is_file()
    assert not by_cache.exists() and not by_yaml.exists()


def test_ultralytics_settings_stay_in_drivestacks_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's own YOLO_CONFIG_DIR used to get its settings rewritten and fonts added."""
    from perception.offline import ultralytics_offline

    mine = tmp_path / "my_yolo_config"
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(mine))
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path / "cache"))
    ultralytics_offline()
    assert not mine.exists()
    assert Path(os.environ["YOLO_CONFIG_DIR"]) == tmp_path / "cache" / "ultralytics"
