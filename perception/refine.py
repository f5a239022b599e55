"""Box refinement: a second stage that puts each small detected box's edges on the
frame's own pixels.

The labels are pixel boxes (the first and one-past-the-last row and column of an
object's visible pixels: `sim.render.kernels.object_labels`), so every edge is a whole
number. The detector sees small objects through a stride-8 feature map (a 5 px car is
less than one cell) and draws their edges about 0.3-0.4 px off in the median, more in
the tails (docs/models.md), which on a box that small is most of the IoU. The refiner
looks at each small box again: a 32x32 patch of the frame at its own resolution, centred
on the box, with the detector's box drawn in as a fifth channel (how much of each pixel
it covers) beside the RGB and a channel that marks the frame (patches run over the
border). A small fully convolutional network (dilated 3x3 convolutions, no pooling, so
every pixel keeps its place) scores, for each of the four edges, every row or column of
the patch as that edge: the edges become classes, as the lane model's row anchors do.
The box is the best class of each edge; the score becomes the detector's confidence times
the refiner's confidence in its four edges to the power `iou_weight` (IoU-aware scoring,
as in IoU-Net and VarifocalNet), so that loose boxes rank below tight ones.

Boxes with a side over `MAX_SIDE` pixels keep the detector's box, rounded to whole
pixels.

    refiner = load_refiner()          # the shipped weights
    dets = refiner(frames, dets)      # per frame (n, 6): xyxy, score, class

It trains on the detector's own boxes on simulator frames, matched to the labelled boxes,
plus labelled boxes moved by a few pixels (`build_data`, `fit_refiner`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception.raw_detector import NMS_IOU
from sim.outputs import not_a_file
from sim.types import check_number

DEFAULT_REFINER_WEIGHTS = Path(__file__).parent / "weights" / "refiner.pt"
PATCH = 32
"""Side of the patch the refiner sees [px, the frame's own]."""
MAX_SIDE = 24
"""Boxes with both sides up to this many pixels are refined (the patch leaves at least 4
px around them)."""
MATCH_IOU = 0.3
"""A training box with at least this IoU with a labelled object learns its edges."""
IN_CHANNELS = 5
"""RGB, the detector's box (pixel coverage), inside the frame."""
IGNORE = -100
"""Edge target of an edge outside the patch (no loss)."""
MAX_IOU_WEIGHT = 10.0
"""Largest `iou_weight` taken (0: the detector's score as it is)."""


@dataclass(frozen=True)
class RefinerSpec:
    """What a refiner's weights need to be rebuilt."""

    width: int = 16
    """Channels of the convolutions."""
    iou_weight: float = 0.5
    """Exponent of the refiner's edge confidence in the final score."""

    def __post_init__(self) -> None:
        check_number("width", self.width, 1, 1024, integer=True)
        check_number("iou_weight", self.iou_weight, 0.0, MAX_IOU_WEIGHT)


def build_refiner(spec: RefinerSpec) -> Any:
    import torch
    from torch import nn

    c = spec.width

    def conv(cin: int, dilation: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, c, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

    class EdgeRefiner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*conv(IN_CHANNELS, 1), *conv(c, 1), *conv(c, 2),
                                      *conv(c, 4), *conv(c, 8), *conv(c, 1))
            self.edges = nn.Conv2d(c, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x (N, 5, P, P) -> (N, 4, P) logits: left edge per column, top per row,
            right (last column) per column, bottom (last row) per row."""
            m = self.edges(self.body(x))
            cols = logsumexp(m, 2)  # per column, over the rows: left, right
            rows = logsumexp(m, 3)  # per row, over the columns: top, bottom
            return torch.stack([cols[:, 0], rows[:, 1], cols[:, 2], rows[:, 3]], 1)

    def logsumexp(m: torch.Tensor, dim: int) -> torch.Tensor:
        """torch.logsumexp written out: OpenVINO reads the ONNX ReduceLogSumExp that
        torch's exporter writes as a reduction over every axis."""
        top = m.amax(dim, keepdim=True)
        return (top + torch.log(torch.exp(m - top).sum(dim, keepdim=True))).squeeze(dim)

    return EdgeRefiner()


def patch_origins(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 2) int top-left pixel (x, y) of each box's patch."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    return np.floor(centre).astype(np.int64) - PATCH // 2


def refinable(boxes: np.ndarray, width: int | None = None, height: int | None = None
              ) -> np.ndarray:
    """(N,) bool: boxes the refiner takes: both sides over 1 px and up to MAX_SIDE (as it
    was trained), and, given the frame's size, overlapping the frame."""
    wh = boxes[:, 2:] - boxes[:, :2]
    ok = (wh > 1).all(1) & (wh <= MAX_SIDE).all(1)
    if width is not None and height is not None:
        ok &= (boxes[:, 2] > 0) & (boxes[:, 0] < width) & (boxes[:, 3] > 0) & (boxes[:, 1] < height)
    return ok


def patches(frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The refiner's input for boxes (N, 4) of one uint8 RGB frame (H, W, 3): (N, 5, P, P)
    float32 and the patch origins (N, 2)."""
    h, w = frame.shape[:2]
    origin = patch_origins(boxes)
    origin[:, 0] = np.clip(origin[:, 0], -PATCH, w)
    origin[:, 1] = np.clip(origin[:, 1], -PATCH, h)
    out = np.zeros((len(boxes), IN_CHANNELS, PATCH, PATCH), np.float32)
    grid = np.arange(PATCH, dtype=np.float32)
    for i, ((ox, oy), b) in enumerate(zip(origin, boxes, strict=True)):
        x0, x1 = max(ox, 0), min(ox + PATCH, w)  # the part of the patch inside the frame
        y0, y1 = max(oy, 0), min(oy + PATCH, h)
        if x1 > x0 and y1 > y0:
            out[i, :3, y0 - oy: y1 - oy, x0 - ox: x1 - ox] = (
                frame[y0:y1, x0:x1].transpose(2, 0, 1) * np.float32(1 / 255))
            out[i, 4, y0 - oy: y1 - oy, x0 - ox: x1 - ox] = 1.0
        # coverage of each pixel [k, k + 1) by the box, per axis
        cx = np.clip(np.minimum(grid + 1, b[2] - ox) - np.maximum(grid, b[0] - ox), 0, 1)
        cy = np.clip(np.minimum(grid + 1, b[3] - oy) - np.maximum(grid, b[1] - oy), 0, 1)
        out[i, 3] = cy[:, None] * cx[None, :]
    return out, origin


def edge_targets(target: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Labelled boxes (N, 4) (NaN: none) in patch classes (N, 4) int64: left column, top
    row, last column, last row; IGNORE where outside the patch or no box."""
    rel = np.stack([target[:, 0] - origin[:, 0], target[:, 1] - origin[:, 1],
                    target[:, 2] - 1 - origin[:, 0], target[:, 3] - 1 - origin[:, 1]], 1)
    ok = np.isfinite(rel) & (rel >= 0) & (rel <= PATCH - 1)
    return np.where(ok, np.nan_to_num(np.round(rel)), IGNORE).astype(np.int64)


class Refiner:
    """`refiner(frames, dets)`: frames uint8 RGB (H, W, 3), dets per frame (n, 6) float
    arrays (x0, y0, x1, y1, score, class) -> the same with small boxes redrawn on pixel
    edges, the others rounded to whole pixels, small boxes' scores times the refiner's
    confidence^iou_weight, by falling score. `session`: run the network there instead
    (its ONNX export on a CPU runtime, perception/onnx_cpu.py: patches float32
    (N, 5, P, P) -> logits (N, 4, P))."""

    def __init__(self, model: Any, spec: RefinerSpec, device: str = "cpu",
                 batch: int = 512, session: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> None:
        check_number("batch", batch, 1, 1 << 20, integer=True)
        self.model, self.spec, self.device, self.batch = model.eval(), spec, device, batch
        self.session = session

    @property
    def runtime(self) -> str:
        """What runs the network: "openvino", "onnxruntime" or "torch"."""
        if self.session is None:
            return "torch"
        return str(getattr(self.session, "runtime_used", "custom"))

    def edges(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patches (N, 5, P, P) -> best class (N, 4) and its probability (N, 4)."""
        import torch

        best, prob = [], []
        for s in range(0, len(x), self.batch):
            if self.session is not None:
                logits = self.session(np.ascontiguousarray(x[s: s + self.batch]))
            else:
                with torch.inference_mode():
                    t = torch.from_numpy(x[s: s + self.batch]).to(self.device)
                    logits = self.model(t).float().cpu().numpy()
            # the best class's softmax probability: 1 / sum(exp(logit - max))
            top = logits.max(-1, keepdims=True)
            best.append(logits.argmax(-1))
            prob.append(1.0 / np.exp(logits - top).sum(-1))
        return np.concatenate(best), np.concatenate(prob)

    def __call__(self, frames: Sequence[np.ndarray], dets: Sequence[np.ndarray]
                 ) -> list[np.ndarray]:
        if len(frames) != len(dets):
            raise ValueError(f"{len(frames)} frames but {len(dets)} detection arrays")
        out = []
        inputs, where = [], []
        for i, (frame, d) in enumerate(zip(frames, dets, strict=True)):
            d = np.array(d, np.float32).reshape(-1, 6)
            h, w = frame.shape[:2]
            small = np.nonzero(refinable(d[:, :4], w, h))[0]
            if len(small):  # patches of the detector's own boxes, as in training
                x, origin = patches(frame, d[small, :4])
                inputs.append(x)
                where.append((i, small, origin))
            d[:, :4] = np.round(d[:, :4])  # the others: whole pixels
            out.append(d)
        if inputs:
            best, prob = self.edges(np.concatenate(inputs))
            at = 0
            for i, small, origin in where:
                k, p = best[at: at + len(small)], prob[at: at + len(small)]
                at += len(small)
                d = out[i]
                box = np.stack([origin[:, 0] + k[:, 0], origin[:, 1] + k[:, 1],
                                origin[:, 0] + k[:, 2] + 1, origin[:, 1] + k[:, 3] + 1], 1)
                d[small, :4] = box
                d[small, 4] *= np.prod(p, 1) ** self.spec.iou_weight
        return [self._tidy(d, *f.shape[:2]) for d, f in zip(out, frames, strict=True)]

    @staticmethod
    def _tidy(d: np.ndarray, h: int, w: int) -> np.ndarray:
        """Boxes clipped to the frame, empty ones dropped, then class-aware NMS at the
        detector's IoU (two boxes of one object that the detector's NMS let through can
        become one box here), by falling score."""
        import torch
        from torchvision.ops import batched_nms

        d[:, 0:4:2] = np.clip(d[:, 0:4:2], 0, w)
        d[:, 1:4:2] = np.clip(d[:, 1:4:2], 0, h)
        d = d[(d[:, 2] > d[:, 0]) & (d[:, 3] > d[:, 1])]
        keep = batched_nms(torch.from_numpy(d[:, :4]), torch.from_numpy(d[:, 4]),
                           torch.from_numpy(d[:, 5]).long(), NMS_IOU).numpy()
        return d[keep]


def save_refiner(model: Any, spec: RefinerSpec, path: Path, extra: dict[str, Any]) -> None:
    """Atomic write of the weights with their spec and the run's facts."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"spec": asdict(spec), "state_dict": model.state_dict(),
                    "extra": json.loads(json.dumps(extra))}, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


REFINER_BACKENDS = ("auto", "torch", "onnx")
"""auto: ONNX Runtime on the CPU (an export made once, locally, about 3x faster than
PyTorch on a few patches), PyTorch elsewhere."""


def load_refiner(path: Path | str | None = None, device: str = "cpu",
                 iou_weight: float | None = None, backend: str = "auto",
                 cpu_runtime: str = "auto") -> Refiner:
    """A refiner from its weights (default: the shipped ones); one clear error for a
    missing or damaged file. `cpu_runtime` (perception/onnx_cpu.py): "auto" is ONNX
    Runtime here, which runs the few patches of a frame faster than OpenVINO (1.3 against
    1.5 ms a frame at 5.2 patches a frame on the 2-core CI machine, bench/README.md)."""
    from perception.onnx_cpu import check_runtime

    check_runtime(cpu_runtime, here=False)  # checked where it is used
    import torch

    if backend not in REFINER_BACKENDS:
        raise ValueError(f"backend={backend!r}; allowed: {', '.join(REFINER_BACKENDS)}")
    from perception.onnx_cpu import UnreadableModel, brief, check_finite, load_checkpoint

    path = Path(path or DEFAULT_REFINER_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"refiner weights {path} {not_a_file(path)}; train them with "
                                "`drivestack train-perception --model refiner`")
    if iou_weight is not None:
        check_number("iou_weight", iou_weight, 0.0, MAX_IOU_WEIGHT)
    ckpt = load_checkpoint(path, "refiner weights")  # never unpickled
    try:
        spec = RefinerSpec(**ckpt["spec"])
        state = ckpt["state_dict"]
        model = build_refiner(spec)
        # the model's dtype kinds (never complex), all finite
        check_finite(state, path, "refiner weights", want=model.state_dict())
        model.load_state_dict(state)
    except UnreadableModel:
        raise
    except Exception as exc:
        raise UnreadableModel(f"refiner weights {path} are not a drivestack refiner: "
                              f"{type(exc).__name__}: {brief(exc)}") from None
    if iou_weight is not None:
        spec = RefinerSpec(spec.width, iou_weight)
    session = None
    if backend == "onnx" or (backend == "auto" and device == "cpu"):
        if device != "cpu":
            raise ValueError("the ONNX refiner runs on the CPU; use backend='torch'")
        from perception.onnx_cpu import CpuSession, export_module

        example = torch.zeros((1, IN_CHANNELS, PATCH, PATCH))
        cpu_model = model.eval()
        session = CpuSession("refiner", path, lambda out: export_module(
            cpu_model, example, out, "patches", "logits"),
            "onnxruntime" if cpu_runtime == "auto" else cpu_runtime)
    return Refiner(model.to(device), spec, device, session=session)


# ---------------------------------------------------------------- training


def training_boxes(dets: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
                   jitter: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boxes to learn from in one image: the detector's (n, 6) `dets` and `jitter` copies
    of each labelled box (gt (m, 4)) moved by about a pixel, the ones small enough to
    refine that match an object (IoU >= MATCH_IOU). Returns boxes (k, 4) and the matched
    labelled boxes (k, 4)."""
    from perception.metrics import box_iou

    boxes = [dets[:, :4]]
    for _ in range(jitter if len(gt) else 0):
        wh = gt[:, 2:] - gt[:, :2]
        boxes.append(gt + rng.normal(0.0, 1.0, gt.shape) * (0.05 * np.concatenate([wh, wh], 1)
                                                           + 0.6))
    b = np.concatenate(boxes).astype(np.float32)
    b = b[refinable(b)]
    if not len(gt) or not len(b):
        return np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)
    iou = box_iou(b, gt)
    best = iou.argmax(1)
    hit = iou[np.arange(len(b)), best] >= MATCH_IOU
    return b[hit], gt[best[hit]].astype(np.float32)


@dataclass
class RefinerData:
    """Patches (float16 (N, 5, P, P)) already cut, with their edge classes (N, 4)."""

    x: np.ndarray
    y: np.ndarray


def build_data(frames: Sequence[np.ndarray], dets: Sequence[np.ndarray],
               gts: Sequence[np.ndarray], seed: int = 0, min_conf: float = 0.01,
               jitter: int = 1) -> RefinerData:
    """Training patches of frames, their detector outputs (n, 6) at any confidence and
    their labelled boxes (m, 4) xyxy (every class; objects under the ignore rule too:
    they are real objects with pixel boxes)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for frame, d, g in zip(frames, dets, gts, strict=True):
        b, t = training_boxes(d[d[:, 4] >= min_conf], g, rng, jitter)
        if len(b):
            x, origin = patches(frame, b)
            xs.append(x.astype(np.float16))
            ys.append(edge_targets(t, origin))
    if not xs:
        raise ValueError("no detector box matches a labelled object: nothing to learn")
    return RefinerData(np.concatenate(xs), np.concatenate(ys))


def edge_accuracy(model: Any, data: RefinerData, batch: int = 512) -> float:
    """Share of edges (with a target) the model puts on the right pixel."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    with torch.inference_mode():
        for s in range(0, len(data.y), batch):
            x = torch.from_numpy(data.x[s: s + batch]).float().to(device)
            k = model(x).argmax(-1).cpu().numpy()
            y = data.y[s: s + batch]
            m = y != IGNORE
            right += int((k[m] == y[m]).sum())
            total += int(m.sum())
    return right / max(total, 1)


def fit_refiner(data: RefinerData, spec: RefinerSpec, epochs: int = 8, batch: int = 256,
                lr: float = 3e-3, seed: int = 0, val: RefinerData | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                device: str = "cpu") -> Any:
    """Train a refiner: cross-entropy of each edge's class, AdamW, one-cycle schedule,
    flips of the patches (left-right, with the left and right edges swapped)."""
    import torch
    import torch.nn.functional as F

    check_number("epochs", epochs, 1, 100_000, integer=True)
    check_number("batch", batch, 1, 1 << 20, integer=True)
    check_number("lr", lr, 0.0, 1.0, open_lo=True)
    torch.manual_seed(seed)
    model = build_refiner(spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(data.y) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    xs, ys = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(ys), generator=gen).split(batch):
            x, y = xs[idx].float(), ys[idx].clone()
            flip = torch.rand(len(idx), generator=gen) < 0.5
            if flip.any():
                x[flip] = x[flip].flip(-1)
                yf = y[flip]
                left = torch.where(yf[:, 2] == IGNORE, IGNORE, PATCH - 1 - yf[:, 2])
                right = torch.where(yf[:, 0] == IGNORE, IGNORE, PATCH - 1 - yf[:, 0])
                yf[:, 0], yf[:, 2] = left, right
                y[flip] = yf
            logits = model(x.to(device))
            y = y.to(device)
            loss = F.cross_entropy(logits.reshape(-1, PATCH), y.reshape(-1),
                                   ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n, 1),
                               "seconds": round(time.perf_counter() - t0, 1)}
        if val is not None:
            row["val_edge_accuracy"] = edge_accuracy(model, val)
        if on_epoch is not None:
            on_epoch(row)
    return model.eval()
