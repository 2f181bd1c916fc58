"""Encoders: the NTE encoder and baselines sharing one interface (``Encoder.encode``)."""

from nte_eval.encoders.base import Encoder, EncodeResult, sample_seed
from nte_eval.encoders.baselines import AdversarialEncoder, GaussianEncoder
from nte_eval.encoders.nte import NTEEncoder

ENCODERS: dict[str, type[Encoder]] = {cls.name: cls for cls in (NTEEncoder, GaussianEncoder, AdversarialEncoder)}

__all__ = ["ENCODERS", "AdversarialEncoder", "EncodeResult", "Encoder", "GaussianEncoder", "NTEEncoder",
           "sample_seed"]
