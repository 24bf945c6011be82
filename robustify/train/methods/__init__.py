"""Training-step strategies, one file per method, registered by name (``natural``, ``fgsm-rs``, ``n-fgsm``, ``free``,
``pgd``, ``deat``, ``apgd``).

A method turns one minibatch into one or more optimizer steps. It gets a :class:`StepContext` from the trainer,
whose ``optimize(loss)`` does the backward pass, gradient clipping, learning-rate update and optimizer step
(through Accelerate), so a method only decides *which inputs* the model is trained on and how often.
Each method also says what one minibatch costs in forward/backward passes, which ``metrics.json`` reports.
Adding a method is adding a file here with ``@register_method("name")`` and importing it below.

Must not: step the optimizer itself (ctx.optimize does), read a device value back to the host in the step, or import
the trainer.
"""

# registration, in the order the CLI lists them
from . import natural  # noqa: F401, I001
from . import fgsm_rs  # noqa: F401
from . import pgd  # noqa: F401
from . import free  # noqa: F401
from . import n_fgsm  # noqa: F401
from . import deat  # noqa: F401
from . import apgd  # noqa: F401
from .base import (
    METHODS,
    Method,
    StepContext,
    StepResult,
    batchnorm_mode,
    build_method,
    register_method,
    validate_section,
)

__all__ = ["METHODS", "Method", "StepContext", "StepResult", "batchnorm_mode", "build_method", "register_method",
           "validate_section"]
