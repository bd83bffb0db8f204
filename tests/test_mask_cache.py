"""MaskCache: verified entries, atomic writes, manifest, checkpoint hashing, concurrent writers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import zipfile

import numpy as np
import pytest

import sgdfuse.masks.cache as cache_module
from sgdfuse.masks.cache import MaskCache, atomic_write, hash_config

SOURCE = "0123456789abcdef"


def _masks(seed: int, shape: tuple[int, int] = (24, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) > 0.5).astype(np.uint8), (rng.random(shape) > 0.7).astype(np.uint8)


def test_roundtrip_and_layout(tmp_path):
    cache = MaskCache(tmp_path)
    mask_ir, mask_vis = _masks(0)
    path = cache.put(SOURCE, "pair-a", mask_ir, mask_vis)
    assert path.parent == tmp_path / SOURCE and path.suffix == ".npz"
    got = cache.get(SOURCE, "pair-a", (24, 32))
    assert got is not None
    np.testing.assert_array_equal(got[0], mask_ir)
    np.testing.assert_array_equal(got[1], mask_vis)
    assert got[0].dtype == np.uint8
    # Absent: other key, other source, other image size (the size is part of the entry key).
    assert cache.get(SOURCE, "pair-b", (24, 32)) is None
    assert cache.get("fedcba9876543210", "pair-a", (24, 32)) is None
    assert cache.get(SOURCE, "pair-a", (32, 24)) is None
    assert cache.entry_path(SOURCE, "pair-a", (24, 32)) != cache.entry_path(SOURCE, "pair-a", (32, 24))
    assert not list(tmp_path.rglob("*.tmp"))


def test_put_rejects_bad_masks(tmp_path):
    cache = MaskCache(tmp_path)
    mask_ir, mask_vis = _masks(0)
    with pytest.raises(ValueError, match="binary"):
        cache.put(SOURCE, "k", mask_ir * 3, mask_vis)
    with pytest.raises(ValueError, match="one size"):
        cache.put(SOURCE, "k", mask_ir, mask_vis[:10])
    assert not (tmp_path / SOURCE).exists() or not list((tmp_path / SOURCE).iterdir())


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path):
    path.write_bytes(b"not a zip file at all" * 10)


def _corrupt_flip_byte(path):
    # Flip a byte inside the compressed mask_ir member: the zip CRC (or inflate) must catch it.
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("mask_ir.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_checksum(path):
    # A well-formed npz whose mask no longer matches the stored sha256 (e.g. edited by hand).
    with np.load(path) as data:
        payload = {name: data[name] for name in data.files}
    payload["mask_ir"] = 1 - payload["mask_ir"]
    with open(path, "wb") as f:
        np.savez_compressed(f, **payload)


def _corrupt_empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncate, _corrupt_garbage, _corrupt_flip_byte, _corrupt_checksum, _corrupt_empty]
)
def test_corrupt_entry_is_a_miss_and_can_be_rewritten(tmp_path, corrupt):
    cache = MaskCache(tmp_path)
    masks = _masks(1)
    path = cache.put(SOURCE, "pair", *masks)
    corrupt(path)
    assert cache.get(SOURCE, "pair", (24, 32)) is None
    cache.put(SOURCE, "pair", *masks)
    got = cache.get(SOURCE, "pair", (24, 32))
    assert got is not None
    np.testing.assert_array_equal(got[1], masks[1])


def test_entry_for_another_key_is_rejected(tmp_path):
    """A file moved/copied to another entry's name is not trusted (the stored key is checked)."""
    cache = MaskCache(tmp_path)
    src = cache.put(SOURCE, "pair-a", *_masks(2))
    dst = cache.entry_path(SOURCE, "pair-b", (24, 32))
    dst.write_bytes(src.read_bytes())
    assert cache.get(SOURCE, "pair-b", (24, 32)) is None


def test_atomic_write_leaves_old_file_or_nothing(tmp_path):
    target = tmp_path / "sub" / "entry.bin"

    def fail_halfway(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert not target.exists()
    atomic_write(target, lambda f: f.write(b"complete"))
    with pytest.raises(RuntimeError):
        atomic_write(target, fail_halfway)
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry.bin"]  # no temp files left


def test_manifest_first_writer_wins_and_corrupt_manifest_is_rewritten(tmp_path):
    cache = MaskCache(tmp_path)
    assert cache.read_manifest(SOURCE) is None
    path = cache.write_manifest(SOURCE, {"created": "first", "source": {"a": 1}})
    cache.write_manifest(SOURCE, {"created": "second", "source": {"a": 1}})
    manifest = json.loads(path.read_text())
    assert manifest == {"created": "first", "source": {"a": 1}, "source_hash": SOURCE}
    path.write_text("{truncated")
    cache.write_manifest(SOURCE, {"created": "third"})
    assert cache.read_manifest(SOURCE)["created"] == "third"


def test_hash_config_is_order_independent_and_value_sensitive():
    assert hash_config({"a": 1, "b": [1, 2]}) == hash_config({"b": [1, 2], "a": 1})
    assert hash_config({"a": 1}) != hash_config({"a": 2})
    assert len(hash_config({"a": 1})) == 16


def test_file_sha256_is_content_hash_memoised_in_memory_and_on_disk(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"x" * 1000)
    calls = []
    real = cache_module._sha256_of_file
    monkeypatch.setattr(cache_module, "_sha256_of_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(cache_module, "_SHA256_MEMO", {})
    cache = MaskCache(tmp_path / "cache")

    digest = cache.file_sha256(weights)
    assert digest == hashlib.sha256(b"x" * 1000).hexdigest()
    assert cache.file_sha256(weights) == digest and len(calls) == 1
    # A new process has an empty in-memory memo: the on-disk memo answers.
    monkeypatch.setattr(cache_module, "_SHA256_MEMO", {})
    assert MaskCache(tmp_path / "cache").file_sha256(weights) == digest and len(calls) == 1
    # Same size, new content and mtime: rehashed.
    weights.write_bytes(b"y" * 1000)
    os.utime(weights, ns=(1, 10**18))
    assert cache.file_sha256(weights) == hashlib.sha256(b"y" * 1000).hexdigest()
    assert len(calls) == 2


def _hammer(root: str, writer: int, rounds: int, keys: int) -> None:
    cache = MaskCache(root)
    for r in range(rounds):
        for k in range(keys):
            cache.put(SOURCE, f"pair-{k}", *_masks(1000 * writer + 10 * r + k))


def test_two_processes_writing_the_same_entries_leave_only_valid_ones(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 5, 12)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = MaskCache(tmp_path)
    entries = sorted((tmp_path / SOURCE).iterdir())
    assert len(entries) == 12 and all(e.suffix == ".npz" for e in entries)  # no temp files
    for k in range(12):
        got = cache.get(SOURCE, f"pair-{k}", (24, 32))
        assert got is not None
        # The entry is one writer's complete last round, never a mix of the two.
        assert any(np.array_equal(got[0], _masks(1000 * w + 40 + k)[0]) for w in (1, 2))
