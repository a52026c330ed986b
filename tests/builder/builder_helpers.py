"""Helpers for the builder tests: seed files with drawn images, configs pointing at loopback servers,
checkpoint and server-side request fingerprints."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from am3_verl.builder.calls import request_sha
from am3_verl.builder.config import BuilderConfig, parse_config
from am3_verl.builder.demo import loopback_config
from am3_verl.builder.state import ItemState
from am3_verl.data.sample import draw_image

SHAPES = ("box", "circle", "triangle", "bars", "cross", "stripes")


def write_seeds(folder: Path, specs: list[dict[str, Any]], name: str = "seeds.jsonl") -> Path:
    """Write a seeds file; each spec has ``id``, ``query``, ``category`` and optionally ``image`` (bytes),
    ``source``, or ``raw`` (a record written as is). Images are drawn deterministically from the id."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, spec in enumerate(specs):
        if "raw" in spec:
            lines.append(spec["raw"] if isinstance(spec["raw"], str) else json.dumps(spec["raw"]))
            continue
        data = spec.get("image") or draw_image(spec["id"][-6:].upper(), SHAPES[k % len(SHAPES)], random.Random(spec["id"]))
        path = folder / "images" / f"{spec['id']}.png"
        path.write_bytes(data)
        lines.append(
            json.dumps(
                {
                    "id": spec["id"],
                    "image": f"images/{spec['id']}.png",
                    "query": spec["query"],
                    "category": spec.get("category", "violence"),
                    "source": spec.get("source", "test"),
                }
            )
        )
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(chat_url: str, images_url: str | None, **sections: Any) -> BuilderConfig:
    """A validated config for the loopback servers (``sections`` replace whole sections)."""
    return parse_config(loopback_config(chat_url, images_url, **sections))


def write_config(path: Path, chat_url: str, images_url: str | None, **sections: Any) -> Path:
    """The same config as a YAML file."""
    path.write_text(yaml.safe_dump(loopback_config(chat_url, images_url, **sections)), encoding="utf-8")
    return path


def checkpoints(output_dir: Path) -> list[ItemState]:
    """Every item checkpoint under ``output_dir/.build``."""
    return [ItemState.model_validate_json(p.read_bytes()) for p in sorted((output_dir / ".build" / "items").glob("*.json"))]


def checkpoint_shas(output_dir: Path, text_to_image: bool = False) -> Counter:
    """Request fingerprints of the calls recorded in the checkpoints (chat calls, or text-to-image calls)."""
    return Counter(
        call.request_sha for item in checkpoints(output_dir) for call in item.calls if (call.role == "text_to_image") == text_to_image
    )


def server_shas(requests: list[Any]) -> Counter:
    """The same fingerprints computed from the chat server's recorded requests."""
    return Counter(request_sha(r.body["model"], r.body["messages"]) for r in requests)


def image_server_shas(bodies: list[dict]) -> Counter:
    """Fingerprints of the images server's recorded requests."""
    return Counter(request_sha(b["model"], b) for b in bodies)


def near_copy(data: bytes) -> bytes:
    """A perceptual near-duplicate of an image: enlarged, slightly brighter, re-encoded as PNG."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BILINEAR)
    image = Image.eval(image, lambda v: min(255, v + 6))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
