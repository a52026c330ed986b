"""Write the builder's output files from the checkpoints (rewritten whole at the end of every run).

* ``intersafe_v.jsonl`` – the kept dialogues in our InterSafe-V form, in seed order then victim order;
  dialogue id ``<id_prefix><seed id>-<victim>``; one ``<image>`` placeholder (first in the text) per
  turn that shows a picture; ``meta`` keeps the provenance (seed id and query, victim, sub-queries,
  drawn-picture descriptions, removed duplicates, the judge's verdict and, by default, the victim's
  replies);
* ``images/<dialogue id>-<turn>-0.<ext>`` – the pictures those lines name (ids that are not safe file
  names are sanitised and get a short hash) (hard links to the blobs where
  the filesystem allows, copies otherwise); built in a fresh folder and swapped in, so no stale file
  stays behind;
* ``dropped.jsonl`` – one row per dropped seed (decompose) or dropped dialogue (clean), with the reason;
* ``failed.jsonl`` – seeds whose last call failed after its retries (a rerun continues them);
* ``README.md`` – the dataset card (:mod:`am3_verl.data.card`): Hugging Face front matter whose
  ``configs`` name ``intersafe_v.jsonl``, the category / source distribution, the builder settings
  (models, thresholds; no URLs or keys) and a content warning.

Every written line is validated with :class:`am3_verl.dialogue.Dialogue` first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from am3_verl.builder.clean import kept_turns, user_text
from am3_verl.builder.config import BuilderConfig
from am3_verl.builder.ledger import Ledger
from am3_verl.builder.state import ItemState
from am3_verl.builder.store import FILE_MODE, CheckpointStore, atomic_write, safe_stem
from am3_verl.data.card import CARD_FILE, CardConfig, DatasetCard, render_card
from am3_verl.dialogue import Dialogue

OUTPUT_FILE = "intersafe_v.jsonl"
IMAGES_DIR = "images"
DROPPED_FILE = "dropped.jsonl"
FAILED_FILE = "failed.jsonl"


@dataclass
class ExportCounts:
    """What :func:`export` wrote."""

    dialogues: int = 0
    images: int = 0
    dropped_seeds: int = 0
    dropped_dialogues: int = 0
    failed: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    """Written dialogues per seed source dataset."""
    by_status: dict[str, int] = field(default_factory=dict)
    """Seeds per checkpoint status."""
    failed_ids: list[str] = field(default_factory=list)


def dialogue_record(item: ItemState, victim: str, config: BuilderConfig, image_names: list[str | None]) -> dict:
    """The InterSafe-V record of ``item``'s dialogue with ``victim`` (``image_names[t]``: file of turn t)."""
    dialogue = item.dialogues[victim]
    turns = []
    for (message, blob), name in zip(kept_turns(dialogue), image_names):
        turns.append({"user": user_text(message, blob), "images": [f"{IMAGES_DIR}/{name}"] if name else []})
    victim_model = next(config.endpoints[v.endpoint].model for v in config.victims if v.name == victim)
    meta: dict = {
        "seed_id": item.seed_id,
        "seed_query": item.query,
        "victim": victim,
        "victim_model": victim_model,
        "sub_queries": item.decompose.final_texts(),
        "new_images": [{"turn": t, "description": turn.image_description} for t, turn in enumerate(dialogue.turns) if turn.image == "new"],
        "denied_new_images": [t for t, turn in enumerate(dialogue.turns) if turn.denied_new_image],
        "removed_images": [r.model_dump() for r in dialogue.removed_images or []],
        "judge": dialogue.verdict,
    }
    if config.output.victim_replies == "meta":
        meta["victim_replies"] = [turn.victim_reply for turn in dialogue.turns]
    return {"id": dialogue_id(item, victim, config), "category": item.category, "source": item.source, "turns": turns, "meta": meta}


