"""Test doubles shipped with the library, for the offline builder demo, our tests and users' own tests.

Nothing in production imports this package.

* :mod:`.openai_server` - a loopback OpenAI-compatible chat server (real HTTP on 127.0.0.1) with
  scripted faults and rule-based judge/guard responders;
* :mod:`.builder_loopback` - a loopback images server and scripted builder roles.
"""
