"""On-disk cache of per-pair masks, so that a sweep pays for SAM once (docs/design.md, Mask cache).

Layout::

    <root>/<source_hash>/manifest.json          what produced the masks (config, checkpoint sha256, versions)
    <root>/<source_hash>/<entry_hash>.npz       mask_ir, mask_vis of one pair (H×W uint8 {0, 1})
    <root>/checkpoint_sha256.json               memo: checkpoint path + mtime + size -> sha256

``source_hash`` identifies everything that changes the masks (mask-source config and the checkpoint's
*content*); ``entry_hash`` identifies the pair (its content key and image size). Nothing is ever
overwritten in place: every file is written to a unique temporary name in the same directory, flushed,
then moved over the target with ``os.replace`` (atomic on POSIX and Windows), so concurrent writers –
two nodes, two sweep jobs – can only ever leave complete entries behind. Entries are verified on read
(zip CRC, a sha256 of the masks, key, shape, dtype and values); anything that fails is a miss and gets
recomputed by the caller.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from sgdfuse.atomic import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKPOINT_MEMO = "checkpoint_sha256.json"


class MaskCacheError(OSError):
    """The cache folder cannot be written (read-only, full, no permission); the message says what to do."""


# In-process memo of file hashes, keyed by (real path, mtime_ns, size): a changed file gets rehashed.
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def hash_config(config: Any, length: int = 16) -> str:
    """Stable short sha256 of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _masks_digest(key: str, mask_ir: np.ndarray, mask_vis: np.ndarray) -> str:
    h = hashlib.sha256(key.encode())
    for mask in (mask_ir, mask_vis):
        h.update(str(mask.shape).encode())
        h.update(np.ascontiguousarray(mask).tobytes())
    return h.hexdigest()


