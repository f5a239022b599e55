"""RL training of the planner with stable-baselines3: PPO on meta-actions by default (SAC
on continuous controls as an option), vectorized envs, evaluation with the best model
kept, checkpoints, TensorBoard logs, seeds and resume.

The observation is `planning.features` of the scene from a source: "emulated" (the
privileged scene corrupted like the measured perceiver; the default: fast, and close to
deployment) or "privileged" (exact: the privileged baseline). Envs render nothing.

Run folder layout (`out`):
    best_model.zip        best evaluation so far (EvalCallback)
    final.zip             the model at the end of training
    checkpoints/          planner_<steps>_steps.zip every `checkpoint_every` steps
    eval/evaluations.npz  evaluation history
    tb/                   TensorBoard logs
    summary.json          steps, wall time, steps/s, evaluation figures; `completed`
                          (false while running or after a failure, with its `error`)

`resume` builds the model from the launch file, as a fresh run does, and gives it the
checkpoint's tensors and step count (`planning.policy.load_parameters`): a checkpoint zip
is never unpickled.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from planning.policy import load_parameters
from planning.rollout import DECISION_EVERY
from planning.wrappers import make_planner_env
from sim.outputs import Job, atomic_write, atomic_write_text, json_text, not_a_file
from sim.types import check_number

Algo = Literal["ppo", "sac"]


@dataclass(frozen=True)
class PlannerTraining:
    """One training run."""

    out: Path
    algo: Algo = "ppo"
    source: Literal["emulated", "privileged", "perception"] = "emulated"
    families: tuple[str, ...] = ("highway", "rural", "urban")
    """Env i drives families[i % len(families)]."""
    total_timesteps: int = 200_000
    """Agent decisions (each is `decision_every` simulator steps)."""
    n_envs: int = 4
    decision_every: int = DECISION_EVERY
    seed: int = 0
    learning_rate: float = 3e-4
    n_steps: int = 256
    """PPO rollout length per env."""
    batch_size: int = 256
    n_epochs: int = 10
    """PPO passes over each rollout."""
    gamma: float = 0.97
    """Discount per decision (0.97: a horizon of about 33 decisions, 6.6 s)."""
    net_arch: tuple[int, ...] = (128, 128)
    eval_every: int = 20_000
    """Agent steps between two evaluations (all envs together)."""
    eval_episodes: int = 6
    checkpoint_every: int = 50_000
    device: str = "cpu"
    vec_env: Literal["batch", "subprocess", "dummy"] = "batch"
    """How the n_envs are stepped: "batch" (one `BatchPlannerVecEnv`: the worlds, the
    emulated perception and the features as arrays in this process; privileged and
    emulated sources, meta actions, the shield too), "subprocess" (`SubprocVecEnv`, spawn: one
    process per env) or "dummy" (`DummyVecEnv`: one after the other here)."""
    batch_workers: int = 1
    """vec_env "batch": processes the batch is split over (`ParallelBatchVecEnv`; 1: in
    this process). One per core keeps every core busy while the policy waits."""
    torch_threads: int | None = None
    """Threads of the policy's torch ops in this process; None: 1 when batch workers hold
    the cores (more threads then wait on busy cores: 1,850 against 1,245 decisions/s on
    2 loaded cores), torch's default otherwise."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra make_planner_env arguments (e.g. noise_path)."""
    feature_set: str = "control"
    """The policy's observation (`planning.features.FEATURE_SETS`)."""
    imitation_steps: int = 0
    """Warm start: decisions of the rule-based planner recorded on the training source
    and cloned into the policy before RL (0: start from scratch). PPO only."""
    imitation_epochs: int = 10

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "sac"):
            raise ValueError(f"algo={self.algo!r}; allowed: ppo, sac")
        if self.vec_env not in ("batch", "subprocess", "dummy"):
            raise ValueError(f"vec_env={self.vec_env!r}; allowed: batch, subprocess, dummy")
        if self.vec_env == "batch":
            if self.algo != "ppo":
                raise ValueError("vec_env=batch steps meta actions (ppo); sac drives "
                                 "continuous controls: use vec_env subprocess or dummy")
            extra = sorted(set(self.env_kwargs) - {"scenario", "noise_path", "reward_weights",
                                                   "shield", "shield_penalty",
                                                   "perceiver_device", "render_threads"})
            if extra:
                raise ValueError(f"vec_env=batch: {', '.join(extra)} not supported there: "
                                 "use vec_env subprocess or dummy")
        seen = sorted({"perceiver_device", "render_threads"} & set(self.env_kwargs))
        if seen and self.source != "perception":
            raise ValueError(f"{', '.join(seen)}: for source perception only (source is "
                             f"{self.source!r})")
        from planning.wrappers import feature_dim

        feature_dim(self.feature_set)
        check_number("learning_rate", self.learning_rate, 0.0, 1.0, open_lo=True)
        check_number("gamma", self.gamma, 0.0, 1.0)
        if self.torch_threads is not None:
            check_number("torch_threads", self.torch_threads, 1, 1024, integer=True)
        for name, lo in (("total_timesteps", 1), ("n_envs", 1), ("decision_every", 1),
                         ("n_steps", 1), ("batch_size", 1), ("eval_every", 1),
                         ("eval_episodes", 1), ("checkpoint_every", 1), ("batch_workers", 1),
                         ("imitation_steps", 0), ("imitation_epochs", 0), ("n_epochs", 1)):
            check_number(name, getattr(self, name), lo, 1 << 40, integer=True)
        for width in self.net_arch:
            check_number("net_arch", width, 1, 1 << 16, integer=True)


