"""Row-anchor lane model (Ultra-Fast-Lane-Detection style) and its ground-plane geometry.

For each of four lane slots (CULane convention: the ego lane's two boundaries and their
outer neighbours) and each anchor row, the model classifies which of `cells` columns the
boundary crosses, or "absent" (class `cells`). The x position is the softmax expectation
over the cells, which refines the cell grid to sub-pixel precision.

Backbones (both untrained, selectable by name):
- "cnn": torchvision MobileNetV3-Small features (stride 32);
- "vit": a small timm VisionTransformer (patch 16, 6 blocks, width 192).
Both feed the same head: a 1x1 reduction, then a fully connected classifier over the
whole flattened map (global context decides which boundary is which slot).

From the image polylines, `lane_geometry` casts the points onto the flat ground through
the camera intrinsics and pitch and fits the ego lane's centre, giving the ego's lateral
offset [m] (positive: left of the centre) and heading error [rad] as the simulator
defines them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from perception.geometry import fit_boundary, to_ground
from sim.outputs import not_a_file
from sim.types import ABSENT, CameraSpec, check_number

Backbone = Literal["cnn", "vit"]
BACKBONES: tuple[str, ...] = ("cnn", "vit")
LANE_SLOTS: tuple[str, ...] = ("left_outer", "ego_left", "ego_right", "right_outer")
"""Output lanes, left to right."""
EGO_LEFT, EGO_RIGHT = 1, 2
DEFAULT_LANE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "lanes.pt"
"""Shipped lane model (see docs/models.md for how it was made)."""
NOMINAL_LANE_WIDTH = 3.6
"""Lane width assumed when only one ego boundary is seen [m]."""
MIN_POINTS = 3
"""A predicted lane with fewer present rows is dropped."""


@dataclass(frozen=True)
class LaneModelSpec:
    """Shape of the model's input and output; saved with the weights."""

    backbone: str = "cnn"
    height: int = 192
    width: int = 320
    rows: tuple[int, ...] = ()
    """Anchor rows [px] (the dataset's h_samples)."""
    cells: int = 64
    """Column cells across the image width."""
    hidden: int = 192
    """Width of the fully connected layer of the head."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}; allowed: {list(BACKBONES)}")
        if not self.rows:
            raise ValueError("rows: at least one anchor row is needed")
        check_number("height", self.height, 32, 4096, integer=True, unit="px")
        check_number("width", self.width, 32, 4096, integer=True, unit="px")
        check_number("cells", self.cells, 2, 4096, integer=True)
        check_number("hidden", self.hidden, 1, 65536, integer=True)
        for r in self.rows:
            check_number("rows", r, 0, self.height - 1, integer=True, unit="px")
        if self.height % 32 or self.width % 32:
            raise ValueError(f"input {self.height}x{self.width} must be multiples of 32")

    @property
    def cell_px(self) -> float:
        return self.width / self.cells


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool | np.bool_) and bool(np.isfinite(v)))


def check_lane_record(record: Any) -> None:
    """ValueError saying what is wrong unless `record` is a lane label as `drivestack
    dataset` writes it: `h_samples` a list of row indices, `lanes` one list of finite x
    [px] (ABSENT where missing) per boundary with one x per row, `boundary_ids` one
    integer per boundary, `ego_boundaries` two indices into them."""
    if not isinstance(record, dict):
        raise ValueError(f"a lane record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in ("h_samples", "lanes", "boundary_ids", "ego_boundaries")
               if k not in record]
    if missing:
        raise ValueError(f"lane record without {', '.join(missing)}")
    rows, ids, ego = (_as_list(record[k]) for k in ("h_samples", "boundary_ids",
                                                    "ego_boundaries"))
    lanes = _as_list(record["lanes"])
    lanes = [_as_list(lane) for lane in lanes] if isinstance(lanes, list) else lanes
    if not isinstance(rows, list) or not rows or not all(_is_int(r) and r >= 0 for r in rows):
        raise ValueError(f"h_samples must be a list of row indices [px], got {_cut(rows)}")
    if not isinstance(lanes, list) or not all(
            isinstance(lane, list) and len(lane) == len(rows)
            and all(_is_number(x) for x in lane) for lane in lanes):
        raise ValueError(f"lanes must be a list of boundaries, each a list of "
                         f"{len(rows)} finite x [px] (one per h_samples row, {ABSENT} where "
                         f"missing), got {_cut(lanes)}")
    if not isinstance(ids, list) or len(ids) != len(lanes) or not all(_is_int(i) for i in ids):
        raise ValueError(f"boundary_ids must be a list of {len(lanes)} integers (one per "
                         f"lane), got {_cut(ids)}")
    if (not isinstance(ego, list) or len(ego) != 2
            or not all(_is_int(i) and 0 <= i < len(ids) for i in ego)):
        raise ValueError(f"ego_boundaries must be two indices into the {len(ids)} "
                         f"boundary_ids, got {_cut(ego)}")


def _as_list(value: Any) -> Any:
    """A list, tuple or array as a list (anything else as it is)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def slot_targets(record: dict[str, Any]) -> np.ndarray:
    """(4, R) x of each slot at the record's rows, ABSENT where missing (one lane JSON line
    of a `drivestack dataset`); ValueError saying what is wrong with a record that is not
    one (`check_lane_record`)."""
    check_lane_record(record)
    lanes = np.asarray(record["lanes"], np.float32).reshape(-1, len(record["h_samples"]))
    ids = [int(i) for i in record["boundary_ids"]]
    right, left = (ids[i] for i in record["ego_boundaries"])
    out = np.full((len(LANE_SLOTS), lanes.shape[1]), ABSENT, np.float32)
    for slot, bid in enumerate((left + 1, left, right, right - 1)):
        if bid in ids:
            out[slot] = lanes[ids.index(bid)]
    return out


