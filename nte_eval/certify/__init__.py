"""Certification: fidelity bounds for the designated model and degradation geometry for the unauthorized ones.

``lipschitz``: Lipschitz constants of the network after the first layer (certified product and LipSDP bounds, local
estimates). ``fidelity``: per-sample logit-change bounds against measurement. ``angles``: principal angles,
predicted response energy and spectral misalignment between first layers. ``run``: the suite's ``certify`` step.
"""