def _env_fn(kwargs: dict[str, Any]) -> Callable[[], Any]:
    from functools import partial

    return partial(_monitored, kwargs)


def _monitored(kwargs: dict[str, Any]) -> Any:
    from stable_baselines3.common.monitor import Monitor

    return Monitor(make_planner_env(**kwargs))


def per_env_kwargs(cfg: PlannerTraining) -> dict[str, Any]:
    """`cfg.env_kwargs` as `make_planner_env` takes them (the batch's recording threads
    are no argument of one env), with the feature set."""
    return {**{k: v for k, v in cfg.env_kwargs.items() if k != "render_threads"},
            "feature_set": cfg.feature_set}


def make_vec(cfg: PlannerTraining, seed: int, n: int, kind: str | None = None) -> Any:
    """`n` envs over the configured families, seeded seed, seed + 1, ..., stepped as
    `kind` (default `cfg.vec_env`)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    kind = kind or cfg.vec_env
    if kind == "batch":
        from planning.batch_vec import BatchPlannerVecEnv, ParallelBatchVecEnv

        kwargs: dict[str, Any] = {
            "families": cfg.families, "source": cfg.source,
            "decision_every": cfg.decision_every, "noise": cfg.env_kwargs.get("noise_path"),
            "noise_seed": seed, "scenario": cfg.env_kwargs.get("scenario"),
            "reward_weights": cfg.env_kwargs.get("reward_weights"),
            "shield": cfg.env_kwargs.get("shield", False),
            "shield_penalty": float(cfg.env_kwargs.get("shield_penalty", 0.0)),
            "feature_set": cfg.feature_set}
        if cfg.source == "perception":
            kwargs["device"] = str(cfg.env_kwargs.get("perceiver_device", "cpu"))
            kwargs["render_threads"] = int(cfg.env_kwargs.get("render_threads", 1))
        workers = min(cfg.batch_workers, n)
        batch: Any = (ParallelBatchVecEnv(n, workers=workers, **kwargs) if workers > 1
                      else BatchPlannerVecEnv(n, **kwargs))
        vec: Any = VecMonitor(batch)
        vec.seed(seed)
        return vec
    extra = {"action_type": "continuous"} if cfg.algo == "sac" else {}
    fns = [_env_fn({"source": cfg.source, "family": cfg.families[i % len(cfg.families)],
                    "decision_every": cfg.decision_every, **extra, **per_env_kwargs(cfg)})
           for i in range(n)]
    vec = (SubprocVecEnv(fns, start_method="spawn") if kind == "subprocess" and n > 1
           else DummyVecEnv(fns))
    vec.seed(seed)
    return vec


def configure_threads(cfg: PlannerTraining) -> int:
    """Set torch's thread count for training with `cfg` (`torch_threads`); returns it."""
    import torch

    threads = cfg.torch_threads
    if threads is None and cfg.vec_env == "batch" and cfg.batch_workers > 1:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def check_device(device: str) -> str:
    """`device` (auto | cpu | cuda | cuda:N), refused with a ValueError when it names a
    CUDA device this machine does not have (SB3 would quietly train on the CPU)."""
    if device.startswith("cuda"):
        from perception.detector import resolve_device

        resolve_device(device)  # raises naming the devices there are
    return device


