"""Training and held-out evaluation of the row-anchor lane model on a `drivestack dataset`
folder (its lanes/{split}.jsonl and images), offline and seeded.

The best epoch (by CULane F1 on the val split) is kept as out/best.pt; out/last.pt is
written every epoch (atomically) and a run continues from it with `resume=True`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.datasets import dataset_camera
from perception.evaluate import is_nominal
from perception.lanes import (
    LANE_SLOTS,
    MIN_POINTS,
    LaneModelSpec,
    build_model,
    decode,
    lane_geometry,
    lane_loss,
    load_lane_model,
    save_weights,
    slot_targets,
)
from perception.metrics import culane_f1, tusimple_lane_metrics
from sim.types import ABSENT, CameraSpec, check_number


@dataclass(frozen=True)
class LaneSplit:
    """One split of a dataset in memory."""

    images: np.ndarray
    """(N, H, W, 3) uint8 RGB."""
    targets: np.ndarray
    """(N, 4, R) float32 slot x positions, ABSENT where missing."""
    rows: np.ndarray
    offsets: np.ndarray
    """(N,) ego lateral offset [m] (ground truth)."""
    headings: np.ndarray
    """(N,) ego heading error [rad] (ground truth)."""
    meta: list[dict[str, Any]]
    """Per image: family, time_of_day, weather."""
    camera: CameraSpec
    """The camera the frames were rendered with (summary.json; default if absent)."""


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file; ValueError naming
    the file and the line for one that is not JSON."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except ValueError as exc:  # JSONDecodeError
            raise ValueError(f"{path} line {n}: not a JSON line ({exc})") from None
    return out


def _number(path: Path, n: int, record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not np.isfinite(value)):
        raise ValueError(f"{path} line {n}: {key} must be a finite number, got {value!r}"[:300])
    return float(value)


def load_split(data: Path, split: str, limit: int | None = None) -> LaneSplit:
    """Read a split's lane JSON lines and images; ValueError naming the file and the line
    of a record that is not a lane label as `drivestack dataset` writes it, and of an
    image of another size than the first."""
    path = Path(data) / "lanes" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `drivestack dataset`")
    meta_by_image = {}
    meta_file = Path(data) / "meta.jsonl"
    if meta_file.is_file():
        for n, m in _json_lines(meta_file):
            if not isinstance(m, dict) or not isinstance(m.get("image"), str):
                raise ValueError(f"{meta_file} line {n}: expected a JSON object with an "
                                 "image path (image)")
            meta_by_image[m["image"]] = {k: m.get(k) for k in ("family", "time_of_day",
                                                                "weather")}
    lines = _json_lines(path)
    lines = lines[:limit] if limit is not None else lines
    if not lines:
        raise FileNotFoundError(f"{path} has no images")
    rows0: Any = None
    targets, offsets, headings = [], [], []
    for n, r in lines:
        try:
            if not isinstance(r, dict) or not isinstance(r.get("image"), str) or not r["image"]:
                raise ValueError("expected a JSON object with an image path (image)")
            targets.append(slot_targets(r))
        except ValueError as exc:
            raise ValueError(f"{path} line {n}: {exc}") from None
        if rows0 is None:
            rows0 = list(r["h_samples"])
        elif list(r["h_samples"]) != rows0:
            raise ValueError(f"{path} line {n}: h_samples {r['h_samples']} differ from the "
                             f"first record's {rows0}"[:300])
        offsets.append(_number(path, n, r, "ego_lane_offset"))
        headings.append(_number(path, n, r, "ego_heading_error"))
    records = [r for _, r in lines]

    def read(r: dict[str, Any]) -> np.ndarray:
        im = cv2.imread(str(Path(data) / r["image"]), cv2.IMREAD_COLOR)
        if im is None:
            raise FileNotFoundError(f"image {Path(data) / r['image']} could not be read")
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        images = list(pool.map(read, records))
    for (n, r), im in zip(lines, images, strict=True):
        if im.shape != images[0].shape:
            raise ValueError(f"{path} line {n}: image {r['image']} is {im.shape[1]}x"
                             f"{im.shape[0]}, the first {images[0].shape[1]}x"
                             f"{images[0].shape[0]}: a split's images have one size")
    cam = dataset_camera(Path(data))
    return LaneSplit(
        camera=cam, images=np.stack(images), targets=np.stack(targets),
        rows=np.asarray(rows0, np.int64), offsets=np.array(offsets, np.float64),
        headings=np.array(headings, np.float64),
        meta=[meta_by_image.get(r["image"], {}) for r in records])


@dataclass(frozen=True)
class LaneTraining:
    """One training run of the lane model."""

    data: Path
    out: Path
    """Run folder: best.pt, last.pt, results.jsonl."""
    backbone: str = "cnn"
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    limit: int | None = None
    """Use only the first N images of each split (tests)."""
    init: Path | None = None
    """Start from these lane weights (same backbone and input size) instead of from
    scratch: a fine-tune, e.g. a short low-lr anneal of a run cut short."""

    def __post_init__(self) -> None:
        check_number("epochs", self.epochs, 1, 100_000, integer=True)
        check_number("batch", self.batch, 1, 1 << 20, integer=True)
        check_number("lr", self.lr, 0.0, 1.0, open_lo=True)
        if self.limit is not None:
            check_number("limit", self.limit, 1, 1 << 40, integer=True)


def _augment(x: Any, target: Any, gen: Any, noise_gen: Any = None) -> tuple[Any, Any]:
    """Random mirror (the camera sits on the ego's axis, so a mirrored frame is a valid
    frame: slots swap left <-> right, x -> W - 1 - x) and photometric jitter
    (brightness, contrast, noise) of a uint8 batch (B, H, W, 3) and its targets.

    The per-image draws come from the CPU generator `gen`; the pixel noise from
    `noise_gen`, a generator on the batch's device (default: `gen`, for CPU batches), so
    a batch on the GPU is augmented there."""
    import torch

    b, w, dev = x.shape[0], x.shape[2], x.device
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    if flip.any():
        x, target = x.clone(), target.clone()
        x[flip] = x[flip].flip(2)
        t = target[flip].flip(1)  # slots reversed: left outer <-> right outer, ego L <-> R
        target[flip] = torch.where(t == ABSENT, t, (w - 1) - t)
    f = x.float()
    gain = (0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=gen)).to(dev)
    bias = (40.0 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)).to(dev)
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = (f - mean) * gain + mean + bias
    f = f + 6.0 * torch.randn(f.shape, generator=noise_gen or gen, device=dev)
    return f.clamp(0, 255).to(torch.uint8), target


def train_lanes(cfg: LaneTraining, on_epoch: Callable[[dict[str, Any]], None] | None = None
                ) -> dict[str, Any]:
    """Train from scratch (or resume), keep the best epoch by val F1; returns a summary."""
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train, val = load_split(cfg.data, "train", cfg.limit), load_split(cfg.data, "val", cfg.limit)
    h, w = train.images.shape[1:3]
    spec = LaneModelSpec(backbone=cfg.backbone, height=h, width=w,
                         rows=tuple(int(r) for r in train.rows))
    model = build_model(spec)
    if cfg.init is not None and not cfg.resume:
        init_model, init_spec, _ = load_lane_model(cfg.init, "cpu")
        if init_spec != spec:
            raise ValueError(f"init: {cfg.init} is a {init_spec.backbone} model for "
                             f"{init_spec.width}x{init_spec.height} frames and "
                             f"{len(init_spec.rows)} rows; this run trains {spec.backbone} "
                             f"for {spec.width}x{spec.height}, {len(spec.rows)} rows")
        model.load_state_dict(init_model.float().state_dict())
    model = model.to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * -(-len(train.images) // cfg.batch),
        pct_start=0.1)
    out = Path(cfg.out)
    start, best_f1 = 0, -1.0
    history: list[dict[str, Any]] = []
    if cfg.resume and (out / "last.pt").is_file():
        start, best_f1, history = _resume(out / "last.pt", cfg, model, opt, sched, gen)
    # on a GPU the whole (uint8) split lives there and is augmented there, in bf16 autocast
    on_cuda = str(cfg.device).startswith("cuda")
    images = torch.from_numpy(train.images).to(cfg.device)
    targets = torch.from_numpy(train.targets).to(cfg.device)
    noise_gen = (torch.Generator(device=cfg.device).manual_seed(cfg.seed + start)
                 if on_cuda else None)
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch):
            idx = order[i: i + cfg.batch].to(cfg.device)
            x, t = _augment(images[idx], targets[idx], gen, noise_gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                logits = model(x)
            loss = lane_loss(logits.float(), t, spec)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        scores = evaluate_lanes(model, spec, val, device=cfg.device)["all"]
        row = {"epoch": epoch + 1, "loss": total / len(images), "val_f1": scores["f1"],
               "val_offset_mae_m": scores["offset_mae_m"],
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        extra = {"metrics": row, "data": str(cfg.data), "seed": cfg.seed,
                 **({"init": str(cfg.init)} if cfg.init is not None else {})}
        if scores["f1"] > best_f1:
            best_f1 = scores["f1"]
            save_weights(model, spec, out / "best.pt", extra)
        _save_last(out / "last.pt", model, opt, sched, gen, {
            "epoch": epoch + 1, "epochs": cfg.epochs, "backbone": cfg.backbone,
            "best_f1": best_f1, "history": history})
        _write_results(out / "results.jsonl", history)
        if on_epoch is not None:
            on_epoch(row)
    return {"weights": str(out / "best.pt"), "best_val_f1": best_f1, "epochs": cfg.epochs,
            "train_images": len(images), "history": history}


def _resume(path: Path, cfg: LaneTraining, model: Any, opt: Any, sched: Any, gen: Any
            ) -> tuple[int, float, list[dict[str, Any]]]:
    """Restore a run from its last.pt (read without unpickling; weights and optimizer state
    finite, every key and shape the model's); returns (epochs done, best F1, history).
    `UnreadableModel` naming the file for one that does not fit."""
    import torch

    from perception.onnx_cpu import UnreadableModel, brief, check_finite, load_checkpoint

    blob = load_checkpoint(path, "resume checkpoint")
    try:
        if blob["epochs"] != cfg.epochs or blob["backbone"] != cfg.backbone:
            raise ValueError(f"resume: {path} is a run of backbone={blob['backbone']!r}, "
                             f"epochs={blob['epochs']}; pass the same")
        # the model's dtype kinds (floating weights, integer BatchNorm counters; never
        # complex), all finite; the optimizer's state floating (AdamW's moments and step)
        check_finite(blob["state_dict"], path, "resume checkpoint",
                     want=model.state_dict())
        moments = {f"optimizer state {i} {k}": v
                   for i, state in blob["optimizer"]["state"].items()
                   for k, v in state.items() if isinstance(v, torch.Tensor)}
        check_finite(moments, path, "resume checkpoint",
                     want=dict.fromkeys(moments, torch.float32))
        model.load_state_dict(blob["state_dict"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        gen.set_state(blob["generator"])
        start, best_f1 = int(blob["epoch"]), float(blob["best_f1"])
        check_number("epoch", start, 0, cfg.epochs, integer=True)
        history = [dict(row) for row in blob["history"]]
    except UnreadableModel:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError,
            IndexError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("resume:"):
            raise
        raise UnreadableModel(f"resume checkpoint {path} is not a lane training run's "
                              f"last.pt: {type(exc).__name__}: {brief(exc)}") from None
    return start, best_f1, history


def _write_results(path: Path, history: list[dict[str, Any]]) -> None:
    """The run's epochs as JSON lines, rewritten whole (atomically) from the history, so
    a fresh run never mixes with an old one and a resumed run has each epoch once."""

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(tmp, path)


def _save_last(path: Path, model: Any, opt: Any, sched: Any, gen: Any,
               progress: dict[str, Any]) -> None:

    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(), **progress}, tmp)
    os.replace(tmp, path)


def predict_lanes(model: Any, spec: LaneModelSpec, images: np.ndarray, device: str = "cpu",
                  batch: int = 64) -> np.ndarray:
    """(N, 4, R) predicted x per slot and anchor row, ABSENT where absent."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch])).to(device)
            out.append(decode(model(x).cpu(), spec)[0])
    return np.concatenate(out) if out else np.zeros((0, len(LANE_SLOTS), len(spec.rows)))


def countable(lanes: np.ndarray) -> np.ndarray:
    """Ground-truth lanes with fewer than MIN_POINTS labelled rows set absent: the lane
    ignore rule (a lane glimpsed in one or two rows at the image edge is not scored, as
    predictions with so few points are dropped)."""
    out = np.array(lanes, np.float32, copy=True)
    out[(out != ABSENT).sum(-1) < MIN_POINTS] = ABSENT
    return out


def lane_scores(pred: np.ndarray, split: LaneSplit, camera: CameraSpec,
                select: np.ndarray | None = None) -> dict[str, Any]:
    """TuSimple accuracy/FP/FN, CULane F1 and ego offset/heading errors of predictions."""
    idx = np.flatnonzero(np.ones(len(pred), bool) if select is None else select)
    if idx.size == 0:
        return {"images": 0}
    h, w = split.images.shape[1:3]
    p, g = [pred[i] for i in idx], [countable(split.targets[i]) for i in idx]
    tus = tusimple_lane_metrics(p, g, w)
    cul = culane_f1(p, g, split.rows, (h, w))
    geo = np.array([lane_geometry(pred[i], split.rows, camera) for i in idx])
    off_err = np.abs(geo[:, 0] - split.offsets[idx])
    head_err = np.abs(geo[:, 1] - split.headings[idx])
    found = np.isfinite(off_err)
    return {
        "images": int(idx.size), "f1": cul["f1"], "tusimple_accuracy": tus["accuracy"],
        "tusimple_fp": tus["fp_rate"], "tusimple_fn": tus["fn_rate"],
        "offset_mae_m": float(off_err[found].mean()) if found.any() else None,
        "heading_mae_rad": float(head_err[found].mean()) if found.any() else None,
        "ego_lane_found": float(found.mean()),
    }


def evaluate_lanes(model: Any, spec: LaneModelSpec, split: LaneSplit, device: str = "cpu",
                   camera: CameraSpec | None = None) -> dict[str, Any]:
    """Lane metrics overall and per time of day, weather and family."""
    camera = camera or split.camera
    pred = predict_lanes(model, spec, split.images, device)
    report: dict[str, Any] = {"all": lane_scores(pred, split, camera)}
    report["nominal (day, clear)"] = lane_scores(
        pred, split, camera, np.array([is_nominal(m) for m in split.meta], bool))
    for key in ("time_of_day", "weather", "family"):
        values = [m.get(key) for m in split.meta]
        for value in sorted({v for v in values if v is not None}):
            sel = np.array([v == value for v in values])
            report[f"{key}={value}"] = lane_scores(pred, split, camera, sel)
    return report


def evaluate_lane_weights(weights: Path | None, data: Path, split: str, device: str = "cpu"
                          ) -> dict[str, Any]:
    """Load lane weights (default: shipped) and evaluate them on a dataset split."""
    model, spec, _ = load_lane_model(weights, device)
    data_split = load_split(data, split)
    if data_split.images.shape[1:3] != (spec.height, spec.width):
        raise ValueError(f"dataset images are {data_split.images.shape[1:3]}, the lane model "
                         f"takes {(spec.height, spec.width)}")
    return evaluate_lanes(model, spec, data_split, device)
