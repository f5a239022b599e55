"""`sim.fanout`: the same results in the same order in this process, in local processes
and as Ray tasks (`ray.init(num_cpus=2)`); a Ray worker killed mid-task is retried and
nothing is lost or doubled; a job's own exception arrives as itself."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from itertools import count, islice
from pathlib import Path
from typing import Any

import pytest

from sim.fanout import CPU_THREADS_ENV, Fanout, FanoutError, ordered_map


def _setup(arg: dict[str, Any]) -> dict[str, Any]:
    return {"base": arg.get("base", 0), "pid": os.getpid()}


def _square(state: dict[str, Any], item: int) -> tuple[int, int]:
    time.sleep(random.random() * 0.01)  # finish out of order
    return item, state["base"] + item * item


def _threads(state: dict[str, Any], item: int) -> tuple[str | None, int]:
    import torch

    return os.environ.get(CPU_THREADS_ENV), torch.get_num_threads()


def _fail_on_three(state: dict[str, Any], item: int) -> int:
    if item == 3:
        raise KeyError(f"job {item} failed")
    return item


def _die_once(state: dict[str, Any], item: tuple[int, str]) -> tuple[int, int]:
    """Kills its own worker process the first time job 2 runs (a marker file says so)."""
    k, folder = item
    marker = Path(folder) / f"attempt-{k}"
    with open(marker, "a") as f:
        f.write("x")
    if k == 2 and marker.read_text() == "x":
        os._exit(1)  # the worker dies mid-task
    return k, os.getpid()


def test_unreachable_cluster_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # runs before the module's cluster starts
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in ("127.0.0.1:1", "auto"):  # nothing listens; no cluster on this machine
        with pytest.raises(FanoutError, match="cannot connect"):
            list(ordered_map(_setup, {}, _square, [1], Fanout(ray=address)))
    with pytest.raises(FanoutError, match="not an address"):
        list(ordered_map(_setup, {}, _square, [1], Fanout(ray="nohost")))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    import tests.sim.test_fanout as me

    ray.cloudpickle.register_pickle_by_value(me)  # workers need not import the tests
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_workers_share_the_cores_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 2 local workers gets cores // 2 inference threads (at least 1); `threads`
    sets it; this process keeps its own."""
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    import sim.fanout as fanout

    monkeypatch.setattr(fanout, "cores", lambda: 8)
    assert Fanout(workers=2).worker_threads() == 4
    assert Fanout(workers=16).worker_threads() == 1
    assert Fanout(workers=2, threads=0).worker_threads() == 0
    assert Fanout(ray="local", num_cpus=3).worker_threads() == 3
    monkeypatch.undo()
    got = list(ordered_map(_setup, {}, _threads, range(2), Fanout(workers=2, threads=1)))
    assert got == [("1", 1), ("1", 1)]
    assert os.environ.get(CPU_THREADS_ENV) is None


def test_bad_thread_setting_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from perception.onnx_cpu import cpu_threads

    monkeypatch.setenv(CPU_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="DRIVESTACK_CPU_THREADS"):
        cpu_threads()
    monkeypatch.setenv(CPU_THREADS_ENV, "2")
    assert cpu_threads() == 2


def test_serial_and_processes_agree() -> None:
    items = list(range(12))
    serial = list(ordered_map(_setup, {"base": 5}, _square, items))
    assert serial == [(k, 5 + k * k) for k in items]
    assert list(ordered_map(_setup, {"base": 5}, _square, items, Fanout(workers=2))) == serial


def test_ray_results_in_order(ray_local: Any) -> None:
    items = list(range(20))
    got = list(ordered_map(_setup, {"base": 1}, _square, items,
                           Fanout(ray="local", workers=2)))
    assert got == [(k, 1 + k * k) for k in items]


def test_endless_items_stop_when_closed(ray_local: Any) -> None:
    """An endless item stream: the consumer takes what it needs; nothing else waits."""
    gen = ordered_map(_setup, {"base": 0}, _square, count(), Fanout(ray="local"), window=3)
    assert [r[1] for r in islice(gen, 5)] == [0, 1, 4, 9, 16]
    gen.close()


def test_job_exception_arrives_as_itself(ray_local: Any) -> None:
    results = []
    with pytest.raises(KeyError, match="job 3 failed"):
        for r in ordered_map(_setup, {}, _fail_on_three, range(6), Fanout(ray="local")):
            results.append(r)
    assert results == [0, 1, 2]
    with pytest.raises(KeyError, match="job 3 failed"):
        list(ordered_map(_setup, {}, _fail_on_three, range(6), Fanout(workers=2)))


def test_killed_worker_is_retried(ray_local: Any, tmp_path: Path) -> None:
    items = [(k, str(tmp_path)) for k in range(6)]
    got = list(ordered_map(_setup, {}, _die_once, items, Fanout(ray="local")))
    assert [k for k, _ in got] == list(range(6))  # nothing lost, nothing doubled
    assert (tmp_path / "attempt-2").read_text() == "xx"  # it died once, then ran again
    assert all((tmp_path / f"attempt-{k}").read_text() == "x" for k in range(6) if k != 2)


def test_no_retries_means_the_death_is_reported(ray_local: Any, tmp_path: Path) -> None:
    items = [(k, str(tmp_path)) for k in range(4)]
    with pytest.raises(ray_local.exceptions.WorkerCrashedError):
        list(ordered_map(_setup, {}, _die_once, items, Fanout(ray="local", max_retries=0)))


@pytest.mark.parametrize("kwargs, match", [
    ({"workers": -1}, "workers"),
    ({"workers": 0}, "needs ray"),
    ({"ray": ""}, "ray="),
    ({"ray": "local", "num_cpus": float("nan")}, "num_cpus"),
    ({"ray": "local", "num_cpus": 0}, "some resource"),
    ({"max_retries": -1}, "max_retries"),
    ({"threads": -1}, "threads"),
])
def test_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Fanout(**kwargs)
