"""A trained SB3 policy as a planner: its observation is `features(scene)`, its action a
meta action (sim.actions); and `load_policy`, which reads a policy zip with one clear
error for a missing, corrupted or mismatched file.

A policy zip is never unpickled. SB3's own `PPO.load` runs cloudpickle on the zip's
`data` entry (the spaces, schedules, the policy class), so a crafted zip runs code.
Here only the zip's tensors are read (its `.pth` entries, with torch `weights_only`:
tensors and plain data) and the plain JSON fields of `data` (the step count); the
network's layer sizes come from the tensors' shapes, the observation and action sizes
must be one of `OBSERVATION_DIMS` (today's features, or the prefix an older policy was
trained on: before the controller features, or before the path features) and the meta
actions, and the SB3 model is built
fresh (`load_policy`; `load_parameters` for a training run's resume).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception.onnx_cpu import brief, check_finite, check_tensor, quiet_load, refused_global
from planning.features import (
    CLIP,
    CONTROL_FEATURE_DIM,
    FEATURE_DIM,
    LEGACY_FEATURE_DIM,
    OBSERVATION_DIMS,
    PATH_FEATURE_DIM,
    features,
)
from planning.memory import NeighbourMemory
from planning.rule_based import RuleParams
from planning.scene import Scene
from sim.actions import META_ACTIONS
from sim.outputs import not_a_file
from sim.types import check_number

MAX_ENTRY_BYTES = 256 << 20
"""Largest zip entry read [bytes] (the shipped policies' largest is 0.4 MB)."""


class PolicyPlanner:
    """A trained SB3 policy whose observation is `features(scene)` and whose action is a
    meta action, optionally filtered by a `planning.shield.SafetyShield`."""

    def __init__(self, model: Any, shield: Any = None, decision_dt: float | None = None
                 ) -> None:
        self.model = model
        self.shield = shield
        self.memory = NeighbourMemory(1)
        """What it remembers of its neighbours (`planning.memory`), one update per `act`."""
        self.decision_dt = RuleParams().decision_dt if decision_dt is None else decision_dt
        """Time between two calls of `act` [s] (default: the rule planner's, 3 steps at
        15 Hz, the cadence the policies are trained and driven at)."""
        self.proposed: int | None = None
        """The policy's own action at the last decision (before the shield)."""
        self.overridden = False
        """The shield replaced the policy's action at the last decision."""

    def set_decision_dt(self, dt: float) -> None:
        """The time between two calls of `act` [s] (`planning.rollout.PlannerAgent` sets
        it from its `decision_every` and the env's step): the memory moves its neighbours
        by it, and so does the shield's."""
        check_number("decision_dt", dt, 0.0, 3600.0, unit="s", open_lo=True)
        self.decision_dt = float(dt)
        if self.shield is not None:
            self.shield.set_decision_dt(dt)

    def reset(self) -> None:
        self.proposed, self.overridden = None, False
        self.memory.reset()
        if self.shield is not None:
            self.shield.reset()

    def act(self, scene: Scene) -> int:
        space = getattr(self.model, "observation_space", None)
        dim = FEATURE_DIM if space is None else int(space.shape[0])  # legacy: a prefix
        memory = self.memory.update_scene(scene, self.decision_dt)
        action, _ = self.model.predict(features(scene, memory)[:dim], deterministic=True)
        proposed = int(np.asarray(action).item())
        chosen = proposed if self.shield is None else self.shield.filter(scene, proposed)
        self.proposed, self.overridden = proposed, chosen != proposed
        return chosen


class PolicyLoadError(ValueError):
    """A policy file that cannot be used; `str(err)` names the file and the problem."""


@dataclass(frozen=True)
class PolicyZip:
    """What drivestack reads of an SB3 zip: nothing that needs unpickling."""

    path: Path
    data: dict[str, Any]
    """The plain JSON fields of its `data` entry (those SB3 pickled are left out)."""
    pickled: tuple[str, ...]
    """The fields of `data` SB3 pickled (never read here)."""
    params: dict[str, Any]
    """State dicts by name ("policy", "policy.optimizer", ...), from its `.pth` entries."""
    variables: dict[str, Any]
    """Its PyTorch variables (`pytorch_variables.pth`; SAC's entropy coefficient)."""

    @property
    def timesteps(self) -> int:
        """The model's step count when it was saved."""
        n = self.data.get("num_timesteps", 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise PolicyLoadError(f"policy file {self.path}: num_timesteps is {n!r}, not a "
                                  "count of steps")
        return n


def read_policy_zip(path: str | Path) -> PolicyZip:
    """The tensors and plain fields of an SB3 zip (`PolicyZip`), checked: every entry
    matches its CRC-32, no entry is over `MAX_ENTRY_BYTES`, the `.pth` entries load with
    torch `weights_only` and their tensors hold real numbers, finite where floating.
    `PolicyLoadError` naming the file and the problem otherwise."""
    p = Path(path)
    if not p.is_file():
        raise PolicyLoadError(f"policy file {p} {not_a_file(p)}; train one with `drivestack "
                              "train-planner`, or give another (--policy / --privileged-policy, or "
                              "`policy` / `privileged_policy` in the eval launch file)")
    entry = "data"
    try:
        with zipfile.ZipFile(p) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            for name in ("data", "policy.pth"):
                if name not in infos:
                    raise PolicyLoadError(f"policy file {p} is not a readable SB3 PPO zip: "
                                          f"it has no {name!r} entry")
            for info in infos.values():
                if info.file_size > MAX_ENTRY_BYTES:
                    raise PolicyLoadError(f"policy file {p}: its entry {info.filename} "
                                          f"unpacks to {info.file_size} bytes, over "
                                          f"{MAX_ENTRY_BYTES}")
            raw = json.loads(archive.read("data").decode())  # zipfile checks the CRC
            if not isinstance(raw, dict):
                raise PolicyLoadError(f"policy file {p}: its data entry is not a JSON object")
            pickled = tuple(k for k, v in raw.items()
                            if isinstance(v, dict) and ":serialized:" in v)
            data = {k: v for k, v in raw.items() if k not in pickled}
            params: dict[str, Any] = {}
            variables: dict[str, Any] = {}
            for name in sorted(n for n in infos if n.endswith(".pth")):
                entry = name
                blob = quiet_load(io.BytesIO(archive.read(name)))  # no torch warnings
                if name in ("pytorch_variables.pth", "tensors.pth"):
                    variables = dict(blob)
                else:
                    params[name[: -len(".pth")]] = blob
    except PolicyLoadError:
        raise
    except pickle.UnpicklingError as exc:
        raise PolicyLoadError(
            f"policy file {p}: its entry {entry} holds Python objects{refused_global(exc)} "
            "besides tensors and plain data; loading them would run code from the file: "
            "refused") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, RuntimeError,
            EOFError, OSError, TypeError, ValueError, KeyError) as exc:
        raise PolicyLoadError(f"policy file {p} is not a readable SB3 PPO zip: "
                              f"{type(exc).__name__}: {brief(exc)}") from None
    _check_finite(p, "pytorch variables", variables)
    for name, state in params.items():
        _check_finite(p, name, state)
    return PolicyZip(p, data, pickled, params, variables)


def _check_finite(path: Path, name: str, state: Any) -> None:
    """`PolicyLoadError` unless every tensor in `state` (nested dicts and lists, as in an
    optimizer's state) holds real numbers (never complex), finite where floating
    (`perception.onnx_cpu.check_tensor`); `check_state` and `_check_optimizer` check their
    dtype kinds against the model's."""
    import torch

    stack: list[tuple[str, Any]] = [(name, state)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, torch.Tensor):
            check_tensor(key, value, path, "policy file", error=PolicyLoadError)
        elif isinstance(value, dict):
            stack += [(f"{key}.{k}", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]


def _module_state(path: Path, name: str, state: Any) -> dict[str, Any]:
    """`state` if it is a module's state dict: names -> tensors (`check_finite`);
    `PolicyLoadError` naming the file and the entry otherwise."""
    if not isinstance(state, dict):
        raise PolicyLoadError(f"policy file {path}: {name} is not a state dict")
    check_finite({(f"{name}.{k}" if isinstance(k, str) else k): v for k, v in state.items()},
                 path, "policy file", error=PolicyLoadError)
    return state


def _layers(state: dict[str, Any], prefix: str) -> list[tuple[int, int]]:
    """(out, in) of the Linear layers under `prefix` in order ("...policy_net.0", ".2")."""
    found = sorted((int(m.group(1)), tuple(v.shape)) for k, v in state.items()
                   if (m := re.fullmatch(re.escape(prefix) + r"\.(\d+)\.weight", k)))
    return [s for _, s in found]  # type: ignore[misc]


def net_arch(state: dict[str, Any], path: Path) -> list[int] | dict[str, list[int]]:
    """SB3's `net_arch` of an actor-critic policy's state dict, from its layers' shapes;
    `PolicyLoadError` unless they chain from one of `OBSERVATION_DIMS` inputs to one layer
    each for the meta actions and the value."""
    arch: dict[str, list[int]] = {}
    for head, key, outputs in (("pi", "policy_net", len(META_ACTIONS)),
                               ("vf", "value_net", 1)):
        shapes = _layers(state, f"mlp_extractor.{key}")
        last = state.get("action_net.weight" if head == "pi" else "value_net.weight")
        if last is None or len(last.shape) != 2:
            raise PolicyLoadError(f"policy file {path} is not an SB3 actor-critic policy "
                                  f"for meta actions: no {head} output layer")
        chain = [*shapes, tuple(last.shape)]
        first = chain[0][1] if len(chain[0]) == 2 else -1
        ins = [first if first in OBSERVATION_DIMS else FEATURE_DIM] + [
            o for o, _ in chain[:-1]]
        if any(len(s) != 2 or s[1] != i for s, i in zip(chain, ins, strict=True)) or (
                chain[-1][0] != outputs):
            raise PolicyLoadError(
                f"policy file {path} has {head} layers (out, in) {chain}; the planner gives "
                f"({FEATURE_DIM},) feature vectors (or the first {PATH_FEATURE_DIM}, "
                f"{CONTROL_FEATURE_DIM} or {LEGACY_FEATURE_DIM}, for a policy trained before "
                f"the memory, the path or the controller features) and {len(META_ACTIONS)} "
                "meta actions")
        arch[head] = [o for o, _ in shapes]
    return arch["pi"] if arch["pi"] == arch["vf"] else arch


def check_state(path: Path, name: str, want: dict[str, Any], got: Any) -> None:
    """`PolicyLoadError` unless state dict `got` has exactly the keys, shapes and dtype
    kinds of `want` (a fresh model's: floating where it is floating, integer where it is
    integer), its values tensors, finite."""
    _module_state(path, name, got)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise PolicyLoadError(
            f"policy file {path}: {name} does not fit the model (another algorithm or "
            f"network?): missing {missing[:4] or 'none'}, unexpected {extra[:4] or 'none'}")
    check_finite({f"{name}.{k}": got[k] for k in want}, path, "policy file",
                 want={f"{name}.{k}": v for k, v in want.items()}, error=PolicyLoadError)
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise PolicyLoadError(f"policy file {path}: {name} {k} has shape "
                                  f"{tuple(got[k].shape)}, the model {tuple(v.shape)}")


def load_policy(path: str | Path, device: str = "cpu") -> Any:
    """The SB3 PPO model saved at `path`, built fresh and given the zip's policy weights
    (never unpickled: see the module docstring): it takes `features` vectors and gives
    meta actions. Raises `PolicyLoadError` for a missing, corrupted or mismatched file."""
    from perception.detector import resolve_device, torch_device

    dev = torch_device(resolve_device(device))
    z = read_policy_zip(path)
    state = z.params.get("policy")
    if not isinstance(state, dict):
        raise PolicyLoadError(f"policy file {z.path}: its policy.pth is not a state dict")
    _module_state(z.path, "policy", state)  # tensors (their shapes give the layers)
    arch = net_arch(state, z.path)
    saved = z.data.get("policy_kwargs", {})
    if ("policy_kwargs" in z.pickled or not isinstance(saved, dict)
            or set(saved) - {"net_arch"}
            or _both(saved.get("net_arch", arch)) != _both(arch)):
        shown = "pickled objects" if "policy_kwargs" in z.pickled else saved
        raise PolicyLoadError(f"policy file {z.path}: its policy_kwargs ({shown}) are not "
                              f"{{'net_arch': {arch}}} as its weights are; drivestack builds "
                              "PPO MlpPolicy networks with SB3's defaults and net_arch only")
    model = fresh_ppo(arch, dev, observation_dim(state))
    check_state(z.path, "policy", model.policy.state_dict(), state)
    model.policy.load_state_dict(state)
    model.num_timesteps = z.timesteps
    return model


def _both(arch: Any) -> Any:
    """A `net_arch` as SB3's dict(pi=..., vf=...)."""
    return arch if isinstance(arch, dict) else {"pi": arch, "vf": arch}


def observation_dim(state: dict[str, Any]) -> int:
    """Inputs of a policy state dict that `net_arch` accepted."""
    dim = _in_dim(state)
    assert dim is not None
    return dim


def _in_dim(state: dict[str, Any]) -> int | None:
    """Inputs of a policy state dict's first layer (None: not found)."""
    for key in ("mlp_extractor.policy_net.0.weight", "action_net.weight"):
        w = state.get(key)
        if w is not None and len(getattr(w, "shape", ())) == 2:
            return int(w.shape[1])
    return None


def fresh_ppo(arch: list[int] | dict[str, list[int]], device: str = "cpu",
              obs_dim: int = FEATURE_DIM) -> Any:
    """An untrained SB3 PPO MlpPolicy for the planner's observation (`obs_dim` features:
    FEATURE_DIM, or LEGACY_FEATURE_DIM for an old policy) and meta actions, without an env
    (for prediction)."""
    from gymnasium import spaces
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", None, policy_kwargs={"net_arch": arch}, device=device,  # type: ignore[arg-type]
                _init_setup_model=False)
    model.observation_space = spaces.Box(-CLIP, CLIP, shape=(obs_dim,), dtype=np.float32)
    model.action_space = spaces.Discrete(len(META_ACTIONS))
    model.n_envs = 1
    model._setup_model()
    return model


def load_parameters(model: Any, path: str | Path) -> int:
    """Put the checkpoint's tensors into `model`, an SB3 algorithm built fresh (e.g. from a
    launch file): every state dict SB3 saves for it (the policy, its optimizers) and its
    PyTorch variables, each with the model's keys and shapes, all finite, none unpickled.
    Returns the checkpoint's step count; `PolicyLoadError` naming the file otherwise."""
    import torch
    from stable_baselines3.common.utils import get_device

    z = read_policy_zip(path)
    state = z.params.get("policy")
    have = getattr(getattr(model, "observation_space", None), "shape", (FEATURE_DIM,))
    if isinstance(state, dict) and (dim := _in_dim(state)) in OBSERVATION_DIMS and dim != have[0]:
        raise PolicyLoadError(f"policy file {z.path} takes {dim} features, this run's "
                              f"feature_set {have[0]}; training continues only from a policy "
                              "of the same feature set: set feature_set to the policy's or "
                              "train a new one (it can still be driven: drivestack eval "
                              "--policy)")
    names, variable_names = model._get_torch_save_params()
    if set(names) != set(z.params):
        raise PolicyLoadError(f"policy file {z.path} holds state dicts {sorted(z.params)}; "
                              f"this {type(model).__name__} model has {sorted(names)}")
    for name in names:
        target = _attr(model, name)
        if isinstance(target, torch.nn.Module):
            check_state(z.path, name, target.state_dict(), z.params[name])
        else:
            _check_optimizer(z.path, name, target, z.params[name])
    for name in variable_names:
        have, got = _attr(model, name), z.variables.get(name)
        if not isinstance(got, torch.Tensor) or got.shape != have.shape:
            raise PolicyLoadError(f"policy file {z.path}: variable {name} is "
                                  f"{_shown(got)}; the model's has shape "
                                  f"{tuple(have.shape)}")
        check_tensor(f"variable {name}", got, z.path, "policy file", want=have,
                     error=PolicyLoadError)
    try:
        model.set_parameters(z.params, exact_match=True, device=get_device(model.device))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise PolicyLoadError(f"policy file {z.path} does not fit the model: "
                              f"{type(exc).__name__}: {brief(exc)}") from None
    with torch.no_grad():
        for name in variable_names:
            _attr(model, name).copy_(z.variables[name])
    steps = z.timesteps
    model.num_timesteps = steps
    updates = z.data.get("_n_updates")
    if isinstance(updates, int) and not isinstance(updates, bool) and updates >= 0:
        model._n_updates = updates
    return steps


def _shown(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_optimizer(path: Path, name: str, opt: Any, got: Any) -> None:
    """`PolicyLoadError` unless `got` is a state dict of `opt`'s shape: its groups hold as
    many parameters, and each parameter's state tensors are floating, finite and of the
    parameter's shape."""
    import torch

    want = opt.state_dict()
    try:
        groups = [list(g["params"]) for g in got["param_groups"]]
        sizes = [len(g) for g in groups]
        if sizes != [len(g["params"]) for g in want["param_groups"]]:
            raise PolicyLoadError(f"policy file {path}: {name} has parameter groups of "
                                  f"{sizes}; the model's optimizer "
                                  f"{[len(g['params']) for g in want['param_groups']]}")
        params = [p for g in opt.param_groups for p in g["params"]]
        ids = [i for g in groups for i in g]
        for pid, state in got["state"].items():
            shape = tuple(params[ids.index(pid)].shape)
            for k, v in state.items():
                if isinstance(v, torch.Tensor):  # Adam's moments and step: floating
                    check_tensor(f"{name} state {k} of parameter {pid}", v, path,
                                 "policy file", want=torch.float32, error=PolicyLoadError)
                if getattr(v, "ndim", 0) and tuple(v.shape) != shape:
                    raise PolicyLoadError(f"policy file {path}: {name} state {k} of "
                                          f"parameter {pid} has shape {tuple(v.shape)}, the "
                                          f"parameter {shape}")
    except PolicyLoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise PolicyLoadError(f"policy file {path}: {name} is not an optimizer's state: "
                              f"{type(exc).__name__}: {brief(exc)}") from None
