"""A Rerun recording of a failure snapshot's clip (`drivestack replay ID --rerun out.rrd`).

    recorder = SnapshotRecording(snapshot, "out/failure.rrd")
    check, _ = replay_clip(snapshot, listeners=[recorder])   # data_engine.replay
    # then: rerun out/failure.rrd

The recording rides along the replay's re-simulation (one pass) and logs, per frame of
the clip, what the snapshot stores: the frame (its PNG as stored; re-rendered by replay
for `frames: hash` snapshots), the ground-truth boxes (truth.npz), the online perception's
boxes and lane offset (perception.npz), the actions, speeds and events; and from the
re-simulated world what the snapshot does not store: ground-truth lanes, the bird's-eye
view and the reward terms (equal to the original's when the replay matches, which replay
checks by SHA-256). The triggers that fired are markers at their steps
(`/metrics/triggers/<name>` and the `/triggers` text log). The `step` timeline is the
episode's step, as in the snapshot's clip.json; entity paths as in planning.rerun_log.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from data_engine.clip import (
    PERCEPTION,
    TRUTH,
    boxes_per_frame,
    frame_name,
    npz_arrays,
    read_clip,
)
from planning.rerun_log import (
    Recording,
    check_output,
    import_rerun,
    log_action,
    log_events,
    log_world,
)
from planning.rollout import EpisodeEnd, Listener, Step


class SnapshotRecording(Listener):
    """Records a snapshot's clip while `data_engine.replay.replay_clip` re-simulates it
    (module docstring). `snapshot` is a verified `data_engine.store.Snapshot`. The file
    appears at `path` when the replay ends; `abort()` drops it. `what` names the option in
    errors (a bad or existing `path`)."""

    def __init__(self, snapshot: Any, path: str | Path, *, spawn: bool = False,
                 what: str = "rerun") -> None:
        import_rerun()
        self.path = check_output(path, what)
        self.snapshot, self.spawn = snapshot, spawn
        self.clip = clip = read_clip(snapshot.read, snapshot.id)
        n = clip.n_frames
        self.truth = boxes_per_frame(npz_arrays(snapshot.read(TRUTH), TRUTH), "", n, TRUTH)
        seen = npz_arrays(snapshot.read(PERCEPTION), PERCEPTION)
        self.seen = boxes_per_frame(seen, "", n, PERCEPTION)
        offset = seen.get("lane_offset")
        self.lane_offset = (np.asarray(offset, np.float64).reshape(-1)
                            if offset is not None and np.size(offset) == n
                            else np.full(n, np.nan))
        self.fired: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for t in clip.doc.get("triggers") or []:
            if isinstance(t, dict) and isinstance(t.get("index"), int):
                self.fired[t["index"]].append(t)
        self.recording: Recording | None = None
        self.written: Path | None = None

    def on_reset(self, env: Any, seed: int | None) -> None:
        self.abort()
        doc = self.clip.doc
        self.recording = Recording(self.path, name=f"snapshot {self.snapshot.id}",
                                   spawn=self.spawn)
        scenario = doc.get("scenario")
        sc: dict[str, Any] = scenario if isinstance(scenario, dict) else {}
        fired = "".join(f"\n- step {i}: {t.get('name')}: {t.get('detail', '')}"
                        for i, ts in sorted(self.fired.items()) for t in ts)
        self.recording.info(
            f"# snapshot {self.snapshot.id}\n\n- clip: {self.clip.n_frames} frames from step "
            f"{doc.get('start_index')}\n- scenario: {sc.get('family', '?')}, "
            f"{sc.get('time_of_day', '?')}, {sc.get('weather', '?')}; seed {doc.get('seed')}, "
            f"scenario seed {doc.get('scenario_seed')}\n- driver: {doc.get('driver')}\n\n"
            f"## triggers{fired or chr(10) + '(none)'}\n")

    def on_step(self, step: Step) -> None:
        rec, k = self.recording, step.index
        assert rec is not None and step.env.world is not None
        if k >= self.clip.n_frames:
            return
        frames = self.clip.doc["frames"]
        index = int(frames[k].get("index", k))
        rec.set_time(index, step.env.world.state.time)
        if self.clip.doc.get("frames_stored"):
            rec.encoded_image(self.snapshot.read(frame_name(k)), "image/png")
        elif step.frame is not None:
            rec.image(step.frame)
        truth, seen = self.truth[k], self.seen[k]
        if truth is not None:
            rec.boxes("truth", truth.xyxy, truth.classes, track_ids=truth.track_ids)
        if seen is not None:
            rec.boxes("pred", seen.xyxy, seen.classes, scores=seen.scores)
            rec.scalar("/metrics/lane_offset/pred", float(self.lane_offset[k]))
        log_world(rec, step)
        events = self.clip.doc["events"][k]
        log_events(rec, events if isinstance(events, dict) else step.events)
        log_action(rec, self.clip.actions[k])
        for t in self.fired.get(index, []):
            rec.trigger(str(t.get("name")), str(t.get("detail", "")))

    def on_end(self, end: EpisodeEnd) -> None:
        rec = self.recording
        if rec is None:
            return
        if end.error:
            rec.text("/events", f"replay stopped: {end.error}", "ERROR")
        self.recording = None
        self.written = rec.close()

    def abort(self) -> None:
        """Drop an unfinished recording (its temporary file)."""
        if self.recording is not None:
            self.recording.abort()
            self.recording = None
