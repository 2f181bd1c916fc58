"""Encoders: the NTE encoder and baselines sharing one interface (``Encoder.encode``)."""

from nte_eval.encoders.base import ENCODERS, Encoder, EncodeResult, sample_seed
from nte_eval.encoders.baselines import AdversarialEncoder, GaussianEncoder
from nte_eval.encoders.nte import NTEEncoder
from nte_eval.encoders.tokens import TokenNTEEncoder

__all__ = ["ENCODERS", "AdversarialEncoder", "EncodeResult", "Encoder", "GaussianEncoder", "NTEEncoder",
           "TokenNTEEncoder", "sample_seed"]
