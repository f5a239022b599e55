"""Reading launch files strictly: a safe YAML loader and the messages for people.

`load_launch(path, ModelClass)` reads a YAML launch file and validates it as a pydantic
model (the models live in launch/config.py and launch/eval_suite.py). Every failure -- a
missing or oversized file, malformed YAML, anchors and aliases, duplicate keys, a
non-mapping top level, an unknown key, a bad value -- raises one `LaunchConfigError` whose
message names the file, the dotted key path and what is allowed there, bounded in length
whatever the file holds.
"""

from __future__ import annotations

import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

MAX_LAUNCH_BYTES = 256 << 10
"""Largest launch file read [bytes]: a launch file is a page of settings, not data (the
packaged ones are under 4 KiB; YAML's pure-Python parser takes about 3 s for this much)."""
MAX_DEPTH = 32
"""Deepest nesting of YAML collections in a launch file."""
MAX_SHOWN = 100
"""Characters of a bad value shown in an error message."""
MAX_PROBLEMS = 10
"""Problems listed in one error message (the rest are counted)."""


class LaunchConfigError(ValueError):
    """A launch file that cannot be used; `str(err)` is a message for people."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems = problems
        """(dotted key path, what is wrong and what is allowed); the key is "" when the
        problem is the file as a whole."""
        lines = [clip(f"{key}: {text}" if key else text, 3 * MAX_SHOWN)
                 for key, text in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        name = clip(repr(str(path)), 2 * MAX_SHOWN)
        if len(problems) == 1:
            message = f"launch file {name}: {lines[0]}"
        else:
            message = f"launch file {name} has {len(problems)} problems:\n" + "\n".join(
                f"  - {line}" for line in lines)
        super().__init__(message)


# -- loading ---------------------------------------------------------------------------


class _LaunchLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter: no anchors or aliases (a few hundred bytes of them
    expand to gigabytes), no duplicate keys, collections at most MAX_DEPTH deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in launch "
                "files; write the values out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"collections nested deeper than {MAX_DEPTH} levels",
                    event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class names it
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short(key)} (first at line "
                        f"{first[key] + 1})", key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping).

    The file is read with `_LaunchLoader`: at most MAX_LAUNCH_BYTES, no anchors or
    aliases, no duplicate keys. Every problem is a `LaunchConfigError`."""
    p = Path(path)
    try:
        if not p.exists():
            raise LaunchConfigError(path, [("", "file not found")])
        if not p.is_file():
            raise LaunchConfigError(path, [("", "is not a file")])
        with p.open("rb") as f:
            raw = f.read(MAX_LAUNCH_BYTES + 1)
    except OSError as exc:
        raise LaunchConfigError(path, [("", f"cannot be read: {exc}")]) from None
    if len(raw) > MAX_LAUNCH_BYTES:
        raise LaunchConfigError(path, [("", f"is larger than {MAX_LAUNCH_BYTES} bytes; "
                                            "a launch file holds settings, not data")])
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_LaunchLoader)  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        raise LaunchConfigError(path, [("", f"is not valid YAML: {_yaml_problem(exc)}")]) from None
    except UnicodeDecodeError as exc:
        raise LaunchConfigError(path, [("", f"cannot be read: {exc}")]) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of over 4300 digits
        raise LaunchConfigError(path, [("", f"holds a value YAML cannot read: "
                                            f"{clip(str(exc), MAX_SHOWN)}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LaunchConfigError(path, [(
            "", f"the top level must be a mapping of keys to values, got a YAML "
                f"{_yaml_kind(data)}")])
    return data


