"""The model registry: the one place that names the current detector.

    from perception.registry import current_detector
    weights = current_detector()   # the promoted detector, else the shipped one

`drivestack run`, `eval`, `eval-perception`, `train-planner`'s perception source, the
noise measurement and the data engine all load the detector through `Perceiver()` without
weights, which asks here. An entry may carry its box refiner's score exponent
(`refiner_iou_weight`, perception/refine.py): how much the refiner's edge confidence
reranks this detector's boxes, calibrated for it (the shipped detector's confidences are
not a fine-tuned one's; `data_engine.evaluation.calibrate_score_weight`). `Perceiver()`
uses it with the current detector; None keeps the refiner's own. The data engine's loop
registers every model it trains with its metrics (`register`), promotes one only when it
passed the promotion gate (`promote`), and `rollback` returns to the one before
(`drivestack models rollback`).

The registry is a folder (`$DRIVESTACK_REGISTRY`, else `~/.local/share/drivestack/
registry`): `registry.json` (strict JSON, written atomically) and `models/<name>/
detector.pt`, a copy of each registered file. The copy's SHA-256 is checked before it is
used: a changed file is one clear error, never a silently different detector.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perception.detector import DEFAULT_WEIGHTS
from perception.refine import MAX_IOU_WEIGHT
from sim.outputs import atomic_write_text, json_text, not_a_file
from sim.types import check_number

FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHIPPED = "shipped"
"""The name of the shipped detector (perception/weights/detector.pt), always there."""
MAX_REGISTRY = 4 * 1024 * 1024


class RegistryError(ValueError):
    """A registry that cannot be used as asked; `str(err)` says why and what to do."""


def registry_dir() -> Path:
    root = os.environ.get("DRIVESTACK_REGISTRY")
    return Path(root) if root else Path.home() / ".local" / "share" / "drivestack" / "registry"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One registered detector."""

    name: str
    path: Path
    sha256: str
    created: str
    metrics: dict[str, Any]
    info: dict[str, Any]
    refiner_iou_weight: float | None = None
    """The refiner's score exponent calibrated for this detector (None: the refiner's)."""


