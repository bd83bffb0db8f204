"""scripts/val_trials.py: Stage-II settings chosen on the val split, on a run's Stage I and phase a."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sgdfuse.orchestration.val_trials import (
    SOURCE_DISTANCES,
    STANDARD_METRICS,
    Trial,
    at_least_stage1,
    check_run,
    judged_metrics,
    read_trials,
    run_stage1_scores,
)
from tests.conftest import TINY_STAGE2, compose_train, run_script

BASE = ["preset=cpu", "debug=fast", "logger=csv", "model.stage1.net.channels=8",
        "model.stage1.net.num_stages=1", "data.num_workers=0", "data.val.num_pairs=2", "data.val.height=48",
        "data.val.width=56", *TINY_STAGE2,
        "+experiment=full", "stages=[stage1,stage2]"]


def test_trial_specs_parse_and_bad_ones_say_the_form():
    assert Trial.parse("g3=model.stage2.loss.w_grad=3 steps.stage2_b=5") == Trial(
        "g3", ("model.stage2.loss.w_grad=3", "steps.stage2_b=5"))
    assert Trial.parse("run=") == Trial("run", ())
    for bad in ("no_equals", "=x=1", "a/b=x=1"):
        with pytest.raises(ValueError, match="NAME=OVERRIDES"):
            Trial.parse(bad)


def test_a_run_without_phase_a_is_refused_naming_the_file(tmp_path):
    cfg = compose_train(BASE)
    with pytest.raises(FileNotFoundError, match="stage2_a/last.ckpt"):
        check_run(tmp_path, cfg)
    with pytest.raises(ValueError, match="stage2_phases"):
        check_run(tmp_path, compose_train([*BASE, "stage2_phases=[joint]"]))


def test_at_least_stage1_counts_ties():
    scores = {"stage1": {"EN": 1.0, "SD": 2.0, "SF": 3.0}, "final": {"EN": 1.0, "SD": 2.5, "SF": 2.9}}
    assert at_least_stage1(scores) == ["EN", "SD"]


def test_source_distances_are_reported_but_never_counted():
    stage1 = {"EN": 1.0, "dist_IR": 20.0, "dist_VIS": 30.0}
    final = {"EN": 0.5, "dist_IR": 25.0, "dist_VIS": 35.0}  # larger distances are not "wins"
    assert at_least_stage1({"stage1": stage1, "final": final}) == []
    assert judged_metrics(final) == ["EN"] and set(SOURCE_DISTANCES) == {"dist_IR", "dist_VIS"}


def test_trials_retrain_phase_b_on_the_runs_stage1_and_score_the_val_split(tmp_path):
    overrides = [*BASE, f"paths.checkpoint_dir={tmp_path}/checkpoints", f"paths.cache_dir={tmp_path}/cache"]
    proc = run_script("train.py", *overrides, "run_id=r", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "checkpoints" / "full" / "r"
    own_phase_b = (run / "stage2_b" / "last.ckpt").stat().st_mtime_ns
    out = tmp_path / "trials"
    proc = run_script("scripts/val_trials.py", "--run", str(run), "--out", str(out), "--trial", "run=",
                      "--trial", "ssim=model.stage2.loss.w_ssim=1 model.stage2.loss.w_grad=3", *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(out)
    assert [r["trial"] for r in rows] == ["run", "ssim"]
    for name in ("run", "ssim"):
        assert (out / name / "stage2_b" / "last.ckpt").is_file()
    assert (run / "stage2_b" / "last.ckpt").stat().st_mtime_ns == own_phase_b  # the run itself is untouched
    for m in STANDARD_METRICS:
        assert rows[0][f"stage1/{m}"] == rows[1][f"stage1/{m}"], m  # one Stage I under every trial
        assert all(math.isfinite(float(r[f"final/{m}"])) for r in rows)
    assert all(0 <= int(r["n_at_least_stage1"]) <= len(STANDARD_METRICS) for r in rows)
    table = (out / "trials.md").read_text()
    assert "`model.stage2.loss.w_ssim=1 model.stage2.loss.w_grad=3`" in table and "(run config)" in table
    assert Path(out / "ssim" / "stage2_b" / "DONE").is_file()


def test_stage1_trials_retrain_stage1_only_and_compare_with_the_runs_stage1(tmp_path):
    overrides = [*BASE, f"paths.checkpoint_dir={tmp_path}/checkpoints", f"paths.cache_dir={tmp_path}/cache",
                 "stages=[stage1]"]
    proc = run_script("train.py", *overrides, "run_id=r", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "checkpoints" / "full" / "r"
    assert not (run / "stage2_a").exists()  # Stage-I trials need no phase a
    own_stage1 = (run / "stage1" / "last.ckpt").stat().st_mtime_ns
    out = tmp_path / "trials"
    proc = run_script("scripts/val_trials.py", "--stage", "stage1", "--run", str(run), "--out", str(out),
                      "--trial", "grad5=model.stage1.loss.w_grad=5", "--trial", "run=", *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(out)
    assert [(r["trial"], r["stage"]) for r in rows] == [("grad5", "stage1"), ("run", "stage1")]
    assert (out / "grad5" / "stage1" / "DONE").is_file() and not (out / "grad5" / "stage2_b").exists()
    assert (run / "stage1" / "last.ckpt").stat().st_mtime_ns == own_stage1  # the run itself is untouched
    reference = run_stage1_scores(compose_train(overrides), run)  # the run's own Stage I, scored here
    for m in STANDARD_METRICS:
        assert all(float(r[f"stage1/{m}"]) == pytest.approx(reference[m], abs=1e-6) for r in rows), m
        # the run's setting retrained with the same seed is the run's Stage I again
        assert rows[1][f"final/{m}"] == rows[1][f"stage1/{m}"], m
    assert rows[1]["n_at_least_stage1"] == str(len(STANDARD_METRICS))
    assert any(rows[0][f"final/{m}"] != rows[1][f"final/{m}"] for m in STANDARD_METRICS)
    # Source distances: grey levels (0..255), the reference's equal to the retrained run setting's.
    for key in SOURCE_DISTANCES:
        assert 0 < float(rows[0][f"final/{key}"]) < 255
        assert float(rows[1][f"final/{key}"]) == pytest.approx(reference[key], abs=1e-6)
    table = (out / "trials.md").read_text()
    assert "the trial's Stage-I image − the run's own Stage I" in table
    assert "| F−IR | F−VIS |" in table and f"the run's own Stage I: {reference['dist_IR']:.1f}" in table


def test_an_unknown_trial_stage_or_a_run_without_stage1_is_refused(tmp_path):
    cfg = compose_train(BASE)
    with pytest.raises(ValueError, match="trial stage"):
        check_run(tmp_path, cfg, "stage2_a")
    with pytest.raises(FileNotFoundError, match="stage1/last.ckpt"):
        check_run(tmp_path, cfg, "stage1")
