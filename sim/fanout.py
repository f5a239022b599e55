"""Fan independent jobs out, get their results back in order: in this process, in local
worker processes, or as Ray tasks on one machine or a cluster.

Every command that runs many independent episodes, shards or clips (`drivestack
dataset`, `eval`, `mine`, `relabel`) computes each job's result with the same two
functions wherever it runs, and writes results in job order in the calling process. So
the output is the same byte for byte whatever the backend, the number of workers and
the order they finish in; and a job retried after its worker died cannot write twice,
because workers write nothing.

    results = ordered_map(setup, setup_arg, call, items, Fanout(ray="local"))

`setup(setup_arg)` builds a worker's state once (envs, models: what is slow to make);
`call(state, item)` computes one result. Both must be module-level functions (workers
import them by name). The Ray backend needs the `ray` extra (`pip install -e
".[ray]"`); `import sim` does not import Ray.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

CPU_THREADS_ENV = "DRIVESTACK_CPU_THREADS"
"""Environment variable: threads each CPU inference session may use (perception's ONNX
Runtime and OpenVINO sessions; unset or 0: every core). Workers that share the cores set
it (`Fanout.threads`): on 2 cores, 2 closed-loop workers with 1 thread each drove 12
night episodes in 43.9 s against 57.7 s in one process and 59.2 s in 2 processes with
every core each (the same rows)."""

LOCAL = "local"
"""`Fanout.ray` value: start a Ray cluster on this machine for the command."""


class FanoutError(ValueError):
    """A backend cannot start (Ray missing, no cluster at the address)."""


@dataclass(frozen=True)
class Fanout:
    """Where jobs run.

    `ray` None: `workers` local processes (1: this process). `ray` "local": a Ray cluster
    started on this machine (`workers` CPUs; 0: all of them); "auto": the running cluster
    this machine belongs to (`ray start`); anything else: a cluster's address
    ("host:6379" or "ray://host:10001"). Each Ray task asks for `num_cpus` CPUs and
    `num_gpus` GPUs; a task whose worker dies is retried up to `max_retries` times
    (an exception raised by the job itself is not retried: it is the job's answer).
    """

    workers: int = 1
    ray: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3
    threads: int | None = None
    """Inference threads of each worker (`CPU_THREADS_ENV`, torch): None shares the
    machine's cores out (cores // workers local processes, a Ray task's CPUs); 0 leaves
    the runtimes' defaults (every core, each). This process keeps its own."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not (
                0 <= self.workers <= 4096):
            raise ValueError(f"workers={self.workers!r}; must be an integer 0..4096")
        if self.ray is None and self.workers < 1:
            raise ValueError("workers=0 needs ray (0: all of the Ray cluster's CPUs)")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ValueError(f"ray={self.ray!r}; must be 'local', 'auto' or an address "
                             "(host:port or ray://host:port)")
        for name, value in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    0 <= value <= 1024):
                raise ValueError(f"{name}={value!r}; must be a number 0..1024")
        if self.ray is not None and self.num_cpus == 0 and self.num_gpus == 0:
            raise ValueError("num_cpus and num_gpus are both 0: a Ray task must ask for "
                             "some resource")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 100:
            raise ValueError(f"max_retries={self.max_retries!r}; must be an integer 0..100")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(
                self.threads, int) or not 0 <= self.threads <= 1024):
            raise ValueError(f"threads={self.threads!r}; must be None or an integer 0..1024")

    def worker_threads(self) -> int:
        """Inference threads a worker gets (0: the runtimes' defaults)."""
        if self.threads is not None:
            return self.threads
        if self.ray is not None:
            return max(1, int(self.num_cpus))
        return max(1, cores() // max(1, self.workers))

    @property
    def parallel(self) -> bool:
        return self.ray is not None or self.workers > 1

    def describe(self) -> str:
        if self.ray is None:
            return "this process" if self.workers == 1 else f"{self.workers} processes"
        where = "a local Ray cluster" if self.ray == LOCAL else f"Ray at {self.ray}"
        return f"{where} ({self.num_cpus:g} CPU, {self.num_gpus:g} GPU a task)"


def ordered_map(setup: Callable[[Any], S], setup_arg: Any, call: Callable[[S, T], R],
                items: Iterable[T], fanout: Fanout = Fanout(),
                close: Callable[[S], None] | None = None,
                window: int | None = None) -> Generator[R, None, None]:
    """`call(state, item)` for each item, yielded in the items' order; `state` is
    `setup(setup_arg)`, built once per worker. `items` may be endless: at most `window`
    jobs (default: twice the parallelism) are in flight, and closing the generator
    cancels those. An exception raised by a job is raised here, as itself, when its turn
    comes. `close(state)` runs on this process's state at the end (workers end with
    their process)."""
    if not fanout.parallel:
        state = setup(setup_arg)
        try:
            for item in items:
                yield call(state, item)
        finally:
            if close is not None:
                close(state)
        return
    if fanout.ray is None:
        yield from _processes(setup, setup_arg, call, items, fanout, window)
    else:
        yield from _ray(setup, setup_arg, call, items, fanout, window)


# ---------------------------------------------------------------- local processes

_STATE: dict[str, Any] = {}
"""A worker's state (process and Ray workers; empty in the parent), by setup key."""


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """In a worker: at most `threads` inference threads (0: leave the defaults). Sets
    `CPU_THREADS_ENV` for the sessions built next, OpenMP's variable for libraries not
    yet loaded, and torch's pool if torch is loaded."""
    if threads <= 0:
        return
    os.environ[CPU_THREADS_ENV] = os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _processes(setup: Callable[[Any], S], setup_arg: Any, call: Callable[[S, T], R],
               items: Iterable[T], fanout: Fanout, window: int | None
               ) -> Generator[R, None, None]:
    workers = fanout.workers
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters register the sim ids
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process,
                             initargs=(setup, setup_arg, fanout.worker_threads())) as pool:
        pending: deque[Future[R]] = deque()
        source = iter(items)
        size = window or 2 * workers
        try:
            for item in _windowed(source, pending, size):
                pending.append(pool.submit(_call_in_process, call, item))
            while pending:
                result = pending.popleft().result()
                for item in _windowed(source, pending, size):
                    pending.append(pool.submit(_call_in_process, call, item))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def _windowed(source: Iterator[T], pending: deque[Any], window: int) -> Iterator[T]:
    """Hand out items while fewer than `window` jobs are pending (the caller pops)."""
    while len(pending) < window:
        try:
            yield next(source)
        except StopIteration:
            return


