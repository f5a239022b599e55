"""Keep ultralytics and OpenVINO off the network: they must find everything locally.

Call `ultralytics_offline()` before the first `import ultralytics` (the detector module
does). It sets, and documents:

- `YOLO_OFFLINE=True`: no update checks, no hub, no online probes;
- `YOLO_AUTOINSTALL=False`: no `pip install` at run time (install `lap` up front for
  tracking: it is a dependency of drivestack);
- `ULTRALYTICS_SAFE_LOAD=1`: ultralytics' safe-load mode (ultralytics 8.4.67 and later): a
  detector `.pt` is read by `torch.load(weights_only=True)` against an allow-list of
  ultralytics and torch model classes, never unpickled, so a crafted file cannot run code;
  also set on the loaded module when ultralytics was imported before. `safe_load_active()`
  says whether it holds; `require_safe_load()` (the detector loaders call it) refuses to
  go on where it does not (an older ultralytics);
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
INTEGRATIONS = ("sync", "clearml", "comet", "dvc", "mlflow", "neptune", "raytune",
                "tensorboard", "wandb", "hub")
"""ultralytics settings turned off: its hub sync and the experiment trackers it would log
runs to (or upload them) whenever their package happens to be installed."""


def cache_dir() -> Path:
    root = os.environ.get("DRIVESTACK_CACHE") or Path.home() / ".cache" / "drivestack"
    return Path(root)


SAFE_LOAD_SINCE = "8.4.67"
"""The first ultralytics with a safe-load mode (`ULTRALYTICS_SAFE_LOAD`)."""


class SafeLoadUnavailable(ValueError):
    """The installed ultralytics cannot load a detector `.pt` without unpickling it."""


def ultralytics_offline() -> Path:
    """Configure the environment for offline ultralytics, in its safe-load mode; returns its
    settings folder."""
    # always drivestack's own folder: it rewrites the settings there (a user's own
    # YOLO_CONFIG_DIR is left alone)
    config = cache_dir() / "ultralytics"
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ["YOLO_OFFLINE"] = "True"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"  # read once, when ultralytics is imported
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

    off = {k: False for k in INTEGRATIONS if settings.get(k, False)}
    if off:  # no hub sync, no experiment trackers that would log or upload runs
        settings.update(off)
    _safe_load_on()
    return user_dir


def _safe_load_on() -> None:
    """Safe-load mode on the loaded ultralytics too (imported before the variable was
    set): its loader reads the flag from `ultralytics.nn.tasks` at each load."""
    import ultralytics.utils
    from ultralytics.nn import tasks

    if hasattr(tasks, "SAFE_LOAD"):
        ultralytics.utils.SAFE_LOAD = True  # type: ignore[attr-defined]
        tasks.SAFE_LOAD = True  # type: ignore[attr-defined]


def safe_load_active() -> bool:
    """Whether ultralytics now loads `.pt` files with `weights_only=True` and its allow-list
    (its `_SafeLoad`, switched on and supported by this torch)."""
    tasks = sys.modules.get("ultralytics.nn.tasks")
    loader = getattr(tasks, "_SafeLoad", None)
    return bool(loader is not None and getattr(tasks, "SAFE_LOAD", False)
                and getattr(loader, "SUPPORTED", True))


def require_safe_load() -> None:
    """`ultralytics_offline()`, then `SafeLoadUnavailable` unless its safe-load mode holds:
    drivestack never unpickles a detector `.pt` (it could run code)."""
    ultralytics_offline()
    if not safe_load_active():
        import ultralytics

        raise SafeLoadUnavailable(
            f"ultralytics {getattr(ultralytics, '__version__', '?')} cannot load a detector "
            f".pt without unpickling it (which can run code from the file); drivestack "
            f"refuses: install ultralytics>={SAFE_LOAD_SINCE} (its safe-load mode), or use "
            "an ONNX export of the weights")


def openvino_offline() -> None:
    """Before the first `import openvino`: no telemetry (see the module docstring)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment, arg-type]
