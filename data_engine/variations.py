"""More data like a failure: re-simulate variations of a mined clip and mine those too.

A simulator can restore the exact situation of a failure and vary it. From a snapshot's
start state, `variations` makes `n` states that differ in what a fleet would meet again
on another day: the traffic's random future (a new random generator state), the other
road users' speeds (+-15 %), and the rendering condition (another hard time of day or
weather). Each is driven by the deployed stack with the recorder attached, so a variation
that fails again is saved as a clip of its own (its `context["variation_of"]` names the
original). `vary_and_mine` reports how many clips the variations added over the
originals.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_engine.clip import read_clip
from data_engine.recorder import Recorder, RecorderConfig
from planning.rollout import PlannerAgent, rollout
from sim.env import DrivingEnv
from sim.types import CameraSpec
from sim.world.world import WorldState

HARD_CONDITIONS: tuple[tuple[str, str], ...] = (("night", "clear"), ("day", "fog"),
                                                ("day", "rain"), ("dusk", "rain"),
                                                ("night", "rain"))


def vary_state(state: WorldState, rng: np.random.Generator) -> tuple[WorldState, dict[str, Any]]:
    """A variation of `state` and what was changed."""
    s = copy.deepcopy(state)
    seed = int(rng.integers(0, 2**31 - 1))
    s.rng_state = np.random.PCG64(seed).state  # type: ignore[assignment]
    a = s.actors
    moving = a.active & (a.desired_speed > 0)
    factor = rng.uniform(0.85, 1.15, size=len(a.speed))
    a.speed = np.where(moving, a.speed * factor, a.speed).astype(a.speed.dtype)
    a.desired_speed = np.where(moving, a.desired_speed * factor,
                               a.desired_speed).astype(a.desired_speed.dtype)
    here = (s.scenario.time_of_day, s.scenario.weather)
    options = [c for c in HARD_CONDITIONS if c != here]
    tod, weather = options[int(rng.integers(len(options)))]
    s.scenario = dataclasses.replace(s.scenario, time_of_day=tod, weather=weather)
    return s, {"traffic_seed": seed, "speed_factor": [float(factor.min()),
                                                       float(factor.max())],
               "time_of_day": tod, "weather": weather}


def clip_key(doc: dict[str, Any]) -> int:
    """A number naming a clip's situation (episode and scenario seeds, scenario, first
    step), the same in every run: the variations' random source. (It was the snapshot
    id's random suffix, so a rerun with the same seeds varied other things: turns 4-6
    added 22, 16 and 24 clips from the same mined ones.)"""
    ident = json.dumps([doc.get("seed"), doc.get("scenario_seed"), doc.get("scenario"),
                        doc.get("start_index")], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(ident.encode()).digest()[:8], "little")


def vary_and_mine(snapshot: Any, store: Any, planner: Any, source: Any, n: int,
                  *, seed: int = 0, perceiver: Any = None, second: Any = None,
                  recorder: RecorderConfig | None = None, steps: int | None = None,
                  context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Drive `n` variations of a snapshot's start with (planner, source) and the recorder
    into `store`; one row per variation: what changed, how it ended, the clips saved."""
    clip = read_clip(snapshot.read, snapshot.id)
    env_doc = clip.doc["env"]
    rng = np.random.default_rng([seed, clip_key(clip.doc)])
    horizon = steps or 2 * clip.n_frames
    rows = []
    for k in range(n):
        state, changed = vary_state(clip.state, rng)
        env = DrivingEnv(obs_type="camera", action_type="meta",
                         camera=CameraSpec(**env_doc["camera"]), dt=float(env_doc["dt"]))
        ctx = {**(context or {}), "seed": clip.doc.get("seed"),
               "scenario_seed": clip.doc.get("scenario_seed"),
               "variation_of": snapshot.id, "variation": k, "changed": changed}
        rec = Recorder(store, recorder or RecorderConfig(), ctx, second)
        end = rollout(env, PlannerAgent(planner, source), state=state, max_steps=horizon,
                      listeners=[rec], perceiver=perceiver,
                      perceive_every_frame=perceiver is not None)
        rows.append({"variation_of": snapshot.id, "variation": k, "changed": changed,
                     "end": end.end, "error": end.error, "snapshots": list(rec.saved),
                     "fired": sorted({f.name for f in rec.fired})})
    return rows


def summarize(rows: Sequence[dict[str, Any]], originals: int) -> dict[str, Any]:
    """How much the variations add: clips saved from variations against the originals,
    and the share of variations that failed again."""
    clips = sum(len(r["snapshots"]) for r in rows)
    return {"originals": originals, "variations": len(rows), "variation_clips": clips,
            "added_fraction": clips / originals if originals else None,
            "failed_again": sum(r["end"] in ("collision", "off_road") for r in rows),
            "errors": sum(r["error"] is not None for r in rows)}
