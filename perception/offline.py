"""Keep ultralytics and OpenVINO off the network: they must find everything locally.

Call `ultralytics_offline()` before the first `import ultralytics` (the detector module
does). It sets, and documents:

- `YOLO_OFFLINE=True`: no update checks, no hub, no online probes;
- `YOLO_AUTOINSTALL=False`: no `pip install` at run time (install `lap` up front for
  tracking: it is a dependency of drivestack);
- `YOLO_CONFIG_DIR`: a drivestack-owned settings folder (default `~/.cache/drivestack/
  ultralytics`, or `$DRIVESTACK_CACHE/ultralytics`), with `sync: False` in its settings;
- the fonts ultralytics looks up for plots and dataset checks (`Arial.ttf`,
  `Arial.Unicode.ttf`) as copies of DejaVuSans shipped inside matplotlib, placed where
  ultralytics looks first, so it never tries to download them (it does even with
  `plots=False`, from its dataset check).

Call `openvino_offline()` before the first `import openvino` (perception/onnx_cpu.py
does). `import openvino` loads its model converter, which sends a usage event to Google
Analytics from a forked child process unless the user opted out, and writes
`~/intel/openvino_ga_cid`. `openvino_offline()` marks the `openvino_telemetry` package as
absent in `sys.modules`, so the converter takes its own no-op telemetry stub: nothing is
sent and nothing is written (tests/perception/test_offline.py checks it, child processes
included).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def cache_dir() -> Path:
    root = os.environ.get("DRIVESTACK_CACHE") or Path.home() / ".cache" / "drivestack"
    return Path(root)


def ultralytics_offline() -> Path:
    """Configure the environment for offline ultralytics; returns its settings folder."""
    config = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics")))
    os.environ["YOLO_OFFLINE"] = "True"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    user_dir = config / "Ultralytics"  # ultralytics appends this to YOLO_CONFIG_DIR
    user_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib  # ships DejaVuSans; an ultralytics dependency

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONTS:
        target = user_dir / name
        if not target.exists():
            tmp = target.with_suffix(".partial")
            shutil.copyfile(font, tmp)
            os.replace(tmp, target)
    from ultralytics import settings

    if settings.get("sync", True):
        settings.update({"sync": False})
    return user_dir


def openvino_offline() -> None:
    """Before the first `import openvino`: no telemetry (see the module docstring)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]
