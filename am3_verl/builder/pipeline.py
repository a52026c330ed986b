"""The InterSafe-V builder run: seeds in, stages over a bounded pool of seeds, output files and summary out.

``python data_prep/build_intersafe_v.py --seeds PATH --output_dir DIR --config FILE [--stages ...]``

A run reads and validates the seeds (bad ones -> ``rejects.jsonl``), loads each seed's checkpoint
from ``DIR/.build`` (or starts one), and advances every seed that still has a requested stage ahead of
it, ``run.concurrency`` seeds at a time. Stages run in order (decompose -> interact -> clean); with
``--stages`` a run does only some of them, and a later run picks up where it stopped. At the end the
output files are rewritten from all checkpoints of the seeds read (:mod:`am3_verl.builder.export`),
the cost ledger (``ledger.json``) is summed, and a one-paragraph summary is printed.

Exit status: 0 done; 3 some seeds failed after their retries (rerun the same command to continue them);
1 a problem that stops the run (bad config, unreadable seeds, changed config without
``--allow_config_change``); 130 interrupted (Ctrl-C or SIGTERM; the finished calls are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from am3_verl.builder.clean import run_clean
from am3_verl.builder.calls import RoleCaller, role_callers
from am3_verl.builder.config import BuilderConfig, BuilderError, RoleConfig, content_fingerprint, load_config
from am3_verl.builder.context import StageContext, StageFailed
from am3_verl.builder.decompose import run_decompose
from am3_verl.builder.export import DROPPED_FILE, FAILED_FILE, OUTPUT_FILE, ExportCounts, export
from am3_verl.builder.images_client import ImagesClient, open_images_client
from am3_verl.builder.interact import run_interact
from am3_verl.builder.ledger import Ledger
from am3_verl.builder.prompts import Prompts
from am3_verl.builder.seeds import read_seeds
from am3_verl.builder.state import STAGES, CallRecord, Failure, ItemState
from am3_verl.builder.store import CheckpointStore
from am3_verl.data.validate import REJECTS_FILE, Reject, RejectWriter

STORE_DIR = ".build"
LEDGER_FILE = "ledger.json"
NEXT_STAGE = {"new": "decompose", "decomposed": "interact", "interacted": "clean", "cleaned": None, "dropped": None}
RUNNERS = {"decompose": run_decompose, "interact": run_interact, "clean": run_clean}
EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass
class BuildSummary:
    """The outcome of :func:`build`."""

    output_dir: Path
    stages: tuple[str, ...]
    read: int
    valid: int
    rejected: int
    worked: int
    """Seeds that had a requested stage ahead of them in this run."""
    by_status: dict[str, int]
    failed: int
    exported: ExportCounts
    ledger_all: Ledger
    ledger_run: Ledger
    seconds: float
    failed_ids: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0, or 3 when some seeds failed."""
        return EXIT_FAILED if self.failed else EXIT_OK

    def paragraph(self) -> str:
        """The one-paragraph summary printed at the end of a run."""
        s, e, out = self.by_status, self.exported, self.output_dir
        waiting = s.get("new", 0) + s.get("decomposed", 0) + s.get("interacted", 0)
        text = (
            f"Read {self.read} seeds = {self.valid} valid + {self.rejected} rejected ({out / REJECTS_FILE}). "
            f"This run advanced {self.worked} seed(s) through {', '.join(self.stages)} with {self.ledger_run.calls} call(s) "
            f"({self.ledger_run.tokens} tokens). Seeds now: {s.get('cleaned', 0)} cleaned, {s.get('dropped', 0)} dropped "
            f"at decompose, {waiting} waiting for a later stage"
        )
        if self.failed:
            text += f", {self.failed} failed after retries ({out / FAILED_FILE}; rerun the same command to continue them)"
        text += (
            f". Wrote {e.dialogues} dialogue(s) with {e.images} image(s) to {out / OUTPUT_FILE}"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(e.by_category.items()))})" if e.by_category else "")
            + f"; {e.dropped_dialogues} dialogue(s) dropped by the judge and {e.dropped_seeds} seed(s) at decompose are "
            f"listed with their reasons in {out / DROPPED_FILE}. Cost over all runs: {self.ledger_all.line()} "
            f"({out / LEDGER_FILE}). {self.seconds:.1f} s."
        )
        return text


def _check_fingerprint(store: CheckpointStore, config: BuilderConfig, allow_change: bool) -> None:
    fingerprint = content_fingerprint(config)
    manifest = store.read_manifest()
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        old = manifest.get("fingerprint") or {}
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if not allow_change:
            raise BuilderError(
                f"the config differs from the one that produced the checkpoints in {store.root} (changed: "
                f"{', '.join(changed)}); pass --allow_config_change to continue with the new settings, or use a "
                "new --output_dir"
            )
    store.write_manifest({"version": 1, "fingerprint": fingerprint})


