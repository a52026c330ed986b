"""What production uses on machines without a GPU or network: offline tiny models, a CPU platform for
verl, a local generation backend honouring verl's server-manager contract, the ``hf`` rollout harness.
Test doubles (loopback servers, scripted roles) live in :mod:`am3_verl.testing`."""
