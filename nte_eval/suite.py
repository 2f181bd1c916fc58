"""The suite YAML: schema, validation (errors name the key path and the allowed values) and sweep expansion."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nte_eval.errors import NTEError, did_you_mean
from nte_eval.subspace import DEFAULT_SELECT, Select

ModelSpec = str | dict[str, Any]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    source: Literal["digits", "photos", "imagefolder"] = "digits"
    split: Literal["train", "test", "all"] = "test"
    limit: int | None = Field(default=None, ge=1)
    root: str | None = None
    size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _root_for_folder(self) -> DataConfig:
        if self.source == "imagefolder" and not self.root:
            raise ValueError("data.root is required for source 'imagefolder' (a folder ROOT/CLASS/*.png)")
        return self


Psnr = float | list[float]
Bool = bool | list[bool]


class NTEConfig(Strict):
    type: Literal["nte"]
    mode: Literal["auto", "patch", "operator"] | list[Literal["auto", "patch", "operator"]] = "auto"
    select: str | list[str] = DEFAULT_SELECT
    psnr: Psnr = 30.0
    noise: Literal["per_patch", "tiled"] | list[Literal["per_patch", "tiled"]] = "per_patch"
    box: Literal["none", "clip", "project"] | list[Literal["none", "clip", "project"]] = "none"
    quantize: Bool = False
    border: Literal["correct", "check"] | list[Literal["correct", "check"]] = "correct"
    project_iters: int = Field(default=100, ge=1)

    @field_validator("select")
    @classmethod
    def _select(cls, v: str | list[str]) -> str | list[str]:
        for s in v if isinstance(v, list) else [v]:
            try:
                Select.parse(s)
            except NTEError as e:
                raise ValueError(str(e)) from None
        return v


class GaussianConfig(Strict):
    type: Literal["gaussian"]
    psnr: Psnr = 30.0
    box: Literal["none", "clip"] | list[Literal["none", "clip"]] = "none"
    quantize: Bool = False


class AdversarialConfig(Strict):
    type: Literal["adversarial"]
    psnr: Psnr = 30.0
    box: Literal["clip"] = "clip"
    quantize: Bool = False
    steps: int | list[int] = 20


class AttackConfig(Strict):
    type: Literal["identity"]


EncoderConfig = Annotated[NTEConfig | GaussianConfig | AdversarialConfig, Field(discriminator="type")]
ENCODER_CONFIGS = {"nte": NTEConfig, "gaussian": GaussianConfig, "adversarial": AdversarialConfig}


class Suite(Strict):
    name: str
    seed: int | str = 0
    data: DataConfig = DataConfig()
    designated: ModelSpec | list[ModelSpec]
    models: list[ModelSpec] = []
    encoders: list[EncoderConfig] = Field(min_length=1)
    attacks: list[AttackConfig] = [AttackConfig(type="identity")]
    batch_size: int = Field(default=128, ge=1)

    @field_validator("encoders", mode="before")
    @classmethod
    def _encoder_types(cls, v: Any) -> Any:
        for i, item in enumerate(v if isinstance(v, list) else []):
            t = item.get("type") if isinstance(item, dict) else None
            if t not in ENCODER_CONFIGS:
                raise ValueError(f"[{i}].type: unknown encoder {t!r}; allowed: "
                                 f"{', '.join(ENCODER_CONFIGS)}.{did_you_mean(str(t), ENCODER_CONFIGS)}")
        return v

    def designated_list(self) -> list[ModelSpec]:
        return self.designated if isinstance(self.designated, list) else [self.designated]

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def spec_name(spec: ModelSpec) -> str:
    """A short display name for a model spec (the mapping's ``name`` key, else its timm name and checkpoint)."""
    if isinstance(spec, str):
        return spec
    if "name" in spec:
        return str(spec["name"])
    if "zoo" in spec:
        return f"zoo:{spec['zoo']}"
    return f"timm:{spec.get('timm')}" + (f"@{spec['checkpoint']}" if spec.get("checkpoint") else "")


def expand(config: BaseModel) -> list[dict[str, Any]]:
    """All parameter combinations of a config whose list-valued fields are sweeps (``type`` excluded)."""
    params = {k: v for k, v in config.model_dump().items() if k != "type"}
    keys = list(params)
    grids = [v if isinstance(v, list) else [v] for v in params.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grids)]


BRANCH_TAGS = {"str", "int", "float", "bool", "dict[str,any]", *ENCODER_CONFIGS}


def _format_errors(err: ValidationError) -> str:
    """One line per bad key path, e.g. ``encoders[0].psnr: ...``; union-branch noise is dropped."""
    lines: dict[str, str] = {}
    for e in err.errors():
        parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]
                 if isinstance(p, int) or not (p in BRANCH_TAGS or "[" in p or "-" in p)]
        path = "".join(parts).lstrip(".") or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {e['loc'][-1]!r}"
        elif e["type"] == "literal_error":
            msg = f"got {e['input']!r}; allowed: {e['ctx']['expected']}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        lines.setdefault(path.removesuffix(".type") if msg.startswith("[") else path, msg)
    return "; ".join(f"{p}{m}" if m.startswith("[") else f"{p}: {m}" for p, m in lines.items())


def parse_suite(data: dict[str, Any], source: str = "suite") -> Suite:
    """Validate a suite mapping; raise NTEError naming each bad key path and its allowed values."""
    if not isinstance(data, dict):
        raise NTEError(f"{source}: the suite must be a YAML mapping with keys name, designated, encoders, ...")
    unknown = set(data) - set(Suite.model_fields)
    if unknown:
        key = sorted(unknown)[0]
        raise NTEError(f"{source}: unknown key {key!r}; allowed: {', '.join(Suite.model_fields)}."
                       f"{did_you_mean(key, Suite.model_fields)}")
    try:
        return Suite(**data)
    except ValidationError as e:
        raise NTEError(f"{source}: {_format_errors(e)}") from None


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML file."""
    path = Path(path)
    if not path.is_file():
        raise NTEError(f"suite file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise NTEError(f"{path}: malformed YAML: {str(e).splitlines()[0]} "
                       f"({getattr(e, 'problem_mark', '') or 'see above'})".replace("\n", " ")) from None
    return parse_suite(data, str(path))
