"""Object detector: ultralytics YOLO (CNN) or RT-DETR (transformer), built from their
model yaml files (no pretrained weights) and trained on a drivestack dataset offline."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perception.offline import cache_dir, require_safe_load, ultralytics_offline
from perception.onnx_cpu import (
    UnreadableModel,
    check_finite,
    check_onnx,
    check_zip_checksums,
    cpu_threads,
    refused_global,
)
from sim.fanout import cores
from sim.outputs import atomic_write_text, not_a_file
from sim.types import check_number

Architecture = Literal["yolo11n", "yolo11s", "rtdetr-l"]
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "detector.pt"
"""Shipped detector weights (see docs/models.md for how they were made). Their ONNX
Runtime export, the fast CPU path, is made locally when first needed (`cached_onnx`)."""
FAST_WEIGHTS = DEFAULT_WEIGHTS.with_name("detector_fast.pt")
"""The previous shipped detector, trained at 320 (frames at their own size): less
accurate, but `Perceiver(weights=cached_onnx(FAST_WEIGHTS, 192, 320))` keeps detector +
lanes at 11-13 ms a frame on 2 CPU cores, where the default takes 19.5-23 ms
(bench/README.md)."""
_YAML = {"yolo11n": "yolo11n.yaml", "yolo11s": "yolo11s.yaml", "rtdetr-l": "rtdetr-l.yaml"}


DEVICES = "auto | cpu | cuda | cuda:N | N | mps"
"""The device names drivestack takes (N: a CUDA device index)."""


def parse_device(device: Any) -> str:
    """A device name checked and spelled as ultralytics and `torch_device` read it:
    "auto", "cpu", "mps" or a CUDA index ("cuda", "cuda:N", "N" or the number N -> "N").
    A ValueError listing `DEVICES` for anything else. Needs no torch."""
    if isinstance(device, int) and not isinstance(device, bool):
        device = str(device)  # `device: 0` in YAML
    name = device.strip().lower() if isinstance(device, str) else ""
    if name in ("auto", "cpu", "mps"):
        return name
    index = name.removeprefix("cuda").removeprefix(":")
    if not (name == "cuda" or (index.isdecimal() and index.isascii() and len(index) <= 3
                               and name in (index, f"cuda:{index}"))):
        raise ValueError(f"device={_shown(device)}; allowed: {DEVICES}")
    return str(int(index or 0))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_device(device: str) -> str:
    """`auto` -> CUDA when available, else MPS, else CPU; `cuda`, `cuda:N`, `N` -> the
    CUDA index ("0", "N"); "cpu", "mps" as they are. A ValueError listing `DEVICES` for
    any other name, or for a device this machine does not have."""
    name = parse_device(device)
    if name == "cpu":
        return name
    import torch

    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device='mps' but MPS is not available here; allowed: "
                             f"{DEVICES}")
        return name
    if name != "auto":
        index = int(name)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ValueError(f"device={device!r} but this machine has {count} CUDA "
                             f"device(s); allowed: {DEVICES}")
        return str(index)
    if torch.cuda.is_available():
        return "0"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_detector(weights: Path | str) -> Any:
    """The ultralytics model (YOLO or RT-DETR) of a detector file, never unpickled: a `.pt`
    is read in ultralytics' safe-load mode (`perception.offline.require_safe_load`: torch
    `weights_only` against an allow-list of model classes), after its zip checksums, and
    must be a detect model whose floating weights are all finite; an `.onnx` export must
    parse with finite weights. `FileNotFoundError` for a missing file, `UnreadableModel`
    naming the file for one that is damaged, not a detector, or would run code."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights {path} {not_a_file(path)}")
    if path.suffix == ".pt":
        require_safe_load()
        check_zip_checksums(path, "detector weights")
    elif path.suffix == ".onnx":
        ultralytics_offline()
        check_onnx(path)
    else:
        raise UnreadableModel(f"detector weights {path}: expected a .pt file or an .onnx "
                              "export")
    from ultralytics import YOLO

    try:
        model = YOLO(str(path), task="detect")
    except Exception as exc:  # ultralytics' TypeError for a refused or damaged file, ...
        import pickle

        if isinstance(exc.__cause__, pickle.UnpicklingError):  # the allow-list said no
            raise UnreadableModel(
                f"detector weights {path} hold Python objects{refused_global(exc.__cause__)}"
                " outside ultralytics' allow-list of model classes; loading them would run "
                "code from the file: refused") from None
        raise UnreadableModel(f"detector weights {path} are not a readable ultralytics "
                              f"detector: {type(exc).__name__}: {_message(exc)}") from None
    if path.suffix == ".pt":
        net: Any = model.model
        if model.task != "detect" or not hasattr(net, "state_dict"):
            raise UnreadableModel(f"detector weights {path} are a {model.task} model, not "
                                  "a detector")
        check_finite(net.state_dict(), path, "detector weights")
    return model


