"""One rollout for every job: `drivestack run`, `drivestack eval`, the data engine's
recorder and replay all drive episodes through `rollout`, and see them through
**listeners**, in the spirit of Gymnasium's `RecordEpisodeStatistics` and SB3's `Monitor`.

    from planning.rollout import PlannerAgent, rollout
    from planning.listeners import DrivingStatistics
    stats = DrivingStatistics()
    end = rollout(env, PlannerAgent(planner, source), seed=7, max_steps=300,
                  listeners=[stats])

One `Step` per camera moment, the reset included (index 0): the frame and its ground
truth, the perception output when one was computed on it, the action chosen from it
(None on the last one), and what the env reported on arriving there (reward terms,
events, info). The world state is read on request (`step.state()`), since copying it
every step costs time nobody needs.

The agent decides every `DECISION_EVERY` env steps (the meta action on the first step of
a decision, IDLE on the others: a lane change or speed step happens once), as the RL
planner is trained (`planning.wrappers.DecisionEvery`). The cadence is defined here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sim.actions import IDLE
from sim.env import DrivingEnv
from sim.types import GroundTruth
from sim.world.world import WorldState

DECISION_EVERY = 3
"""Env steps per planner decision (15 Hz sim, 5 Hz planner), everywhere: run, eval,
training (`DecisionEvery`), the recorder and replay."""


@dataclass
class Step:
    """One moment of an episode, as a listener sees it."""

    index: int
    """0 after reset, then the number of env steps taken."""
    env: DrivingEnv
    """The unwrapped env (world, camera spec, dt); read-only for listeners."""
    observation: Any
    info: dict[str, Any]
    """What the env reported on arriving here (events, rewards, speed, route...)."""
    reward: float = 0.0
    """Reward of the step that arrived here (0 at reset)."""
    terminated: bool = False
    truncated: bool = False
    action: Any = None
    """The action chosen from this moment (sent by the next env step); None on the last
    step of an episode."""
    decided: bool = False
    """The agent decided this action (else it is the IDLE between decisions)."""
    perception: Any = None
    """The `Perception` computed on this frame (decision frames of a perception agent, or
    every frame with `perceive_every_frame`), else None."""
    overridden: bool = False
    """A safety shield replaced the planner's choice of this (decided) action."""

    @property
    def frame(self) -> np.ndarray | None:
        """The camera image (H, W, 3) uint8, or None when the env draws none."""
        f = self.env.frame
        return None if f is None else f.image

    @property
    def ground_truth(self) -> GroundTruth | None:
        return self.info.get("ground_truth")

    @property
    def events(self) -> dict[str, Any]:
        return self.info.get("events", {})

    @property
    def reward_terms(self) -> dict[str, float]:
        return self.info.get("rewards", {})

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def state(self) -> WorldState:
        """The world state at this moment (a copy; costs a copy of the actor table)."""
        return self.env.get_state()


@dataclass
class EpisodeEnd:
    """How an episode ended."""

    steps: int
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    """The last info."""
    error: str | None = None
    """The exception that ended the episode, `"Type: message (at step n)"`."""
    wall_time: float = 0.0
    """[s]"""
    end: str = ""
    """collision | off_road | route_complete | time_limit | max_steps | error"""


class Listener:
    """Sees an episode step by step; override what you need. An exception in a listener
    ends the episode like one in the env (end="error")."""

    def on_reset(self, env: DrivingEnv, seed: int | None) -> None:
        """The env was just reset (before the first `on_step`)."""

    def on_step(self, step: Step) -> None:
        """One moment of the episode (index 0 is the reset)."""

    def on_end(self, end: EpisodeEnd) -> None:
        """The episode is over (also after an error)."""


class Agent(Protocol):
    """What drives: asked every `decision_every` steps; in between, `hold` is sent."""

    decision_every: int
    hold: Any
    """The action between decisions (IDLE for meta actions; None: repeat the last)."""

    def reset(self) -> None: ...

    def act(self, env: DrivingEnv) -> Any: ...

    @property
    def perception(self) -> Any:
        """The `Perception` the last `act` computed on the current frame, or None."""


class PlannerAgent:
    """A planner (rule-based or RL) on a scene source: the meta action every
    `decision_every` steps, IDLE in between."""

    hold = IDLE

    def __init__(self, planner: Any, source: Any, decision_every: int = DECISION_EVERY
                 ) -> None:
        self.planner, self.source, self.decision_every = planner, source, int(decision_every)
        self._timed = False

    @property
    def needs_camera(self) -> bool:
        return bool(getattr(self.source, "needs_camera", False))

    def reset(self) -> None:
        self.planner.reset()
        self.source.reset()

    def act(self, env: DrivingEnv) -> Any:
        timed = getattr(self.planner, "set_decision_dt", None)
        if timed is not None and not self._timed:  # the planner's memory runs at our cadence
            timed(self.decision_every * env.dt)
            self._timed = True
        return self.planner.act(self.source(env))

    @property
    def perception(self) -> Any:
        return getattr(self.source, "last_perception", None)

    @property
    def overridden(self) -> bool:
        """A safety shield replaced the policy's action at the last decision."""
        return bool(getattr(self.planner, "overridden", False))