def load_launch(
    path: str | Path, model_cls: type[M], overrides: Mapping[str, Any] | None = None
) -> M:
    """Read the launch file `path` and validate it as `model_cls`.

    `overrides` (dotted key -> value, e.g. `{"video.fps": 30}`; None values are skipped)
    are applied on top of the file, as command-line options do, and validated the same way.
    Raises `LaunchConfigError` naming the file, the key and what is allowed.
    """
    data = read_yaml_mapping(path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():
        _set_dotted(data, key, value)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        problems = [describe(err, model_cls) for err in exc.errors()]
        problems = [
            (key, f"{text} (set on the command line)" if _from(key, given) else text)
            for key, text in problems
        ]
        raise LaunchConfigError(path, problems) from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _from(key: str, overrides: Mapping[str, Any]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in overrides)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = clip(str(getattr(exc, "problem", None) or exc), 2 * MAX_SHOWN)
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with the cut marked."""
    return text if len(text) <= limit else text[:limit - 25] + f"... ({len(text)} characters)"


def short(value: Any) -> str:
    """repr(value) for an error message, at most about MAX_SHOWN characters: a bad value
    may be a huge nested list, and showing it must not cost more than the mistake."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an int of over 4300 digits
        return f"an {type(value).__name__} too large to show"
    return clip(text, MAX_SHOWN)


def _yaml_kind(data: object) -> str:
    if isinstance(data, list):
        return "list"
    if isinstance(data, str):
        return "string"
    return type(data).__name__


_REPR = reprlib.Repr()
for _name, _limit in (("maxlevel", 3), ("maxlist", 8), ("maxtuple", 8), ("maxdict", 8),
                      ("maxset", 8), ("maxstring", 80), ("maxlong", 40), ("maxother", 80)):
    setattr(_REPR, _name, _limit)


# -- error messages ----------------------------------------------------------------------


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = clip(str(part), MAX_SHOWN)
            out += f".{part}" if out else part
    return out


def _model_at(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the value at `loc` inside `model_cls`, if any."""
    current: type[BaseModel] | None = model_cls
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        current = model_in(current.model_fields[part].annotation)
    return current


def model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = model_in(arg)
            if found is not None:
                return found
    return None


def _range_text(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """", allowed: 0 < x <= 45" from the bounds pydantic checks at `loc`, else ""."""
    annotation: Any = model_cls
    metadata: list[Any] = []
    for part in loc:
        model = model_in(annotation)
        if isinstance(part, str) and model is not None and part in model.model_fields:
            info = model.model_fields[part]
            annotation, metadata = info.annotation, list(info.metadata)
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
        if origin is tuple and isinstance(part, int) and args:
            annotation = args[0] if len(args) == 2 and args[1] is Ellipsis else args[
                min(part, len(args) - 1)]
        elif origin is dict and len(args) == 2:
            annotation = args[1]
        elif origin is list and args:
            annotation = args[0]
        else:
            return ""
        metadata = []
        if typing.get_origin(annotation) is Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata += list(getattr(item, "metadata", [item]))
    words = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
             (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))
    bounds = [f"x {sign} {getattr(m, name)}" for m in metadata
              for kind, name, sign in words if isinstance(m, kind)]
    return f", allowed: {' and '.join(bounds)}" if bounds else ""


def describe(err: Mapping[str, Any], model_cls: type[BaseModel]) -> tuple[str, str]:
    """(dotted key, message) for one pydantic error."""
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(model_cls, loc[:-1])
        allowed = ", ".join(model.model_fields) if model is not None else "none"
        return _dotted(loc), f"unknown key; allowed keys: {allowed}"
    if loc and loc[-1] == "[key]":  # a bad key of a typed dict (e.g. weather weights)
        key, loc = loc[-2], loc[:-2]
        allowed = ctx.get("expected", "")
        return _dotted(loc), f"unknown key {short(key)}; allowed keys: {allowed}"
    if kind == "literal_error":
        return _dotted(loc), f"{short(err['input'])} is not allowed; allowed values: " \
                             f"{ctx['expected']}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        text = str(ctx["error"])
        model = _model_at(model_cls, loc)
        field, sep, rest = text.partition(": ")
        if model is not None and sep and field in model.model_fields:
            return _dotted((*loc, field)), rest  # "lanes: lower bound ..." -> scenario.lanes
        return _dotted(loc), text
    if kind == "missing":
        return _dotted(loc), "required key is missing"
    if kind == "finite_number":
        allowed = _range_text(model_cls, loc)
        return _dotted(loc), (f"must be a finite number{allowed} "
                              f"(got {short(err['input'])})")
    return _dotted(loc), f"{err['msg']} (got {short(err['input'])})"
