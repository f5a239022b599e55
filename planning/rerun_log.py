"""Rerun recordings (.rrd) of episodes: a rollout listener, `RerunLogger`, and the
`Recording` it writes through (data_engine's snapshot replay writes through it too).

    from planning.rerun_log import RerunLogger
    rollout(env, agent, seed=7, listeners=[RerunLogger("out/episode.rrd")])
    # then: rerun out/episode.rrd

One recording per episode, on a dedicated `rr.RecordingStream` (never the global one),
written to a temporary file beside `path` and renamed to `path` when the episode ends;
an existing file is never overwritten. No viewer starts unless `spawn=True`. The entity
tree (docs/rerun.md):

    /camera/image             the camera frame (JPEG, or the snapshot's PNG)
    /camera/truth/boxes       ground-truth 2D boxes [px], class ids, "car #12" labels
    /camera/truth/lanes       ground-truth lane boundaries (line strips) [px]
    /camera/pred/boxes        the perception's boxes [px], "car 0.87" labels (when it ran)
    /camera/pred/lanes        the perception's lane boundaries [px]
    /bev/road, /bev/actors, /bev/ego
                              bird's-eye view [m], ego-centred, ego pointing up: x to the
                              right, y backwards (Rerun's 2D views draw y downwards)
    /metrics/speed            ego speed [m/s]
    /metrics/action/...       meta (the META_ACTIONS index) or steer and accel (continuous)
    /metrics/reward, /metrics/reward_terms/<name>
    /metrics/events/<name>    collision, off_road, hard_brake (0/1), npc_collisions
    /metrics/min_ttc          time to collision [s] (absent while nothing is ahead)
    /metrics/triggers/<name>  a point at each step a data-engine trigger fired (replay)
    /events, /triggers        text log: events, shield overrides, the episode's end;
                              triggers with their detail (replay)
    /info                     what was recorded (scenario, seed; the snapshot), Markdown

Timelines: `step` (sequence: the env step of the episode, 0 = reset) and `sim_time`
(duration: simulated time [s]). `rerun` (rerun-sdk, the `viz` extra) is imported only
when a recording is made, so `import planning` stays light.
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from planning.rollout import EpisodeEnd, Listener, Step
from sim.actions import META_ACTIONS
from sim.env import DrivingEnv
from sim.render.birdseye import CLASS_COLORS
from sim.types import ABSENT, CLASS_NAMES, MARKING_NAMES
from sim.world.actors import box_corners
from sim.world.world import World

VIZ_INSTALL = 'pip install -e ".[viz]"'
"""How to install rerun-sdk (the `viz` extra), named in the error when it is missing."""
APPLICATION_ID = "drivestack"
SUFFIX = ".rrd"
JPEG_QUALITY = 90
"""Quality of the camera frames stored as JPEG (None in `RerunLogger`: raw RGB)."""
BEV_BEHIND, BEV_AHEAD = 40.0, 120.0
"""Road and actors drawn in the bird's-eye view, behind and ahead of the ego [m]."""
BEV_VIEW_X, BEV_VIEW_Y = (-25.0, 25.0), (-70.0, 15.0)
"""What the bird's-eye view shows at first [m] (x right of the ego, y behind it)."""
TRUTH_LANE_COLOR, EGO_LANE_COLOR, PRED_LANE_COLOR = (250, 210, 40), (60, 240, 120), (240, 60, 240)
EGO_COLOR, ROAD_COLOR = (60, 220, 90), (200, 200, 200)
EVENTS = ("collision", "off_road", "hard_brake")
"""Boolean events logged as 0/1 series and, when they fire, as a text-log marker."""


class RerunUnavailable(ValueError):
    """rerun-sdk is not installed. A ValueError so that the CLI reports it as one line
    (`launch.cli_common.expected`)."""


def import_rerun() -> Any:
    """The `rerun` module; RerunUnavailable naming the install command when missing."""
    try:
        import rerun
    except ImportError:
        raise RerunUnavailable(f"Rerun recordings need rerun-sdk: {VIZ_INSTALL}") from None
    return rerun


