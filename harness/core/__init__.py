"""The shared training core: model, pooling, XML, memories, losses, metrics, training loop.

Equations: ``docs/METHODS.md`` (sections referenced in each module's docstring).
"""
