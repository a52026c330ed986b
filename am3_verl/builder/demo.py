"""Offline end-to-end demo of the InterSafe-V builder: the bundled seeds against loopback endpoints.

``python -m am3_verl.builder.demo --output_dir outputs/builder_demo``

Starts a loopback chat server playing every role (:class:`~am3_verl.testing.builder_loopback.ScriptedBuilderModels`:
scripted, deterministic answers, not a model) and a loopback text-to-image server, writes the config
that points at them to ``<output_dir>/builder_config.yaml``, and runs the real pipeline (all three
stages, checkpoints, ledger, output files) on the bundled seeds, with two victims. Use it to see the
output layout and to check an installation; for real data point the same command line
(``data_prep/build_intersafe_v.py``) at real endpoints (recipes/builder/intersafe_v_builder.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from am3_verl.builder.config import parse_config
from am3_verl.testing.builder_loopback import LoopbackImagesServer, ScriptedBuilderModels
from am3_verl.builder.pipeline import BuildSummary, build
from am3_verl.builder.seeds import BUNDLED_SEEDS
from am3_verl.testing.openai_server import LoopbackOpenAIServer

VICTIMS = ("victim_a", "victim_b")


def loopback_config(chat_url: str, images_url: str | None, **sections: Any) -> dict[str, Any]:
    """A builder config (as a dict) whose roles are the scripted models at ``chat_url`` and whose
    text-to-image endpoint is ``images_url`` (None: disabled); ``sections`` replace whole sections."""
    fast = {"timeout_s": 10, "max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_concurrency": 16}
    endpoints = {
        name: {"base_url": chat_url, "model": f"stub-{name}", **fast} for name in ("decomposer", "scorer", "attacker", "judge", "writer")
    }
    endpoints.update({v: {"base_url": chat_url, "model": f"stub-victim-{v}", **fast} for v in VICTIMS})
    if images_url:
        endpoints["painter"] = {"base_url": images_url, "model": "stub-image", **fast}
    config: dict[str, Any] = {
        "endpoints": endpoints,
        "roles": {
            name: {"endpoint": name, "temperature": 0.0, "max_tokens": 512} for name in ("decomposer", "scorer", "attacker", "judge")
        },
        "victims": [{"name": v, "endpoint": v, "temperature": 0.0, "max_tokens": 512} for v in VICTIMS],
        "text_to_image": {"enabled": True, "endpoint": "painter", "size": "192x192"} if images_url else {"enabled": False},
        "decompose": {"min_sub_queries": 3, "max_sub_queries": 5, "max_regenerations": 2},
        "run": {"concurrency": 4},
        "output": {"id_prefix": "isv-"},
        "refusal_vqa": {"writer": {"endpoint": "writer", "temperature": 0.0, "max_tokens": 400}},
    }
    config.update(sections)
    return config


def run_demo(output_dir: str | Path, progress: bool = True) -> BuildSummary:
    """Build dialogues from the bundled seeds against loopback endpoints; returns the run's summary."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with LoopbackOpenAIServer(ScriptedBuilderModels(new_image_turn=2)) as chat, LoopbackImagesServer() as images:
        config = loopback_config(chat.base_url, images.base_url)
        (out / "builder_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return build(BUNDLED_SEEDS, out, parse_config(config), progress=progress)


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description="Offline demo: build dialogues from the bundled seeds against loopback endpoints.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    summary = run_demo(args.output_dir, progress=not args.no_progress)
    print(summary.paragraph())


if __name__ == "__main__":
    main()