def check_output(path: str | Path, what: str = "rerun") -> Path:
    """`path` as a Path, if a new recording may be written there: it ends in .rrd and
    nothing exists there (drivestack never overwrites a file); ValueError naming `what`
    (the option) otherwise."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{what}: {path} must end in {SUFFIX}")
    if path.exists() or path.is_symlink():
        raise ValueError(f"{what}: {path} exists; drivestack does not overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{what}: {path.parent} is not a folder")
    return path


def episode_paths(path: str | Path, episodes: int, what: str = "rerun") -> list[Path]:
    """Where each of `episodes` episodes is recorded: `path` itself for one episode, else
    one file per episode, `<stem>_000.rrd`, `<stem>_001.rrd`, ... beside it; each checked
    with `check_output`."""
    path = check_output(path, what)
    if episodes == 1:
        return [path]
    return [check_output(path.with_name(f"{path.stem}_{i:03d}{SUFFIX}"), what)
            for i in range(episodes)]


def blueprint() -> Any:
    """The default layout: camera and bird's-eye view, time series, the text log."""
    import rerun.blueprint as rrb

    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial2DView(name="camera", origin="/camera"),
                rrb.Horizontal(
                    rrb.TimeSeriesView(name="speed [m/s]", contents=["/metrics/speed"]),
                    rrb.TimeSeriesView(name="action", contents=["/metrics/action/**"])),
                row_shares=[3, 2]),
            rrb.Vertical(
                rrb.Spatial2DView(name="bird's-eye view [m]", origin="/bev",
                                  visual_bounds=rrb.VisualBounds2D(x_range=BEV_VIEW_X,
                                                                   y_range=BEV_VIEW_Y)),
                rrb.TimeSeriesView(name="reward", contents=["/metrics/reward",
                                                            "/metrics/reward_terms/**"]),
                rrb.TimeSeriesView(name="events and triggers",
                                   contents=["/metrics/events/**", "/metrics/triggers/**"]),
                rrb.Tabs(rrb.TextLogView(name="log", contents=["/events", "/triggers"]),
                         rrb.TextDocumentView(name="info", origin="/info")),
                row_shares=[4, 2, 2, 2]),
            column_shares=[3, 2]),
        rrb.SelectionPanel(state="collapsed"),
        collapse_panels=False,
    )


