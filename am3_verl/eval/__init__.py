"""Evaluation: does the model get safer without becoming useless, turn by turn?

* :mod:`~am3_verl.eval.items` – evaluation parquet rows -> items (InterSafe-V, SafeMT, refusal VQA, benign sets);
* :mod:`~am3_verl.eval.backends` – the model under test: an OpenAI-compatible endpoint or a local HF folder;
* :mod:`~am3_verl.eval.runner` – generation (prefilled / interactive), judging, resumable caches;
* :mod:`~am3_verl.eval.results` – the results-folder contract (``results.jsonl`` and images);
* :mod:`~am3_verl.eval.metrics`, :mod:`~am3_verl.eval.safety_index`, :mod:`~am3_verl.eval.bootstrap`,
  :mod:`~am3_verl.eval.winrate` – ASR, SafeMT's Safety Index, scores, over-refusal, win rates, intervals;
* :mod:`~am3_verl.eval.report` – ``metrics.json`` and the self-contained ``report.html``;
* :mod:`~am3_verl.eval.safemt_protocol` – SafeMT's own binary judging protocol (``--judge_protocol safemt``);
* :mod:`~am3_verl.eval.general` – general ability: answer matching on benign VQA, lm-evaluation-harness-shaped results.

Command line: ``python -m am3_verl.eval {run,compare,report,general} ...`` (docs/eval.md).
"""

from am3_verl.eval.report import ReportOutput, write_report
from am3_verl.eval.results import ResultItem, ResultTurn, Verdict, read_results, store_image, write_results

__all__ = [
    "ReportOutput",
    "ResultItem",
    "ResultTurn",
    "Verdict",
    "read_results",
    "store_image",
    "write_report",
    "write_results",
]
