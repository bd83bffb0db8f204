"""report.py: tables, plots and the runs left out, from fake run folders with known numbers and a fake W&B
API; one end-to-end run of train.py (a test-only run scoring another run's checkpoint) and report.py."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from sgdfuse.orchestration.report import (
    latex_escape,
    make_report,
    render_latex,
    render_markdown,
    report_from_config,
    settings_from_config,
    write_report,
)
from sgdfuse.orchestration.report_runs import ReportError, local_runs, summary_sets, unflatten, wandb_runs
from sgdfuse.orchestration.run_folders import training_stages
from tests.conftest import REPO, run_script

DATA = {"_target_": "datamodules.ivif.IVIFDataModule", "batch_size": 8, "crop_size": 64, "num_workers": 0,
        "seed": 0, "test": {"_target_": "sgdfuse.data.synthetic.SyntheticPairs", "num_pairs": 32}}
MASKS = {"source": {"_target_": "sgdfuse.masks.base.LabelMasks"},
         "perturb": {"mode": None, "kernel_size": 5, "apply_to": ["test"]}}
MODEL = {"stage1": {"net": {"channels": 16, "use_cfc": True}}, "stage2": {"use_masks": True}}


def report_config(**overrides):
    """configs/report.yaml (the defaults) with ``overrides``."""
    cfg = OmegaConf.load(REPO / "configs" / "report.yaml")
    cfg.merge_with(overrides)
    return cfg


SETTINGS = settings_from_config(report_config(metrics=["EN", "SSIM", "MSE"]))


def make_run(root: Path, experiment: str, run_id: str, seed: int, metrics: dict | str | None, *,
             stages=("stage1", "stage2", "test"), phases=("a", "b"), unfinished=(), data=None, model=None,
             masks=None, age: float = 0.0) -> Path:
    """A run folder as train.py leaves it; ``metrics``: a dict (written as JSON), raw text, or None."""
    run_dir = root / experiment / run_id
    run_dir.mkdir(parents=True)
    config = {"experiment_name": experiment, "seed": seed, "stages": list(stages),
              "stage2_phases": list(phases), "data": {**(data or DATA), "seed": seed},
              "masks": masks or MASKS, "model": model or MODEL}
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(config))
    for stage in training_stages(stages, phases):
        (run_dir / stage).mkdir()
        if stage not in unfinished:
            (run_dir / stage / "DONE").write_text(json.dumps({"global_step": 300}))
    if metrics is not None:
        (run_dir / "test").mkdir()
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        (run_dir / "test" / "metrics.json").write_text(text)
    stamp = time.time() - 1000 + age  # creation order of runs: older first
    os.utime(run_dir / "run_config.yaml", (stamp, stamp))
    return run_dir


def perturbed(mode: str, k: int) -> dict:
    return {**MASKS, "perturb": {"mode": mode, "kernel_size": k, "apply_to": ["test"]}}


@pytest.fixture
def runs_root(tmp_path) -> Path:
    """full ×3, paper ×2, ablate_sam ×2, robustness runs, and one bad run of every kind."""
    root = tmp_path / "checkpoints"
    for seed, (en, ssim, mse) in enumerate([(6.0, 0.9, 100), (6.2, 1.0, 110), (6.4, 1.1, 120)]):
        make_run(root, "full", f"f{seed}", seed, {"EN": en, "SSIM": ssim, "MSE": mse, "extra": "text"})
    for seed, (en, ssim, mse) in enumerate([(5.9, 1.2, 90), (6.1, 1.2, 94)]):
        make_run(root, "paper", f"p{seed}", seed, {"EN": en, "SSIM": ssim, "MSE": mse},
                 model={"stage1": {"net": {"channels": 16, "use_cfc": False}}, "stage2": {"use_masks": True}})
    for seed, (en, ssim, mse) in enumerate([(6.5, 0.8, 130), (6.7, 0.9, 140)]):
        make_run(root, "ablate_sam", f"s{seed}", seed, {"EN": en, "SSIM": ssim, "MSE": mse})
    for mode, k, seed, en in [("erode", 3, 0, 5.8), ("erode", 3, 1, 6.0), ("erode", 7, 0, 5.0),
                              ("dilate", 3, 0, 6.1)]:
        make_run(root, f"mask_{mode}", f"{mode}{k}-{seed}", seed, {"EN": en, "SSIM": 1.0, "MSE": 100},
                 stages=("test",), masks=perturbed(mode, k))
    # bad runs
    make_run(root, "full", "unfinished", 5, None, unfinished=("stage2_b",))
    make_run(root, "ablate_hfah", "nometrics", 0, None)
    make_run(root, "ablate_hfah", "truncated", 1, '{"EN": 6.1, "SS')
    make_run(root, "full", "f0-again", 0, {"EN": 9.0, "SSIM": 9.0, "MSE": 9.0}, age=50)
    make_run(root, "full", "bigger", 3, {"EN": 9.0, "SSIM": 9.0, "MSE": 9.0},
             model={"stage1": {"net": {"channels": 32, "use_cfc": True}}, "stage2": {"use_masks": True}})
    make_run(root, "ablate_cfc", "otherdata", 0, {"EN": 9.0, "SSIM": 9.0, "MSE": 9.0},
             data={**DATA, "test": {**DATA["test"], "num_pairs": 8}})
    make_run(root, "paper", "matlab", 2, {"convention": "matlab",
                                          "sets": {"test": {"n_images": 2, "final": {"EN": 9.0, "SSIM": 9.0,
                                                                                     "MSE": 9.0}}}})
    make_run(root, "ablate_sam", "nossim", 2, {"EN": 9.0, "MSE": 9.0})
    (root / "ablate_sam" / "notarun").mkdir()  # an empty folder is no run
    return root


@pytest.fixture
def report(runs_root):
    return make_report(local_runs([runs_root]), SETTINGS)


def _cell(report, row, metric, set_name="test"):
    result = next(r for r in report.sets if r.name == set_name)
    return result.cells[(row, metric)]


def test_means_and_sample_stds_over_seeds(report):
    full = _cell(report, "full", "EN")
    assert full.values == (6.0, 6.2, 6.4)  # the repeated seed, other-settings and unfinished runs stay out
    assert full.mean == pytest.approx(6.2) and full.std == pytest.approx(0.2)
    assert _cell(report, "paper", "SSIM").std == pytest.approx(0.0)
    assert _cell(report, "ablate_sam", "MSE").mean == pytest.approx(135.0)
    assert _cell(report, "ablate_sam", "MSE").std == pytest.approx(7.0710678)
    assert _cell(report, "mask_erode k=3", "EN").mean == pytest.approx(5.9)
    assert _cell(report, "mask_erode k=7", "EN").std is None  # one seed
    [result] = report.sets
    assert result.rows == ["paper", "full", "ablate_sam", "mask_erode k=3", "mask_erode k=7",
                           "mask_dilate k=3"]
    assert result.seeds("full") == [0, 1, 2]


def test_every_bad_run_is_left_out_with_its_reason(report, runs_root):
    reasons = {Path(x.run).name: x.reason for x in report.left_out}
    assert set(reasons) == {"unfinished", "nometrics", "truncated", "f0-again", "bigger", "otherdata",
                            "matlab", "nossim"}
    assert reasons["unfinished"].startswith("unfinished: stage2_b has no DONE marker")
    assert "run_id=unfinished" in reasons["unfinished"]
    assert "no test/metrics.json" in reasons["nometrics"]
    assert "metrics.json is not valid JSON" in reasons["truncated"] and "truncated" in reasons["truncated"]
    assert reasons["f0-again"].startswith(f"seed 0 repeats {runs_root / 'full' / 'f0'}")
    assert reasons["bigger"] == ("other settings than the 4 other run(s) of `full` "
                                 "(differs at model.stage1.net.channels)")
    assert reasons["otherdata"] == "other data than the `full` runs (differs at data.test.num_pairs)"
    assert reasons["matlab"].startswith("metrics under convention `matlab`, this report uses `cddfuse`")
    assert "convention=matlab" in reasons["matlab"]
    assert reasons["nossim"] == "test set test: lacks SSIM (the other runs have them)"
    assert report.convention == "cddfuse"


def test_markdown_values_best_marks_and_changes(report):
    text = render_markdown(report)
    lines = text.splitlines()
    assert "| experiment | n | EN ↑ | SSIM ↑ | MSE ↓ |" in lines
    assert "| paper | 2 | 6.000 ± 0.141 | **1.200 ± 0.000** | **92.000 ± 2.828** |" in lines
    assert "| full | 3 | 6.200 ± 0.200 | 1.000 ± 0.100 | 110.000 ± 10.000 |" in lines
    assert "| ablate_sam | 2 | **6.600 ± 0.141** | 0.850 ± 0.071 | 135.000 ± 7.071 |" in lines
    ablation, robustness = text.split("### Mask robustness on test")
    # Δ against full, then against paper (ablations); Δ against full only for robustness
    assert "| paper | -0.200 | +0.200 | -18.000 |" in ablation
    assert "| ablate_sam | +0.400 | -0.150 | +25.000 |" in ablation
    assert "| full | +0.200 | -0.200 | +18.000 |" in ablation.split("Change against `paper`")[1]
    assert "| mask_erode k=7 | 1 | 5.000 | 1.000 ± 0.000 | 100.000 ± 0.000 |" not in robustness  # one seed
    assert "| mask_erode k=7 | 1 | 5.000 | **1.000** | **100.000** |" in robustness
    assert "| full | 3 | **6.200 ± 0.200** | **1.000 ± 0.100** | 110.000 ± 10.000 |" in robustness
    assert "| mask_erode k=3 | 2 | 5.900 ± 0.141 | **1.000 ± 0.000** | **100.000 ± 0.000** |" in robustness
    assert "| mask_dilate k=3 | -0.100 | +0.000 | -10.000 |" in robustness
    assert "mask_erode" not in ablation.split("## Left out")[0]  # perturbed rows only in the robustness table
    assert "## Left out" in text and "| `" in text.split("## Left out")[1]


def test_latex_is_booktabs_with_escaped_names_and_bold_best(report):
    tex = render_latex(report)
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == tex.count(r"\begin{table}") == 5
    assert r"ablate\_sam & 2 & \textbf{6.600} $\pm$ 0.141 & 0.850 $\pm$ 0.071 & 135.000 $\pm$ 7.071 \\" in tex
    assert (r"paper & 2 & 6.000 $\pm$ 0.141 & \textbf{1.200} $\pm$ 0.000 & \textbf{92.000} $\pm$ 2.828 \\"
            in tex)
    assert r"Experiment & $n$ & EN $\uparrow$ & SSIM $\uparrow$ & MSE $\downarrow$ \\" in tex
    assert r"ablate\_sam & $+0.400$ & $-0.150$ & $+25.000$ \\" in tex
    assert r"\label{tab:test-ablation-vs-paper}" in tex
    assert latex_escape("a_b&c%") == r"a\_b\&c\%"


def test_files_csv_and_plots(report, tmp_path):
    files = write_report(report, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "report.md", "report.tex", "report.csv", "runs.csv", "left_out.csv", "test_ablation.png",
        "test_robustness.png"}
    rows = list(csv.DictReader(files["csv"].open()))
    sam = next(r for r in rows if r["experiment"] == "ablate_sam")
    assert (sam["set"], sam["table"], sam["n"], sam["seeds"]) == ("test", "ablation", "2", "0 1")
    assert float(sam["EN_mean"]) == pytest.approx(6.6) and float(sam["EN_std"]) == pytest.approx(0.1414214)
    assert float(sam["EN_delta_full"]) == pytest.approx(0.4)
    assert float(sam["EN_delta_paper"]) == pytest.approx(0.6)
    assert (sam["EN_best"], sam["SSIM_best"], sam["MSE_best"]) == ("1", "0", "0")
    erode7 = next(r for r in rows if r["experiment"] == "mask_erode k=7")
    assert erode7["table"] == "robustness" and erode7["EN_std"] == "" and erode7["EN_delta_paper"] == ""
    assert [r["table"] for r in rows if r["experiment"] == "full"] == ["ablation", "robustness"]
    per_run = list(csv.DictReader(files["runs"].open()))
    assert len(per_run) == 3 + 2 + 2 + 4 and {r["seed"] for r in per_run if r["experiment"] == "full"} == {
        "0", "1", "2"}
    assert len(list(csv.DictReader(files["left_out"].open()))) == 8
    md = files["markdown"].read_text()
    assert "![test_robustness](test_robustness.png)" in md
    for name in ("test_ablation.png", "test_robustness.png"):
        with Image.open(tmp_path / "out" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_several_test_sets_and_both_metrics_formats(tmp_path):
    root = tmp_path / "ck"
    for seed in (0, 1):
        make_run(root, "full", f"f{seed}", seed, {"convention": "matlab", "sets": {
            "TNO": {"n_images": 42, "final": {"EN": 7.0 + seed, "SSIM": 1.0}, "stage1": {"EN": 0.0}},
            "RoadScene": {"n_images": 50, "final": {"EN": 6.0, "SSIM": 0.5 + seed}}}})
    make_run(root, "paper", "p0", 0, {"EN": 1.0, "SSIM": 1.0})  # flat, hence cddfuse
    report = make_report(local_runs([root]), SETTINGS)
    assert report.convention == "matlab"  # the most common one
    assert [r.name for r in report.sets] == ["RoadScene", "TNO"]
    assert _cell(report, "full", "EN", "TNO").values == (7.0, 8.0)  # `final`, not `stage1`
    assert _cell(report, "full", "SSIM", "RoadScene").mean == pytest.approx(1.0)
    assert [x.reason.split(",")[0] for x in report.left_out] == [
        "metrics under convention `cddfuse`"]
    assert report.notes == ["test set RoadScene: no run has MSE", "test set TNO: no run has MSE"]
    files = write_report(report, tmp_path / "out")
    assert {"TNO_ablation.png", "RoadScene_ablation.png"} <= {p.name for p in files.values()}
    assert not (tmp_path / "out" / "TNO_robustness.png").exists()  # no perturbed runs
    assert "No `paper` runs for TNO: no change against it." in files["markdown"].read_text()


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "full").mkdir(parents=True)
    with pytest.raises(ReportError, match=r"no runs found in .*empty \(no run folders"):
        local_runs([tmp_path / "empty"])
    with pytest.raises(ReportError, match="does not exist"):
        local_runs([tmp_path / "nowhere"])


def test_an_empty_folder_among_others_is_said_and_the_rest_reported(runs_root, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    runs = local_runs([tmp_path / "empty", runs_root / "full"])
    assert {Path(r.name).parent.name for r in runs} == {"full"}
    assert "no runs in" in caplog.text and "empty" in caplog.text


def test_all_runs_left_out_still_writes_the_listing(tmp_path):
    root = tmp_path / "ck"
    make_run(root, "full", "x", 0, "{")
    report = make_report(local_runs([root]), SETTINGS)
    files = write_report(report, tmp_path / "out")
    text = files["markdown"].read_text()
    assert "no run could be used" in text and "not valid JSON" in text and "ck/full/x" in text


# --- W&B --------------------------------------------------------------------------------------------------

class FakeRun:
    """What the report reads of a ``wandb.apis.public.Run``."""

    def __init__(self, run_id, config, summary, state="finished", created_at=""):
        self.id, self.config, self.summary, self.state = run_id, config, summary, state
        self.path, self.created_at = ["me", "proj", run_id], created_at or run_id


class FakeSweep:
    def __init__(self, runs):
        self.runs = runs


class FakeApi:
    def __init__(self, runs=(), sweeps=None):
        self._runs, self._sweeps, self.calls = list(runs), sweeps or {}, []

    def runs(self, path, filters=None):
        self.calls.append(("runs", path, filters))
        return iter(self._runs)

    def sweep(self, path):
        self.calls.append(("sweep", path))
        if path not in self._sweeps:
            raise ValueError(f"Could not find sweep {path}")
        return FakeSweep(self._sweeps[path])


def _wandb_config(experiment, seed, **extra):
    # as train.py logs it (the resolved config, nested) plus the sweep's own dotted keys
    return {"experiment_name": experiment, "seed": seed, "stages": ["stage1", "stage2", "test"],
            "stage2_phases": ["a", "b"], "data": {**DATA, "seed": seed}, "masks": MASKS, "model": MODEL,
            "steps": {"stage1": 20000, "stage2_a": 200000, "stage2_b": 20000, "stage2_joint": 1}, **extra}


def test_wandb_summary_keys_and_configs():
    assert summary_sets({"test/EN": 1.0, "test-test/SSIM": 2.0, "test/TNO/EN": 3.0, "test/TNO/final/SD": 4.0,
                         "test/TNO/stage1/EN": 0.0, "test/grid": {"_type": "image-file"}, "train/loss": 1.0,
                         "_step": 3, "test/flag": True}) == {"test": {"EN": 1.0, "SSIM": 2.0},
                                                             "TNO": {"EN": 3.0, "SD": 4.0}}
    nested = unflatten({"masks.perturb.kernel_size": 7,
                        "masks": {"perturb": {"kernel_size": 5, "mode": "erode"}},
                        "seed": {"value": 3, "desc": None}})
    assert nested == {"masks": {"perturb": {"kernel_size": 7, "mode": "erode"}}, "seed": 3}


def test_wandb_sweeps_are_reported_like_local_runs(tmp_path):
    full = [FakeRun(f"f{s}", _wandb_config("full", s), {"test/EN": 6.0 + 0.2 * s, "test/SSIM": 1.0,
                                                          "test/MSE": 100.0}) for s in range(3)]
    sam = [FakeRun("s0", _wandb_config("ablate_sam", 0), {"test-test/EN": 6.5, "test-test/SSIM": 0.8,
                                                           "test-test/MSE": 130.0}),
           FakeRun("s1", _wandb_config("ablate_sam", 1), {"test/EN": 9.0}, state="crashed"),
           FakeRun("s2", _wandb_config("ablate_sam", 2), {"train/loss": 0.1})]
    erode = [FakeRun("e0", {**_wandb_config("mask_erode", 0, stages=["test"], source_experiment="full"),
                            "masks.perturb.mode": "erode", "masks.perturb.kernel_size": 3},
                     {"test/EN": 5.5, "test/SSIM": 1.0, "test/MSE": 100.0})]
    api = FakeApi(sweeps={"me/proj/swf": full, "me/proj/sws": sam, "other/proj/swe": erode})
    cfg = report_config(source="wandb", metrics=["EN", "SSIM", "MSE"],
                        wandb={"project": "me/proj", "sweeps": ["swf", "sws", "other/proj/swe"]})
    cfg.local.dirs = []  # not read with source=wandb (its default interpolates paths, absent here)
    report, files = report_from_config(cfg, tmp_path, api=api)
    assert [c[1] for c in api.calls] == ["me/proj/swf", "me/proj/sws", "other/proj/swe"]
    assert _cell(report, "full", "EN").mean == pytest.approx(6.2)
    assert _cell(report, "ablate_sam", "EN").values == (6.5,)
    assert _cell(report, "mask_erode k=3", "EN").values == (5.5,)
    reasons = {x.run: x.reason for x in report.left_out}
    assert reasons == {"wandb:me/proj/s1": "unfinished: W&B state `crashed`",
                       "wandb:me/proj/s2": "no test metrics in its W&B summary (keys test/<set>/<metric> or "
                                           "test/<metric>)"}
    assert "| ablate_sam | +0.300 | -0.200 | +30.000 |" in files["markdown"].read_text()


def test_wandb_project_filters_and_bad_paths():
    api = FakeApi(runs=[FakeRun("f0", _wandb_config("full", 0), {"test/EN": 6.0})])
    [run] = wandb_runs(api, "me/proj", [], {"config.experiment_name": "full"})
    assert api.calls == [("runs", "me/proj", {"config.experiment_name": "full"})]
    assert run.sets == {"test": {"EN": 6.0}} and run.experiment == "full" and run.seed == 0
    with pytest.raises(ReportError, match="no runs in W&B project me/empty"):
        wandb_runs(FakeApi(), "me/empty")
    with pytest.raises(ReportError, match="no runs in W&B sweep me/proj/sw0"):
        wandb_runs(FakeApi(sweeps={"me/proj/sw0": []}), "me/proj", ["sw0"])
    with pytest.raises(ReportError, match="W&B sweep me/proj/nope cannot be read: Could not find sweep"):
        wandb_runs(FakeApi(), "me/proj", ["nope"])
    with pytest.raises(ReportError, match="wandb.project=ENTITY/PROJECT is missing"):
        wandb_runs(FakeApi(), None, ["sw0"])


# --- train.py → test-only run → report.py ---------------------------------------------------------------

TINY = ["preset=cpu", "debug=fast", "logger=csv", "model.stage1.net.channels=8",
        "model.stage1.net.num_stages=1", "data.num_workers=0", "data.test.num_pairs=2", "data.test.height=48",
        "data.test.width=56",
        "data.val.num_pairs=1", "data.val.height=48", "data.val.width=56"]


@pytest.mark.slow  # ~12 s: two Lightning runs
def test_end_to_end_train_then_score_with_dilated_masks_then_report(tmp_path):
    """A stage1_only run, mask_dilate scoring its checkpoint (nothing trained) and report.py over both."""
    from sgdfuse.orchestration.pipeline import run
    from tests.conftest import compose_train

    common = [*TINY, f"paths.checkpoint_dir={tmp_path}/ck", f"paths.cache_dir={tmp_path}/cache", "seed=0"]
    run(compose_train(["+experiment=stage1_only", "run_id=src", *common]))
    run(compose_train(["+experiment=mask_dilate", "source_experiment=stage1_only", "run_id=dil",
                       "masks.perturb.kernel_size=3", *common]))
    test_only = tmp_path / "ck" / "mask_dilate" / "dil"
    assert sorted(p.name for p in test_only.iterdir() if p.is_dir()) == ["logs", "test"]  # nothing trained
    source = json.loads((test_only / "source_run.json").read_text())
    assert source["checkpoint"] == str(tmp_path / "ck" / "stage1_only" / "src" / "stage1" / "last.ckpt")
    out = tmp_path / "report"
    proc = run_script("report.py", f"local.dirs=[{tmp_path}/ck]", f"output_dir={out}",
                      "reference=stage1_only", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the synthetic data module names its one test set "synthetic"
    assert "### Mask robustness on synthetic" in proc.stdout and "| mask_dilate k=3 | 1 |" in proc.stdout
    rows = {r["experiment"]: r for r in csv.DictReader((out / "report.csv").open())
            if r["table"] == "robustness"}
    # Stage I does not read masks: its checkpoint scored with dilated masks must give its own numbers
    assert rows["mask_dilate k=3"]["Qabf_mean"] == rows["stage1_only"]["Qabf_mean"]
    assert float(rows["mask_dilate k=3"]["Qabf_delta_stage1_only"]) == 0.0
    with Image.open(out / "synthetic_robustness.png") as image:
        assert image.format == "PNG"


# --- the command line ----------------------------------------------------------------------------------

def test_report_script_prints_and_writes_the_report(runs_root, tmp_path):
    out = tmp_path / "out"
    proc = run_script("report.py", f"local.dirs=[{runs_root}]", f"output_dir={out}", "metrics=[EN,SSIM,MSE]",
                      "plots=false", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ablate_sam | 2 | **6.600 ± 0.141** | 0.850 ± 0.071 | 135.000 ± 7.071 |" in proc.stdout
    assert f"report in {out}" in proc.stdout
    assert "left out" in proc.stdout + proc.stderr and "truncated" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["left_out.csv", "report.csv", "report.md", "report.tex",
                                                     "runs.csv"]


def test_report_script_without_runs_fails_naming_the_folder(tmp_path):
    proc = run_script("report.py", f"local.dirs=[{tmp_path}/nothing]", f"output_dir={tmp_path}/out",
                      f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode != 0
    assert f"no runs found in {tmp_path}/nothing (does not exist)" in proc.stderr
