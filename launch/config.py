"""Strict YAML launch files: the typed pydantic models of every job.

Every job reads its launch file with `load_launch(path, ModelClass)` (launch/loader.py,
re-exported here). The models reject unknown keys (`extra="forbid"`) and non-finite
floats, and check ranges; every failure is one `LaunchConfigError` whose message names the
file, the dotted key path and what is allowed there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

import sim
from launch.loader import (  # noqa: F401 - LaunchConfigError, load_launch: re-exported
    MAX_SHOWN,
    LaunchConfigError,
    clip,
    describe,
    load_launch,
    read_yaml_mapping,
    short,
)
from perception.detector import DEVICES, parse_device
from planning.rollout import DECISION_EVERY
from sim.config import FAMILIES, ScenarioConfig, StrictModel, Weight, family_config
from sim.types import CameraSpec

Family = Literal["highway", "rural", "urban"]
Driver = Literal["autopilot", "rule", "rl", "rl-shield", "privileged"]
TimeOfDay = Literal["day", "dusk", "night"]
Weather = Literal["clear", "fog", "rain"]

DEFAULT_RUN_LAUNCH = Path(__file__).with_name("run.yaml")
DEFAULT_DATASET_LAUNCH = Path(__file__).with_name("dataset.yaml")
DEFAULT_TRAIN_PERCEPTION_LAUNCH = Path(__file__).with_name("train_perception.yaml")
DEFAULT_TRAIN_PLANNER_LAUNCH = Path(__file__).with_name("train_planner_batch.yaml")
"""The default `drivestack train-planner` recipe: the batched one the shipped planner.zip
and planner_privileged.zip come from (`--source privileged` for the latter)."""

_FAMILY_TO_ENV_ID = {family: env_id for env_id, family in sim.ENV_IDS.items()}
_CAMERA_DEFAULTS = CameraSpec()

MAX_COUNT = 1 << 31
"""Largest count (episodes, frames, steps) in a launch file."""
MAX_STEPS = 100_000
"""Largest number of simulator steps in one episode-sized setting (strides, warm-ups)."""


_Strict = StrictModel  # unknown keys, NaN/inf and booleans for numbers refused


PERCEPTION_DEVICES = DEVICES
PLANNER_DEVICES = "auto | cpu | cuda | cuda:N"


def _device_text(value: Any, allowed: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000:
        return str(value)  # `device: 0` in YAML is an int
    if not isinstance(value, str):
        raise ValueError(f"{short(value)} is not a device; allowed: {allowed}")
    return value.strip().lower()


def _perception_device(value: Any) -> str:
    """auto, cpu, mps, or a CUDA index as ultralytics and `torch_device` name it ("0")."""
    try:
        return parse_device(value)
    except ValueError:
        raise ValueError(f"{short(value)} is not a device; allowed: {DEVICES}") from None


def _planner_device(value: Any) -> str:
    """A device as stable-baselines3 reads it: auto, cpu, cuda or cuda:N."""
    v = _device_text(value, PLANNER_DEVICES)
    if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", v):
        return v
    raise ValueError(f"{short(value)} is not a device; allowed: {PLANNER_DEVICES}")


PerceptionDevice = Annotated[str, BeforeValidator(_perception_device)]
"""Device of a perception job: checked and spelled as ultralytics wants it ("cuda:1" -> "1")."""
PlannerDevice = Annotated[str, BeforeValidator(_planner_device)]
"""Device of the planner's policy (stable-baselines3)."""


class CameraConfig(_Strict):
    """Overrides of the forward camera (`sim.types.CameraSpec`; defaults are its own)."""

    # CameraSpec checks every value, NaN and infinities included, and names the range
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)

    width: int = _CAMERA_DEFAULTS.width
    """Image width [px]."""
    height: int = _CAMERA_DEFAULTS.height
    """Image height [px]."""
    fov_deg: float = _CAMERA_DEFAULTS.fov_deg
    """Horizontal field of view [deg]."""
    mount_height: float = _CAMERA_DEFAULTS.mount_height
    """Height of the optical centre above the ground [m]."""
    mount_forward: float = _CAMERA_DEFAULTS.mount_forward
    """Position of the optical centre ahead of the rear axle [m]."""
    pitch_deg: float = _CAMERA_DEFAULTS.pitch_deg
    """Downward pitch of the optical axis [deg]."""

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        self.spec()  # CameraSpec validates ranges and raises ValueError naming the value
        return self

    def spec(self) -> CameraSpec:
        """The `CameraSpec` these settings describe."""
        return CameraSpec(**self.model_dump())


