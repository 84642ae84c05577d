"""The Flower-facing corner of the core: the wire format and the in-process runner.

Protocol modules never import this package; only ``strategies/``, ``clients/`` and the CLI do.
"""
