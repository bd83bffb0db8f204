"""Registered IR/VIS pairs stored as two folders of images, and the standard dataset layouts.

A pair is an IR file and a VIS file with the same stem (``ir/00012.png`` + ``vi/00012.jpg``). The folders
are scanned, paired and checked when the source is built, so that a wrong path or a missing twin fails
before any training starts. Layouts (classmethods, each with a config in ``configs/data/``):

=========  ==============================================================  ================================
MSRS       ``<root>/{train,test}/{ir,vi}``                                 official train / test
M3FD       ``<root>/Ir``, ``<root>/Vis``                                   no official split: see ``m3fd``
LLVIP      ``<root>/infrared/{train,test}``, ``<root>/visible/{train,test}``  official train / test
RoadScene  ``<root>/{ir,vi}``                                              test only
TNO        ``<root>/{ir,vi}``                                              test only
=========  ==============================================================  ================================
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sgdfuse.data.base import DataError, Pair, PairSource
from sgdfuse.data.io import IMAGE_EXTENSIONS, read_ir, read_vis

_SHOW = 5  # names listed in error messages


class FolderPairs(PairSource):
    """Pairs of ``root/ir_dir/<stem>.*`` and ``root/vis_dir/<stem>.*``, sorted by stem.

    ``names`` restricts the source to these stems (in sorted order), e.g. one split of a dataset without
    split folders. ``split`` is only a label for messages. Pair names are the file stems.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ir_dir: str = "ir",
        vis_dir: str = "vi",
        split: str | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.ir_dir = ir_dir
        self.vis_dir = vis_dir
        self.split = split
        where = f" ({split} split)" if split else ""
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root}{where} does not exist; set the data root to the folder that "
                f"holds {ir_dir}/ and {vis_dir}/ (e.g. data.root=/path/to/dataset)."
            )
        # Both folders must exist before their contents are judged: the first message names the real problem.
        _require_folder(self.root, ir_dir, "IR", vis_dir)
        _require_folder(self.root, vis_dir, "VIS", ir_dir)
        ir_files, vis_files = _scan(self.root / ir_dir, "IR"), _scan(self.root / vis_dir, "VIS")
        _check_twins(self.root, ir_dir, vis_dir, ir_files, vis_files)
        stems = sorted(ir_files)
        if names is not None:
            stems = _select(stems, names, self.root)
        self._ir = [ir_files[s] for s in stems]
        self._vis = [vis_files[s] for s in stems]
        self._names = stems
        self._keys: dict[int, str] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # H×W per pair, filled by validate() from headers

    # -- standard layouts -------------------------------------------------------------------------------
    @classmethod
    def msrs(cls, root: str | os.PathLike, split: str = "train") -> FolderPairs:
        """MSRS: ``<root>/{train,test}/{ir,vi}``."""
        _check_split(split, ("train", "test"), "MSRS")
        _require_root(root, "MSRS", "train/ and test/, each with ir/ and vi/")
        return cls(Path(root) / split, "ir", "vi", split=split)

    @classmethod
    def llvip(cls, root: str | os.PathLike, split: str = "train") -> FolderPairs:
        """LLVIP: ``<root>/infrared/{train,test}`` and ``<root>/visible/{train,test}``."""
        _check_split(split, ("train", "test"), "LLVIP")
        _require_root(root, "LLVIP", "infrared/ and visible/")
        return cls(root, f"infrared/{split}", f"visible/{split}", split=split)

    @classmethod
    def m3fd(
        cls,
        root: str | os.PathLike,
        split: str = "train",
        test_fraction: float = 0.2,
        test_list: str | os.PathLike | None = None,
    ) -> FolderPairs:
        """M3FD: ``<root>/Ir`` and ``<root>/Vis``, which have no official split.

        The test split is the stems listed in ``test_list`` (a text file, one stem or file name per line) when
        given, else the last ``test_fraction`` of the sorted stems (a contiguous block: consecutive frames
        are alike, so interleaving would leak scenes into the test split). Train is the rest.
        """
        _check_split(split, ("train", "test"), "M3FD")
        everything = cls(root, "Ir", "Vis", split=split)
        stems = everything.names()
        if test_list is not None:
            test = set(_select(stems, _read_list(test_list), Path(root)))
        else:
            if not 0.0 < test_fraction < 1.0:
                raise DataError(f"M3FD test_fraction must be in (0, 1), got {test_fraction}")
            n_test = max(1, round(test_fraction * len(stems)))
            test = set(stems[len(stems) - n_test :])
        chosen = [s for s in stems if (s in test) == (split == "test")]
        if not chosen:
            raise DataError(f"M3FD {split} split of {root} is empty; change test_fraction or the test list.")
        return cls(root, "Ir", "Vis", split=split, names=chosen)

    @classmethod
    def seeded_split(cls, root: str | os.PathLike, split: str = "train", val_fraction: float = 0.1,
                     seed: int = 0, ir_dir: str = "ir", vis_dir: str = "vi") -> FolderPairs:
        """A seeded random train / val split of one folder of pairs (e.g. ``ivif_train/RoadScene``).

        The validation pairs are ``round(val_fraction · n)`` (at least 1) stems drawn by
        ``numpy.random.default_rng(seed)``; the same seed always gives the same split, and train and val
        never share a pair. Settings are chosen on this val split, never on a test set.
        """
        _check_split(split, ("train", "val"), "seeded_split")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction} (data.val_fraction)")
        everything = cls(root, ir_dir, vis_dir, split=split)
        stems = everything.names()
        if len(stems) < 2:
            raise DataError(f"{root} holds {len(stems)} pair(s): a train/val split needs at least 2.")
        n_val = min(max(1, round(val_fraction * len(stems))), len(stems) - 1)
        val = set(np.random.default_rng(seed).choice(stems, size=n_val, replace=False).tolist())
        chosen = [s for s in stems if (s in val) == (split == "val")]
        return cls(root, ir_dir, vis_dir, split=split, names=chosen)

    @classmethod
    def roadscene(cls, root: str | os.PathLike) -> FolderPairs:
        """RoadScene: ``<root>/{ir,vi}`` (a test set)."""
        return cls(root, "ir", "vi", split="test")

    @classmethod
    def tno(cls, root: str | os.PathLike) -> FolderPairs:
        """TNO: ``<root>/{ir,vi}`` (a test set)."""
        return cls(root, "ir", "vi", split="test")

    # -- PairSource ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def files(self, index: int) -> tuple[Path, Path]:
        """(IR file, VIS file) of pair ``index``."""
        return self._ir[index], self._vis[index]

    def validate(self) -> None:
        """Check that every file is an image and every pair's IR and VIS have one size, from headers only.

        Pillow's ``Image.open`` reads the header, not the pixels, so this costs well under a millisecond
        per pair; without it a mismatch would only surface when the pair is decoded, mid-training. Files
        Pillow cannot identify are decoded by OpenCV (what training uses) before being rejected.
        """
        unreadable: list[str] = []
        mismatched: list[str] = []
        self.sizes = {}
        for index, name in enumerate(self._names):
            ir_path, vis_path = self.files(index)
            ir_size, vis_size = _image_size(ir_path, unreadable), _image_size(vis_path, unreadable)
            if ir_size is not None:
                self.sizes[name] = (ir_size[1], ir_size[0])  # H×W
            if ir_size is not None and vis_size is not None and ir_size != vis_size:
                mismatched.append(
                    f"{name!r}: IR {ir_path.name} is {_wxh(ir_size)}, VIS {vis_path.name} is {_wxh(vis_size)}"
                )
        problems = []
        if unreadable:
            problems.append(
                f"{len(unreadable)} file(s) are not readable images: {_listing(unreadable)}; "
                "replace or remove these files"
            )
        if mismatched:
            problems.append(
                f"{len(mismatched)} pair(s) whose IR and VIS sizes differ (W×H): {_listing(mismatched)}; "
                "registered pairs must have the same size: register/crop each pair to a common size or "
                "remove it"
            )
        if problems:
            where = f" ({self.split} split)" if self.split else ""
            raise DataError(f"bad pairs under {self.root}{where}: " + ". ".join(problems) + ".")

    def key(self, index: int) -> str:
        """SHA-1 of both files' bytes (computed on first use, then cached)."""
        index = self._check_index(index)
        if index not in self._keys:
            digest = hashlib.sha1()
            for path in self.files(index):
                data = path.read_bytes()
                digest.update(len(data).to_bytes(8, "little"))  # unambiguous boundary between the files
                digest.update(data)
            self._keys[index] = digest.hexdigest()
        return self._keys[index]

    def __getitem__(self, index: int) -> Pair:
        index = self._check_index(index)
        ir_path, vis_path = self.files(index)
        ir, vis = read_ir(ir_path), read_vis(vis_path)
        if ir.shape != vis.shape[:2]:
            raise DataError(
                f"pair {self._names[index]!r}: IR {ir_path} is {ir.shape[1]}×{ir.shape[0]} but VIS "
                f"{vis_path} is {vis.shape[1]}×{vis.shape[0]} (W×H); registered pairs must have the "
                "same size: resize or remove this pair."
            )
        for array in (ir, vis):
            array.setflags(write=False)  # shared through the cache: copy before modifying
        pair = Pair(name=self._names[index], ir=ir, vis=vis, key=self.key(index))
        return pair

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs in {self.root}")
        return index % len(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.ir_dir!r}, {self.vis_dir!r}, n={len(self)})"


