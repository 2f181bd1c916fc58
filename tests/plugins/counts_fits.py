"""A plugin attack for the executors' tests: it keeps its fit under fits/ and appends a line to the file named by
$NTE_EVAL_TEST_FITS each time it is fitted, in whichever process fits it, so a test can count the fits."""

import os

from nte_eval.attacks import Attack


class CountsFits(Attack):
    name = "test_counts_fits"
    knowledge = "method"

    def fit(self, context):
        super().fit(context)
        with open(os.environ["NTE_EVAL_TEST_FITS"], "a") as f:
            f.write(f"{os.getpid()}\n")
        self.mean = self.context.ntes.mean()
        return self

    def state(self):
        return {"mean": self.mean}

    def load_state(self, state):
        self.mean = state["mean"]

    def run(self, x):
        return x
