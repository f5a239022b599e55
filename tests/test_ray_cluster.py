"""A Ray cluster of two nodes on this machine (`ray.cluster_utils.Cluster`, on the
machine's own address; 127.0.0.1 as node address hung Ray 2.60 here):
jobs spread over both nodes, a dataset comes out the same bytes as a serial run, and a
worker killed mid-task is retried. Slow (two raylets start): `pytest -m slow`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.fanout import Fanout, ordered_map

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


def _setup(arg: Any) -> None:
    return None


def _where(state: None, item: tuple[int, str]) -> tuple[int, str]:
    import time

    k, folder = item
    marker = Path(folder) / f"attempt-{k}"
    with open(marker, "a") as f:
        f.write("x")
    if k == 5 and marker.read_text() == "x":
        os._exit(1)  # this worker dies mid-task, once
    time.sleep(0.2)
    return k, ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    import tests.test_ray_cluster as me

    ray.cloudpickle.register_pickle_by_value(me)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def test_two_nodes_share_the_jobs_and_a_killed_worker_is_retried(cluster: Any,
                                                                 tmp_path: Path) -> None:
    items = [(k, str(tmp_path)) for k in range(12)]
    got = list(ordered_map(_setup, None, _where, items, Fanout(ray=cluster.address)))
    assert [k for k, _ in got] == list(range(12))
    assert len({node for _, node in got}) == 2  # both nodes ran jobs
    assert (tmp_path / "attempt-5").read_text() == "xx"


def test_dataset_on_two_nodes_is_the_same_bytes(cluster: Any, tmp_path: Path) -> None:
    from perception.datasets import DatasetPlan, generate
    from sim.outputs import MARKER
    from sim.types import CameraSpec

    plan = DatasetPlan(frames=24, frames_per_episode=3, stride=3, warmup=6,
                       camera=CameraSpec(width=160, height=96))
    generate(plan, tmp_path / "serial")
    generate(plan, tmp_path / "ray", fanout=Fanout(ray=cluster.address))
    for p in sorted((tmp_path / "serial").rglob("*")):
        if p.is_file() and p.name not in ("data.yaml", MARKER):
            assert (tmp_path / "ray" / p.relative_to(tmp_path / "serial")).read_bytes() == \
                p.read_bytes(), p
