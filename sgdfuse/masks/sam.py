"""``masks=sam``: one binary object mask per modality from Segment Anything (docs/design.md, SAM masks).

SGDFuse (paper, Sec. 3.2) conditions the diffusion refiner on SAM masks of the infrared and the visible
image. Here ``segment_anything``'s own :class:`SamAutomaticMaskGenerator` runs separately on IR
(replicated to 3 channels) and on VIS, and the per-modality mask is *(our reading)* the union of the
top-K masks ranked by ``predicted_iou × stability_score`` among those covering between ``min_area`` and
``max_area`` of the image – objects, not background such as sky or road.

SAM is expensive (over a minute per image for ViT-B on one CPU), so masks are computed once in
:meth:`SamMasks.prepare` (the DataModule's ``prepare_data``: once per node under DDP) and stored in a
:class:`~sgdfuse.masks.cache.MaskCache` keyed by the source config, the checkpoint content and the
image content. Later runs, stages and ablations with the same settings read the cache and never build
SAM. :meth:`SamMasks.load` on a miss (``prepare`` not run, or an entry corrupted since) computes the
masks lazily, stores them and warns: a forgotten ``prepare`` costs time, never a crash.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import Sam

from sgdfuse.data.base import DataError, Pair
from sgdfuse.masks.base import CachedMaskSource, Masks

log = logging.getLogger(__name__)

#: Bump when the way masks are derived from SAM's output changes: old caches then stop matching.
MASK_FORMAT_VERSION = 1

#: Official checkpoints of ``segment_anything``'s README (``default`` is ViT-H, as in the registry).
OFFICIAL_CHECKPOINTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
OFFICIAL_CHECKPOINTS["default"] = OFFICIAL_CHECKPOINTS["vit_h"]

#: SAGE's (RollingPlain/SAGE_IVIF) generator settings, except ``points_per_side``: SAGE's 128 means
#: 16× the decoder work of SAM's own default 32, which is what we use (set 128 to match SAGE exactly).
DEFAULT_GENERATOR: dict[str, Any] = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.86,
    "stability_score_thresh": 0.92,
    "crop_n_layers": 1,
    "min_mask_region_area": 100,
}

# Generator arguments that change speed or memory but not the masks: kept out of the cache key so that
# tuning them to a GPU does not invalidate a cache. ``output_mode`` is fixed (we need binary masks).
_SPEED_ONLY = frozenset({"points_per_batch"})

#: What ``SamAutomaticMaskGenerator`` (through ``SamPredictor``) uses of a model.
SAM_INTERFACE = ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess", "postprocess_masks",
                 "image_format", "mask_threshold", "device")
_FIXED = {"output_mode": "binary_mask"}


class SamCheckpointError(DataError):
    """No usable SAM checkpoint (missing file, offline without a path, wrong architecture)."""


def generator_kwargs(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """All :class:`SamAutomaticMaskGenerator` arguments: its defaults < :data:`DEFAULT_GENERATOR` < overrides.

    Spelling every argument out makes the cache key independent of whether a value was given explicitly.
    """
    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    defaults = {name: p.default for name, p in params.items() if name not in ("self", "model")}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown SamAutomaticMaskGenerator argument(s) masks.source.generator.{unknown[0]} "
            f"(all: {unknown}); valid: {sorted(defaults)}"
        )
    if overrides.get("output_mode", "binary_mask") != "binary_mask":
        raise ValueError("masks.source.generator.output_mode must be 'binary_mask' (or left out)")
    for name, value in overrides.items():
        # `pred_iou_thresh=0` from the command line is the same setting as `0.0` in YAML: same cache key.
        if isinstance(defaults[name], float) and isinstance(value, int) and not isinstance(value, bool):
            overrides[name] = float(value)
    return {**defaults, **DEFAULT_GENERATOR, **overrides, **_FIXED}


def select_masks(
    annotations: list[dict[str, Any]], shape: tuple[int, int], top_k: int, min_area: float, max_area: float
) -> np.ndarray:
    """Union of the top-``top_k`` generator masks by ``predicted_iou × stability_score`` among those whose
    area fraction lies in [``min_area``, ``max_area``]; H×W uint8 in {0, 1} (all zero when none qualify)."""
    total = float(shape[0] * shape[1])
    candidates = [a for a in annotations if min_area <= a["area"] / total <= max_area]
    # Stable sort: ties (e.g. random weights, all scores 0) keep the generator's order.
    candidates.sort(key=lambda a: a["predicted_iou"] * a["stability_score"], reverse=True)
    mask = np.zeros(shape, dtype=np.uint8)
    for ann in candidates[:top_k]:
        mask |= ann["segmentation"].astype(np.uint8)
    return mask


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """[0, 1] float H×W or H×W×3 → H×W×3 uint8 RGB, as SAM's ``set_image`` expects (grey replicated)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def _plain(config: Any) -> Any:
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class SamMasks(CachedMaskSource):
    """SAM masks for IR and VIS, computed once and cached on disk.

    Args:
        model_type: ``segment_anything.sam_model_registry`` key (``vit_b``, ``vit_l``, ``vit_h``,
            ``default``); ignored when ``model`` is given.
        checkpoint: SAM weights file. None: the official checkpoint of ``model_type`` is downloaded into
            torch hub's cache (``$TORCH_HOME/hub/checkpoints``) when ``download`` is True; with ``model``
            given, None keeps the builder's own weights (e.g. the tiny random-weight test SAM).
        model: a Hydra builder config (``_target_`` returning a model with ``segment_anything``'s
            ``Sam`` API: MobileSAM, SAM-HQ, an EfficientSAM port, ...) for any other SAM. Keep
            ``_recursive_: false`` on the enclosing config so Hydra passes the config instead of building
            SAM eagerly.
        generator: :class:`SamAutomaticMaskGenerator` arguments, over :data:`DEFAULT_GENERATOR`.
        top_k, min_area, max_area: mask selection, see :func:`select_masks`.
        cache_dir: root of the :class:`MaskCache`.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        download: allow downloading the official checkpoint when ``checkpoint`` is None.
    """

    label = "SAM masks"
    calls_per_pair = 2  # IR and VIS

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | None = None,
        model: dict[str, Any] | None = None,
        generator: dict[str, Any] | None = None,
        top_k: int = 5,
        min_area: float = 0.001,
        max_area: float = 0.5,
        *,
        cache_dir: str,
        device: str = "auto",
        download: bool = True,
    ) -> None:
        model = _plain(model)
        if model is not None and (not isinstance(model, dict) or "_target_" not in model):
            raise TypeError(
                "masks.source.model must be a builder config with a _target_ (got "
                f"{type(model).__name__}); keep `_recursive_: false` in the masks config so that Hydra "
                "does not build SAM before it is needed"
            )
        if model is None and model_type not in sam_model_registry:
            raise ValueError(
                f"masks.source.model_type={model_type!r} is not a SAM registry key; "
                f"use one of {sorted(sam_model_registry)} or give masks.source.model"
            )
        if not (top_k >= 1 and 0.0 <= min_area < max_area <= 1.0):
            raise ValueError(
                f"need top_k >= 1 and 0 <= min_area < max_area <= 1, got top_k={top_k}, "
                f"min_area={min_area}, max_area={max_area} (masks.source.*)"
            )
        self.model_type = model_type
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.model_config = model
        self.generator_config = generator_kwargs(_plain(generator))
        self.top_k, self.min_area, self.max_area = int(top_k), float(min_area), float(max_area)
        super().__init__(cache_dir)
        self.device = device
        self.download = download
        self._checkpoint_path: Path | None = None
        self._generator: SamAutomaticMaskGenerator | None = None

    # -- identity -----------------------------------------------------------------------------------------

    def resolve_checkpoint(self) -> Path | None:
        """The weights file to load (downloading the official one if allowed), or None for builder weights."""
        if self._checkpoint_path is not None:
            return self._checkpoint_path
        if self.checkpoint is not None:
            path = Path(self.checkpoint).expanduser()
            if not path.is_file():
                raise SamCheckpointError(
                    f"SAM checkpoint not found: {path}. Set masks.checkpoint=/path/to/<weights>.pth to an "
                    f"existing file (official weights: {self._official_url()})."
                )
        elif self.model_config is not None:
            return None
        else:
            path = self._download_official()
        self._checkpoint_path = path
        return path

    def _official_url(self) -> str:
        return OFFICIAL_CHECKPOINTS.get(self.model_type, OFFICIAL_CHECKPOINTS["vit_b"])

    def _download_official(self) -> Path:
        url = self._official_url()
        filename = Path(urllib.parse.urlparse(url).path).name
        target = Path(torch.hub.get_dir()) / "checkpoints" / filename
        fix = (
            f"download {url} on a machine with internet access and pass masks.checkpoint=/path/to/{filename}"
        )
        if target.is_file():
            return target
        if not self.download:
            raise SamCheckpointError(f"no SAM checkpoint given and masks.source.download=false: {fix}")
        log.info("downloading the official SAM %s checkpoint to %s", self.model_type, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # torch writes to a temp file and moves it into place: an interrupted download leaves no file.
            torch.hub.download_url_to_file(url, str(target), progress=True)
        except Exception as err:  # URLError, HTTPError, timeouts, SSL errors...
            raise SamCheckpointError(
                f"could not download the SAM {self.model_type} checkpoint from {url} ({err}); this machine "
                f"looks offline: {fix}"
            ) from err
        return target

    def identity(self) -> dict[str, Any]:
        """Everything that determines the masks; its hash names the cache directory."""
        checkpoint = self.resolve_checkpoint()
        model_type = "vit_h" if self.model_type == "default" else self.model_type  # same weights
        model = self.model_config or {"model_type": model_type}
        return {
            "format": MASK_FORMAT_VERSION,
            "model": model,
            "checkpoint_sha256": None if checkpoint is None else self.cache.file_sha256(checkpoint),
            "generator": {k: v for k, v in self.generator_config.items() if k not in _SPEED_ONLY},
            "top_k": self.top_k,
            "min_area": self.min_area,
            "max_area": self.max_area,
        }

    def manifest(self) -> dict[str, Any]:
        checkpoint = self.resolve_checkpoint()
        return {
            "source": self.identity(),
            "checkpoint_path": None if checkpoint is None else str(checkpoint),
            "segment_anything_version": importlib.metadata.version("segment-anything"),
            "torch_version": torch.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # -- SAM ----------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _build_model(self) -> Sam:
        checkpoint = self.resolve_checkpoint()
        if self.model_config is not None:
            sam = hydra.utils.instantiate(self.model_config)
            # Duck-typed: SAM-family models (MobileSAM, SAM-HQ, EfficientSAM ports) ship their own copy of
            # the Sam class; what SamAutomaticMaskGenerator uses is this interface.
            missing = [a for a in SAM_INTERFACE if not hasattr(sam, a)]
            if missing:
                raise TypeError(
                    f"masks.source.model._target_={self.model_config['_target_']} built a "
                    f"{type(sam).__name__} without {missing}: not a model with segment_anything's Sam API"
                )
        else:
            # Weights are loaded below rather than by the registry builder so that GPU-saved checkpoints
            # load on CPU machines and a wrong architecture gets an error that says what to change.
            sam = sam_model_registry[self.model_type]()
        if checkpoint is not None:
            self._load_weights(sam, checkpoint)
        return sam.to(self._device()).eval()

    def _load_weights(self, sam: Sam, checkpoint: Path) -> None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except Exception as err:
            arch = "masks.source.model" if self.model_config is not None else f"model_type={self.model_type}"
            raise SamCheckpointError(
                f"cannot load SAM checkpoint {checkpoint} into the {arch} architecture ({err}); pass the "
                "matching masks.checkpoint (sam_vit_b_*.pth for vit_b, ...) or masks.source.model_type"
            ) from err

    def _mask_generator(self) -> SamAutomaticMaskGenerator:
        if self._generator is None:
            self._generator = SamAutomaticMaskGenerator(self._build_model(), **self.generator_config)
        return self._generator

    def release(self) -> None:
        """Drop SAM (after ``prepare``): training must not keep gigabytes of weights on the GPU."""
        self._generator = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def _selection(self) -> tuple[int, float, float]:
        return self.top_k, self.min_area, self.max_area

    def compute(self, pair: Pair) -> Masks:
        """Run SAM on ``pair`` (no cache): (mask_ir, mask_vis), H×W uint8 in {0, 1}."""
        generator = self._mask_generator()
        shape = pair.ir.shape[:2]
        if pair.vis.shape[:2] != shape:
            raise DataError(f"pair {pair.name!r}: IR is {shape} but VIS is {pair.vis.shape[:2]}")
        mask_ir, mask_vis = (
            select_masks(generator.generate(to_uint8_rgb(image)), shape, *self._selection)
            for image in (pair.ir, pair.vis)
        )
        return mask_ir, mask_vis

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy of the source: never ship SAM's weights to them.
        state = self.__dict__.copy()
        state["_generator"] = None
        return state
