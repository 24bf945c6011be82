"""The evaluate wing: honest robust accuracy of a model, from one process or many.

Owns the sharded fp32 kernel (``kernel``: clean and PGD counts), AutoAttack (``autoattack``), the gradient-masking
checks (``checks``) and the report of ``robustify eval`` (``report``). It may import the shared top level, ``data``
and ``publish`` (to store a report in a run's record); never ``train``, ``bench`` or ``cli``.
"""