def build_model(spec: LaneModelSpec) -> Any:
    """The torch module for `spec` (random init)."""
    import torch
    from torch import nn

    class LaneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            fh, fw = spec.height // 32, spec.width // 32
            if spec.backbone == "cnn":
                import torchvision

                self.features = torchvision.models.mobilenet_v3_small(weights=None).features
                for m in self.features.modules():  # torchvision's 0.01 lags for hundreds
                    if isinstance(m, nn.BatchNorm2d):  # of steps; eval mode needs them
                        m.momentum = 0.1
                channels = 576
            else:
                import timm

                self.features = timm.models.vision_transformer.VisionTransformer(
                    img_size=(spec.height, spec.width), patch_size=16, embed_dim=192,
                    depth=6, num_heads=3, num_classes=0, global_pool="", class_token=False)
                channels, fh, fw = 192, spec.height // 16, spec.width // 16
            self.fh, self.fw = fh, fw
            self.reduce = nn.Sequential(nn.Conv2d(channels, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Sequential(
                nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * fh * fw, spec.hidden), nn.ReLU(),
                nn.Linear(spec.hidden, len(LANE_SLOTS) * len(spec.rows) * (spec.cells + 1)))
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            """uint8 (B, H, W, 3) RGB -> logits (B, slots, rows, cells + 1)."""
            dtype: torch.dtype = self.mean.dtype  # type: ignore[assignment]
            x = images.permute(0, 3, 1, 2).to(dtype).div(255.0)  # fp16 when halved
            x = (x - self.mean) / self.std  # type: ignore[operator]
            if spec.backbone == "cnn":
                f = self.features(x)
            else:
                tokens = self.features.forward_features(x)  # (B, N, C)
                f = tokens.transpose(1, 2).reshape(x.shape[0], -1, self.fh, self.fw)
            logits = self.head(self.reduce(f))
            return logits.view(-1, len(LANE_SLOTS), len(spec.rows), spec.cells + 1)

    return LaneNet()


def decode(logits: Any, spec: LaneModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, L, R, cells + 1) -> x (B, L, R) float32 with ABSENT, and the per-lane
    presence score (B, L) (mean probability of "present" over the rows)."""
    import torch

    with torch.no_grad():  # on the logits' device; one copy to the host at the end
        logits = logits.float()
        present = logits.argmax(-1) != spec.cells
        prob = torch.softmax(logits[..., : spec.cells], dim=-1)
        centres = (torch.arange(spec.cells, dtype=torch.float32, device=logits.device)
                   + 0.5) * spec.cell_px
        x = torch.where(present, (prob * centres).sum(-1), float(ABSENT)).cpu()
        p_present = (1.0 - torch.softmax(logits, dim=-1)[..., spec.cells]).mean(-1).cpu()
    xs = x.numpy().astype(np.float32)
    few = (xs != ABSENT).sum(-1) < MIN_POINTS
    xs[few] = ABSENT
    return xs, p_present.numpy().astype(np.float32)


def lane_loss(logits: Any, target_x: Any, spec: LaneModelSpec) -> Any:
    """Cross-entropy over cells + absent, plus an L1 term (in cells) on the expected x of
    the present points (sharpens the sub-cell position)."""
    import torch
    import torch.nn.functional as F

    present = target_x != ABSENT
    cls = torch.where(present, (target_x / spec.cell_px).long().clamp(0, spec.cells - 1),
                      torch.full_like(target_x, spec.cells, dtype=torch.long))
    ce = F.cross_entropy(logits.reshape(-1, spec.cells + 1), cls.reshape(-1))
    if not present.any():
        return ce
    prob = torch.softmax(logits[..., : spec.cells], dim=-1)
    centres = torch.arange(spec.cells, dtype=torch.float32, device=logits.device) + 0.5
    expect = (prob * centres).sum(-1)
    l1 = F.smooth_l1_loss(expect[present], target_x[present] / spec.cell_px)
    return ce + 0.5 * l1


def ground_points(xs: np.ndarray, rows: np.ndarray, camera: CameraSpec) -> np.ndarray:
    """Image points (x at rows, ABSENT skipped) -> ground (K, 2): forward, left [m] from the
    camera, on flat ground; points at or above the horizon are dropped."""
    ok = xs != ABSENT
    pts = to_ground(xs[ok], np.asarray(rows)[ok], camera)
    return pts[np.isfinite(pts[:, 0])]


def lane_geometry(xs: np.ndarray, rows: np.ndarray, camera: CameraSpec, far: float = 40.0
                  ) -> tuple[float, float]:
    """Ego lateral offset from the ego lane's centre [m] (positive: left of it) and heading
    error [rad] (positive: yawed left of the lane), at the ego's reference point
    (`camera.mount_forward` behind the camera), from slot polylines (4, R).

    NaN when neither ego boundary is seen; with one, the other is assumed
    NOMINAL_LANE_WIDTH away."""
    fits = [fit_boundary(ground_points(xs[s], rows, camera), far) for s in (EGO_LEFT, EGO_RIGHT)]
    x0 = -camera.mount_forward
    if fits[0] is None and fits[1] is None:
        return float("nan"), float("nan")
    shift = (0.0, 0.0)
    if fits[0] is None:
        fits[0], shift = fits[1], (NOMINAL_LANE_WIDTH, 0.0)
    elif fits[1] is None:
        fits[1], shift = fits[0], (0.0, -NOMINAL_LANE_WIDTH)
    left, right = fits[0], fits[1]
    assert left is not None and right is not None
    left_y = float(np.polyval(left, x0)) + shift[0]
    right_y = float(np.polyval(right, x0)) + shift[1]
    slope = (float(np.polyval(np.polyder(left), x0))
             + float(np.polyval(np.polyder(right), x0))) / 2
    return float(-(left_y + right_y) / 2), float(-np.arctan(slope))


def save_weights(model: Any, spec: LaneModelSpec, path: Path, extra: dict[str, Any]) -> None:
    """Weights (fp16) with their spec and metadata, written atomically."""
    import os

    import torch

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in
             model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"spec": {**asdict(spec), "rows": list(spec.rows)}, "state_dict": state,
                **extra}, tmp)
    os.replace(tmp, path)


def load_lane_model(path: Path | str | None = None, device: str = "cpu"
                    ) -> tuple[Any, LaneModelSpec, dict[str, Any]]:
    """(model in eval mode, spec, metadata) from a lanes .pt file (default: shipped), read
    without unpickling (torch `weights_only`) after its zip checksums; its weights must be
    the spec's model's, every key and shape, all finite. `FileNotFoundError`, or
    `UnreadableModel` naming the file."""
    from perception.onnx_cpu import UnreadableModel, brief, check_finite, load_checkpoint

    path = Path(path or DEFAULT_LANE_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"lane weights {path} {not_a_file(path)}; train them with "
                                "`drivestack train-perception` (lanes) or pass lane_weights=")
    blob = load_checkpoint(path, "lane weights")
    try:
        spec_d = dict(blob["spec"])
        spec = LaneModelSpec(**{**spec_d, "rows": tuple(int(r) for r in spec_d["rows"])})
        state = blob["state_dict"]
        model = build_model(spec)
        # every weight of the model's dtype kind (floating, or integer as BatchNorm's
        # counters; never complex), finite
        check_finite(state, path, "lane weights", want=model.state_dict())
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    except UnreadableModel:
        raise
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as exc:
        raise UnreadableModel(f"lane weights {path} are not a drivestack lane model: "
                              f"{type(exc).__name__}: {brief(exc)}") from None
    meta = {k: v for k, v in blob.items() if k not in ("spec", "state_dict")}
    return model.to(device).eval(), spec, meta