class Recording:
    """One Rerun recording written to `path` (see the module docstring), on its own
    stream. The file appears at `path` only on `close()`; `abort()` removes it."""

    def __init__(self, path: str | Path, *, name: str = "", spawn: bool = False,
                 jpeg_quality: int | None = JPEG_QUALITY) -> None:
        rr = import_rerun()
        self.rr = rr
        self.path = check_output(path)
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality: {jpeg_quality} is not in 1..100")
        self.jpeg_quality, self.spawn = jpeg_quality, spawn
        self.triggers: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}{SUFFIX}")
        self.stream = rr.RecordingStream(APPLICATION_ID, recording_id=str(uuid.uuid4()))
        sinks: list[Any] = [rr.FileSink(str(self.tmp))]
        if spawn:  # a viewer (unless one listens already); this stream, not the global one
            rr.spawn(connect=False, recording=self.stream)
            sinks.append(rr.GrpcSink())
        self.stream.set_sinks(*sinks, default_blueprint=blueprint())
        self.open = True
        if name:
            self.stream.send_recording_name(name)
        self._static()

    def _static(self) -> None:
        rr = self.rr
        classes = [rr.AnnotationInfo(id=i, label=n, color=CLASS_COLORS.get(i, (255, 0, 255)))
                   for i, n in enumerate(CLASS_NAMES)]
        self.stream.log("/", rr.AnnotationContext(classes), static=True)

    # -- what is logged ------------------------------------------------------------------

    def set_time(self, step: int, sim_time: float) -> None:
        """Log what follows at env step `step` and simulated time `sim_time` [s]."""
        self.stream.set_time("step", sequence=int(step))
        self.stream.set_time("sim_time", duration=float(sim_time))

    def image(self, image: np.ndarray) -> None:
        """The camera frame, (H, W, 3) uint8 RGB (as JPEG unless `jpeg_quality` is None)."""
        if self.jpeg_quality is None:
            self.stream.log("/camera/image", self.rr.Image(image))
            return
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError("could not encode a camera frame as JPEG")
        self.encoded_image(bytes(buf), "image/jpeg")

    def encoded_image(self, data: bytes, media_type: str) -> None:
        """The camera frame as encoded bytes (a snapshot's PNG, as stored)."""
        self.stream.log("/camera/image", self.rr.EncodedImage(contents=data,
                                                              media_type=media_type))

    def boxes(self, kind: str, xyxy: np.ndarray, classes: np.ndarray,
              scores: np.ndarray | None = None, track_ids: np.ndarray | None = None) -> None:
        """2D boxes [px] under /camera/<kind>/boxes (kind: truth | pred), labelled with
        the class name and the score or track id."""
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        classes = np.asarray(classes, np.int64).reshape(-1)
        names = [CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else str(c) for c in classes]
        if scores is not None:
            labels = [f"{n} {s:.2f}" for n, s in zip(names, np.ravel(scores), strict=True)]
        elif track_ids is not None:
            labels = [f"{n} #{t}" for n, t in zip(names, np.ravel(track_ids), strict=True)]
        else:
            labels = names
        self.stream.log(f"/camera/{kind}/boxes", self.rr.Boxes2D(
            array=xyxy, array_format=self.rr.Box2DFormat.XYXY, class_ids=classes,
            labels=labels, show_labels=True, radii=1.0 if kind == "truth" else 1.5,
            draw_order=20.0 if kind == "truth" else 21.0))

    def lanes(self, kind: str, rows: np.ndarray, xs: np.ndarray, labels: list[str],
              colors: list[tuple[int, int, int]]) -> None:
        """Lane boundaries under /camera/<kind>/lanes: `xs` (B, R) sampled at image
        `rows` [px], ABSENT where a boundary is not seen (a gap splits its line)."""
        strips, names, cols = [], [], []
        rows = np.asarray(rows, np.float32)
        for x, label, color in zip(np.asarray(xs, np.float32), labels, colors, strict=True):
            for run in _runs(np.isfinite(x) & (x != ABSENT)):
                if len(run) >= 2:
                    strips.append(np.stack([x[run], rows[run]], axis=1))
                    names.append(label)
                    cols.append(color)
        self.stream.log(f"/camera/{kind}/lanes", self.rr.LineStrips2D(
            strips, labels=names, colors=cols, radii=1.0, draw_order=15.0))

    def truth_lanes(self, gt: Any) -> None:
        """The ground truth's lane boundaries (ego lane green, others yellow)."""
        lanes = gt.lanes
        ego = set(int(b) for b in lanes.ego_boundaries)
        labels = [f"{MARKING_NAMES[int(m)]}{' (ego lane)' if b in ego else ''}"
                  for b, m in enumerate(lanes.marking)]
        colors = [EGO_LANE_COLOR if b in ego else TRUTH_LANE_COLOR
                  for b in range(len(lanes.marking))]
        self.lanes("truth", lanes.rows, lanes.xs, labels, colors)

    def perception(self, p: Any) -> None:
        """A `perception.perceiver.Perception`: boxes with scores, and lanes if any."""
        d = p.detections
        self.boxes("pred", d.boxes_xyxy, d.classes, scores=d.scores)
        if p.lanes is not None:
            est = p.lanes
            labels = [f"{slot} {s:.2f}" for slot, s in zip(est.slots, est.scores, strict=True)]
            self.lanes("pred", est.rows, est.xs, labels, [PRED_LANE_COLOR] * len(labels))
            self.scalar("/metrics/lane_offset/pred", est.ego_offset)

    def bev(self, world: World) -> None:
        """The bird's-eye view [m] around the ego: road edges and lane boundaries, the
        actors and the ego as oriented boxes (closed outlines)."""
        rr, road, ego = self.rr, world.road, world.state.ego
        s = np.clip(ego.s + np.arange(-BEV_BEHIND, BEV_AHEAD, 2.0), road.s[0], road.s_max)
        lines = []
        for j in range(len(road.markings)):
            x, y, _ = road.to_world(s, road.boundary_d(j))
            lines.append(_ego_frame(world, x, y))
        self.stream.log("/bev/road", rr.LineStrips2D(lines, colors=ROAD_COLOR, radii=0.1,
                                                     draw_order=1.0))
        a = world.state.actors
        rows = np.flatnonzero(a.active & (a.s > ego.s - BEV_BEHIND) & (a.s < ego.s + BEV_AHEAD))
        x, y, yaw = world.actor_poses(rows)
        corners = box_corners(x, y, yaw, a.length[rows], a.width[rows])
        outlines = [_closed(_ego_frame(world, c[:, 0], c[:, 1])) for c in corners]
        self.stream.log("/bev/actors", rr.LineStrips2D(
            outlines, class_ids=a.cls[rows], radii=0.15, draw_order=3.0,
            labels=[f"{CLASS_NAMES[int(c)]} #{int(t)}" for c, t in
                    zip(a.cls[rows], a.track_id[rows], strict=True)], show_labels=False))
        e = world.ego_box()
        self.stream.log("/bev/ego", rr.LineStrips2D(
            [_closed(_ego_frame(world, e[:, 0], e[:, 1]))], colors=EGO_COLOR, radii=0.2,
            labels=["ego"], draw_order=4.0))

    def info(self, markdown: str) -> None:
        """What the recording is (scenario, seed; a snapshot's triggers), as a static
        Markdown document at /info."""
        self.stream.log("/info", self.rr.TextDocument(markdown, media_type="text/markdown"),
                        static=True)

    def scalar(self, entity: str, value: float) -> None:
        """One value of a time series (NaN and infinities are left out: a gap)."""
        if value is not None and np.isfinite(value):
            self.stream.log(entity, self.rr.Scalars(float(value)))

    def text(self, entity: str, text: str, level: str = "INFO") -> None:
        """A text-log line (a marker at the current time)."""
        self.stream.log(entity, self.rr.TextLog(text, level=level))

    def trigger(self, name: str, detail: str) -> None:
        """A data-engine trigger firing now: a point on /metrics/triggers/<name> and a
        line in /triggers."""
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "trigger"
        entity = f"/metrics/triggers/{name}"
        if name not in self.triggers:  # drawn as points (markers), not as a line
            self.triggers.add(name)
            self.stream.log(entity, self.rr.SeriesPoints(markers="diamond", marker_sizes=8.0,
                                                         names=name), static=True)
        self.scalar(entity, 1.0)
        self.text("/triggers", f"trigger {name}: {detail}", "WARN")

    # -- the file ------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush the recording and move it to `path`; ValueError (the temporary file is
        removed) if something appeared at `path` meanwhile."""
        if not self.open:
            return self.path
        self._disconnect()
        try:
            os.link(self.tmp, self.path)  # fails if `path` exists: never overwrites
        except FileExistsError:
            self.tmp.unlink(missing_ok=True)
            raise ValueError(f"rerun: {self.path} appeared while it was recorded; "
                             "drivestack does not overwrite it") from None
        except OSError:  # a file system without hard links
            if self.path.exists():
                self.tmp.unlink(missing_ok=True)
                raise ValueError(f"rerun: {self.path} appeared while it was recorded; "
                                 "drivestack does not overwrite it") from None
            os.replace(self.tmp, self.path)
        self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Stop recording and remove the temporary file (nothing appears at `path`)."""
        if self.open:
            self._disconnect()
        self.tmp.unlink(missing_ok=True)

    def _disconnect(self) -> None:
        self.open = False
        try:
            self.stream.flush()
        except RuntimeError as exc:  # the spawned viewer is gone: the file is still whole
            if not self.spawn:
                raise
            warnings.warn(f"the Rerun viewer was not reached ({str(exc)[:120]}); the "
                          f"recording still goes to {self.path}", stacklevel=3)
        self.stream.disconnect()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class RerunLogger(Listener):
    """Records one episode of a rollout into `path` (module docstring): everything the
    step shows (frame, ground truth, perception when it ran, action, reward terms,
    events) and the bird's-eye view of the world. The file appears when the episode ends
    (an episode ended by an error too, with the error in /events); `abort()` drops it."""

    def __init__(self, path: str | Path, *, name: str = "", spawn: bool = False,
                 jpeg_quality: int | None = JPEG_QUALITY) -> None:
        import_rerun()
        self.path, self.name, self.spawn = check_output(path), name, spawn
        self.jpeg_quality = jpeg_quality
        self.recording: Recording | None = None
        self.written: Path | None = None
        """`path`, once the recording is complete there."""

    def on_reset(self, env: DrivingEnv, seed: int | None) -> None:
        self.abort()
        self.recording = Recording(self.path, name=self.name or f"episode (seed {seed})",
                                   spawn=self.spawn, jpeg_quality=self.jpeg_quality)
        if env.world is not None:
            sc = env.world.scenario
            self.recording.info(
                f"# {self.name or 'drivestack episode'}\n\n- seed: {seed}\n- scenario: "
                f"{sc.family}, {sc.n_lanes} lanes, {sc.time_of_day}, {sc.weather}\n"
                f"- dt: {env.dt:.4f} s\n")

    def on_step(self, step: Step) -> None:
        rec = self.recording
        assert rec is not None and step.env.world is not None
        world = step.env.world
        rec.set_time(step.index, world.state.time)
        if step.frame is not None:
            rec.image(step.frame)
        gt = step.ground_truth
        if gt is not None:
            rec.boxes("truth", gt.boxes_xyxy, gt.class_ids, track_ids=gt.track_ids)
        if step.perception is not None:
            rec.perception(step.perception)
        log_world(rec, step)
        log_events(rec, step.events)
        log_action(rec, step.action)
        if step.overridden:
            rec.text("/events", "the safety shield replaced the planner's action", "WARN")

    def on_end(self, end: EpisodeEnd) -> None:
        rec = self.recording
        if rec is None:
            return
        level = "ERROR" if end.error else "INFO"
        rec.text("/events", f"episode end: {end.end} after {end.steps} steps"
                 + (f" ({end.error})" if end.error else ""), level)
        self.recording = None
        self.written = rec.close()

    def abort(self) -> None:
        """Drop an unfinished recording (its temporary file)."""
        if self.recording is not None:
            self.recording.abort()
            self.recording = None


