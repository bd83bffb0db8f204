"""Every config composes; experiments change what their names say; bad keys fail clearly."""


import pytest
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose_train, run_script

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_the_experiments_the_issues_ask_for_exist():
    assert {"paper", "full", "stage1_only", "ablate_cfc"} <= set(EXPERIMENTS)


#: Experiments whose runs carry another name: mask_robustness is mask_erode or mask_dilate by its mode.
RUN_NAMES = {"mask_robustness": "mask_erode"}


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("extra", [[], ["preset=cpu"], ["preset=cpu", "debug=fast"]])
def test_every_experiment_composes_and_resolves(name, extra):
    cfg = compose_train([f"+experiment={name}", *extra])
    assert cfg.experiment_name == RUN_NAMES.get(name, name)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert set(cfg.stages) <= {"stage1", "stage2", "test"}


def test_defaults_are_the_paper_settings_and_the_cpu_preset_shrinks_them():
    paper = compose_train([])
    cpu = compose_train(["preset=cpu"])
    assert paper.data.batch_size == 24 and paper.data.crop_size == 160
    assert paper.model.stage1.net.channels == 32 and paper.steps.stage2_a == 200000
    assert cpu.model.stage1.net.channels < paper.model.stage1.net.channels
    assert cpu.steps.stage1 < paper.steps.stage1 and cpu.trainer.accelerator == "cpu"


def test_cfc_switch_per_experiment():
    assert compose_train(["+experiment=full"]).model.stage1.net.use_cfc is True
    for name in ("paper", "ablate_cfc"):
        assert compose_train([f"+experiment={name}"]).model.stage1.net.use_cfc is False


def test_paper_differs_from_full_only_in_cfc_and_the_head_form():
    full = OmegaConf.to_container(compose_train(["+experiment=full"]))
    paper = OmegaConf.to_container(compose_train(["+experiment=paper"]))
    full["experiment_name"] = paper["experiment_name"]
    full["model"]["stage1"]["net"]["use_cfc"] = False
    for key in ("_target_", "inner", "max_correction"):  # residual HFAH -> the published HFAH
        del full["model"]["stage2"]["head"][key]
    head = full["model"]["stage2"]["head"]
    full["model"]["stage2"]["head"] = {"_target_": "sgdfuse.models.stage2.hfah.HFAH", **head}
    assert full == paper


def test_trainer_group_options():
    for name in ("auto", "cpu", "gpu", "ddp", "ddp_cpu"):
        cfg = compose_train([f"trainer={name}"])
        assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    assert compose_train(["trainer=ddp_cpu"]).trainer.devices == 2


def test_unknown_experiment_names_the_key_and_the_options(tmp_path):
    proc = run_script("train.py", "+experiment=no_such_thing", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode != 0
    assert "experiment/no_such_thing" in proc.stderr
    assert "ablate_cfc" in proc.stderr  # Hydra lists the available experiments


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: What each ablation may change relative to `full` (docs/design.md, Ablations) — and must change.
_RESIDUAL_ONLY = {"model.stage2.head._target_", "model.stage2.head.inner", "model.stage2.head.max_correction"}
_HFAH_ONLY = {f"model.stage2.head.{k}"
              for k in ("level_channels", "hidden_channels", "ratio", "spatial_attention")}
ABLATION_CHANGES = {
    "paper": {"model.stage1.net.use_cfc", *_RESIDUAL_ONLY},
    "ablate_cfc": {"model.stage1.net.use_cfc"},
    "ablate_residual": _RESIDUAL_ONLY,
    "stage1_only": {"stages"},
    "ablate_sam": {"masks.source._target_"},
    # test-time only: no training, the `full` run of the same seed is scored with perturbed test masks
    "mask_erode": {"masks.perturb.mode", "stages", "source_experiment"},
    "mask_dilate": {"masks.perturb.mode", "stages", "source_experiment"},
    "mask_robustness": {"masks.perturb.mode", "stages", "source_experiment"},
    # a model of its own, trained on perturbed masks
    "train_mask_erode": {"masks.perturb.mode", "masks.perturb.apply_to"},
    "train_mask_dilate": {"masks.perturb.mode", "masks.perturb.apply_to"},
    "ablate_diffusion": {"stage2_phases"},
    "ablate_hfah": {"model.stage2.head.inner", *_HFAH_ONLY},
    "single_stage": {"stages", "model.stage2.first_stage._target_"},
}


@pytest.mark.parametrize("name", sorted(ABLATION_CHANGES))
def test_each_ablation_changes_exactly_what_its_name_says(name):
    # resolve=False: the run folder (paths.run_dir) legitimately carries the experiment name
    full = _flat(OmegaConf.to_container(compose_train(["+experiment=full"])))
    other = _flat(OmegaConf.to_container(compose_train([f"+experiment={name}"])))
    changed = {k for k in full.keys() | other.keys() if full.get(k) != other.get(k)}
    changed -= {"experiment_name"}
    assert changed == ABLATION_CHANGES[name]


def test_every_experiment_but_full_is_listed_with_its_changes():
    assert set(EXPERIMENTS) == set(ABLATION_CHANGES) | {"full"}


@pytest.mark.parametrize("name", ["mask_erode", "mask_dilate", "mask_robustness"])
def test_test_time_mask_experiments_train_nothing_and_score_full(name):
    cfg = compose_train([f"+experiment={name}"])
    assert list(cfg.stages) == ["test"] and cfg.source_experiment == "full"
    assert list(cfg.masks.perturb.apply_to) == ["test"]


def test_mask_robustness_runs_are_named_after_their_direction():
    for mode in ("erode", "dilate"):
        cfg = compose_train(["+experiment=mask_robustness", f"masks.perturb.mode={mode}"])
        own = compose_train([f"+experiment=mask_{mode}"])
        assert cfg.experiment_name == f"mask_{mode}"
        assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(own, resolve=True)


@pytest.mark.parametrize("mode", ["erode", "dilate"])
def test_trained_mask_variants_perturb_every_split(mode):
    cfg = compose_train([f"+experiment=train_mask_{mode}"])
    assert cfg.masks.perturb.mode == mode and list(cfg.masks.perturb.apply_to) == ["train", "val", "test"]
    assert "stage1" in cfg.stages and cfg.source_experiment is None


def test_the_sam_command_of_the_data_issue_composes(tmp_path):
    """README / issue: data=msrs data.root=... masks=sam masks.checkpoint=... (SAM built lazily, not here)."""
    from hydra.utils import instantiate

    cfg = compose_train(["data=msrs", f"data.root={tmp_path}/MSRS", "masks=sam",
                         f"masks.checkpoint={tmp_path}/sam_vit_b_01ec64.pth"])
    assert cfg.masks.source.checkpoint == f"{tmp_path}/sam_vit_b_01ec64.pth"
    source = instantiate(cfg.masks.source)
    assert source.checkpoint == f"{tmp_path}/sam_vit_b_01ec64.pth" and source.enabled
    with pytest.raises(Exception, match="MSRS"):  # the folder does not exist: named, before training
        instantiate(cfg.data.train)