def _model(cfg: PlannerTraining, env: Any, resume: Path | None) -> Any:
    """A fresh model from `cfg`; with `resume`, given the checkpoint's tensors and step
    count (`planning.policy.load_parameters`: the zip is never unpickled, and a
    checkpoint of another algorithm or network is a `PolicyLoadError`)."""
    from stable_baselines3 import PPO, SAC

    tb = str(cfg.out / "tb")
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"resume: checkpoint {resume} {not_a_file(Path(resume))}")
    policy_kwargs = {"net_arch": list(cfg.net_arch)}
    model: Any
    if cfg.algo == "sac":
        model = SAC("MlpPolicy", env, learning_rate=cfg.learning_rate, seed=cfg.seed,
                    batch_size=cfg.batch_size, policy_kwargs=policy_kwargs,
                    device=cfg.device, tensorboard_log=tb, verbose=0)
    else:
        model = PPO("MlpPolicy", env, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
                    batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                    ent_coef=0.01,
                    seed=cfg.seed, policy_kwargs=policy_kwargs, device=cfg.device,
                    tensorboard_log=tb, verbose=0)
    if resume is not None:
        load_parameters(model, resume)
    return model


def collect_demonstrations(cfg: PlannerTraining, steps: int, seed: int
                           ) -> tuple[Any, Any]:
    """(observations (N, FEATURE_DIM), meta actions (N,)) of the rule-based planner
    driving the training source's envs, the families in turn, one episode each."""
    import numpy as np

    from planning.rule_based import RulePlanner

    obs_out: list[Any] = []
    act_out: list[int] = []
    planner = RulePlanner()
    episode = 0
    env = None
    while len(act_out) < steps:
        family = cfg.families[episode % len(cfg.families)]
        if env is not None:
            env.close()
        env = make_planner_env(source=cfg.source, family=family,
                               decision_every=cfg.decision_every, seed=seed + episode,
                               **per_env_kwargs(cfg))
        obs, _ = env.reset(seed=seed + episode)
        planner.reset()
        done = False
        while not done and len(act_out) < steps:
            action = planner.act(env.scene)  # type: ignore[attr-defined]
            obs_out.append(obs)
            act_out.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        episode += 1
    if env is not None:
        env.close()
    return np.asarray(obs_out, np.float32), np.asarray(act_out, np.int64)


def clone_into(model: Any, obs: Any, actions: Any, epochs: int, seed: int,
               batch: int = 256) -> float:
    """Behaviour cloning: maximise the policy's log-likelihood of `actions`; returns the
    final accuracy of its greedy action on the demonstrations."""
    import torch

    policy = model.policy
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(obs, device=policy.device)
    y = torch.as_tensor(actions, device=policy.device)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = order[i: i + batch]
            _, log_prob, _ = policy.evaluate_actions(x[idx], y[idx])
            loss = -log_prob.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        greedy = policy.get_distribution(x).distribution.probs.argmax(-1)
    return float((greedy == y).float().mean())


