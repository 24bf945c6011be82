"""``python -m robustify`` is the ``robustify`` command (and ``accelerate launch -m robustify`` runs it distributed)."""

import sys

from .cli import main

sys.exit(main())
