"""A suite's data and certify sections: their schema and checks (``suite`` builds the whole suite from them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nte_eval.data.glue import TASKS
from nte_eval.data.sources import SOURCES, Source
from nte_eval.errors import did_you_mean
from nte_eval.models.transform import OVERRIDES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    source: Literal[tuple(SOURCES)] = "digits"  # see nte_eval.data.sources
    split: Literal["train", "test", "all"] = "test"
    limit: int | None = Field(default=None, ge=1)
    root: str | None = None
    size: int | None = Field(default=None, ge=1)
    path: str | None = None  # a TSV file (glue_tsv, mmbench_tsv)
    task: str | None = None  # the GLUE task (glue_tsv)
    max_length: int = Field(default=128, ge=2)  # tokens per text (glue_tsv), longer texts are truncated
    workers: int = Field(default=2, ge=0)  # DataLoader worker processes reading an imagefolder (0: this process)
    #: 'auto': the source's labels where it has them (an imagefolder's class folders), else label-free; 'none':
    #: label-free even where labels exist (every model scored by agreement with its own clean prediction)
    labels: Literal["auto", "none"] = "auto"
    #: how an imagefolder's files become images: 'auto' (timm's evaluation transform of a timm designated model:
    #: resize by its crop_pct with its interpolation, centre crop; else 'resize'), 'resize' (shorter side to the
    #: size, centre crop), or timm's transform with some of {interpolation, crop_pct, crop_mode} set
    transform: Literal["auto", "resize"] | dict[str, Any] = "auto"

    @field_validator("transform")
    @classmethod
    def _transform_keys(cls, v: Any) -> Any:
        unknown = sorted(set(v) - set(OVERRIDES)) if isinstance(v, dict) else []
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a transform may set {', '.join(OVERRIDES)} (the size is "
                             f"data.size), or be 'auto' or 'resize'")
        return v

    @model_validator(mode="after")
    def _required_keys(self) -> DataConfig:
        kind = self.kind
        for key in kind.needs:
            if key == "task" and self.task not in TASKS:
                raise ValueError(f"task {self.task!r}: source {kind.name!r} needs task: one of {', '.join(TASKS)}"
                                 f"{did_you_mean(str(self.task), TASKS)}")
            if not getattr(self, key):
                raise ValueError(f"data.{key} is required for source {kind.name!r} ({kind.description})")
        return self

    @property
    def kind(self) -> Source:
        """The source's row in ``nte_eval.data.sources.SOURCES``."""
        return SOURCES[self.source]

    @property
    def modality(self) -> str:
        return self.kind.modality


LIPSCHITZ_SOURCES = ("product", "lipsdp", "local")


class CertifyConfig(Strict):
    """The ``certify`` section: fidelity certificates for the designated models and the degradation study."""

    fidelity: bool = True
    degradation: bool = True
    lipschitz: list[Literal[LIPSCHITZ_SOURCES]] = Field(default=list(LIPSCHITZ_SOURCES), min_length=1)
    psnr: list[float] | None = Field(default=None, min_length=1)  # fidelity PSNRs (dB); default: each setting's own
    pairs: Literal["all", "designated"] = "all"  # who plays the designated role in the degradation study
    degradation_psnr: float = 10.0
    tau: float = Field(default=0.01, gt=0)  # selection threshold for S (degradation NTEs) and B's sensitive subspace
    local_samples: int = Field(default=16, ge=1)  # clean images at which the local Lipschitz estimate is taken
    #: the first this many evaluated samples are certified (and enter the degradation study): the certification
    #: holds them in memory at once, so it is bounded by this, not by the data set's size
    samples: int = Field(default=1000, ge=1)


def public_example(data: DataConfig) -> str:
    """A ``public:`` mapping in the form of the suite's data source, for the message that asks for one: a bundled
    labelled source's other split, a GLUE training TSV, else a folder of images (as for photos, whose every image is
    evaluated, and MMBench questions)."""
    if data.kind.bundled and data.source != "photos":
        other = "test" if data.split == "train" else "train"
        return (f"{{source: {data.source}, split: {other}}}"
                + (" with data.split: test (split all evaluates every image)" if data.split == "all" else ""))
    if data.source == "glue_tsv":
        return f"{{source: glue_tsv, task: {data.task}, path: path/to/train.tsv}}"
    size = f", size: {data.size}" if data.size else ""
    return f"{{source: imagefolder, root: path/to/public{size}}}"
