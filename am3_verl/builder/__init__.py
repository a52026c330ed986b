"""Build InterSafe-V-style data on your own domain: the data-construction pipeline and the refusal VQA builder.

The pipeline (``data_prep/build_intersafe_v.py``, docs/builder.md) turns red-team seeds (image, query,
category) into multi-turn multimodal attack dialogues in our InterSafe-V JSONL form, in three stages:

* **decompose** (:mod:`~am3_verl.builder.decompose`) – a strong VLM splits each seed into less harmful
  sub-queries; a scorer rates each one; weak ones are rewritten up to a limit, then the seed is dropped;
* **interact** (:mod:`~am3_verl.builder.interact`) – an attacker "safety expert" delivers one sub-query
  per turn to each victim model, asking a text-to-image endpoint for new pictures when it wants them;
* **clean** (:mod:`~am3_verl.builder.clean`) – near-duplicate images inside a dialogue are removed with
  a perceptual hash (:mod:`~am3_verl.builder.phash`); a judge keeps dialogues with an identifiable risk.

Supporting modules, one job each:

* :mod:`~am3_verl.builder.config` – the YAML config (pydantic): endpoints, roles, victims, knobs;
* :mod:`~am3_verl.builder.prompts` – every role's prompt (overridable from the config);
* :mod:`~am3_verl.builder.answers` – the JSON answer formats of the roles and their parsing;
* :mod:`~am3_verl.builder.seeds` – seed records, their validation and the bundled seeds;
* :mod:`~am3_verl.builder.state` / :mod:`~am3_verl.builder.store` – per-item checkpoints on disk;
* :mod:`~am3_verl.builder.context` – what every stage works with (config, prompts, callers, store);
* :mod:`~am3_verl.builder.calls` / :mod:`~am3_verl.builder.ledger` – metered model calls, the cost ledger;
* :mod:`~am3_verl.builder.images_client` – the OpenAI-images-compatible text-to-image client;
* :mod:`~am3_verl.builder.pipeline` / :mod:`~am3_verl.builder.export` – the run and its output files;
* :mod:`~am3_verl.builder.refusal_vqa` – the 500-sample refusal VQA set (``data_prep/build_refusal_vqa.py``);
* :mod:`~am3_verl.builder.demo` – the offline demo against the loopback endpoints of
  :mod:`am3_verl.testing.builder_loopback` (scripted roles, also used by the tests).
"""