def _message(exc: BaseException) -> str:
    """An ultralytics error's first line, without its decoration and its advice to run
    one of its own downloadable models."""
    text = str(exc).replace("ERROR ❌️", "").strip()
    return (text.splitlines() or [""])[0].split(" Use an official")[0][:300]


def torch_device(device: str) -> str:
    """A resolved device ("0", "cpu", "mps") as PyTorch names it ("cuda:0", ...)."""
    return f"cuda:{device}" if device.isdigit() else device


def result_rows(result: Any) -> Any:
    """One ultralytics `Results` as an (n, 6) float32 array: x0, y0, x1, y1, score,
    class id."""
    import numpy as np

    b: Any = result.boxes
    return np.concatenate([np.asarray(b.xyxy.cpu(), np.float32).reshape(-1, 4),
                           np.asarray(b.conf.cpu(), np.float32).reshape(-1, 1),
                           np.asarray(b.cls.cpu(), np.float32).reshape(-1, 1)], 1)


@dataclass(frozen=True)
class DetectorTraining:
    """One training run (ultralytics arguments with drivestack defaults)."""

    data: Path
    """The dataset's data.yaml (from `drivestack dataset`)."""
    out: Path
    """Folder of the run (weights/best.pt, results.csv)."""
    architecture: Architecture = "yolo11n"
    epochs: int = 30
    imgsz: int = 320
    batch: int = 16
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    hours: float | None = None
    """Wall-clock budget: ultralytics `time`, which then overrides `epochs` and fits the
    learning-rate schedule into the budget."""
    cache: bool = False
    """Decode the training images once into RAM (ultralytics `cache="ram"`)."""
    init: Path | None = None
    """Start from these trained weights (a fine-tune, e.g. on new data) instead of from
    scratch; their architecture must be `architecture`."""
    lr0: float | None = None
    """Initial learning rate (ultralytics `lr0`; its default 0.01 when None)."""
    fraction: float = 1.0
    """Share of the training split used (ultralytics `fraction`: the first images)."""
    close_mosaic: int = 10
    """The last epochs train without mosaic (ultralytics `close_mosaic`); as many as
    `epochs` or more: no mosaic at all (a fine-tune on frames as the camera sees them)."""
    train_list: Path | None = None
    """Train on the images this file lists (a data-engine dataset version's train.txt)
    instead of `data`'s train split; validation stays on `data`'s val split."""
    nbs: int | None = None
    """Nominal batch size (ultralytics `nbs`, 64 when None): gradients of
    ceil(nbs / batch) batches add up to one optimizer step. A short fine-tune sets it to
    `batch`, so that every batch is a step (at nbs 64, 852 frames at batch 16 make only
    13 steps)."""
    freeze: int | None = None
    """Freeze the first this many layers (ultralytics `freeze`; None: train them all)."""

    def __post_init__(self) -> None:
        if self.architecture not in _YAML:
            raise ValueError(f"architecture={self.architecture!r}; allowed: "
                             f"{', '.join(_YAML)}")
        check_number("epochs", self.epochs, 1, 100_000, integer=True)
        check_number("imgsz", self.imgsz, 32, 8192, integer=True, unit="px")
        check_number("batch", self.batch, 1, 1 << 16, integer=True)
        check_number("workers", self.workers, 0, 1024, integer=True)
        check_number("close_mosaic", self.close_mosaic, 0, 100_000, integer=True)
        check_number("fraction", self.fraction, 0.0, 1.0, open_lo=True)
        if self.hours is not None:
            check_number("hours", self.hours, 0.0, 10_000.0, open_lo=True, unit="h")
        if self.lr0 is not None:
            check_number("lr0", self.lr0, 0.0, 1.0, open_lo=True)
        if self.nbs is not None:
            check_number("nbs", self.nbs, 1, 1 << 16, integer=True)
        if self.freeze is not None:
            check_number("freeze", self.freeze, 0, 1000, integer=True)


