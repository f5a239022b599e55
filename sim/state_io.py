"""A `WorldState` (with the env's part, `extra`) as plain JSON and numpy arrays, so that
a saved situation (a snapshot's clip start) is stored without pickle and restored without
running code: `state_to_plain` -> (document, arrays) -> `state_from_plain`.

The document holds the scenario, the ego, the counters, the random generator state and
the env's controller memory; `arrays` holds the actor table's columns (write them with
`np.savez`, read them with `np.load(..., allow_pickle=False)`). `state_from_plain`
checks the types of everything it reads and `WorldState.check` the values, so a damaged
file is one clear error, never NaN frames.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import numpy as np

from sim.actions import MetaController, SpeedController
from sim.config import Scenario
from sim.env import check_extra
from sim.types import EgoState
from sim.world.actors import ActorTable
from sim.world.world import WorldState

FORMAT = 1
"""Version of the document's layout."""


class StateFormatError(ValueError):
    """A saved state that cannot be restored; `str(err)` names the field."""


def state_to_plain(state: WorldState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able document, actor columns) of `state`."""
    extra: dict[str, Any] = {}
    for key, value in state.extra.items():
        if key == "controller":
            extra[key] = None if value is None else {
                "target_lane": int(value.target_lane),
                "target_speed": float(value.target_speed),
                "speed_pid": {k: float(v) for k, v in asdict(value.speed_pid).items()}}
        else:
            extra[key] = float(value)
    doc = {
        "format": FORMAT,
        "scenario": _plain(asdict(state.scenario)),
        "ego": {k: float(v) for k, v in asdict(state.ego).items()},
        "step": int(state.step), "time": float(state.time),
        "next_track_id": int(state.next_track_id),
        "rng_state": _plain(state.rng_state),
        "extra": extra,
    }
    arrays = {f"actors.{f.name}": np.asarray(getattr(state.actors, f.name))
              for f in fields(ActorTable)}
    return doc, arrays


def state_from_plain(doc: Any, arrays: Any) -> WorldState:
    """The `WorldState` of a document and actor columns from `state_to_plain`; raises
    StateFormatError naming what is missing or of the wrong type, and the checks of
    `WorldState.check` for values out of range."""
    if not isinstance(doc, dict):
        raise StateFormatError(f"state: must be an object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise StateFormatError(f"state.format: {doc.get('format')!r:.40}, this drivestack "
                               f"reads format {FORMAT}")
    try:
        scenario = Scenario(**_fields(doc, "scenario", Scenario))
        ego = EgoState(**_fields(doc, "ego", EgoState))
        actors = ActorTable(**{f.name: _array(arrays, f"actors.{f.name}")
                               for f in fields(ActorTable)})
        extra = _extra(doc.get("extra", {}))
        state = WorldState(scenario=scenario, ego=ego, actors=actors,
                           step=_int(doc, "step"), time=_float(doc, "time"),
                           next_track_id=_int(doc, "next_track_id"),
                           rng_state=_rng(doc.get("rng_state")), extra=extra)
        state.check()
        check_extra(state)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, StateFormatError):
            raise
        raise StateFormatError(f"state: {exc}") from None
    return state


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fields(doc: dict[str, Any], key: str, kind: type) -> dict[str, Any]:
    part = doc.get(key)
    if not isinstance(part, dict):
        raise StateFormatError(f"state.{key}: must be an object")
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(part) - names)
    if unknown:
        raise StateFormatError(f"state.{key}: unknown key(s) {unknown[:5]}")
    for k, v in part.items():
        if isinstance(v, dict | list) or v is None:
            raise StateFormatError(f"state.{key}.{k}: must be a number or a string")
    return part


def _int(doc: dict[str, Any], key: str) -> int:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise StateFormatError(f"state.{key}: must be an integer, got {v!r:.40}")
    return v


def _float(doc: dict[str, Any], key: str) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise StateFormatError(f"state.{key}: must be a number, got {v!r:.40}")
    return float(v)


def _array(arrays: Any, key: str) -> np.ndarray:
    try:
        a = arrays[key]
    except KeyError:
        raise StateFormatError(f"state arrays: {key} is missing") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise StateFormatError(f"state arrays: {key} must be a numeric array")
    return np.array(a)


def _rng(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict):
        raise StateFormatError("state.rng_state: must be a PCG64 state object")
    return value


def _extra(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateFormatError("state.extra: must be an object")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "controller":
            if v is None:
                out[key] = None
                continue
            if not isinstance(v, dict) or not isinstance(v.get("speed_pid"), dict):
                raise StateFormatError("state.extra.controller: must be an object with "
                                       "target_lane, target_speed and speed_pid")
            pid = SpeedController(**_fields(v, "speed_pid", SpeedController))
            lane = v.get("target_lane")
            speed = v.get("target_speed")
            if isinstance(lane, bool) or not isinstance(lane, int):
                raise StateFormatError("state.extra.controller.target_lane: must be an int")
            if isinstance(speed, bool) or not isinstance(speed, int | float):
                raise StateFormatError("state.extra.controller.target_speed: must be a number")
            out[key] = MetaController(target_lane=lane, target_speed=float(speed),
                                      speed_pid=pid)
        else:
            out[key] = _float(value, key)
    return out