class AutopilotAgent:
    """The sim's privileged autopilot (continuous actions, every step)."""

    decision_every = 1
    hold = None
    needs_camera = False
    perception = None

    def __init__(self) -> None:
        from sim.autopilot import Autopilot

        self.autopilot = Autopilot()

    def reset(self) -> None:
        self.autopilot.reset()

    def act(self, env: DrivingEnv) -> Any:
        assert env.world is not None
        return self.autopilot.act(env.world)


class ActionReplay:
    """Sends recorded actions, one per env step (replay of a clip)."""

    decision_every = 1
    hold = None
    needs_camera = False
    perception = None

    def __init__(self, actions: Sequence[Any]) -> None:
        self.actions = list(actions)
        self.i = 0

    def reset(self) -> None:
        self.i = 0

    def act(self, env: DrivingEnv) -> Any:
        if self.i >= len(self.actions):
            raise IndexError(f"replay ran out of recorded actions after {self.i} steps")
        a = self.actions[self.i]
        self.i += 1
        return a


def end_reason(info: dict[str, Any], terminated: bool, truncated: bool) -> str:
    """collision | off_road (terminated), route_complete | time_limit (truncated), else
    max_steps."""
    if terminated:
        return "collision" if info["events"]["collision"] else "off_road"
    if truncated:
        return "route_complete" if info["route_completion"] >= 1.0 - 1e-9 else "time_limit"
    return "max_steps"


def rollout(
    env: Any,
    agent: Agent,
    *,
    seed: int | None = None,
    scenario_seed: int | None = None,
    state: WorldState | None = None,
    max_steps: int | None = None,
    listeners: Sequence[Listener] = (),
    perceiver: Callable[[list[np.ndarray]], list[Any]] | None = None,
    perceive_every_frame: bool = False,
    catch_reset: bool = True,
) -> EpisodeEnd:
    """Drive one episode of `env` (a `DrivingEnv`, possibly inside gymnasium wrappers)
    with `agent` and hand every moment to `listeners`.

    Starts with `env.reset(seed=seed)`, with `options={"scenario_seed": ...}` when
    `scenario_seed` is given, or from a saved world `state` (replay). Ends when the env
    terminates or truncates, or after `max_steps` env steps. With `perceive_every_frame`,
    `perceiver` runs on every frame the agent did not already perceive (triggers and
    videos need it).

    An exception in the episode (the agent, the env or a listener) ends it with
    end="error" and `error` naming it and the step, so one broken episode does not lose
    the others; with `catch_reset=False` an error in the reset itself is raised.
    """
    start = time.perf_counter()
    base: DrivingEnv = env.unwrapped
    info: dict[str, Any] = {"route_completion": 0.0}
    terminated = truncated = False
    error = None
    t = 0
    reward = 0.0
    action = None
    resetting = True
    try:
        agent.reset()
        if state is not None:
            obs, info = env.reset(options={"state": state})
        elif scenario_seed is not None:
            obs, info = env.reset(seed=seed, options={"scenario_seed": scenario_seed})
        else:
            obs, info = env.reset(seed=seed)
        resetting = False
        for listener in listeners:
            listener.on_reset(base, seed)
        while True:
            last = terminated or truncated or (max_steps is not None and t >= max_steps)
            try:
                action, decided, perception, overridden = _decide(
                    agent, base, t, action, last, perceiver if perceive_every_frame else None)
            except Exception:  # the moment still happened: listeners see it, no action
                step = Step(t, base, obs, info, reward, terminated, truncated)
                for listener in listeners:
                    listener.on_step(step)
                raise
            step = Step(t, base, obs, info, reward, terminated, truncated,
                        None if last else action, decided, perception, overridden)
            for listener in listeners:
                listener.on_step(step)
            if last:
                break
            obs, reward, terminated, truncated, info = env.step(action)
            t += 1
    except Exception as exc:  # reported in the metrics and by the CLI
        if resetting and not catch_reset:
            raise
        error = f"{type(exc).__name__}: {exc} (at step {t + 1})"
    reason = "error" if error else end_reason(info, terminated, truncated)
    end = EpisodeEnd(t, terminated, truncated, info, error,
                     round(time.perf_counter() - start, 3), reason)
    for listener in listeners:
        listener.on_end(end)
    return end


def _decide(agent: Agent, env: DrivingEnv, t: int, action: Any, last: bool,
            perceiver: Callable[[list[np.ndarray]], list[Any]] | None
            ) -> tuple[Any, bool, Any, bool]:
    """The action chosen at step `t` (the agent's every `decision_every` steps, else its
    `hold`, else the previous one), whether the agent decided it, the perception of the
    frame (the agent's, else `perceiver`'s when given) and whether a shield overrode it."""
    perception = None
    decided = overridden = False
    if not last:
        if t % max(int(agent.decision_every), 1) == 0:
            action = agent.act(env)
            decided = True
            perception = agent.perception
            overridden = bool(getattr(agent, "overridden", False))
        elif agent.hold is not None:
            action = agent.hold
    if perceiver is not None and perception is None and env.frame is not None:
        [perception] = perceiver([env.frame.image])
    return action, decided, perception, overridden


@dataclass
class Collect(Listener):
    """Keeps every `Step` (tests, small clips); `frames=True` copies the images too."""

    frames: bool = False
    steps: list[Step] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    end: EpisodeEnd | None = None

    def on_step(self, step: Step) -> None:
        self.steps.append(step)
        if self.frames and step.frame is not None:
            self.images.append(step.frame.copy())

    def on_end(self, end: EpisodeEnd) -> None:
        self.end = end
