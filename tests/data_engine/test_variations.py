"""Variations of a mined failure: restored, varied (traffic, speeds, condition), driven
again with the recorder; what they add is counted."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from data_engine.clip import read_clip
from data_engine.recorder import RecorderConfig
from data_engine.triggers import TriggerConfig
from data_engine.variations import clip_key, summarize, vary_and_mine, vary_state
from planning.sources import PrivilegedSource
from tests.data_engine.test_recorder_replay import Reckless, _crash_store


def test_a_variation_changes_traffic_speeds_and_condition(tmp_path: Path) -> None:
    store, ids = _crash_store(tmp_path)
    clip = read_clip(store.get(ids[-1]).read, ids[-1])
    varied, changed = vary_state(clip.state, np.random.default_rng(0))
    assert (varied.scenario.time_of_day, varied.scenario.weather) != (
        clip.state.scenario.time_of_day, clip.state.scenario.weather)
    assert varied.rng_state != clip.state.rng_state
    assert not np.array_equal(varied.actors.speed, clip.state.actors.speed)
    assert clip.state.scenario.time_of_day == "day", "the original is left as it was"
    varied.check()
    only = {name: {"enabled": name == "collision"} for name in TriggerConfig.model_fields}
    cfg = RecorderConfig(pre_seconds=0.4, post_seconds=0.0,
                         triggers=TriggerConfig.model_validate(only))
    rows = vary_and_mine(store.get(ids[-1]), store, Reckless(), PrivilegedSource(), 3,
                         recorder=cfg, steps=200)
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    s = summarize(rows, originals=1)
    assert s["failed_again"] >= 1, "a reckless driver crashes again in its variations"
    assert s["variation_clips"] == sum(len(r["snapshots"]) for r in rows) >= 1
    # the same clip varies the same way in another run, where its id (random) differs
    snap = store.get(ids[-1])
    other = SimpleNamespace(id="20990101T000000-0123abcd", read=snap.read)
    again = vary_and_mine(other, store, Reckless(), PrivilegedSource(), 1, recorder=cfg,
                          steps=5)
    assert again[0]["changed"] == rows[0]["changed"]
    doc = read_clip(store.get(ids[-1]).read, ids[-1]).doc
    assert clip_key(doc) == clip_key(json.loads(json.dumps(doc)))
    assert clip_key({**doc, "start_index": doc["start_index"] + 1}) != clip_key(doc)
    saved = store.get(rows[0]["snapshots"][0]) if rows[0]["snapshots"] else None
    if saved is not None:
        doc = read_clip(saved.read, saved.id).doc
        assert doc["scenario"]["time_of_day"] == rows[0]["changed"]["time_of_day"]