def _roles(config: BuilderConfig) -> dict[str, RoleConfig]:
    roles = config.require_pipeline()
    named: dict[str, RoleConfig] = {n: getattr(roles, n) for n in ("decomposer", "scorer", "attacker", "judge")}
    named.update({f"victim:{v.name}": v for v in config.victims})
    return named


def _reconcile(item: ItemState, config: BuilderConfig) -> bool:
    """Reopen a finished stage when the victim list grew (``--allow_config_change``); True if changed."""
    names = [v.name for v in config.victims]
    if item.status in ("interacted", "cleaned") and any(n not in item.dialogues or not item.dialogues[n].interacted for n in names):
        item.status = "decomposed"
        return True
    if item.status == "cleaned" and any(item.dialogues[n].kept is None for n in names):
        item.status = "interacted"
        return True
    return False


def _item_ids(
    seeds, store: CheckpointStore, rejects: RejectWriter, config: BuilderConfig, stages: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Create or check each seed's checkpoint; returns (every valid seed id, the ids with work in ``stages``)."""
    ids, work = [], []
    for loaded in seeds:
        state = store.load(loaded.seed.id)
        if state is None:
            state = ItemState(
                seed_id=loaded.seed.id,
                position=loaded.position,
                seed_sha=loaded.sha,
                query=loaded.seed.query,
                category=loaded.seed.category,
                source=loaded.seed.source,
                seed_image_blob=loaded.image_blob,
            )
            store.save(state.seed_id, state)
        elif state.seed_sha != loaded.sha:
            rejects.write(
                Reject(
                    loaded.position,
                    loaded.seed.id,
                    "id",
                    "this id was checkpointed with a different query, category, source or image; "
                    "give the changed seed a new id or use a new --output_dir",
                )
            )
            continue
        elif _reconcile(state, config):
            store.save(state.seed_id, state)
        ids.append(state.seed_id)
        if _needs_work(state, stages):
            work.append(state.seed_id)
    return ids, work


def _needs_work(item: ItemState, stages: Sequence[str]) -> bool:
    return NEXT_STAGE[item.status] in stages


async def _advance(ctx: StageContext, item: ItemState, stages: Sequence[str]) -> None:
    if item.failure is not None:
        item.failure = None
        await ctx.save(item)
    try:
        while (stage := NEXT_STAGE[item.status]) in stages:
            await RUNNERS[stage](ctx, item)
    except StageFailed as exc:
        item.failure = Failure(stage=exc.stage, role=exc.role, error=exc.error)
        await ctx.save(item)


async def _run_items(
    ctx: StageContext,
    work: list[str],
    stages: Sequence[str],
    concurrency: int,
    bar: tqdm,
    on_done: Callable[[ItemState], None],
    stop: asyncio.Event,
) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for seed_id in work:
        queue.put_nowait(seed_id)

    async def worker() -> None:
        while not stop.is_set():
            try:
                seed_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            item = ctx.store.load(seed_id)  # one seed's state in memory per worker, not the whole run's
            assert item is not None
            await _advance(ctx, item, stages)
            on_done(item)
            bar.update(1)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(1, len(work))))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


