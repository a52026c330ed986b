"""Shared HTTP client machinery used by every component that calls model endpoints.

* :mod:`~am3_verl.clients.endpoint` – the one endpoint config (URL, model, key variable, timeouts,
  retries, concurrency) and the per-endpoint concurrency limit;
* :mod:`~am3_verl.clients.transport` – the one HTTP transport (retries, failure kinds, token usage,
  key redaction) under chat and images;
* :mod:`~am3_verl.clients.chat` – the OpenAI chat-completions client whose results carry failures instead
  of raising (judges, the simulated user, evaluation, the data builder);
* :mod:`~am3_verl.clients.images` – image bytes <-> ``data:`` URLs (MIME sniffing, a shared encode cache);
* :mod:`~am3_verl.clients.structured` – strict parsing of a structured answer (one JSON object, one schema).
"""