def train_planner(cfg: PlannerTraining, resume: Path | None = None,
                  progress_bar: bool = False) -> dict[str, Any]:
    """Train (or continue `resume`, a checkpoint zip, up to `total_timesteps`); returns
    the run summary (also written to out/summary.json: `completed` false while the run
    goes on and when it fails, with the error; `best` and `final` name only files this
    run wrote)."""
    import warnings

    from stable_baselines3.common.callbacks import EvalCallback

    # the eval env is a DummyVecEnv of the same envs; SB3 warns about the vec class only
    warnings.filterwarnings("ignore", message="Training and eval env are not of the same")
    check_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    unfinished = {"completed": False, "final": None, "best": None, "config": config}
    _write_summary(out, {**unfinished, "error": None})
    configure_threads(cfg)
    env = make_vec(cfg, cfg.seed, cfg.n_envs)
    # one evaluation env per family (held-out seeds): the best model is chosen on all
    # of them, the episodes split evenly (SB3's EvalCallback)
    eval_env = make_vec(cfg, cfg.seed + 10_000, len(cfg.families), "dummy")
    try:
        model = _model(cfg, env, resume)
        done_before = int(model.num_timesteps)
        imitation: dict[str, Any] = {}
        if cfg.imitation_steps and resume is None:
            if cfg.algo != "ppo":
                raise ValueError("imitation_steps: the warm start is for ppo (meta actions)")
            t0 = time.perf_counter()
            obs, actions = collect_demonstrations(cfg, cfg.imitation_steps, cfg.seed + 50_000)
            acc = clone_into(model, obs, actions, cfg.imitation_epochs, cfg.seed)
            _atomic_save(model, out / "imitation.zip")
            imitation = {"steps": len(actions), "accuracy": round(acc, 4),
                         "seconds": round(time.perf_counter() - t0, 1)}
        evaluation = EvalCallback(eval_env, n_eval_episodes=cfg.eval_episodes,
                                  eval_freq=max(cfg.eval_every // cfg.n_envs, 1),
                                  callback_on_new_best=_save_as(out / "best_model.zip"),
                                  log_path=str(out / "eval"), deterministic=True, verbose=0)
        every = max(cfg.checkpoint_every // cfg.n_envs, 1)
        callbacks = [evaluation, _save_as(out / "checkpoints" / "planner_{steps}_steps.zip",
                                         every=every)]
        start = time.perf_counter()
        remaining = max(cfg.total_timesteps - done_before, 0)
        model.learn(total_timesteps=remaining, callback=callbacks,
                    reset_num_timesteps=resume is None, progress_bar=progress_bar,
                    tb_log_name=cfg.algo)
        wall = time.perf_counter() - start
        _atomic_save(model, out / "final.zip")
        steps = int(model.num_timesteps) - done_before
        # EvalCallback saves best_model.zip exactly when an evaluation beats the best so
        # far, which starts at -inf: a file there from an earlier run is not this run's
        wrote_best = evaluation.best_mean_reward > -math.inf
        summary = {
            "completed": int(model.num_timesteps) >= cfg.total_timesteps,
            "final": str(out / "final.zip"),
            "best": str(out / "best_model.zip") if wrote_best else None,
            "evaluations": len(evaluation.evaluations_timesteps),
            "timesteps": int(model.num_timesteps), "trained_now": steps,
            "wall_s": round(wall, 1), "agent_steps_per_s": round(steps / max(wall, 1e-9), 1),
            "sim_steps_per_s": round(steps * cfg.decision_every / max(wall, 1e-9), 1),
            "best_mean_reward": float(evaluation.best_mean_reward),
            "imitation": imitation,
            "config": config,
        }
    except BaseException as exc:  # Ctrl-C too: the summary says the run did not complete
        _write_summary(out, {**unfinished, "error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    finally:
        env.close()
        eval_env.close()
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    """out/summary.json, written whole (strict JSON: a non-finite figure is null)."""
    atomic_write_text(out / "summary.json", json_text(summary, indent=1))


def _save_as(path: Path, every: int = 1) -> Any:
    """An SB3 callback that saves the model atomically (`_atomic_save`) to `path` ("{steps}"
    becomes the step count) every `every` calls: SB3's own EvalCallback and
    CheckpointCallback write their zips in place. Given to EvalCallback as
    `callback_on_new_best`, it saves each new best."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveAs(BaseCallback):
        def _on_step(self) -> bool:
            if self.n_calls % every == 0:
                _atomic_save(self.model, Path(str(path).format(steps=self.num_timesteps)))
            return True

    return SaveAs()


def _atomic_save(model: Any, path: Path) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            model.save(f)

    atomic_write(path, save)


RUN_FILES = ("summary.json", "final.zip", "best_model.zip", "imitation.zip")
RUN_FOLDERS = ("checkpoints", "eval", "tb")
RUN_ENTRIES = RUN_FILES + RUN_FOLDERS
"""What `train_planner` writes into its run folder (itself and SB3's callbacks)."""
JOB = Job("train-planner", files=tuple(map(re.escape, RUN_FILES)), folders=RUN_FOLDERS,
          trust_unconfirmed=True)
"""`drivestack train-planner` for sim.outputs."""
