"""sim.state_io: a WorldState as plain JSON + arrays, restored without pickle, replays
byte for byte; a damaged document is one clear error. DrivingEnv.observe."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from sim.env import DrivingEnv
from sim.state_io import StateFormatError, state_from_plain, state_to_plain


def _saved(family: str = "urban", seed: int = 4) -> tuple[DrivingEnv, object]:
    env = DrivingEnv(family=family, obs_type="camera", action_type="meta")
    env.reset(seed=seed)
    for a in (3, 1, 1, 0, 1, 4, 1):
        env.step(a)
    return env, env.get_state()


def _through_files(state: object) -> object:
    doc, arrays = state_to_plain(state)  # type: ignore[arg-type]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return state_from_plain(json.loads(json.dumps(doc, allow_nan=False)), dict(npz))


@pytest.mark.parametrize("family", ["highway", "urban"])
def test_a_state_through_json_and_npz_replays_byte_for_byte(family: str) -> None:
    env, state = _saved(family)
    restored = _through_files(state)
    runs = []
    for s in (state, restored):
        e = DrivingEnv(family=family, obs_type="camera", action_type="meta")
        obs, info = e.reset(options={"state": s})
        frames, labels = [obs.copy()], [info["ground_truth"].boxes_xyxy.copy()]
        for a in (3, 3, 1, 0, 1, 2, 1, 1):
            obs, _, _, _, info = e.step(a)
            frames.append(obs.copy())
            labels.append(info["ground_truth"].boxes_xyxy.copy())
        runs.append((frames, labels))
    (f1, l1), (f2, l2) = runs
    assert all(a.tobytes() == b.tobytes() for a, b in zip(f1, f2, strict=True))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(l1, l2, strict=True))


def test_observe_shows_the_restored_moment() -> None:
    env, state = _saved()
    image = env.frame.image.copy()  # type: ignore[union-attr]
    fresh = DrivingEnv(family="urban", obs_type="camera", action_type="meta")
    fresh.set_state(state)  # type: ignore[arg-type]
    obs, info = fresh.observe()
    assert obs.tobytes() == image.tobytes() and info["step"] == 7
    assert "ground_truth" in info and info["rewards"] == {}


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d, a: d.update(format=9), "format"),
    (lambda d, a: d["ego"].update(speed="fast"), "speed"),
    (lambda d, a: d["ego"].update(speed=float("nan")), "speed"),
    (lambda d, a: d.update(step=True), "step"),
    (lambda d, a: d["extra"]["controller"].update(target_lane=99), "target_lane"),
    (lambda d, a: a.pop("actors.s"), "actors.s"),
    (lambda d, a: a.update({"actors.s": np.array(["x"])}), "actors.s"),
    (lambda d, a: d["scenario"].update(weather="snow"), "weather"),
    (lambda d, a: d.update(rng_state=[1]), "rng_state"),
])
def test_a_damaged_state_is_one_clear_error(edit: object, match: str) -> None:
    _, state = _saved()
    doc, arrays = state_to_plain(state)  # type: ignore[arg-type]
    doc = json.loads(json.dumps(doc))
    edit(doc, arrays)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        state_from_plain(doc, arrays)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(StateFormatError, match="object"):
        state_from_plain([1, 2], {})
