"""drivestack loop --quick: every stage end to end in well under a minute; a killed loop
resumes at its first unfinished stage; a bad launch file is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import data_engine.loop as loop
from data_engine.loop import STAGES, LoopConfig, run_loop
from launch.cli import app
from launch.cli_data import QUICK_LOOP_LAUNCH
from launch.loader import load_launch
from perception.registry import Registry

runner = CliRunner()


def test_quick_loop_runs_every_stage_and_resumes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_REGISTRY", str(tmp_path / "registry"))
    cfg = load_launch(QUICK_LOOP_LAUNCH, LoopConfig, overrides={"out": tmp_path / "loop"})

    def killed(self: object) -> dict:
        raise KeyboardInterrupt  # as a kill between stages would leave it

    real = loop._Context.stage_train
    monkeypatch.setattr(loop._Context, "stage_train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(cfg)
    state_file = tmp_path / "loop" / "loop_state.json"
    state = json.loads(state_file.read_text())
    assert list(state["stages"]) == list(STAGES[:STAGES.index("train")])
    # as a kill inside relabel would leave it: labels written, the stage not; one of them
    # made by another labeler (another teacher or settings) is made again, the rest kept
    from sim.outputs import OutputFolder, atomic_write_text

    folder = OutputFolder.claim(cfg.out, loop.JOB, entries=loop.ENTRIES)
    for stage in ("relabel", "versions"):
        state["stages"].pop(stage), state["times"].pop(stage)
    atomic_write_text(folder.own("loop_state.json"), json.dumps(state))
    folder.wrote()
    from data_engine.autolabel import ClipLabels

    other, kept = sorted((tmp_path / "loop" / "labels").glob("*.npz"))[:2]
    lab = ClipLabels.load(other.with_suffix(""))
    labeler = lab.labeler
    lab.labeler = "another labeler"
    lab.save(other.with_suffix(""))
    kept_mtime = kept.stat().st_mtime_ns
    monkeypatch.setattr(loop._Context, "stage_train", real)
    seen: list[tuple[str, str]] = []
    doc = run_loop(cfg, on_stage=lambda s, what: seen.append((s, what)))
    assert [s for s, w in seen if w == "skip"] == list(STAGES[:STAGES.index("relabel")])
    assert [s for s, w in seen if w == "done"] == list(STAGES[STAGES.index("relabel"):])
    assert ClipLabels.load(other.with_suffix("")).labeler == labeler
    assert kept.stat().st_mtime_ns == kept_mtime
    st = doc["stages"]
    assert st["mine"]["replay"]["byte_equal"] == st["mine"]["replay"]["checked"] >= 1
    runs = {"mined_auto", "random_auto", "mined_auto_s1", "random_auto_s1"}
    # each detector's refiner score exponent, calibrated on frames of its own seeds
    cal = st["calibrate"]
    assert set(cal["weights"]) == runs | {"current"} and cal["deployed"] == 0.5
    assert all(set(r["scores"]) == {"0.0", "0.5"} and r["best"] in (0.0, 0.5)
               for r in cal["scores"].values())
    again = cal["weights"]["current"] != cal["deployed"]
    assert set(st["evaluate"]["reports"]) == runs | {"before"} | (
        {loop.CURRENT_CALIBRATED} if again else set())
    assert st["evaluate"]["score_weights"]["mined_auto"] == cal["weights"]["mined_auto"]
    assert st["evaluate"]["score_weights"]["before"] == cal["deployed"]
    calib = [json.loads(line)["episode_seed"] for f in (tmp_path / "loop" / "calibration"
                                                        ).iterdir()
             if f.is_dir() for line in (f / "meta.jsonl").read_text().splitlines()]
    assert calib and all(990_000 <= s < 1_000_000 for s in calib)
    # every arm holds the same number of new frames, sampled over all its clips
    counts = {k: v["frames"] for k, v in st["versions"].items()}
    assert len(set(counts.values())) == 1 and set(counts) == runs
    # the mined runs take the frames where the auto-labels and the online detector
    # disagree most, the random control a seeded sample; the report says which and how
    # many online errors (ground truth, report only) a chosen frame holds
    v = st["versions"]
    assert {k: r["selection"] for k, r in v.items()} == {
        "mined_auto": "disagreement", "mined_auto_s1": "disagreement",
        "random_auto": "sample", "random_auto_s1": "sample"}
    assert 0 <= v["mined_auto"]["disagreeing"] <= v["mined_auto"]["available"]
    assert all(r["online_errors"] is not None and r["pool_online_errors"] is not None
               for r in v.values())
    # ... and the choice reads no ground truth: with every truth file refused, the same
    # scores come out
    from data_engine.clip import TRUTH
    from data_engine.store_format import Snapshot

    ctx = loop._Context(cfg, OutputFolder.claim(cfg.out, loop.JOB, entries=loop.ENTRIES),
                        loop.State(OutputFolder.claim(cfg.out, loop.JOB,
                                                      entries=loop.ENTRIES)), print)
    pool = {"mined_auto": ctx._frames("mined_auto", st["mine"])}
    scores = ctx._frame_scores(pool, st["mine"])
    assert scores is not None and len(scores) == len(pool["mined_auto"]) > 0
    read = Snapshot.read

    def no_truth(snap: Snapshot, name: str) -> bytes:
        assert name != TRUTH, "the frame choice read the ground truth"
        return read(snap, name)

    with monkeypatch.context() as m:
        m.setattr(Snapshot, "read", no_truth)
        ctx._box_cache.clear()  # read everything again
        assert ctx._frame_scores(pool, st["mine"]) == scores
    spread = st["evaluate"]["spread"]
    assert set(spread["range_by_arm"]) == {"mined_auto", "random_auto"}
    assert spread["spread"] == max(spread["range_by_arm"].values()) >= 0
    assert "mined_vs_random" in st["evaluate"]["versus"]
    assert st["promote"]["promoted"] is False  # quick never promotes
    entry = Registry().get(st["promote"]["registered"])
    assert entry.refiner_iou_weight == cal["weights"]["mined_auto"]
    report = (tmp_path / "loop" / "report.md").read_text()
    for part in ("## Mining", "## Auto-label quality", "random frames, auto labels",
                 "### Mining against random frames", "run-to-run spread", "seed 1",
                 "## Closed-loop hard suite", "## Promotion", "map_before_after.png",
                 "Refiner score exponent", "score exp.", "current detector: hard sets only",
                 "exact McNemar test of the flips: p = ", "## Dataset versions",
                 "| disagreement |"):
        assert part in report
    assert (tmp_path / "loop" / "map_before_after.png").stat().st_size > 1000
    held = [json.loads(line)["episode_seed"] for f in (tmp_path / "loop" / "heldout").iterdir()
            if f.is_dir() for line in (f / "meta.jsonl").read_text().splitlines()]
    assert held and all(950_000 <= s < 990_000 for s in held), "evaluate.heldout_seed"
    seen.clear()
    run_loop(cfg, redo_from="promote", on_stage=lambda s, what: seen.append((s, what)))
    assert [s for s, w in seen if w == "done"] == ["promote", "report"]
    assert len(Registry().entries()) == 3, "the shipped one and two registrations"
    with pytest.raises(ValueError, match="not a stage"):
        run_loop(cfg, redo_from="everything")
    # a resumed turn never mixes settings: changed ones need --redo-from (or another out)
    state_before = state_file.read_text()
    other_cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
        update={"calibrate_on": "hard"})})
    with pytest.raises(ValueError, match=r"other settings \(changed: evaluate.calibrate_on\);"
                                         r" run again with --redo-from calibrate "):
        run_loop(other_cfg)
    assert state_file.read_text() == state_before
    run_loop(cfg.model_copy(update={"workers": 1}))  # how many processes: no change
    run_loop(other_cfg, redo_from="report")
    assert json.loads(state_file.read_text())["settings"]["evaluate"]["calibrate_on"] == "hard"
    run_loop(other_cfg)  # now the folder's own settings
    # a turn killed during train, in 2 worker processes: the runs without a result are
    # trained again (each with its own seed), a finished one is kept as it is
    train = tmp_path / "loop" / "train"
    kept_run = (train / "mined_auto" / "weights" / "best.pt").stat().st_mtime_ns
    loop.State(OutputFolder.claim(cfg.out, loop.JOB, entries=loop.ENTRIES)).drop_from(
        "train")
    atomic_write_text(train / "mined_auto" / "drivestack_result.json", "{}")
    run_loop(other_cfg.model_copy(update={"workers": 2}))
    assert (train / "mined_auto" / "weights" / "best.pt").stat().st_mtime_ns == kept_run
    for name in ("random_auto", "mined_auto_s1", "random_auto_s1"):
        result = json.loads((train / name / "drivestack_result.json").read_text())
        assert Path(result["weights"]) == train / name / "weights" / "best.pt"
        assert result["metrics"] and Path(result["weights"]).is_file()
        seed = 1 if name.endswith("_s1") else 0
        assert f"seed: {seed}\n" in (train / name / "args.yaml").read_text()
    # redoing the labels removes the loop's own label files, and never a user's
    labels = tmp_path / "loop" / "labels"
    ours = sorted(labels.glob("*.npz"))
    assert ours
    (labels / "notes.txt").write_text("mine")
    from sim.outputs import OutputFolderError

    with pytest.raises(OutputFolderError, match="notes.txt"):
        run_loop(cfg, redo_from="relabel")
    assert all(p.exists() for p in ours) and (labels / "notes.txt").read_text() == "mine"
    (labels / "notes.txt").unlink()
    loop.State(OutputFolder.claim(cfg.out, loop.JOB, entries=loop.ENTRIES)).drop_from(
        "relabel")
    assert not any(p.exists() for p in ours) and not any(labels.iterdir())


def test_a_bad_loop_launch_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "loop.yaml"
    bad.write_text("train:\n  arms: [mined_auto, everything]\n")
    result = runner.invoke(app, ["loop", str(bad)])
    assert result.exit_code == 2 and "train.arms" in result.stderr
    assert "mined_auto" in result.stderr and "Traceback" not in result.output
    bad.write_text("mine:\n  seeds: [900001]\n")
    result = runner.invoke(app, ["loop", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "900001" in result.stderr
    bad.write_text("train:\n  nbs: 0\n")
    result = runner.invoke(app, ["loop", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "train.nbs" in result.stderr
    bad.write_text("evaluate:\n  heldout_seed: 899999\n")
    result = runner.invoke(app, ["loop", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "evaluate.heldout_seed" in result.stderr


def test_runs_and_spread() -> None:
    t = loop.TrainSettings(arms=["mined_auto", "random_auto", "mined_truth"],
                           spread_seeds=[0, 3])
    assert t.runs(0) == [("mined_auto", "mined_auto", 0), ("random_auto", "random_auto", 0),
                         ("mined_truth", "mined_truth", 0), ("mined_auto_s3", "mined_auto", 3),
                         ("random_auto_s3", "random_auto", 3)]
    assert all(loop.RUN_NAME.fullmatch(name) for name, _, _ in t.runs(0))
    with pytest.raises(ValueError, match="spread_seeds"):
        loop.TrainSettings(spread_seeds=[1, 1])
    reports = {name: {"sets": {"hard": {"mAP50-95": v}}} for name, v in
               (("mined_auto", 0.50), ("mined_auto_s3", 0.47), ("random_auto", 0.52),
                ("random_auto_s3", 0.53), ("mined_truth", 0.6))}
    trained = {name: {"arm": arm} for name, arm, _ in t.runs(0)}
    s = loop.run_spread(reports, trained)
    assert s["range_by_arm"] == pytest.approx({"mined_auto": 0.03, "random_auto": 0.01})
    assert s["spread"] == pytest.approx(0.03)
    assert loop.run_spread(reports, {"mined_auto": {"arm": "mined_auto"}})["spread"] is None
    # the random control alone repeated: half the cost, its range is the spread
    r = loop.TrainSettings(arms=["mined_auto", "random_auto"], spread_seeds=[3],
                           spread_arms=["random_auto"])
    assert r.runs(0)[2:] == [("random_auto_s3", "random_auto", 3)]
    s = loop.run_spread(reports, {name: {"arm": arm} for name, arm, _ in r.runs(0)})
    assert s["range_by_arm"] == pytest.approx({"random_auto": 0.01})
    with pytest.raises(ValueError, match="spread_arms"):
        loop.TrainSettings(arms=["mined_auto"], spread_seeds=[3], spread_arms=["random_auto"])
    with pytest.raises(ValueError, match="spread_arms"):
        loop.TrainSettings(spread_arms=["random_auto", "random_auto"])


def test_calibration_seeds_stay_off_the_evaluation_seeds() -> None:
    e = loop.EvalSettings(heldout_seed=950_000)  # calibration 990,000.. by default
    assert e.calibration_seed == 990_000 and e.calibration_frames > 0
    with pytest.raises(ValueError, match="overlap the held-out sets' seeds 960000"):
        loop.EvalSettings(heldout_seed=960_000)
    with pytest.raises(ValueError, match="closed-loop seeds"):
        loop.EvalSettings(heldout_seed=900_000, closed_loop_seeds=[991_000])
    with pytest.raises(ValueError, match="at least 8"):
        loop.EvalSettings(heldout_seed=950_000, calibration_frames=5)
    with pytest.raises(ValueError, match="score_weights"):
        loop.EvalSettings(heldout_seed=950_000, score_weights=[0.5, 11.0])
    loop.EvalSettings(heldout_seed=960_000, calibration_frames=0)  # off: nothing to keep apart
    with pytest.raises(ValueError, match="calibrate_on"):
        loop.EvalSettings(heldout_seed=950_000, calibrate_on="night")
    assert loop.EvalSettings(heldout_seed=950_000, calibrate_on="hard").calibrate_on == "hard"


def test_changed_settings_name_the_first_stage_they_concern() -> None:
    cfg = loop.LoopConfig()
    base = loop.launch_settings(cfg)
    assert loop.changed_keys(base, base) == []
    for update, keys, stage in (
            ({"base_frames": 8}, ["base_frames"], "base"),
            ({"workers": 1}, [], None),  # how many processes: not a setting of the results
            ({"evaluate": cfg.evaluate.model_copy(update={"bootstrap": 50})},
             ["evaluate.bootstrap"], "evaluate"),
            ({"evaluate": cfg.evaluate.model_copy(update={"hard_frames": 40,
                                                          "calibrate_on": "hard"})},
             ["evaluate.calibrate_on", "evaluate.hard_frames"], "heldout"),
            ({"train": cfg.train.model_copy(update={"max_new_frames": 10, "lr0": 0.1})},
             ["train.lr0", "train.max_new_frames"], "versions"),
            ({"train": cfg.train.model_copy(update={"epochs": 2})}, ["train.epochs"], "train"),
            ({"mine": cfg.mine.model_copy(update={"max_steps": 20}), "promote": False},
             ["mine.max_steps", "promote"], "mine")):
        keys_now = loop.changed_keys(base, loop.launch_settings(cfg.model_copy(update=update)))
        assert keys_now == keys
        if stage:
            assert loop.first_stage(keys_now) == stage
    assert loop.first_stage(["something.new"]) == loop.STAGES[0]
    assert set(loop.SETTING_STAGES.values()) <= set(loop.STAGES)
    assert all(k in loop.SETTING_STAGES for k in base), "every section has its stage"