def training_data_yaml(data_yaml: Path, out: Path, train_list: Path | None = None) -> Path:
    """The dataset file ultralytics trains from, written by drivestack into `out` from the
    dataset's fixed layout (its folder, images/{train,val,test}, `CLASS_NAMES`), never the
    dataset's own `data.yaml`: ultralytics runs a `download:` entry of that file as code,
    and writes its label caches wherever its paths point. Also turns off ultralytics'
    pickled label caches (`*.cache`, `np.load(allow_pickle=True)`): it scans the labels
    again instead, so a cache in a dataset from elsewhere never runs code. `train_list`:
    the train images are those it lists (absolute paths)."""
    from sim.types import CLASS_NAMES

    root = data_yaml.parent.resolve()
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    target = out / "dataset.yaml"
    train = "images/train" if train_list is None else str(Path(train_list).resolve())
    atomic_write_text(target, "# written by drivestack for ultralytics (not the dataset's "
                      f"own data.yaml)\npath: {root}\ntrain: {train}\nval: images/val"
                      f"\ntest: images/test\nnames:\n{names}\n")
    _no_pickled_label_caches()
    return target


def _no_pickled_label_caches() -> None:
    import ultralytics.data.dataset as dataset
    import ultralytics.data.utils as utils

    def refuse(path: Path) -> dict[str, Any]:
        raise FileNotFoundError(f"{path}: drivestack never loads a pickled label cache")

    def skip(prefix: str, path: Path, x: dict[str, Any], version: str) -> None:
        x["version"] = version  # what ultralytics' own save adds; the file is never read,
        # so never written (two fine-tunes at once would race on base/labels/*.cache)

    dataset.load_dataset_cache_file = refuse  # type: ignore[assignment]
    utils.load_dataset_cache_file = refuse  # type: ignore[assignment]
    dataset.save_dataset_cache_file = skip  # type: ignore[assignment]
    utils.save_dataset_cache_file = skip  # type: ignore[assignment]


@contextlib.contextmanager
def ultralytics_threads() -> Iterator[None]:
    """Within: ultralytics gives torch every core (at most 8, its own cap) or this worker's
    share (`$DRIVESTACK_CPU_THREADS`); afterwards torch's pool is as it was. ultralytics sets
    the pool to min(8, cores - 1) threads whenever it picks the CPU (training, export):
    one thread on 2 cores, where a 320-frame fine-tune took 66.8 s against 41.0 s on both
    (the same metrics; bench/finetune_threads.py), and an export left the rest of the
    process (the refiner) on one core."""
    import torch
    import ultralytics.utils.torch_utils as torch_utils

    old, pool = torch_utils.NUM_THREADS, torch.get_num_threads()
    torch_utils.NUM_THREADS = cpu_threads() or min(8, cores())
    try:
        yield
    finally:
        torch_utils.NUM_THREADS = old
        torch.set_num_threads(pool)