def dialogue_id(item: ItemState, victim: str, config: BuilderConfig) -> str:
    """``<id_prefix><seed id>-<victim>``."""
    return f"{config.output.id_prefix}{item.seed_id}-{victim}"


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def export(
    items: Iterable[Optional[ItemState]], config: BuilderConfig, store: CheckpointStore, output_dir: Path, ledger: Ledger | None = None
) -> ExportCounts:
    """Write the output files for ``items`` (in the given order, read one at a time) into ``output_dir``;
    every call record of the items is added to ``ledger``."""
    counts = ExportCounts()
    new_images = output_dir / f".{IMAGES_DIR}.new"
    if new_images.exists():
        shutil.rmtree(new_images)
    new_images.mkdir(parents=True)
    dropped, failed = [], []
    fd, tmp = tempfile.mkstemp(prefix=f".{OUTPUT_FILE}.", suffix=".tmp", dir=output_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as lines:
        for item in items:
            if item is None:
                raise RuntimeError("a checkpoint disappeared during the run")
            counts.by_status[item.status] = counts.by_status.get(item.status, 0) + 1
            if ledger is not None:
                ledger.add_all(item.calls)
            if item.failure is not None:
                counts.failed += 1
                counts.failed_ids.append(item.seed_id)
                failed.append({"seed_id": item.seed_id, "status": item.status, **item.failure.model_dump()})
            if item.status == "dropped":
                counts.dropped_seeds += 1
                assert item.drop is not None
                dropped.append({"id": item.seed_id, "seed_id": item.seed_id, "victim": None, **item.drop.model_dump()})
                continue
            if item.status != "cleaned":
                continue
            for victim in config.victims:
                dialogue = item.dialogues[victim.name]
                record_id = dialogue_id(item, victim.name, config)
                if not dialogue.kept:
                    counts.dropped_dialogues += 1
                    dropped.append(
                        {"id": record_id, "seed_id": item.seed_id, "victim": victim.name, "stage": "clean", "reason": dialogue.drop_reason}
                    )
                    continue
                names: list[str | None] = []
                for t, (_, blob) in enumerate(kept_turns(dialogue)):
                    if blob is None:
                        names.append(None)
                        continue
                    name = f"{safe_stem(record_id)}-{t}-0.{blob.rsplit('.', 1)[1]}"
                    _link_or_copy(store.blob_path(blob), new_images / name)
                    names.append(name)
                    counts.images += 1
                record = dialogue_record(item, victim.name, config, names)
                Dialogue.model_validate(record)
                lines.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts.dialogues += 1
                counts.by_category[item.category] = counts.by_category.get(item.category, 0) + 1
                counts.by_source[str(item.source)] = counts.by_source.get(str(item.source), 0) + 1
    os.chmod(tmp, FILE_MODE)
    images = output_dir / IMAGES_DIR
    old = output_dir / f".{IMAGES_DIR}.old"
    if old.exists():
        shutil.rmtree(old)
    if images.exists():
        images.rename(old)
    new_images.rename(images)
    if old.exists():
        shutil.rmtree(old)
    os.replace(tmp, output_dir / OUTPUT_FILE)
    atomic_write(output_dir / DROPPED_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dropped).encode("utf-8"))
    atomic_write(output_dir / FAILED_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failed).encode("utf-8"))
    atomic_write(output_dir / CARD_FILE, render_card(dataset_card(config, counts)).encode("utf-8"))
    return counts


def dataset_card(config: BuilderConfig, counts: ExportCounts) -> DatasetCard:
    """The dataset card of the builder's output folder: distributions and the settings that made it (no URLs, no keys)."""
    roles = {}
    if config.roles is not None:
        for name in ("decomposer", "scorer", "attacker", "judge"):
            role = getattr(config.roles, name)
            roles[name] = {"model": config.endpoints[role.endpoint].model, "temperature": role.temperature}
    return DatasetCard(
        pretty_name="InterSafe-V (built with am3-verl)",
        summary=(
            "Multi-turn multimodal attack dialogues built by am3-verl's InterSafe-V builder "
            "(`data_prep/build_intersafe_v.py`): red-team seeds decomposed into innocuous-looking sub-queries, "
            "played one per turn against victim models by an attacker model (drawing new pictures where needed), "
            "then cleaned of near-duplicate images and of dialogues without an identifiable risk. One dialogue "
            "per line in am3-verl's InterSafe-V form (`id`, `category`, `source`, `turns` of `user` text and "
            "`images` paths, `meta` with the provenance); convert it with `data_prep/intersafe_v.py`."
        ),
        configs=[CardConfig("default", {"train": OUTPUT_FILE}, default=True)],
        n_records=counts.dialogues,
        task_categories=["image-text-to-text", "visual-question-answering"],
        distributions={"category": dict(counts.by_category), "source": dict(counts.by_source), "seed status": dict(counts.by_status)},
        settings={
            "command": "data_prep/build_intersafe_v.py",
            "roles": roles,
            "victims": [{"name": v.name, "model": config.endpoints[v.endpoint].model} for v in config.victims],
            "text_to_image": {
                "enabled": config.text_to_image.enabled,
                "model": config.endpoints[config.text_to_image.endpoint].model if config.text_to_image.enabled else None,
            },
            "decompose": config.decompose.model_dump(mode="json"),
            "interact": config.interact.model_dump(mode="json"),
            "clean": config.clean.model_dump(mode="json"),
            "victim_replies": config.output.victim_replies,
            "counts": {
                "dialogues": counts.dialogues,
                "images": counts.images,
                "dropped_seeds": counts.dropped_seeds,
                "dropped_dialogues": counts.dropped_dialogues,
                "failed_seeds": counts.failed,
            },
        },
        files={
            IMAGES_DIR + "/": "the pictures the dialogues name",
            DROPPED_FILE: "dropped seeds and dialogues, with the reason",
            FAILED_FILE: "seeds whose last call failed (a rerun continues them)",
        },
    )
