"""Shared HTTP client machinery used by every component that calls model endpoints.

* :mod:`~am3_verl.clients.chat` – a bounded, retrying OpenAI chat-completions client whose results carry
  failures instead of raising (judges, the simulated user, evaluation, the data builder);
* :mod:`~am3_verl.clients.images` – image bytes <-> ``data:`` URLs (MIME sniffing, a shared encode cache);
* :mod:`~am3_verl.clients.structured` – strict parsing of a structured answer (one JSON object, one schema).
"""
