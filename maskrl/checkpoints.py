"""Atomic checkpoint directories: a checkpoint either loads whole or is refused, never half.

A checkpoint is written into a staging directory next to its final place, its files listed with
their sizes and SHA-256 in `manifest.json`, and only then renamed into place (one atomic rename
on a POSIX file system). A crash mid-write leaves a staging directory, which nothing loads and
the next writer removes; a final directory whose files no longer match their manifest (a
truncated copy, a disk that filled up) is refused with an error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

MANIFEST = "manifest.json"
STAGING = ".partial-"  # staging directories: <final name>.partial-<random>


class CheckpointError(RuntimeError):
    pass


def file_digest(path: Path) -> dict:
    """{"bytes", "sha256"} of one file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def digest_tree(directory: Path, names: list[str] | None = None) -> dict[str, dict]:
    """Digests of `names` (paths relative to `directory`), or of every file below it."""
    directory = Path(directory)
    paths = [directory / n for n in names] if names is not None else sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): file_digest(p) for p in paths if p.name != MANIFEST}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(final: str | Path, write: Callable[[Path], dict[str, dict] | None]) -> Path:
    """Call `write(staging)` (which fills the directory and may return digests it already
    computed, e.g. on the machines that wrote the files), add the manifest, rename into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_staging(final.parent)
    staging = final.parent / f"{final.name}{STAGING}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        known = write(staging) or {}
        files = {**digest_tree(staging, [n for n in _relative_files(staging) if n not in known]), **known}
        missing = [n for n in files if not (staging / n).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {str(final)!r}: writers reported files that are not there: {missing[:3]}")
        manifest = staging / MANIFEST
        manifest.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1))
        for p in [*(staging / n for n in files), manifest]:
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        if final.exists():  # rewriting a checkpoint: the old one is moved aside, then dropped
            old = final.parent / f"{final.name}{STAGING}old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(staging, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _relative_files(directory: Path) -> list[str]:
    return [str(p.relative_to(directory)) for p in sorted(directory.rglob("*")) if p.is_file()]


def remove_staging(parent: Path) -> None:
    """Staging directories left by a writer that crashed."""
    for p in Path(parent).glob(f"*{STAGING}*"):
        shutil.rmtree(p, ignore_errors=True)


def verify(directory: str | Path, deep: bool = True) -> None:
    """Raise CheckpointError naming the first file that does not match the manifest.
    `deep=False` checks presence and sizes only (no hashing)."""
    directory = Path(directory)
    if STAGING in directory.name:
        raise CheckpointError(f"checkpoint {str(directory)!r} is a staging directory of an unfinished write")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {MANIFEST}: its write did not finish")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {MANIFEST} is unreadable ({err})") from None
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r}: {name} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(
                f"checkpoint {str(directory)!r}: {name} is {size} bytes, its manifest says {want['bytes']} (truncated or overwritten)"
            )
        if deep and file_digest(path)["sha256"] != want["sha256"]:
            raise CheckpointError(f"checkpoint {str(directory)!r}: {name} does not match its SHA-256 in {MANIFEST} (corrupted)")


def newest_first(parent: str | Path, pattern: str = "iter_*") -> Iterator[Path]:
    """Finished checkpoint directories under `parent`, newest (highest name) first."""
    for p in sorted(Path(parent).glob(pattern), reverse=True):
        if p.is_dir() and STAGING not in p.name:
            yield p
