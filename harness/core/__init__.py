"""The shared training core: model, pooling, XML, memories, losses, metrics, training loop.

Equations: ``shared/METHODS.md`` (sections referenced in each module's docstring).
"""
