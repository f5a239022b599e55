"""The perception API the planner consumes: camera frames in, typed detections out.

    from perception.perceiver import Perceiver
    perceiver = Perceiver()                  # shipped weights, device "auto"
    [p] = perceiver([frame])                 # uint8 RGB (H, W, 3) of the camera spec
    p.detections.boxes_xyxy, p.detections.distance, p.latency_ms
    p.lanes.xs, p.lanes.ego_offset, p.lanes.heading_error

Distances come from the ground plane: the bottom centre of a box is cast through the
camera intrinsics and pitch onto the road (flat ground, as in the simulator). Lanes come
from the row-anchor lane model (perception/lanes.py); its polylines are cast onto the same
ground plane for the ego offset and heading error.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.detector import (
    DEFAULT_WEIGHTS,
    cached_onnx,
    load_detector,
    network_input,
    resolve_device,
    result_rows,
    torch_device,
    trained_imgsz,
)
from perception.geometry import ground_distance
from perception.lane_onnx import OnnxLanes
from perception.lanes import (
    DEFAULT_LANE_WEIGHTS,
    LANE_SLOTS,
    decode,
    lane_geometry,
    load_lane_model,
)
from perception.offline import SafeLoadUnavailable
from perception.onnx_cpu import UnreadableModel, check_runtime
from perception.raw_detector import (
    NotYoloHead,
    RawDetector,
    check_imgsz,
    check_trained_imgsz,
)
from perception.refine import Refiner, load_refiner
from sim.types import ABSENT, CameraSpec, check_number

LANE_BACKENDS = ("auto", "torch", "onnx")
"""Lane model runtimes: auto is ONNX Runtime on the CPU (an export made once, locally;
perception/lane_onnx.py), PyTorch elsewhere."""


@dataclass(frozen=True)
class Detections:
    """Objects found in one frame."""

    boxes_xyxy: np.ndarray
    """(N, 4) float32 [px]."""
    scores: np.ndarray
    """(N,) float32 confidence."""
    classes: np.ndarray
    """(N,) int64 class ids (sim.CLASS_NAMES)."""
    distance: np.ndarray
    """(N,) float32 ground-plane distance of the box's bottom centre [m]; inf above the
    horizon."""
    track_ids: np.ndarray | None = None

    def rows(self) -> np.ndarray:
        """(N, 6) float32: x0, y0, x1, y1, score, class id (the refiner's input)."""
        return np.concatenate([self.boxes_xyxy, self.scores[:, None],
                               self.classes[:, None].astype(np.float32)], 1)


@dataclass(frozen=True)
class LaneEstimate:
    """Lane boundaries seen in one frame, in the slots of `LANE_SLOTS` (left to right:
    left outer, ego left, ego right, right outer)."""

    rows: np.ndarray
    """(R,) image rows the polylines are sampled at [px]."""
    xs: np.ndarray
    """(4, R) float32 x of each slot at each row [px]; ABSENT (-2) where not seen."""
    scores: np.ndarray
    """(4,) float32 confidence that each slot is present (mean over rows)."""
    ego_offset: float
    """Ego lateral offset from its lane's centre [m], positive to the left; NaN if the
    ego lane was not seen."""
    heading_error: float
    """Ego heading relative to its lane [rad], positive to the left; NaN if not seen."""
    slots: tuple[str, ...] = LANE_SLOTS


@dataclass(frozen=True)
class Perception:
    """Everything perception says about one frame."""

    detections: Detections
    lanes: LaneEstimate | None = None
    """Lane estimate (None when the Perceiver runs without a lane model)."""
    latency_ms: float = 0.0
    """Share of the batch's wall time for this frame [ms]."""


class Perceiver:
    """Batched detection and lanes on `device` ("auto": CUDA, else MPS, else CPU; fp16 on
    CUDA).

    Without `weights`, the shipped detector: on the CPU its ONNX export for this camera
    (made locally the first time, a few seconds, and cached; on OpenVINO about 2.5x
    faster than PyTorch here), else the PyTorch weights. The
    detector runs at the input size it was trained at (`imgsz`, from the weights, unless
    given; a multiple of 32 in 32..4096): frames are scaled to it and boxes scaled back.
    A `.onnx` file (and the shipped detector's cached export on the CPU) runs at its
    fixed export size, which must be the camera's scaled by one factor; an `imgsz` other
    than that size is refused (pass the `.pt` weights to run at another size). `camera`:
    a `CameraSpec` or a mapping of its fields; the flags (`lanes`, `refine`, `int8`,
    `bf16`) must be bools. Without
    `lane_weights`, the shipped lane model; `lanes=False` skips lanes. `lane_backend`:
    "auto" (the ONNX export on the CPU, PyTorch elsewhere), "torch" or "onnx".
    `cpu_runtime`: what runs the ONNX exports on the CPU, "auto" (OpenVINO where it is
    installed, in float32; ONNX Runtime for the refiner's few patches), "openvino" or
    "onnxruntime" (perception/onnx_cpu.py; both give the same boxes). `bf16`: on the
    CPU, the detector on OpenVINO in bfloat16, on CPUs with bf16 units (AMX,
    AVX512-BF16; elsewhere it stays float32): the whole Perceiver 1.5x as fast here,
    the same mAP50-95 behind the refiner within 0.001 (docs/models.md); not the default
    because its boxes depend on the CPU. `int8`: on
    the CPU, the shipped detector's static int8 quantization (`perception.detector.
    quantize_onnx`; made once, about 10 s): on OpenVINO about 1 ms a frame faster
    than the float export, 0.006 lower mAP50-95 on the validation split without the
    refiner, none with it (docs/models.md). `refine`: small boxes go through
    the box refiner (perception/refine.py; `refiner_weights`, default the shipped ones),
    which puts their edges on the frame's pixels and makes their scores IoU-aware (the
    detector's confidence times the refiner's, so a box kept at `conf` may report less);
    the others are rounded to whole pixels; then a class-aware NMS merges the twins
    refining makes of two loose boxes of one object. `refiner_iou_weight`: the exponent
    of the refiner's confidence in the score (None: the one the registry calibrated for
    the current detector when `weights` is None, else the refiner's own)."""

    def __init__(self, weights: Path | str | None = None, device: str = "auto",
                 camera: CameraSpec | Mapping[str, Any] | None = None, conf: float = 0.25,
                 imgsz: int | None = None, lane_weights: Path | str | None = None,
                 lanes: bool = True, lane_backend: str = "auto", int8: bool = False,
                 refine: bool = True, refiner_weights: Path | str | None = None,
                 cpu_runtime: str = "auto", bf16: bool = False,
                 refiner_iou_weight: float | None = None) -> None:
        from sim.env import camera_spec

        check_number("conf", conf, 0.0, 1.0)
        if imgsz is not None:
            check_imgsz(imgsz)
        lanes, int8, refine, bf16 = (_flag(name, value) for name, value in (
            ("lanes", lanes), ("int8", int8), ("refine", refine), ("bf16", bf16)))
        if lane_backend not in LANE_BACKENDS:
            raise ValueError(f"lane_backend={lane_backend!r}; allowed: "
                             f"{', '.join(LANE_BACKENDS)}")
        # a CameraSpec, a mapping of its fields (checked as CameraSpec checks them) or None
        self.camera = camera_spec(dict(camera) if isinstance(camera, Mapping) else camera)
        self.device = resolve_device(device)
        self.cpu_runtime = check_runtime(cpu_runtime, here=self.device == "cpu")
        if bf16 and (self.device != "cpu" or int8):
            raise ValueError("bf16 is the detector on OpenVINO on the CPU (float32 weights; "
                             "not with int8); on CUDA the detector already runs in fp16")
        if int8 and (weights is not None or self.device != "cpu"):
            raise ValueError("int8 is the shipped detector's quantized export on the CPU; "
                             "for other weights pass weights=cached_onnx(w, h, w, int8=True)")
        self.conf = conf
        self._registry_iou_weight: float | None = None
        self._init_detector(weights, imgsz, int8, bf16)
        if refiner_iou_weight is None:  # the one calibrated for the current detector
            refiner_iou_weight = self._registry_iou_weight
        self.refiner: Refiner | None = (
            load_refiner(refiner_weights, torch_device(self.device),
                         iou_weight=refiner_iou_weight, cpu_runtime=cpu_runtime)
            if refine else None)
        self._init_lanes(lanes, lane_weights, lane_backend)

    def _init_detector(self, weights: Path | str | None, imgsz: int | None, int8: bool,
                       bf16: bool) -> None:
        """The detector: `raw` (our batched path) or `model` (ultralytics' predict)."""
        cached = False
        source = DEFAULT_WEIGHTS
        if weights is None:
            from perception.registry import Registry

            entry = Registry().current()  # the shipped one unless promoted
            weights = source = entry.path
            self._registry_iou_weight = entry.refiner_iou_weight
            if self.device == "cpu":
                try:
                    weights = cached_onnx(source, self.camera.height, self.camera.width, int8)
                    cached = True
                except (UnreadableModel, SafeLoadUnavailable):
                    raise
                except ValueError:  # frames that scale to sides off multiples of 32
                    if int8:
                        raise
        self.weights = Path(weights)
        self.source_weights = Path(source) if cached else self.weights
        """The detector's .pt (or .onnx) file the runtime's model was made from."""
        if not self.weights.is_file():
            raise FileNotFoundError(
                f"detector weights {self.weights} not found; train them with "
                "`drivestack train-perception` or pass weights=")
        self.raw: RawDetector | None = None
        self.model: Any = None
        self.imgsz: int | tuple[int, int]
        """The detector's input: (height, width) on the raw path, else the size ultralytics'
        predict letterboxes to."""
        if self.weights.suffix == ".onnx":
            try:
                self.raw = RawDetector(self.weights, self.device, self.camera.height,
                                       self.camera.width, self.conf, runtime=self.cpu_runtime,
                                       bf16=bf16)
            except UnreadableModel:
                if not cached:
                    raise
                # a cached export cut short or damaged: make it again, once
                self.weights.unlink(missing_ok=True)
                self.weights = cached_onnx(source, self.camera.height,
                                           self.camera.width, int8)
                self.raw = RawDetector(self.weights, self.device, self.camera.height,
                                       self.camera.width, self.conf, runtime=self.cpu_runtime,
                                       bf16=bf16)
            self.imgsz = self.raw.input_hw
            if imgsz is not None and imgsz != max(self.raw.input_hw):
                runs = f"{self.raw.input_hw[1]}x{self.raw.input_hw[0]}"
                raise ValueError(
                    f"imgsz={imgsz}: the detector runs as the ONNX export {self.weights.name}, "
                    f"whose input is fixed at {runs} (imgsz {max(self.raw.input_hw)}); leave "
                    "imgsz out, or pass weights= a .pt file (e.g. the shipped "
                    f"{DEFAULT_WEIGHTS.name}) to run at another size through ultralytics' "
                    "predict")
        else:
            size = imgsz or check_trained_imgsz(trained_imgsz(self.weights), self.weights)
            in_h, in_w = network_input(self.camera.height, self.camera.width, size)
            # a frame that scales to sides of multiples of 32 needs no letterbox padding:
            # our own batched path (fp16 PyTorch on CUDA); else ultralytics' predict
            if self.device not in ("cpu", "mps") and in_h % 32 == 0 and in_w % 32 == 0:
                try:
                    self.raw = RawDetector(self.weights, self.device, self.camera.height,
                                           self.camera.width, self.conf, imgsz=size)
                    self.imgsz = self.raw.input_hw
                except NotYoloHead:  # RT-DETR: ultralytics' predict, below
                    pass
            if self.raw is None:
                if bf16:
                    raise ValueError(f"bf16 needs the detector as an ONNX export; {self.weights} "
                                     "would run through ultralytics' predict")
                self.model = load_detector(self.weights)  # safe load, checked weights
                self.imgsz = size

    def _init_lanes(self, lanes: bool, lane_weights: Path | str | None, lane_backend: str
                    ) -> None:
        self.lane_model: Any = None
        if lanes:
            dev = torch_device(self.device)
            self.lane_model, self.lane_spec, _ = load_lane_model(lane_weights, dev)
            ls = self.lane_spec
            self._lane_scale = self.camera.width / ls.width
            if abs(self.camera.height / ls.height - self._lane_scale) > 1e-6:
                raise ValueError(f"lane model takes {ls.width}x{ls.height} frames; the camera "
                                 f"is {self.camera.width}x{self.camera.height}, another "
                                 "aspect ratio (frames of the same shape are resized)")
            self._lane_device = dev
            if dev.startswith("cuda"):
                self.lane_model = self.lane_model.half()  # fp16 on CUDA, as the detector
            self.lane_onnx: OnnxLanes | None = None
            if lane_backend == "onnx" or (lane_backend == "auto" and self.device == "cpu"):
                if self.device != "cpu":
                    raise ValueError("the ONNX lane backend runs on the CPU; use 'torch'")
                try:
                    self.lane_onnx = OnnxLanes(lane_weights or DEFAULT_LANE_WEIGHTS,
                                               self.cpu_runtime)
                except Exception as exc:  # a backbone the exporter cannot take
                    if lane_backend == "onnx":
                        raise
                    warnings.warn(f"lanes stay on PyTorch: ONNX export failed ({exc})",
                                  stacklevel=2)

    @property
    def runtimes(self) -> dict[str, str]:
        """What runs each model: "openvino", "onnxruntime", "torch" (PyTorch) or
        "ultralytics" (its predict), by model."""
        out = {"detector": self.raw.runtime if self.raw is not None else "ultralytics"}
        if self.refiner is not None:
            out["refiner"] = self.refiner.runtime
        if self.lane_model is not None:
            out["lanes"] = (self.lane_onnx.runtime_used if self.lane_onnx is not None
                            else "torch")
        return out

    def _check(self, frames: Any) -> list[np.ndarray]:
        """The frames of a batch, each checked: uint8 RGB of the camera's shape."""
        want = (self.camera.height, self.camera.width, 3)
        expected = (f"a list of uint8 RGB images of shape {want} (the camera spec) or a "
                    f"uint8 array of shape (B, {want[0]}, {want[1]}, 3)")
        if isinstance(frames, np.ndarray):
            if frames.ndim == 3:
                raise ValueError(f"frames: pass a batch: {expected}; got one array of shape "
                                 f"{frames.shape} (wrap a single frame as [frame])")
            if frames.ndim != 4:
                raise ValueError(f"frames: expected {expected}; got an array of shape "
                                 f"{frames.shape}")
        elif (frames is None or isinstance(frames, str | bytes | Mapping)
              or not isinstance(frames, Iterable)):
            raise TypeError(f"frames: expected {expected}; got {_shown(frames)}")
        out = []
        for i, f in enumerate(frames):
            try:
                a: np.ndarray | None = np.asarray(f)
            except Exception:  # noqa: BLE001 - numpy's error for a ragged list
                a = None
            if a is None or a.dtype != np.uint8 or a.shape != want:
                got = (f"{a.dtype} array of shape {a.shape}" if a is not None
                       else _shown(f))
                raise ValueError(f"frame {i}: expected uint8 RGB of shape {want} (the camera "
                                 f"spec), got {got}")
            out.append(a)
        return out

    def __call__(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[Perception]:
        """Perceive a batch: a list of uint8 RGB frames (H, W, 3) of the camera's shape, or
        a (B, H, W, 3) uint8 array. TypeError for anything that is not a batch,
        ValueError naming the expected shape for a frame of another shape or dtype."""
        batch = self._check(frames)
        if not batch:
            return []
        t0 = time.perf_counter()
        dets = self.raw(batch) if self.raw is not None else self._predict(batch)
        if self.refiner is not None:
            dets = self.refiner(batch, dets)
        lanes = self._lanes(batch)
        return self._assemble(dets, lanes, (time.perf_counter() - t0) * 1000.0 / len(batch))

    def tensor_path(self, images: Any) -> bool:
        """Whether `perceive_tensor(images)` keeps the frames where they are: the detector
        is PyTorch (`RawDetector`'s upload/detect path) on the tensor's device, the lanes
        run on PyTorch at the camera's size, and no box refiner (it crops on the host)."""
        raw = self.raw
        if raw is None or raw.model is None or self.refiner is not None:
            return False
        if self.lane_model is not None and (self.lane_onnx is not None
                                            or self._lane_scale != 1.0
                                            or str(images.device) != str(self._lane_device)):
            return False
        return str(images.device) == str(raw.device) or (
            images.is_cuda and str(raw.device) == "cuda")

    def perceive_tensor(self, images: Any) -> list[Perception]:
        """Perceive a (B, H, W, 3) uint8 torch tensor, e.g. `DeviceCamera`'s frames. When
        `tensor_path(images)` (on a GPU: the PyTorch detector and lanes, no refiner) the
        frames never leave the device: both networks read the tensor and only boxes and
        lane points come back. Otherwise the frames go to the host and through
        `__call__` (on the CPU that costs no copy: the tensor's memory is read)."""
        import torch

        want = (self.camera.height, self.camera.width, 3)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 \
                or images.ndim != 4 or tuple(images.shape[1:]) != want:
            got = (f"{images.dtype} tensor of shape {tuple(images.shape)}"
                   if isinstance(images, torch.Tensor) else _shown(images))
            raise ValueError(f"images: expected a uint8 torch tensor of shape (B, {want[0]}, "
                             f"{want[1]}, 3) (the camera spec), got {got}")
        if not self.tensor_path(images):
            return self(list(images.detach().cpu().numpy()))
        if len(images) == 0:
            return []
        assert self.raw is not None
        t0 = time.perf_counter()
        dets = self.raw.detect(images)
        lanes: list[LaneEstimate | None] = [None] * len(images)
        if self.lane_model is not None:
            with torch.inference_mode():
                xs, scores = decode(self.lane_model(images).cpu(), self.lane_spec)
            lanes = self._lane_estimates(xs, scores)
        return self._assemble(dets, lanes, (time.perf_counter() - t0) * 1000.0 / len(images))

    def _assemble(self, dets: list[np.ndarray], lanes: list[LaneEstimate | None],
                  latency: float) -> list[Perception]:
        out = []
        for k, d in enumerate(dets):
            boxes = np.ascontiguousarray(d[:, :4], np.float32)
            out.append(Perception(Detections(
                boxes_xyxy=boxes, scores=d[:, 4].astype(np.float32),
                classes=d[:, 5].astype(np.int64), distance=ground_distance(boxes, self.camera)),
                lanes=lanes[k], latency_ms=latency))
        return out

    def _predict(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """ultralytics' predict (letterboxed to `imgsz`): per frame (n, 6) boxes, score,
        class."""
        # ultralytics expects BGR arrays, as OpenCV reads them
        fp16 = {"half": True} if self.device not in ("cpu", "mps") else {}  # CUDA only
        results = self.model.predict([f[..., ::-1] for f in batch], imgsz=self.imgsz,
                                     conf=self.conf, device=self.device, verbose=False, **fp16)
        return [result_rows(r) for r in results]

    def _lanes(self, batch: list[np.ndarray]) -> list[LaneEstimate | None]:
        if self.lane_model is None:
            return [None] * len(batch)
        import torch

        ls, k = self.lane_spec, self._lane_scale
        if k != 1.0:  # same aspect ratio: run the model at its size, scale back
            batch = [cv2.resize(f, (ls.width, ls.height), interpolation=cv2.INTER_AREA)
                     for f in batch]
        if self.lane_onnx is not None:
            xs, scores = decode(torch.from_numpy(self.lane_onnx(np.stack(batch))), ls)
        else:
            with torch.inference_mode():
                x = torch.from_numpy(np.stack(batch)).to(self._lane_device)
                xs, scores = decode(self.lane_model(x).cpu(), ls)
        return self._lane_estimates(xs, scores)

    def _lane_estimates(self, xs: Any, scores: Any) -> list[LaneEstimate | None]:
        """Decoded lane points (model pixels) -> per frame the estimate in camera pixels."""
        ls, k = self.lane_spec, self._lane_scale
        rows = np.round((np.asarray(ls.rows, np.float64) + 0.5) * k - 0.5).astype(np.int64)
        if k != 1.0:
            # pixel centres: x_camera + 0.5 = (x_model + 0.5) * k
            xs = np.where(xs == ABSENT, ABSENT, (xs + 0.5) * k - 0.5).astype(np.float32)
        out: list[LaneEstimate | None] = []
        for x_img, sc in zip(xs, scores, strict=True):
            offset, heading = lane_geometry(x_img, rows, self.camera)
            out.append(LaneEstimate(rows=rows, xs=x_img, scores=sc, ego_offset=offset,
                                    heading_error=heading))
        return out


def _flag(name: str, value: Any) -> bool:
    """`value` (a bool or a numpy bool) as a bool; TypeError naming `name` otherwise (a
    string like "no" is truthy, not False)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {_shown(value)}")
    return bool(value)


def _shown(value: Any, limit: int = 80) -> str:
    """What was given, for an error message: its type and its repr, cut to `limit`."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = "?"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"
