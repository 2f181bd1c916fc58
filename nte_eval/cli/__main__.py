"""``python -m nte_eval.cli``: the ``nte-eval`` command (what the tests run in a fresh process)."""

import sys

from nte_eval.cli import main

sys.exit(main())
