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
PREVIOUS = ".previous"  # a checkpoint being rewritten, kept until its replacement is in place
ASSETS = Path(__file__).parent / "assets"
# the shipped base model, and make run's RL-tuned model (each directory has its MODEL_CARD.md)
NAMED_CHECKPOINTS = {"base": ASSETS / "base", "shapes_grpo": ASSETS / "shapes_grpo"}


class CheckpointError(RuntimeError):
    pass


def resolve_checkpoint(name: str | Path) -> Path:
    """`base` / `shapes_grpo` -> a shipped model; anything else must be a checkpoint directory."""
    path = NAMED_CHECKPOINTS.get(str(name), Path(name))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"checkpoint {str(name)!r} not found (looked for {str(path / 'config.json')!r}); "
            f"pass a maskrl checkpoint directory or one of {sorted(NAMED_CHECKPOINTS)}"
        )
    return path


def require_file(directory: str | Path, what: str, file: str) -> Path:
    """`directory` (named `what` in the error), which must hold `file`."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory {str(path)!r} does not exist (expected one holding {file})")
    if not (path / file).is_file():
        raise FileNotFoundError(f"{what} directory {str(path)!r} has no {file}")
    return path


def checkpoint_name(path: str | Path) -> str:
    """How a checkpoint directory is referred to from another one: a shipped checkpoint by its
    name (valid on any install), anything else by its absolute path."""
    path = Path(path).resolve()
    named = [name for name, where in NAMED_CHECKPOINTS.items() if where.resolve() == path]
    return named[0] if named else str(path)


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
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Two renames; the old copy (a rewrite) is deleted only once the new one is in place, so an
    # interruption leaves the old or the new checkpoint under the final name, or (between the
    # renames) both under staging names, where the next writer's clean-up must not find them:
    # the old one is kept as `<name>.previous` until then.
    old = final.parent / f"{final.name}{PREVIOUS}"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
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


def newest_first(parent: str | Path, prefix: str = "iter_") -> Iterator[Path]:
    """Checkpoint directories `<prefix><number>` under `parent`, highest number first; a rewrite
    interrupted between its renames is found under its `.previous` name."""
    found = {}
    for p in Path(parent).glob(f"{prefix}*"):
        name = p.name.removesuffix(PREVIOUS)
        number = checkpoint_number(p, prefix)
        if p.is_dir() and number is not None and (name == p.name or not (p.parent / name).exists()):
            found[number] = p
    for number in sorted(found, reverse=True):
        yield found[number]


def checkpoint_number(path: Path, prefix: str = "iter_") -> int | None:
    """The number of a `<prefix><number>[.previous]` directory, None for any other name."""
    number = Path(path).name.removesuffix(PREVIOUS).removeprefix(prefix)
    return int(number) if number.isdigit() and Path(path).name.startswith(prefix) else None