def train_detector(cfg: DetectorTraining) -> dict[str, Any]:
    """Train (from scratch, or from `init`) and return the final validation metrics and
    the weights path."""
    if not Path(cfg.data).is_file():
        raise FileNotFoundError(f"dataset file {cfg.data} not found; run `drivestack dataset`")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"detector init weights {cfg.init} not found")
    device = resolve_device(cfg.device)
    ultralytics_offline()
    from ultralytics import RTDETR, YOLO

    rtdetr = cfg.architecture.startswith("rtdetr")
    if cfg.init is None:
        model = (RTDETR if rtdetr else YOLO)(_YAML[cfg.architecture])
    else:
        model = load_detector(cfg.init)  # safe load, checked weights
        from ultralytics.nn.tasks import RTDETRDetectionModel

        if isinstance(model.model, RTDETRDetectionModel) != rtdetr:
            raise ValueError(f"detector init weights {cfg.init} are not a "
                             f"{cfg.architecture} model")
        if rtdetr:  # RT-DETR's own trainer (loads the checked file again, safely)
            model = RTDETR(str(cfg.init))
    if cfg.train_list is not None and not Path(cfg.train_list).is_file():
        raise FileNotFoundError(f"train list {cfg.train_list} not found")
    data = training_data_yaml(Path(cfg.data), Path(cfg.out), cfg.train_list)
    with ultralytics_threads():
        model.train(
            data=str(data), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch,
            seed=cfg.seed, deterministic=True, device=device, workers=cfg.workers,
            pretrained=cfg.init is not None, plots=False, amp=device not in ("cpu", "mps"),
            project=str(Path(cfg.out).resolve().parent), name=Path(cfg.out).name,
            exist_ok=True, verbose=False, cache="ram" if cfg.cache else False,
            fraction=cfg.fraction, close_mosaic=min(cfg.close_mosaic, cfg.epochs),
            **({"time": cfg.hours} if cfg.hours else {}),
            **({"lr0": cfg.lr0} if cfg.lr0 else {}),
            **({"nbs": cfg.nbs} if cfg.nbs else {}),
            **({"freeze": cfg.freeze} if cfg.freeze is not None else {}),
            # a fine-tune starts from trained weights: plain SGD at lr0 (ultralytics' "auto"
            # picks AdamW at its own lr for short runs) and no warm-up (its biases run at lr
            # 0.1 for 3 epochs): together they knocked a trained model back from val
            # mAP50-95 0.445 to 0.427 in a first CPU try
            **({"warmup_epochs": 0, "optimizer": "SGD"} if cfg.init is not None else {}),
        )
    metrics: dict[str, Any] = model.trainer.metrics if model.trainer is not None else {}
    best = Path(cfg.out) / "weights" / "best.pt"
    return {"weights": str(best), "metrics": {k: float(v) for k, v in metrics.items()}}


def dataset_image_size(data_yaml: Path) -> tuple[int, int]:
    """(height, width) of a dataset's images, from its COCO training annotations."""
    from perception.datasets import read_coco

    doc = read_coco(Path(data_yaml).parent / "annotations" / "train.json")
    if not doc["images"]:
        raise FileNotFoundError(f"no training images in the dataset of {data_yaml}")
    return int(doc["images"][0]["height"]), int(doc["images"][0]["width"])


def trained_imgsz(weights: Path | str) -> int:
    """The input size [px] a `.pt` detector was trained at (ultralytics keeps it in the
    checkpoint); it is also the size it should run at."""
    return model_imgsz(load_detector(weights))


def model_imgsz(model: Any) -> int:
    """`trained_imgsz` of a loaded ultralytics model."""
    return int(model.overrides.get("imgsz", 320))


def network_input(height: int, width: int, imgsz: int) -> tuple[int, int]:
    """(height, width) the network sees for a height x width frame at `imgsz`: the long
    side scaled to `imgsz`, as ultralytics' letterbox does (before any padding)."""
    r = imgsz / max(height, width)
    return int(round(height * r)), int(round(width * r))


