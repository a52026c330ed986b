"""Local backends for machines without a GPU or network: offline tiny models, a CPU platform for verl,
a local generation backend honouring verl's server-manager contract, and a loopback OpenAI-compatible
judge server for tests and benchmarks."""