def _image_size(path: Path, unreadable: list[str]) -> tuple[int, int] | None:
    """(width, height) of ``path`` from its header; None (file noted in ``unreadable``) if not an image."""
    try:
        with Image.open(path) as image:  # lazy: parses the header only
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        reason = str(err) or type(err).__name__
    # Pillow identifies fewer formats than OpenCV (e.g. 3-channel float TIFF): the decoder training uses
    # has the last word, at full-decode cost for these files only.
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if decoded is not None:
        return decoded.shape[1], decoded.shape[0]
    unreadable.append(f"{path} ({reason})")
    return None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _listing(items: list[str]) -> str:
    return "; ".join(items[:_SHOW]) + (f"; ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _require_folder(root: Path, sub: str, modality: str, other: str) -> None:
    folder = root / sub
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"{modality} folder {folder} does not exist (sub-folders of {root}: {present or 'none'}); "
            f"a pair folder needs {sub}/ and {other}/ side by side, or set ir_dir / vis_dir."
        )


def _scan(folder: Path, modality: str) -> dict[str, Path]:
    """Image files of ``folder`` by stem (hidden and non-image files skipped); errors say what to fix."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in files:
            raise DataError(
                f"{folder} holds two images named {path.stem!r} ({files[path.stem].name}, {path.name}); "
                "keep one per name."
            )
        files[path.stem] = path
    if not files:
        raise DataError(
            f"{modality} folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "put the dataset's images there or point the data root elsewhere."
        )
    return files


def _check_twins(root: Path, ir_dir: str, vis_dir: str, ir: dict[str, Path], vis: dict[str, Path]) -> None:
    problems = []
    for here, there, files, others in ((ir_dir, vis_dir, ir, vis), (vis_dir, ir_dir, vis, ir)):
        lonely = sorted(set(files) - set(others))
        if lonely:
            shown = ", ".join(files[s].name for s in lonely[:_SHOW]) + (" ..." if len(lonely) > _SHOW else "")
            problems.append(f"{len(lonely)} file(s) in {here}/ without a twin in {there}/: {shown}")
    if problems:
        raise DataError(
            f"unpaired images under {root} ({ir_dir}/ has {len(ir)}, {vis_dir}/ has {len(vis)}): "
            + "; ".join(problems)
            + f". Every image in {ir_dir}/ (the IR role, ir_dir) needs one with the same name in {vis_dir}/ "
            "(the VIS role, vis_dir; the extension may differ): add the missing twins or remove these files, "
            "or check that both folders come from the same dataset."
        )


def _select(stems: list[str], wanted: Sequence[str], root: Path) -> list[str]:
    """``stems`` restricted to ``wanted`` (stems or file names), in sorted order; unknown names are errors."""
    known = set(stems)
    wanted_stems = {w if w in known else Path(w).stem for w in map(str, wanted)}
    unknown = sorted(wanted_stems - known)
    if unknown:
        raise DataError(
            f"{len(unknown)} requested pair name(s) not found under {root}: {unknown[:_SHOW]}; "
            "fix the name list."
        )
    return [s for s in stems if s in wanted_stems]


def _read_list(path: str | os.PathLike) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"split list {path} does not exist; give a text file with one pair name per line.")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _require_root(root: str | os.PathLike, dataset: str, holds: str) -> None:
    if not Path(root).expanduser().is_dir():
        raise DataError(f"{dataset} root {root} does not exist; set data.root to the folder holding {holds}.")


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise DataError(f"{dataset} has splits {list(allowed)}, got split={split!r}")