class VideoConfig(_Strict):
    """Which episodes are recorded as mp4 and how."""

    enabled: bool = True
    fps: int = Field(default=15, ge=1, le=120, description="frames per second of the mp4")
    episodes: int = Field(default=1, ge=0, le=MAX_COUNT,
                          description="record at most the first N episodes")


class RunConfig(_Strict):
    """Launch file of `drivestack run`: episodes of one scenario family with a driver.

    `family` also accepts a registered env id (`drivestack/Highway-v0`). `scenario` holds
    overrides of `sim.config.ScenarioConfig` fields on top of the family defaults; after
    validation it is the full `ScenarioConfig` (`family_config(family, **overrides)`).
    """

    family: Family = "highway"
    episodes: int = Field(default=3, ge=1, le=MAX_COUNT)
    seed: int = Field(default=0, ge=0, description="episode i is reset with seed + i")
    max_steps: int | None = Field(default=None, ge=1, le=MAX_COUNT,
                                   description="cap on steps per episode")
    scenario: ScenarioConfig = Field(default_factory=lambda: family_config("highway"))
    camera: CameraConfig = CameraConfig()  # frozen, so one shared default is safe
    out: Path = Field(default=Path("runs/run"), description="output folder, relative to the cwd")
    video: VideoConfig = VideoConfig()
    overlays: bool = Field(default=True, description="ground-truth boxes and lanes in the mp4")
    perception: bool = Field(
        default=False, description="predicted boxes (shipped detector) beside the ground truth")
    driver: Driver = Field(
        default="autopilot",
        description="autopilot (the sim's, on ground truth) | rule (rule-based planner on "
                    "perception) | rl (shipped RL policy on perception) | rl-shield (the same "
                    "behind the safety shield) | privileged (privileged RL policy on the "
                    "exact scene)")
    policy: Path | None = Field(default=None, description="policy zip for rl / rl-shield / "
                                                          "privileged "
                                                          "(default: the shipped one)")

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """Map an env id to its family and put the scenario overrides on top of the
        family's defaults, so pydantic reports bad override keys at `scenario.<key>`."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        family = data.get("family", "highway")
        if isinstance(family, str) and family in sim.ENV_IDS:
            family = data["family"] = sim.ENV_IDS[family]
        overrides = data.get("scenario")
        if overrides is None:
            overrides = {}
        if isinstance(overrides, Mapping) and family in FAMILIES:
            base = family_config(str(family)).model_dump()
            data["scenario"] = {**base, "family": family, **overrides}
        return data

    @model_validator(mode="after")
    def _check_family(self) -> RunConfig:
        if self.scenario.family != self.family:
            raise ValueError(
                f"scenario.family {self.scenario.family!r} differs from family "
                f"{self.family!r}; set the family once, with the top-level `family` key")
        if self.policy is not None and self.driver == "autopilot":
            raise ValueError("policy: the autopilot drives without a policy; set driver: rl, "
                             "rl-shield or privileged, or drop `policy`")
        return self

    @property
    def env_id(self) -> str:
        """The registered gymnasium id of `family`."""
        return _FAMILY_TO_ENV_ID[self.family]


def _plan_default(name: str) -> Any:
    from perception.datasets import DatasetPlan

    return dict(getattr(DatasetPlan(), name))


class DatasetConfig(_Strict):
    """Launch file of `drivestack dataset`: which frames to render and how to mix the
    conditions (weights need not sum to one; rare conditions stay rare by default)."""

    out: Path = Field(default=Path("data/perception"), description="dataset folder")
    frames: int = Field(default=2000, ge=1, le=MAX_COUNT)
    frames_per_episode: int = Field(default=40, ge=1, le=MAX_STEPS)
    stride: int = Field(default=5, ge=1, le=MAX_STEPS,
                        description="steps between two recorded frames")
    warmup: int = Field(default=15, ge=0, le=MAX_STEPS,
                        description="steps before the first frame")
    seed: int = Field(default=0, ge=0, description="episode k is reset with seed + k")
    # the mix defaults are perception.datasets.DatasetPlan's (one place for them)
    families: dict[Family, Weight] = Field(default_factory=lambda: _plan_default("families"))
    time_of_day: dict[TimeOfDay, Weight] = Field(
        default_factory=lambda: _plan_default("time_of_day"))
    weather: dict[Weather, Weight] = Field(default_factory=lambda: _plan_default("weather"))
    camera: CameraConfig = CameraConfig()
    image_format: Literal["jpg", "png"] = "jpg"

    @model_validator(mode="after")
    def _weights(self) -> DatasetConfig:
        for name in ("families", "time_of_day", "weather"):
            w = getattr(self, name)
            if not w or min(w.values()) < 0 or sum(w.values()) <= 0:
                raise ValueError(f"{name}: weights must be >= 0 with a positive sum, "
                                 f"got {short(w)}")
        return self


class DetectorConfig(_Strict):
    """The object detector part of `drivestack train-perception`."""

    architecture: Literal["yolo11n", "yolo11s", "rtdetr-l"] = "yolo11n"
    epochs: int = Field(default=30, ge=1, le=100_000)
    imgsz: int = Field(default=320, ge=32, le=8192, description="training image size [px]")
    batch: int = Field(default=16, ge=1, le=1 << 16)
    workers: int = Field(default=2, ge=0, le=1024)
    hours: float | None = Field(default=None, gt=0, le=10_000, description=(
        "wall-clock budget [h]; overrides epochs (the schedule fits the budget)"))
    cache: bool = Field(default=False, description="decode training images once into RAM")
    init: Path | None = Field(default=None, description=(
        "start from these detector weights (a fine-tune) instead of from scratch"))
    lr0: float | None = Field(default=None, gt=0, le=1, description=(
        "initial learning rate (ultralytics lr0; default 0.01)"))
    fraction: float = Field(default=1.0, gt=0, le=1, description=(
        "share of the training split to use each epoch (ultralytics fraction)"))
    close_mosaic: int = Field(default=10, ge=0, le=100_000, description=(
        "last epochs trained without mosaic (ultralytics close_mosaic; >= epochs: none)"))
    nbs: int | None = Field(default=None, ge=1, le=1 << 16, description=(
        "nominal batch size (ultralytics nbs; default 64): ceil(nbs / batch) batches make "
        "one optimizer step"))
    freeze: int | None = Field(default=None, ge=0, le=1000, description=(
        "freeze the first this many layers (ultralytics freeze)"))


class LaneConfig(_Strict):
    """The lane model part of `drivestack train-perception`."""

    backbone: Literal["cnn", "vit"] = Field(
        default="cnn", description="cnn (MobileNetV3-Small) | vit (small ViT)")
    epochs: int = Field(default=30, ge=1, le=100_000)
    batch: int = Field(default=32, ge=1, le=1 << 20)
    lr: float = Field(default=1e-3, gt=0, le=1, description="peak learning rate (one-cycle)")
    init: Path | None = Field(default=None, description=(
        "start from these lane weights (a fine-tune) instead of from scratch"))


class RefinerConfig(_Strict):
    """The box refiner part of `drivestack train-perception` (perception/refine.py)."""

    detector: Path | None = Field(default=None, description=(
        "detector whose boxes it learns to refine (default: the one trained in the same "
        "run, else the shipped one)"))
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch: int = Field(default=256, ge=1, le=1 << 20)
    lr: float = Field(default=3e-3, gt=0, le=1, description="peak learning rate (one-cycle)")
    width: int = Field(default=16, ge=4, le=1024, description="channels of its convolutions")
    iou_weight: float = Field(default=0.5, ge=0, le=10, description=(
        "exponent of its edge confidence in the final score (0: scores unchanged)"))
    frames: int | None = Field(default=None, ge=1, description=(
        "training frames used (the first of the split; default all)"))
    val_frames: int | None = Field(default=None, ge=1, description=(
        "validation frames scored at the end (default all)"))
    min_conf: float = Field(default=0.01, gt=0, lt=1, description=(
        "detector confidence of the boxes it learns from"))
    jitter: int = Field(default=1, ge=0, le=1000, description=(
        "copies of each labelled box moved by about a pixel, per frame"))


class TrainPerceptionConfig(_Strict):
    """Launch file of `drivestack train-perception`."""

    data: Path = Field(default=Path("data/perception"), description="dataset folder")
    out: Path = Field(default=Path("runs/perception"), description="training runs folder")
    seed: int = Field(default=0, ge=0)
    device: PerceptionDevice = Field(default="auto", description=PERCEPTION_DEVICES)
    models: list[Literal["detector", "refiner", "lanes"]] = Field(
        default=["detector", "refiner", "lanes"], min_length=1,
        description="which models to train (in this order)")
    detector: DetectorConfig = DetectorConfig()
    refiner: RefinerConfig = RefinerConfig()
    lanes: LaneConfig = LaneConfig()



class TrainPlannerConfig(_Strict):
    """Launch file of `drivestack train-planner` (see planning.train.PlannerTraining)."""

    out: Path = Field(default=Path("runs/planner"), description="run folder")
    algo: Literal["ppo", "sac"] = Field(
        default="ppo", description="ppo (meta-actions) | sac (continuous controls)")
    source: Literal["emulated", "privileged", "perception"] = Field(
        default="emulated", description=(
            "scene the policy sees while training: emulated perception, the exact scene, "
            "or the stack's perception on rendered frames (slow on a CPU; a GPU's job)"))
    perceiver_device: PerceptionDevice = Field(default="cpu", description=(
        "source perception: where the frames are drawn and perceived (cpu, cuda, ...)"))
    render_threads: int = Field(default=1, ge=1, le=256, description=(
        "source perception, vec_env batch: host threads recording the frames' polygons"))
    families: list[Family] = Field(default=["highway", "rural", "urban"], min_length=1)
    total_timesteps: int = Field(default=200_000, ge=1, le=1 << 40,
                                 description="agent decisions")
    n_envs: int = Field(default=4, ge=1, le=4096)
    decision_every: int = Field(default=DECISION_EVERY, ge=1, le=100,
                                description="simulator steps a decision (15 Hz)")
    seed: int = Field(default=0, ge=0)
    learning_rate: float = Field(default=3e-4, gt=0, le=1)
    n_steps: int = Field(default=256, ge=2, le=1 << 20, description="PPO rollout length per env")
    batch_size: int = Field(default=256, ge=2, le=1 << 20)
    n_epochs: int = Field(default=10, ge=1, le=1000, description="PPO passes over a rollout")
    gamma: float = Field(default=0.97, ge=0.0, le=1.0, description=(
        "discount per decision (0.97: about 33 decisions, 6.6 s; 0.99: 100, 20 s)"))
    net_arch: list[Annotated[int, Field(ge=1, le=1 << 16)]] = Field(
        default=[128, 128], min_length=1, max_length=16)
    eval_every: int = Field(default=20_000, ge=1, le=1 << 40)
    eval_episodes: int = Field(default=6, ge=1, le=100_000)
    checkpoint_every: int = Field(default=50_000, ge=1, le=1 << 40)
    device: PlannerDevice = Field(default="cpu", description=(
        f"{PLANNER_DEVICES} (small MLPs: cpu)"))
    vec_env: Literal["batch", "subprocess", "dummy"] = Field(default="batch", description=(
        "batch: all envs as one batch of worlds in this process (privileged or emulated, "
        "ppo, shield too); subprocess: SubprocVecEnv (spawn); dummy: DummyVecEnv"))
    batch_workers: int = Field(default=1, ge=1, le=256, description=(
        "vec_env batch: processes the batch is split over (one per core)"))
    torch_threads: int | None = Field(default=None, ge=1, le=1024, description=(
        "torch threads of the policy (null: 1 when batch workers hold the cores)"))
    imitation_steps: int = Field(
        default=0, ge=0, description="warm start: rule-planner decisions cloned before RL")
    imitation_epochs: int = Field(default=10, ge=1, le=100_000)
    shield: bool | Literal["advise"] = Field(default=False, description=(
        "true: train behind the safety shield (planning.shield; drive the result as "
        "rl-shield); advise: the shield only judges the policy's actions, which run "
        "(with shield_penalty: its safety checks shape the reward of a bare policy)"))
    shield_penalty: float = Field(default=0.0, ge=0.0, le=1e6, description=(
        "with shield: taken off the reward of each decision the shield vetoes, or would "
        "veto with advise (so the policy learns to need the shield less)"))
    reward_weights: dict[str, float] = Field(default={}, description=(
        "overrides of sim.rewards.RewardWeights (e.g. {ttc: -1.0, collision: -20.0})"))
    feature_set: Literal["control", "path", "memory"] = Field(default="control", description=(
        "the policy's observation (planning.features.FEATURE_SETS): control (64 features, "
        "the shipped policies'), path (+ the paths' gaps and safe speeds, 73), memory (+ "
        "what it remembers beside it, 78)"))

    @model_validator(mode="after")
    def _shield_penalty(self) -> TrainPlannerConfig:
        if self.shield_penalty and not self.shield:
            raise ValueError("shield_penalty needs shield: true")
        return self

    @model_validator(mode="after")
    def _rewards(self) -> TrainPlannerConfig:
        from sim.rewards import RewardWeights

        try:
            RewardWeights.from_dict(self.reward_weights)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return self
    scenario: dict[str, Any] = Field(
        default={}, description="overrides of sim.config.ScenarioConfig for every family "
                                "(e.g. {episode_seconds: 30})")

    @model_validator(mode="after")
    def _scenario(self) -> TrainPlannerConfig:
        from sim.config import family_config

        try:
            family_config("highway", **self.scenario)
        except ValidationError as exc:
            key, text = describe(exc.errors()[0], ScenarioConfig)
            raise ValueError(f"scenario.{key}: {text}" if key else f"scenario: {text}"
                             ) from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scenario: {clip(str(exc), 4 * MAX_SHOWN)}") from None
        return self
