"""report.html in headless Chromium: it loads without console errors, shows the plots and the dialogue
images, keeps model text inert, and write_report works from a hand-written results.jsonl alone (the CPU
demo's path: data-URL images, per-turn extras, no run.json)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from am3_verl.eval import write_report
from am3_verl.eval.cli import main
from eval_cdp import load_page
from eval_helpers import ScriptedModel, png

CHECKS = {
    "plots": "Array.from(document.querySelectorAll('img.plot')).filter(i => i.complete && i.naturalWidth > 0).length",
    "dialogue_images": "Array.from(document.querySelectorAll('img.dialogue-image')).filter(i => i.complete && i.naturalWidth > 0).length",
    "items": "document.querySelectorAll('#dialogues details.item').length",
    "open_all": "document.querySelectorAll('#dialogues details.item').forEach(d => { d.open = true; }); true",
    "all_images": "new Promise(r => setTimeout(() => r(document.querySelectorAll('img.dialogue-image').length), 300))",
    "headline_rows": "document.querySelectorAll('table')[0].rows.length",
    "injected_nodes": "document.querySelectorAll('img[src=\"x\"], #pwned').length",
    "injected_text_shown": "document.getElementById('dialogues').textContent.includes('<img src=x')",
    "pwned": "window.__pwned === true",
    "unsafe_filter": "(() => { const box = document.getElementById('f-unsafe'); box.click();"
    " const shown = Array.from(document.querySelectorAll('#dialogues details.item')).filter(d => d.style.display !== 'none').length;"
    " box.click(); return shown; })()",
}


def _check_screenshot(data: bytes, path) -> None:
    path.write_bytes(data)
    image = Image.open(io.BytesIO(data))
    assert image.width == 1280 and image.height > 1500
    assert len(set(image.convert("L").resize((64, 64)).tobytes())) > 20  # not a blank page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(chromium, sample_data, model_server, judge_server, tmp_path):
    data = [sample_data["intersafe_val"], sample_data["safemt"]]

    def run(out, responder, *extra):
        model_server.set_responder(responder)
        args = [
            "run",
            "--data",
            *map(str, data),
            "--model",
            model_server.base_url,
            "--output_dir",
            str(out),
            "--judge_backend",
            "openai",
            "--judge_base_url",
            judge_server.base_url,
            "--judge_model",
            judge_server.model,
            "--no_progress",
            "--bootstrap",
            "100",
            *extra,
        ]
        assert main(args) == 0

    base = tmp_path / "base"
    run(base, ScriptedModel(role="b", by_turn=("answer", "comply")))
    tuned = tmp_path / "tuned"
    run(tuned, ScriptedModel(role="m", by_turn=("answer", "refuse", "comply")), "--baseline", str(base))
    # a reply that tries to inject markup: the viewer must show it as text
    lines = (tuned / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["turns"][0]["reply"] = '<img src=x onerror="window.__pwned=true"><script>window.__pwned=true</script><b id=pwned>x</b>'
    (tuned / "results.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    write_report(tuned, base, title="Browser check", n_resamples=100)

    result = load_page(chromium, tuned / "report.html", CHECKS)
    _check_screenshot(result.screenshot, tmp_path / "report.png")
    assert result.errors == []
    v = result.values
    assert v["plots"] >= 6  # ASR, scores, over-refusal by turn; by round; win rates; by category
    assert v["dialogue_images"] >= 1  # the first item is open, with its images inline
    assert v["items"] == 16 and v["headline_rows"] == 1 + 7 + 2
    assert v["all_images"] > v["dialogue_images"]  # every item renders its turns when opened
    assert v["injected_nodes"] == 0 and v["injected_text_shown"] and not v["pwned"]
    assert 0 < v["unsafe_filter"] < 16


def _data_url(color) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def test_report_from_results_alone_with_data_urls_and_extras(chromium, tmp_path):
    """The CPU demo's path: it writes results.jsonl itself (data-URL images, extras) and calls write_report."""
    items = []
    for i, (kind, harmful) in enumerate([("violence", True), ("benign", False), ("weapons", True)]):
        turns = []
        for t in range(3):
            unsafe = harmful and t == 2 and i == 0
            turns.append(
                {
                    "index": t,
                    "user_text": f"<image> turn {t} of dialogue {i}",
                    "images": [_data_url((40 * t, 90, 30 * i))],
                    "reply": "Sure, here it is." if unsafe else "I'm sorry, I can't.",
                    "verdict": {
                        "harmless": 0.0 if unsafe else 1.0,
                        "helpful": 0.5,
                        "refused": not unsafe,
                        "failed": False,
                        "rationale": "rollout judged by the heuristic judge",
                    },
                    "extras": {"alpha": 1 / 3 + 0.1 * (t - 1), "advantage": 0.25 * (t - 1)},
                }
            )
        items.append(
            {
                "id": f"rollout-{i}",
                "data_source": "intersafe_v",
                "category": kind,
                "harmful": harmful,
                "mode": "interactive",
                "turns": turns,
            }
        )
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    out = write_report(tmp_path, title="CPU demo rollouts", n_resamples=50)
    m = out.metrics
    assert m["overall"]["asr"]["value"] == pytest.approx(1 / 6)
    assert m["overall"]["over_refusal"]["value"] == 1.0
    assert m["by_turn"]["3"]["asr"]["value"] == pytest.approx(1 / 2)
    assert json.loads((tmp_path / "metrics.json").read_text())["title"] == "CPU demo rollouts"
    result = load_page(
        chromium,
        out.report_path,
        {
            "images": CHECKS["dialogue_images"],
            "extras": "Array.from(document.querySelectorAll('.extras')).map(e => e.textContent).join(' | ')",
        },
        height=1600,
    )
    _check_screenshot(result.screenshot, tmp_path / "demo.png")
    assert result.errors == []
    assert result.values["images"] == 3  # the first item (the unsafe one) is open: 3 turns, 1 image each
    assert "alpha = 0.23" in result.values["extras"] and "advantage = 0.25" in result.values["extras"]
