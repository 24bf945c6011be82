"""The publish wing: what a run folder says about its weights, and getting it to and from the Hub.

Owns the typed run record (``runrecord``), what may be published (``public``), the model card (``card``), the
timm-loadable export (``export``), Hub push/pull (``hub``) and the zoo (``zoo``). It may import the shared top level
and ``data`` (the preprocessing it records); never ``train``, ``evaluate``, ``bench`` or ``cli``.
"""
