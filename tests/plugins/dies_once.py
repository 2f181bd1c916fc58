"""A plugin attack for the executors' tests: its first call in a run kills its process with exit code 3 (as a
preempted node or an OOM kill would); the marker file named by $NTE_EVAL_TEST_MARKER lets the retry or rerun pass."""

import os
from pathlib import Path

from nte_eval.attacks import Attack


class DiesOnce(Attack):
    name = "test_dies_once"
    knowledge = "none"

    def run(self, x):
        marker = Path(os.environ["NTE_EVAL_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(3)
        return x.flip(-1)
