"""Checkpoints that ``trainer.resume_mode=auto`` can trust: marked complete when saved, checked before resuming.

verl 0.9.1 saves a step into ``global_step_N/`` and then overwrites ``latest_checkpointed_iteration.txt``
in place. A driver killed in between, or while the tracker is rewritten, leaves a tracker that is
empty or names a folder whose files are not all there (with ``max_actor_ckpt_to_keep`` set, the
previous step's actor files are removed before the tracker moves on).

* :class:`CompleteCheckpointMarker` is a verl checkpoint callback (``trainer.checkpoint_callback_class``,
  run on the driver after verl's save): it writes a manifest of every file of the step's folder with
  its size (:data:`MANIFEST`, atomically) and then rewrites the tracker atomically.
* :func:`resolve_resume_checkpoint`, run before verl reads the tracker, makes the tracker name the newest
  folder whose manifest matches its files. A tracker that already does is left alone; otherwise the
  choice is logged with the reason; with no complete checkpoint but a tracker it is an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from am3_verl.atomic import write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST = "am3_complete.json"
"""The marker of a complete checkpoint folder: ``{"global_step": N, "files": {relative path: size}}``."""
TRACKER = "latest_checkpointed_iteration.txt"
"""verl's record of the newest checkpoint, in ``trainer.default_local_dir``."""
STEP_FOLDER = re.compile(r"global_step_(\d+)")


class IncompleteCheckpoint(RuntimeError):
    """The checkpoint folder verl would resume from is not complete, and no complete one is there."""


def file_sizes(folder: Path) -> dict[str, int]:
    """Every regular file under ``folder`` (the manifest excluded), relative path -> size in bytes."""
    sizes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
    return sizes


def write_manifest(folder: str | os.PathLike, global_step: int) -> Path:
    """Mark ``folder`` complete: write :data:`MANIFEST` listing its files and sizes (atomically); returns its path."""
    folder = Path(folder)
    return write_text_atomic(folder / MANIFEST, json.dumps({"global_step": global_step, "files": file_sizes(folder)}, indent=1))


def incompleteness(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (no manifest, a listed file missing or of another size); None if complete."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (its save did not finish)"
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    present = file_sizes(folder)
    for name, size in listed.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} has {present[name]} bytes, {size} when saved"
    return None


def _tracked_step(root: Path) -> tuple[int | None, str | None]:
    tracker = root / TRACKER
    if not tracker.is_file():
        return None, None
    text = tracker.read_text().strip()
    return (int(text), None) if text.isdigit() else (None, f"{tracker} holds {text!r}, not a step number")


def is_saved(root: str | os.PathLike, step: int) -> bool:
    """Whether ``root``'s tracker names ``step`` and that step's folder is complete."""
    root = Path(root)
    return _tracked_step(root)[0] == step and incompleteness(root / f"global_step_{step}") is None


def resolve_resume_checkpoint(root: str | os.PathLike) -> Path | None:
    """Make ``root``'s tracker name its newest complete checkpoint, before verl resumes from it; returns that folder.

    Without a tracker returns None and verl starts afresh, as it would (a first save that never finished
    leaves no tracker). Raises :class:`IncompleteCheckpoint` when there is a tracker but no complete folder.
    """
    root = Path(root)
    if not (root / TRACKER).is_file():
        return None
    tracked, problem = _tracked_step(root)
    if tracked is not None:
        reason = incompleteness(root / f"global_step_{tracked}")
        if reason is None:
            return root / f"global_step_{tracked}"
        problem = f"the tracker names global_step_{tracked}, which is incomplete: {reason}"
    folders = sorted((int(m.group(1)), path) for path in root.iterdir() if (m := STEP_FOLDER.fullmatch(path.name)) and path.is_dir())
    skipped = []
    for step, folder in reversed(folders):
        reason = incompleteness(folder)
        if reason is None:
            write_text_atomic(root / TRACKER, str(step))
            logger.warning("resuming from %s, the newest complete checkpoint, because %s", folder, problem)
            return folder
        skipped.append(f"{folder.name}: {reason}")
    raise IncompleteCheckpoint(
        f"no complete checkpoint under {root} to resume from ({problem}; {'; '.join(skipped) or 'no global_step_* folder'}). "
        "Start afresh with trainer.resume_mode=disable or another trainer.default_local_dir."
    )


class CompleteCheckpointMarker(CheckpointCallback):
    """verl checkpoint callback: marks each saved step folder complete, then rewrites the tracker atomically."""

    def on_save(self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any) -> None:
        """Write the manifest of ``checkpoint_dir`` and point the tracker at it. With ``async_save`` the files may
        still be in flight, so the folder is left unmarked (and a resume will not pick it)."""
        if async_save:
            logger.warning("%s saved asynchronously: not marked complete, resume_mode=auto will not pick it", checkpoint_dir)
            return
        write_manifest(checkpoint_dir, global_step)
        write_text_atomic(Path(checkpoint_dir).parent / TRACKER, str(global_step))
