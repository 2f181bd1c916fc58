"""The four threat-model levels, from the weakest attacker to the strongest (each includes the ones before it)."""

from typing import Literal

KNOWLEDGE = ("none", "method", "surrogate", "oracle")
Knowledge = Literal["none", "method", "surrogate", "oracle"]