class MaskCache:
    """Directory of verified, atomically written mask pairs, one sub-directory per mask-source hash."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    # -- layout -------------------------------------------------------------------------------------------

    def source_dir(self, source_hash: str) -> Path:
        return self.root / source_hash

    @staticmethod
    def entry_key(pair_key: str, shape: tuple[int, int]) -> str:
        """The pair's content key plus its image size (a resized dataset is a different entry)."""
        return f"{pair_key}|{shape[0]}x{shape[1]}"

    def entry_path(self, source_hash: str, pair_key: str, shape: tuple[int, int]) -> Path:
        name = hashlib.sha256(self.entry_key(pair_key, shape).encode()).hexdigest()[:32]
        return self.source_dir(source_hash) / f"{name}.npz"

    # -- entries ------------------------------------------------------------------------------------------

    def get(
        self, source_hash: str, pair_key: str, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (mask_ir, mask_vis), or None when absent or invalid (then the caller recomputes)."""
        path = self.entry_path(source_hash, pair_key, shape)
        if not path.is_file():
            return None
        try:
            return self._read_entry(path, self.entry_key(pair_key, shape), tuple(shape))
        except Exception as err:  # damaged bytes surface as zlib.error, BadZipFile, struct.error, ...
            # Not deleted: another process may be replacing it with a good entry right now.
            log.warning("mask cache entry %s is invalid (%s); recomputing it", path, err)
            return None

    @staticmethod
    def _read_entry(path: Path, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            mask_ir, mask_vis = data["mask_ir"], data["mask_vis"]  # reading a member checks its zip CRC
            stored_key, digest = str(data["key"]), str(data["sha256"])
        if stored_key != key:
            raise ValueError(f"entry is for {stored_key!r}, expected {key!r}")
        for name, mask in (("mask_ir", mask_ir), ("mask_vis", mask_vis)):
            if mask.shape != shape or mask.dtype != np.uint8:
                raise ValueError(f"{name} is {mask.dtype} {mask.shape}, expected uint8 {shape}")
            if mask.max(initial=0) > 1:
                raise ValueError(f"{name} is not binary")
        if _masks_digest(key, mask_ir, mask_vis) != digest:
            raise ValueError("sha256 of the masks does not match")
        return mask_ir, mask_vis

    def put(self, source_hash: str, pair_key: str, mask_ir: np.ndarray, mask_vis: np.ndarray) -> Path:
        """Store one pair's masks (H×W, {0, 1}) atomically; returns the entry path."""
        mask_ir = np.ascontiguousarray(mask_ir, dtype=np.uint8)
        mask_vis = np.ascontiguousarray(mask_vis, dtype=np.uint8)
        if mask_ir.ndim != 2 or mask_ir.shape != mask_vis.shape:
            raise ValueError(f"masks must be two H×W arrays of one size: {mask_ir.shape}, {mask_vis.shape}")
        if max(mask_ir.max(initial=0), mask_vis.max(initial=0)) > 1:
            raise ValueError("masks must be binary (values in {0, 1})")
        shape = (int(mask_ir.shape[0]), int(mask_ir.shape[1]))
        key = self.entry_key(pair_key, shape)
        path = self.entry_path(source_hash, pair_key, shape)
        payload = {
            "mask_ir": mask_ir,
            "mask_vis": mask_vis,
            "key": np.array(key),
            "sha256": np.array(_masks_digest(key, mask_ir, mask_vis)),
        }
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **payload)  # binary masks compress to a few hundred bytes
        self._write(path, lambda f: f.write(buffer.getvalue()))
        return path

    def _write(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        """A cold cache must be filled: a folder that cannot be written is an error saying where to go."""
        try:
            atomic_write(path, write)
        except OSError as err:
            raise MaskCacheError(
                f"cannot write the mask cache {self.root} ({err.strerror or err}: {path.parent}). Masks not "
                "cached yet are computed and stored there; point the cache at a writable folder with "
                "paths.cache_dir=/writable/dir (every cache) or masks.source.cache_dir=/writable/dir (masks "
                "only), or fill it once where it is writable (precompute_masks.py) and read it from here."
            ) from err

    # -- manifest -----------------------------------------------------------------------------------------

    def read_manifest(self, source_hash: str) -> dict[str, Any] | None:
        path = self.source_dir(source_hash) / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, source_hash: str, manifest: dict[str, Any]) -> Path:
        """Record what produced ``source_hash`` (a valid existing manifest is kept: first writer wins)."""
        path = self.source_dir(source_hash) / MANIFEST
        existing = self.read_manifest(source_hash)
        if existing is None or existing.get("source_hash") != source_hash:
            text = json.dumps({**manifest, "source_hash": source_hash}, indent=2, sort_keys=True, default=str)
            self._write(path, lambda f: f.write((text + "\n").encode()))
        return path

    # -- checkpoint identity ------------------------------------------------------------------------------

    def file_sha256(self, path: str | os.PathLike[str]) -> str:
        """sha256 of a file's content, memoised by real path + mtime + size (in memory and on disk).

        Checkpoints are hundreds of MB to GB; every training run and every DataLoader worker needs the
        hash, so it is computed once per file version rather than once per process.
        """
        real = os.path.realpath(path)
        st = os.stat(real)
        memo_key = (real, st.st_mtime_ns, st.st_size)
        if memo_key in _SHA256_MEMO:
            return _SHA256_MEMO[memo_key]
        disk_key = f"{real}|{st.st_mtime_ns}|{st.st_size}"
        memo_path = self.root / CHECKPOINT_MEMO
        try:
            disk_memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            disk_memo = {}
        digest = disk_memo.get(disk_key)
        if not isinstance(digest, str):
            digest = _sha256_of_file(real)
            # A lost update under concurrency only costs a rehash later; the file itself is always valid.
            try:
                atomic_write_json(memo_path, {**disk_memo, disk_key: digest})
            except OSError as err:  # a read-only (warm) cache stays usable: the memo is only a speed-up
                log.debug("checkpoint hash memo %s not written: %s", memo_path, err)
        _SHA256_MEMO[memo_key] = digest
        return digest


def _sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
