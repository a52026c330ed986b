"""Command-line plumbing shared by the data commands: common flags, progress bars, errors to exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
from typing import Any, Callable

from tqdm import tqdm

from am3_verl.data.errors import DataPrepError
from am3_verl.data.images import ImagePolicy
from am3_verl.data.pipeline import default_workers


def add_image_args(parser: argparse.ArgumentParser) -> None:
    """``--max_pixels``, ``--min_side``, ``--max_aspect_ratio``, ``--image_root``."""
    group = parser.add_argument_group("images")
    group.add_argument(
        "--max_pixels", type=int, default=None, help="shrink images with more pixels than this (aspect kept); default: keep sizes"
    )
    group.add_argument(
        "--min_side", type=int, default=ImagePolicy.min_side, help=f"reject images with a side below this (default {ImagePolicy.min_side})"
    )
    group.add_argument(
        "--max_aspect_ratio",
        type=float,
        default=ImagePolicy.max_aspect_ratio,
        help=f"reject images with long/short side above this (default {ImagePolicy.max_aspect_ratio:g})",
    )
    group.add_argument(
        "--image_root",
        default=None,
        help="folder that relative image paths start from and that every image path must stay inside "
        "(default: relative to the input file's folder, any regular file)",
    )


def policy_from_args(args: argparse.Namespace) -> ImagePolicy:
    """The :class:`ImagePolicy` the image flags describe."""
    try:
        return ImagePolicy(
            max_pixels=args.max_pixels,
            min_side=args.min_side,
            max_aspect_ratio=args.max_aspect_ratio,
            image_root=Path(args.image_root) if args.image_root else None,
        )
    except ValueError as exc:
        raise DataPrepError(str(exc)) from exc


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--chunk_size``, ``--no_progress``."""
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (default: the CPUs available; 1 runs in-process)"
    )
    group.add_argument(
        "--chunk_size", type=int, default=32, help="records per work unit; part of the output layout, keep it fixed for identical files"
    )
    group.add_argument("--no_progress", action="store_true", help="no progress bar")


def progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or None when disabled."""
    return tqdm(total=total, desc=desc, unit="rec", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_command(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a :class:`DataPrepError` prints ``error: ...`` and returns exit status 1."""
    try:
        main(argv)
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
