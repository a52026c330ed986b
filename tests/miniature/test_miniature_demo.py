"""``make demo``'s verdict: ``summary.json`` from the miniature's results, and the ``--smoke`` switch.

The demo's full run is the miniature's (``tests/miniature/test_miniature_learns.py`` runs it end to end);
here, what the demo adds on top of it.
"""

from __future__ import annotations

import pytest

from am3_verl.demo import demo_summary, main, summary_line


def _side(asr, over_refusal):
    return {"asr": asr, "over_refusal": over_refusal, "helpful": 0.6, "n_harmful": 18, "n_benign_turns": 54}  # the keys the demo reads


def _results(*runs):
    records = [{"seed": 7, "estimator": e, "before": _side(*b), "after": _side(*a), "curve": {}} for e, b, a in runs]
    return {"runs": records, "wall_s": 412.0}


@pytest.mark.parametrize(
    ("before", "after", "met"),
    [
        ((0.9, 0.0), (0.45, 0.10), True),  # exactly halved, over-refusal up by exactly 0.10
        ((0.9, 0.0), (0.46, 0.0), False),  # not halved
        ((0.9, 0.05), (0.0, 0.16), False),  # over-refusal up by 0.11
    ],
)
def test_summary_holds_the_before_after_numbers_and_the_verdict(before, after, met):
    summary = demo_summary(_results(("am3_grpo", before, after)))
    assert (summary["asr_before"], summary["over_refusal_before"]) == before
    assert (summary["asr_after"], summary["over_refusal_after"]) == after
    assert summary["wall_s"] == 412.0 and summary["seed"] == 7
    assert summary["targets_met"] is met
    assert ("targets met" if met else "targets NOT met") in summary_line(summary)


def test_summary_refuses_results_that_are_not_one_am3_grpo_run():
    with pytest.raises(ValueError, match="exactly one am3_grpo run"):
        demo_summary(_results(("grpo", (0.9, 0.0), (0.1, 0.0))))
    with pytest.raises(ValueError, match="exactly one am3_grpo run"):
        demo_summary(_results(("am3_grpo", (0.9, 0.0), (0.1, 0.0)), ("grpo", (0.9, 0.0), (0.1, 0.0))))


def test_smoke_flag_runs_the_keyword_judge_pipeline_and_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["--smoke", "--help"])
    assert "python -m am3_verl.demo --smoke" in capsys.readouterr().out