def _init_process(setup: Callable[[Any], Any], setup_arg: Any, threads: int) -> None:
    end_with_parent()
    limit_threads(threads)
    _STATE["process"] = setup(setup_arg)


def _call_in_process(call: Callable[[Any, Any], Any], item: Any) -> Any:
    return call(_STATE["process"], item)


def end_with_parent(period: float = 0.25) -> None:
    """In a worker process: exit as soon as the parent is gone (a killed parent leaves its
    pool's workers blocked on their queue otherwise). A daemon thread polls the parent id."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


# ---------------------------------------------------------------- Ray

def ray_module() -> Any:
    """`ray`, or one clear error naming the extra."""
    try:
        import ray
    except ImportError as err:
        raise FanoutError("--ray needs Ray: pip install -e \".[ray]\"") from err
    return ray


def connect(address: str, cpus: int = 0) -> Any:
    """Connect this process to Ray once (a second call reuses the connection): `local`
    starts a cluster here (`cpus` CPUs; 0: all), else `auto` or an address."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "configure_logging": False}
    if address not in (LOCAL, "auto"):
        _reachable(address)
    try:
        if address == LOCAL:
            ray.init(num_cpus=cpus or None, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise FanoutError(f"--ray {address}: cannot connect ({err}); start a cluster "
                          "with `ray start --head` or pass its address") from err
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """One clear error at once for an address nothing listens on (Ray itself retries
    for minutes)."""
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FanoutError(f"--ray {address}: not an address; use 'local', 'auto', "
                          "host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise FanoutError(f"--ray {address}: cannot connect ({err.strerror or err}); start "
                          "a cluster with `ray start --head` or pass its address") from err


_REMOTE: dict[str, Any] = {}


def _remote_call() -> Any:
    if "call" not in _REMOTE:
        _REMOTE["call"] = ray_module().remote(_call_in_ray)
    return _REMOTE["call"]


def _call_in_ray(setup: Callable[[Any], Any], setup_arg: Any, key: str,
                 call: Callable[[Any, Any], Any], item: Any, threads: int) -> Any:
    """One job in a Ray worker: the worker builds its state for `key` (one per map) once
    and keeps it for the next jobs of the same map (a worker serves one map at a
    time)."""
    if key not in _STATE:
        _STATE.clear()
        limit_threads(threads)
        _STATE[key] = setup(setup_arg)
    return call(_STATE[key], item)


def _ray(setup: Callable[[Any], S], setup_arg: Any, call: Callable[[S, T], R],
         items: Iterable[T], fanout: Fanout, window: int | None
         ) -> Generator[R, None, None]:
    ray = connect(fanout.ray or LOCAL, fanout.workers)
    remote = _remote_call().options(num_cpus=fanout.num_cpus, num_gpus=fanout.num_gpus,
                                    max_retries=fanout.max_retries, retry_exceptions=False)
    slots = _ray_slots(ray, fanout)
    arg_ref = ray.put(setup_arg)
    threads = fanout.worker_threads()
    key = secrets.token_hex(8)  # this map's workers build their state once
    pending: deque[Any] = deque()
    source = iter(items)
    try:
        for item in _windowed(source, pending, window or 2 * slots):
            pending.append(remote.remote(setup, arg_ref, key, call, item, threads))
        while pending:
            ref = pending.popleft()
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None  # the job's own exception, as itself
                raise
            for item in _windowed(source, pending, window or 2 * slots):
                pending.append(remote.remote(setup, arg_ref, key, call, item, threads))
            yield result
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


def _ray_slots(ray: Any, fanout: Fanout) -> int:
    """How many tasks the cluster runs at once (at least 1)."""
    resources = ray.cluster_resources()
    slots = []
    if fanout.num_cpus:
        slots.append(int(resources.get("CPU", 1) // fanout.num_cpus))
    if fanout.num_gpus:
        slots.append(int(resources.get("GPU", 0) // fanout.num_gpus))
    return max(1, min(slots))
