"""The train wing: adversarial fine-tuning through one Accelerate loop.

Owns the loop (``trainer``), the method, schedule and option registries, the optimizer step, the divergence guard,
checkpoints with exact resume and the hardware defaults. It may import the shared top level, ``data``, ``evaluate``
(the kernel, for the probe and the before/after measurements) and ``publish`` (to write the run folder); never ``bench``
or ``cli``.
"""