def export_onnx(weights: Path, height: int, width: int) -> Path:
    """Export trained weights for ONNX Runtime with a fixed rectangular input: the camera's
    height x width scaled to the size the weights were trained at (1.5x for a detector
    trained at 480 on 320x192 frames; both sides must come out multiples of 32), next to
    the weights; returns the .onnx path."""
    model = load_detector(weights)
    in_h, in_w = network_input(height, width, model_imgsz(model))
    if in_h % 32 or in_w % 32:
        raise ValueError(f"input {in_h}x{in_w} ({height}x{width} at the weights' training "
                         "size) must be multiples of 32")
    with ultralytics_threads():
        out = model.export(format="onnx", imgsz=(in_h, in_w), simplify=True,
                           dynamic=False, half=False, device="cpu")
    return Path(out)


def cached_onnx(weights: Path | str, height: int, width: int, int8: bool = False) -> Path:
    """The ONNX export of `weights` for height x width frames (`export_onnx`) in the
    drivestack cache (`$DRIVESTACK_CACHE`), under the SHA-256 of the weights: made once,
    offline, the first time it is needed, and moved into place whole. `int8`: its static
    int8 quantization (`quantize_onnx`, about 10 s to make)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"detector weights {weights} {not_a_file(weights)}")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    stem = f"detector-{digest}-{width}x{height}"
    path = cache_dir() / "detector_onnx" / (stem + ("-int8" if int8 else "") + ".onnx")
    if path.is_file():
        return path
    src = cached_onnx(weights, height, width) if int8 else None
    if src is None:
        load_detector(weights)  # refused or damaged: one error that names this file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent))
    try:
        if src is not None:
            os.replace(quantize_onnx(src, tmp / "int8.onnx", height, width), path)
        else:
            shutil.copyfile(weights, tmp / "detector.pt")
            os.replace(export_onnx(tmp / "detector.pt", height, width), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def quantize_onnx(src: Path, out: Path, height: int, width: int, frames: int = 64) -> Path:
    """Static int8 quantization of a detector export (ONNX Runtime, QDQ, weights per
    channel), calibrated on `frames` simulator frames of height x width (day, clear, the
    three road families). The detect head's tail stays in float: its last convolutions,
    the DFL and the box decoding, whose one output tensor holds pixel boxes and class
    scores together (one int8 scale for both leaves no usable boxes)."""
    import re

    import cv2
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import sim
    from sim.autopilot import Autopilot
    from sim.env import DrivingEnv
    from sim.types import CameraSpec

    model = onnx.load(str(src))
    in_h, in_w = (int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
    head = next(n.name.split("/dfl/")[0] for n in model.graph.node if "/dfl/" in n.name)
    keep_float = [n.name for n in model.graph.node if n.name.startswith(head + "/")
                  and not re.match(re.escape(head) + r"/cv[23]\.\d/cv[23]\.\d\.[01]/", n.name)]
    images: list[np.ndarray] = []
    for k, family in enumerate(("highway", "rural", "urban")):
        env = DrivingEnv(scenario=sim.family_config(family, time_of_day={"day": 1},
                                                    weather={"clear": 1}),
                         camera=CameraSpec(width=width, height=height))
        env.reset(seed=k)
        pilot = Autopilot()
        for step in range(5 * (frames // 3 + 1)):
            _, _, terminated, truncated, _ = env.step(pilot.act(env.world))
            if terminated or truncated:
                env.reset(seed=100 + step)
            elif step % 5 == 4 and len(images) < frames:
                images.append(cv2.resize(env.frame.image, (in_w, in_h),
                                         interpolation=cv2.INTER_LINEAR))
        env.close()
    batches = iter([np.ascontiguousarray(f.transpose(2, 0, 1)[None], np.float32) / 255.0
                    for f in images])
    name = model.graph.input[0].name

    class Frames(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(batches, None)
            return None if x is None else {name: x}

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(out), Frames(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
    pre.unlink(missing_ok=True)
    return out
