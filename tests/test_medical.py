"""Medical fusion (Harvard MRI–CT / MRI–PET / MRI–SPECT): configs, roles, colour kept, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from sgdfuse.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from sgdfuse.data.base import DataError
from sgdfuse.data.folder import FolderPairs
from sgdfuse.data.io import read_ir
from sgdfuse.orchestration.evaluation import baseline_fuser, evaluate_from_config
from tests.conftest import REPO, compose_train, shared_data_root

#: set folder -> (data config, functional folder, pairs, functional image is colour)
SETS = {
    "MRI_CT": ("harvard_mri_ct", "CT", 21, False),
    "MRI_PET": ("harvard_mri_pet", "PET", 42, True),
    "MRI_SPECT": ("harvard_mri_spect", "SPECT", 73, True),
}


def mif_root() -> Path | None:
    """``$SGDFUSE_MIF_DATA`` or ``<repo>/../shared/data/mif_real`` (holding MRI_CT/ MRI_PET/ MRI_SPECT/)."""
    return shared_data_root("SGDFUSE_MIF_DATA", "mif_real", tuple(SETS))


@pytest.fixture
def mif() -> Path:
    root = mif_root()
    if root is None:
        pytest.skip("medical pairs not found: set SGDFUSE_MIF_DATA to the mif_real folder (holding MRI_CT/, "
                    "MRI_PET/, MRI_SPECT/) or place it at ../shared/data/mif_real")
    return root


def _batch(ir: np.ndarray, vis: np.ndarray) -> dict:
    return {"ir": torch.from_numpy(ir.copy())[None, None],
            "vis": torch.from_numpy(vis.copy()).permute(2, 0, 1)[None]}


def _write_pet_like(root: Path, names=("11", "12"), seed: int = 0) -> Path:
    """MRI/ (grey stored as 3 channels, as the Harvard files) + PET/ (moderate colours, no saturation)."""
    rng = np.random.default_rng(seed)
    for sub in ("MRI", "PET"):
        (root / sub).mkdir(parents=True)
    for name in names:
        grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
        cv2.imwrite(str(root / "MRI" / f"{name}.png"), np.repeat(grey[..., None], 3, axis=2))
        cv2.imwrite(str(root / "PET" / f"{name}.png"), rng.integers(90, 166, (40, 48, 3), dtype=np.uint8))
    return root


# --- configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("set_name", sorted(SETS))
def test_configs_compose_with_mri_in_the_ir_role_and_a_test_split_only(set_name, tmp_path):
    config, functional, _, _ = SETS[set_name]
    for main in ("evaluate", "train"):
        cfg = compose_train([f"data={config}", f"data.root={tmp_path / set_name}"], config_name=main)
        assert cfg.data.train is None and cfg.data.val is None
        assert cfg.data.test._target_ == "sgdfuse.data.folder.FolderPairs"
        assert (cfg.data.test.ir_dir, cfg.data.test.vis_dir) == ("MRI", functional)
        assert cfg.data.test.root == str(tmp_path / set_name)


def test_a_missing_set_folder_is_named(tmp_path):
    cfg = compose_train(["data=harvard_mri_pet", f"data.root={tmp_path}/nowhere"], config_name="evaluate")
    with pytest.raises(Exception, match=r"nowhere.*MRI/ and PET/"):
        instantiate(cfg.data.test)


@pytest.mark.parametrize("set_name", sorted(SETS))
def test_real_sets_pair_mri_as_grey_ir_and_the_functional_image_as_rgb_vis(set_name, mif):
    config, functional, n_pairs, colour = SETS[set_name]
    cfg = compose_train([f"data={config}", f"data.root={mif / set_name}"], config_name="evaluate")
    pairs = instantiate(cfg.data.test)
    assert len(pairs) == n_pairs
    pairs.validate()
    pair = pairs[0]
    ir_file, vis_file = pairs.files(0)
    assert (ir_file.parent.name, vis_file.parent.name) == ("MRI", functional)
    assert pair.ir.shape == (256, 256) and pair.vis.shape == (256, 256, 3)
    np.testing.assert_allclose(pair.ir, cv2.imread(str(ir_file))[..., 0] / 255.0, atol=1e-6)  # its grey
    spread = float((pair.vis.max(axis=2) - pair.vis.min(axis=2)).max())
    assert (spread > 0.3) if colour else (spread == 0.0)


# --- colour kept --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_the_final_image_carries_the_pet_chroma_wherever_it_is_in_gamut(mode, mif):
    pair = FolderPairs(mif / "MRI_PET", "MRI", "PET")[0]
    batch = _batch(pair.ir, pair.vis)
    final = baseline_fuser(mode)(batch)["final"]
    vis_ycc = rgb_to_ycbcr(batch["vis"])
    unclamped = ycbcr_to_rgb(torch.cat([rgb_to_y(final), vis_ycc[:, 1:]], dim=1))
    in_gamut = ((unclamped >= 0) & (unclamped <= 1)).all(dim=1)
    assert in_gamut.float().mean() > 0.9  # the rest: saturated PET where a brighter Y leaves the RGB cube
    chroma_error = (rgb_to_ycbcr(final)[:, 1:] - vis_ycc[:, 1:]).abs().amax(dim=1)
    assert float(chroma_error[in_gamut].max()) < 1e-5
    assert float((final - batch["vis"]).abs().max()) > 0.2  # MRI structure did change the image


def test_evaluate_writes_fused_files_with_the_vis_chroma(tmp_path):
    root = _write_pet_like(tmp_path / "MRI_PET")
    out = tmp_path / "out"
    cfg = compose_train(["data=harvard_mri_pet", f"data.root={root}", f"output_dir={out}", "method=avg",
                         "metrics=[EN,SSIM]"], config_name="evaluate")
    evaluate_from_config(cfg, out)
    for name in ("11", "12"):
        fused = cv2.imread(str(out / "MRI_PET" / "fused" / f"{name}.png"))  # <out>/<set>/fused/
        fused = cv2.cvtColor(fused, cv2.COLOR_BGR2YCrCb).astype(int)
        pet = cv2.cvtColor(cv2.imread(str(root / "PET" / f"{name}.png")), cv2.COLOR_BGR2YCrCb).astype(int)
        assert np.abs(fused[..., 1:] - pet[..., 1:]).max() <= 1  # 8-bit rounding of R, G, B only
        assert np.abs(fused[..., 0] - pet[..., 0]).mean() > 10  # the luminance is the fused one
    assert (out / "MRI_PET" / "grid.png").is_file()
    assert (out / "MRI_PET" / "metrics.md").read_text().startswith("# MRI_PET")


# --- bad input ----------------------------------------------------------------------------------------------
def test_mri_and_pet_folders_with_different_file_sets_name_both_sides(tmp_path):
    root = _write_pet_like(tmp_path / "MRI_PET", names=("11", "12", "13"))
    (root / "PET" / "13.png").rename(root / "PET" / "99.png")
    with pytest.raises(DataError) as err:
        FolderPairs(root, "MRI", "PET")
    message = str(err.value)
    assert "MRI/ has 3, PET/ has 3" in message
    assert "1 file(s) in MRI/ without a twin in PET/: 13.png" in message
    assert "1 file(s) in PET/ without a twin in MRI/: 99.png" in message
    assert "in MRI/ (the IR role, ir_dir)" in message and "PET/ (the VIS role, vis_dir" in message


def test_a_colour_image_in_the_structural_role_is_a_clear_error(tmp_path):
    root = _write_pet_like(tmp_path / "MRI_PET")
    swapped = FolderPairs(root, ir_dir="PET", vis_dir="MRI")  # roles swapped in the config
    with pytest.raises(DataError, match=r"IR-role image .*PET/11\.png is colour .*swap ir_dir and vis_dir"):
        swapped[0]
    cfg = compose_train(["data=harvard_mri_pet", f"data.root={root}", f"output_dir={tmp_path / 'o'}",
                         "data.test.ir_dir=PET", "data.test.vis_dir=MRI"], config_name="evaluate")
    with pytest.raises(DataError, match=r"PET/11\.png is colour"):
        evaluate_from_config(cfg, tmp_path / "o")
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_grey_within_jpeg_rounding_is_still_grey_but_one_coloured_pixel_is_not(tmp_path):
    grey = np.full((8, 8, 3), 100, np.uint8)
    grey[..., 0] += 2  # a grey image saved as colour JPEG: channels off by a level or two
    cv2.imwrite(str(tmp_path / "nearly.png"), grey)
    np.testing.assert_allclose(read_ir(tmp_path / "nearly.png"), (0.114 * 102 + 0.886 * 100) / 255, atol=1e-6)
    dot = np.full((8, 8, 3), 100, np.uint8)
    dot[3, 4] = (100, 100, 140)  # one reddish pixel
    cv2.imwrite(str(tmp_path / "dot.png"), dot)
    with pytest.raises(DataError, match=r"dot\.png is colour .*40 of 255"):
        read_ir(tmp_path / "dot.png")


# --- the README table script --------------------------------------------------------------------------------
def test_table_script_reads_both_output_formats_and_fills_pending_rows(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import medical_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "metrics.csv").write_text("name,EN,SSIM\na,1.0,0.5\nb,3.0,1.5\n")
    assert medical_table.read_means(flat) == {"EN": 2.0, "SSIM": 1.0}
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "metrics.json").write_text('{"convention": "cddfuse", "sets": {"MRI_PET": {"n_images": 2, '
                                         '"final": {"EN": 4.0}, "stage1": {"EN": 9.0}}}}')
    assert medical_table.read_means(nested) == {"EN": 4.0}
    means = dict.fromkeys(medical_table.METRICS, 1.25)
    readme = tmp_path / "README.md"
    readme.write_text("| MRI_PET | avg | 1 |\n| MRI_PET | pending: zero-shot | — |\n")
    row = medical_table.markdown_row("MRI_PET", "zero-shot (masks: none)", means)
    medical_table.replace_pending(readme, {"MRI_PET": row}, "zero-shot")
    assert readme.read_text() == "| MRI_PET | avg | 1 |\n" + row + "\n"
    with pytest.raises(SystemExit, match="MRI_CT"):
        medical_table.replace_pending(readme, {"MRI_CT": row}, "zero-shot")