class Registry:
    """The registry at `root` (default `registry_dir()`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else registry_dir()
        self.file = self.root / "registry.json"

    # -- reading -------------------------------------------------------------------------
    def _doc(self) -> dict[str, Any]:
        if not self.file.exists():
            return {"format": FORMAT, "current": None, "history": [], "models": {}}
        if not self.file.is_file() or self.file.stat().st_size > MAX_REGISTRY:
            raise RegistryError(f"model registry {self.file} {not_a_file(self.file)}")
        try:
            doc = json.loads(self.file.read_text(encoding="utf-8"),
                             parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RegistryError(f"model registry {self.file} is not valid JSON ({exc}); "
                                "fix or remove it (the shipped detector is then current)"
                                ) from None
        ok = (isinstance(doc, dict) and doc.get("format") == FORMAT
              and isinstance(doc.get("models"), dict) and isinstance(doc.get("history"), list)
              and (doc.get("current") is None or doc.get("current") in doc["models"]))
        if not ok:
            raise RegistryError(f"model registry {self.file} is not a drivestack registry of "
                                f"format {FORMAT}; fix or remove it")
        return doc

    def entries(self) -> list[Entry]:
        """Every registered detector, the shipped one first."""
        doc = self._doc()
        out = [self._shipped()]
        for name, m in doc["models"].items():
            out.append(self._entry(name, m))
        return out

    def current(self) -> Entry:
        """The current detector (the shipped one unless another was promoted), its file
        checked against its SHA-256."""
        doc = self._doc()
        name = doc["current"]
        if name is None or name == SHIPPED:
            return self._shipped()
        entry = self._entry(name, doc["models"][name])
        self.check(entry)
        return entry

    def get(self, name: str) -> Entry:
        _check_name(name)
        if name == SHIPPED:
            return self._shipped()
        doc = self._doc()
        if name not in doc["models"]:
            known = ", ".join([SHIPPED, *doc["models"]])
            raise RegistryError(f"no model {name!r} in the registry {self.root}; known: {known}")
        return self._entry(name, doc["models"][name])

    def check(self, entry: Entry) -> None:
        """Raise RegistryError unless the entry's file is there with its SHA-256."""
        if not entry.path.is_file():
            raise RegistryError(f"registered detector {entry.name}: {entry.path} "
                                f"{not_a_file(entry.path)}; `drivestack models rollback` "
                                "returns to the one before")
        if sha256_file(entry.path) != entry.sha256:
            raise RegistryError(f"registered detector {entry.name}: {entry.path} changed since "
                                "it was registered (SHA-256 differs); `drivestack models "
                                "rollback` returns to the one before")

    # -- writing -------------------------------------------------------------------------
    def register(self, weights: str | Path, name: str, metrics: dict[str, Any] | None = None,
                 *, refiner_iou_weight: float | None = None, **info: Any) -> Entry:
        """Copy `weights` into the registry as `name` (new) with its metrics and info, and
        the refiner score exponent calibrated for it (None: the refiner's own)."""
        _check_name(name)
        if refiner_iou_weight is not None:
            check_number("refiner_iou_weight", refiner_iou_weight, 0.0, MAX_IOU_WEIGHT)
        weights = Path(weights)
        if not weights.is_file():
            raise RegistryError(f"weights {weights} {not_a_file(weights)}")
        doc = self._doc()
        if name == SHIPPED or name in doc["models"]:
            raise RegistryError(f"a model named {name!r} is already registered; pick another "
                                "name")
        folder = self.root / "models" / name
        if folder.exists():
            raise RegistryError(f"{folder} exists but is not registered; remove it or pick "
                                "another name")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(weights, tmp / "detector.pt")
        digest = sha256_file(tmp / "detector.pt")
        os.replace(tmp, folder)
        doc["models"][name] = {"file": f"models/{name}/detector.pt", "sha256": digest,
                               "created": _now(), "metrics": metrics or {},
                               "info": {"source": str(weights), **info}}
        if refiner_iou_weight is not None:
            doc["models"][name]["refiner_iou_weight"] = float(refiner_iou_weight)
        self._write(doc)
        return self._entry(name, doc["models"][name])

    def promote(self, name: str) -> Entry:
        """Make `name` the current detector (checked first)."""
        entry = self.get(name)
        if entry.name != SHIPPED:
            self.check(entry)
        doc = self._doc()
        doc["history"].append({"current": entry.name, "at": _now(),
                               "previous": doc["current"] or SHIPPED})
        doc["current"] = None if entry.name == SHIPPED else entry.name
        self._write(doc)
        return entry

    def rollback(self) -> Entry:
        """Return to the detector that was current before the last promotion."""
        doc = self._doc()
        if not doc["history"]:
            raise RegistryError("nothing to roll back: no model was ever promoted here "
                                f"({self.root}); the shipped detector is current")
        last = doc["history"].pop()
        previous = last.get("previous", SHIPPED)
        if previous != SHIPPED and previous not in doc["models"]:
            previous = SHIPPED
        doc["current"] = None if previous == SHIPPED else previous
        self._write(doc)
        return self._shipped() if previous == SHIPPED else self._entry(
            previous, doc["models"][previous])

    # -- internals -----------------------------------------------------------------------
    def _write(self, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file, json_text(doc, indent=1) + "\n")

    def _entry(self, name: str, m: Any) -> Entry:
        ok = bool(isinstance(m, dict) and isinstance(m.get("file"), str)
                  and re.fullmatch(r"models/[A-Za-z0-9._-]+/detector\.pt", m["file"])
                  and isinstance(m.get("sha256"), str) and NAME.fullmatch(name))
        weight = m.get("refiner_iou_weight") if isinstance(m, dict) else None
        if ok and weight is not None:
            ok = (isinstance(weight, int | float) and not isinstance(weight, bool)
                  and 0.0 <= weight <= MAX_IOU_WEIGHT)  # NaN fails both
        if not ok:
            raise RegistryError(f"model registry {self.file}: entry {name!r:.40} is damaged")
        return Entry(name, self.root / m["file"], m["sha256"], str(m.get("created", "")),
                     dict(m.get("metrics") or {}), dict(m.get("info") or {}),
                     None if weight is None else float(weight))

    def _shipped(self) -> Entry:
        return Entry(SHIPPED, DEFAULT_WEIGHTS, "", "", {}, {"source": "shipped"})


def current_detector() -> Path:
    """The weights file of the current detector (see the module docstring)."""
    return Registry().current().path


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"model name {name!r:.60} is not allowed: 1-64 letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