def log_world(rec: Recording, step: Step) -> None:
    """What a step shows of the world: ground-truth lanes, the bird's-eye view, speed,
    route completion, reward and its terms."""
    world = step.env.world
    assert world is not None
    gt = step.ground_truth
    if gt is not None:
        rec.truth_lanes(gt)
        rec.scalar("/metrics/lane_offset/truth", gt.ego_lane_offset)
    rec.bev(world)
    rec.scalar("/metrics/speed", world.state.ego.speed)
    rec.scalar("/metrics/route_completion", step.info.get("route_completion", np.nan))
    if step.index > 0:
        rec.scalar("/metrics/reward", step.reward)
        for term, value in step.reward_terms.items():
            rec.scalar(f"/metrics/reward_terms/{term}", value)


def log_events(rec: Recording, events: dict[str, Any]) -> None:
    """The env's events of a step: 0/1 series, npc_collisions, min_ttc [s], and a text-log
    line for each boolean event that fired."""
    for name in EVENTS:
        if name in events:
            fired = bool(events[name])
            rec.scalar(f"/metrics/events/{name}", float(fired))
            if fired:
                rec.text("/events", name.replace("_", " "),
                         "WARN" if name == "hard_brake" else "ERROR")
    if "npc_collisions" in events:
        rec.scalar("/metrics/events/npc_collisions", float(events["npc_collisions"]))
    if events.get("min_ttc") is not None:
        rec.scalar("/metrics/min_ttc", float(events["min_ttc"]))


def log_action(rec: Recording, action: Any) -> None:
    """The action chosen at this step: /metrics/action/meta (a META_ACTIONS index, with
    its name in the text log when it is not IDLE) or /metrics/action/steer and accel."""
    if action is None:
        return
    a = np.asarray(action)
    if a.ndim == 0 and a.dtype.kind in "iu":
        rec.scalar("/metrics/action/meta", float(a))
        if 0 <= int(a) < len(META_ACTIONS) and META_ACTIONS[int(a)] != "IDLE":
            rec.text("/events", f"action {META_ACTIONS[int(a)]}", "DEBUG")
        return
    values = np.asarray(a, np.float64).reshape(-1)
    for name, value in zip(("steer", "accel"), values, strict=False):
        rec.scalar(f"/metrics/action/{name}", float(value))


def _ego_frame(world: World, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 2) world points in the bird's-eye frame [m]: x to the ego's right, y behind."""
    ego = world.state.ego
    dx, dy = np.asarray(x) - ego.x, np.asarray(y) - ego.y
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    forward, left = c * dx + s * dy, -s * dx + c * dy
    return np.stack([-left, -forward], axis=-1).astype(np.float32)


def _closed(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, points[:1]])


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the runs of True in a 1D mask."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
