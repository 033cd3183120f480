"""ekv's own verification tools: internal, with no compatibility promise.

They exist to test ekv itself and change with its test suite; code outside ekv should use the
stable part of :mod:`ekv.testing` instead.

* :mod:`.chaos`: the Jepsen-style harness (``python -m ekv.testing._internal.chaos``): real node
  processes, clients recording a history, a seeded nemesis, the checker's verdict.
* :mod:`.checker`: the offline checker of recorded histories
  (``python -m ekv.testing._internal.checker HISTORY.jsonl``).
* :mod:`.powercut`: an APSW VFS that loses un-fsynced writes when its process is SIGKILLed
  (``python -m ekv.testing._internal.powercut -- CMD``).
* :mod:`.faults`: deliberate bugs a node process injects into itself, for the negative controls.

See docs/reliability.md.
"""