async def _build_async(
    seeds_path: Path,
    output_dir: Path,
    config: BuilderConfig,
    stages: tuple[str, ...],
    limit: int | None,
    allow_config_change: bool,
    progress: bool,
    concurrency: int,
) -> BuildSummary:
    started = time.perf_counter()
    callers: dict[str, RoleCaller] = role_callers(config, _roles(config))
    images = open_images_client(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    with CheckpointStore(output_dir / STORE_DIR, ItemState, fsync=config.run.fsync) as store:
        return await _build_with_store(
            seeds_path, output_dir, config, stages, limit, allow_config_change, progress, concurrency, callers, images, store, started
        )


async def _build_with_store(
    seeds_path: Path,
    output_dir: Path,
    config: BuilderConfig,
    stages: tuple[str, ...],
    limit: int | None,
    allow_config_change: bool,
    progress: bool,
    concurrency: int,
    callers: dict[str, RoleCaller],
    images: ImagesClient | None,
    store: CheckpointStore[ItemState],
    started: float,
) -> BuildSummary:
    _check_fingerprint(store, config, allow_config_change)
    rejects = RejectWriter(output_dir / REJECTS_FILE)
    try:
        read = read_seeds(seeds_path, store, rejects, limit=limit)
        ids, work = _item_ids(read.seeds, store, rejects, config, stages)
    finally:
        rejects.close()

    run_ledger = Ledger()
    failed_now: dict[str, int] = {"n": 0}
    bar = tqdm(total=len(work), desc="intersafe_v builder", unit="seed", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def on_call(record: CallRecord) -> None:
        run_ledger.add(record)
        bar.set_postfix(calls=run_ledger.calls, tokens=run_ledger.tokens, failed=failed_now["n"], refresh=False)

    def on_done(item: ItemState) -> None:
        failed_now["n"] += item.failure is not None

    ctx = StageContext(config=config, prompts=Prompts(config.prompts), callers=callers, images=images, store=store, on_call=on_call)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    stop = asyncio.Event()

    def interrupt() -> None:
        # Cancel what is in flight, and also stop at the next seed boundary: a cancellation can be
        # absorbed by a call finishing at the same moment, the flag cannot.
        stop.set()
        main_task.cancel()  # type: ignore[union-attr]

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, interrupt)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            pass
    try:
        await _run_items(ctx, work, stages, concurrency, bar, on_done, stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        bar.close()
        if images is not None:
            await images.aclose()
    if stop.is_set():
        raise asyncio.CancelledError("interrupted")

    all_ledger = Ledger()
    exported = export((store.load(seed_id) for seed_id in ids), config, store, output_dir, all_ledger)
    by_status = exported.by_status
    if sum(by_status.values()) != len(ids):
        raise RuntimeError(f"seed count check failed: {by_status} for {len(ids)} seeds")
    cleaned = by_status.get("cleaned", 0)
    if cleaned * len(config.victims) != exported.dialogues + exported.dropped_dialogues:
        raise RuntimeError(
            f"dialogue count check failed: {cleaned} cleaned seeds x {len(config.victims)} victims != "
            f"{exported.dialogues} written + {exported.dropped_dialogues} dropped"
        )
    all_ledger.write(output_dir / LEDGER_FILE, {"this_run": run_ledger.as_dict()["total"]})
    return BuildSummary(
        output_dir=output_dir,
        stages=stages,
        read=read.read,
        valid=len(ids),
        rejected=read.read - len(ids),
        worked=len(work),
        by_status=by_status,
        failed=exported.failed,
        exported=exported,
        ledger_all=all_ledger,
        ledger_run=run_ledger,
        seconds=time.perf_counter() - started,
        failed_ids=exported.failed_ids,
    )


def build(
    seeds: str | Path,
    output_dir: str | Path,
    config: BuilderConfig,
    *,
    stages: Sequence[str] = STAGES,
    limit: int | None = None,
    allow_config_change: bool = False,
    progress: bool = True,
    concurrency: int | None = None,
) -> BuildSummary:
    """Run the builder (see the module docstring) and return its summary.

    Raises :class:`BuilderError` for problems that stop the run; ``KeyboardInterrupt`` /
    ``asyncio.CancelledError`` when interrupted (every finished call is checkpointed).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise BuilderError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    ordered = tuple(s for s in STAGES if s in stages)
    if limit is not None and limit < 1:
        raise BuilderError(f"--limit must be >= 1, got {limit}")
    n = concurrency if concurrency is not None else config.run.concurrency
    if n < 1:
        raise BuilderError(f"--concurrency must be >= 1, got {n}")
    return asyncio.run(_build_async(Path(seeds), Path(output_dir), config, ordered, limit, allow_config_change, progress, n))


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep/build_intersafe_v.py`` argument parser."""
    parser = argparse.ArgumentParser(
        description="Build InterSafe-V multi-turn attack dialogues from red-team seeds: decompose, interact, clean."
    )
    parser.add_argument(
        "--seeds", required=True, help="seeds: .jsonl/.json/.parquet or a datasets folder (id, image, query, category, source)"
    )
    parser.add_argument("--output_dir", required=True, help="output folder; holds the checkpoints (.build/) that make reruns resume")
    parser.add_argument("--config", required=True, help="builder YAML config (endpoints, roles, victims, knobs; see recipes/builder/)")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated stages to run (default all: {','.join(STAGES)}); later runs continue"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N valid seeds")
    parser.add_argument("--concurrency", type=int, default=None, help="seeds in progress at once (default: run.concurrency)")
    parser.add_argument(
        "--allow_config_change", action="store_true", help="continue checkpoints made with a different config (content settings changed)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry; prints the summary paragraph and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        summary = build(
            args.seeds,
            args.output_dir,
            config,
            stages=[s.strip() for s in args.stages.split(",") if s.strip()],
            limit=args.limit,
            allow_config_change=args.allow_config_change,
            progress=not args.no_progress,
            concurrency=args.concurrency,
        )
    except BuilderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"interrupted: every finished call is checkpointed in {Path(args.output_dir) / STORE_DIR}; rerun the same command to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(summary.paragraph())
    return summary.exit_code
