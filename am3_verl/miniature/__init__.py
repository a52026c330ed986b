"""The paper's experiment in miniature: a generated multi-turn task, a ground-truth judge, and the run.

* :mod:`~am3_verl.miniature.world` – the substances, pictures, questions and the grading of a reply;
* :mod:`~am3_verl.miniature.generate` – the task's data (InterSafe-V dialogues, refusal and general VQA);
* :mod:`~am3_verl.miniature.judge` – the ground-truth judge as an OpenAI-compatible server;
* :mod:`~am3_verl.miniature.experiment` – ``python -m am3_verl.miniature``: SFT, GRPO per estimator, evaluation;
* :mod:`~am3_verl.miniature.results` / :mod:`~am3_verl.miniature.report` – ``results.json`` and ``report.html``.
"""
