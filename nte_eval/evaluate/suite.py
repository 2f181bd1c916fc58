"""The suite YAML: schema, validation (errors name the key path and the allowed values) and sweep expansion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from nte_eval.attacks.base import ATTACKS
from nte_eval.encoders.base import ENCODERS
from nte_eval.errors import NTEError, did_you_mean
from nte_eval.evaluate.run_folder import RESULTS_FORMAT
from nte_eval.evaluate.sections import CertifyConfig, DataConfig, Strict, public_example
from nte_eval.evaluate.suite_file import import_plugins, read_yaml
from nte_eval.evaluate.sweeps import plugin_class, restriction, settings_of, sweep_of
from nte_eval.knowledge import KNOWLEDGE, Knowledge
from nte_eval.models.hf import HF_SCHEMES
from nte_eval.models.load import ModelSpec, check_spec, read_from, spec_files, spec_name, with_base

#: Keys that change how a run works, never its results: a run may be resumed (or joined by a --shard process) with
#: other values.
NO_EFFECT = {"batch_size": True, "data": {"workers"}, "public": {"workers"}}


class Suite(Strict):
    name: str
    seed: int | str = 0
    #: several NTE keys: every encoder setting is encoded once per key (cells tagged key=0, 1, ...), and the report
    #: gives each figure's mean and spread over the keys; instead of ``seed``
    seeds: list[int | str] | None = None
    plugins: list[str] = []
    data: DataConfig = DataConfig()
    public: DataConfig | None = None
    designated: ModelSpec | list[ModelSpec]
    models: list[ModelSpec] = []
    surrogates: list[ModelSpec] = []
    encoders: list[dict[str, Any]] = Field(min_length=1)
    attacks: list[dict[str, Any] | str] = [{"type": "identity"}]
    knowledge: list[Knowledge] = list(KNOWLEDGE)
    batch_size: int = Field(default=128, ge=1)
    #: Attacks that fit on a corpus (blind estimates, the learned denoiser, ...) see a fixed, seeded subset of this
    #: many released NTEs and of this many public images (all of them when there are fewer): memory and time bounded
    #: by this, not by the data set's size.
    fit_samples: int = Field(default=4096, ge=2)
    #: Work proceeds in shards of this many samples: one result file per (designated model, encoder setting, attack
    #: setting, shard), the unit of resume, of ``--shard I/N`` and of a cluster's tasks. Results do not depend on it.
    shard_size: int = Field(default=1000, ge=1)
    certify: CertifyConfig | None = None
    _base: Path = PrivateAttr(default=Path("."))  # the folder relative paths are read from (the suite file's)

    @field_validator("certify", mode="before")
    @classmethod
    def _certify(cls, v: Any) -> Any:
        """``certify: true`` means every default; ``false`` none."""
        if isinstance(v, bool):
            return CertifyConfig() if v else None
        return v

    @field_validator("designated", "models", "surrogates")
    @classmethod
    def _specs(cls, v: Any) -> Any:
        """Each model spec's form (mapping keys, mean/std, input_size), checked before any model loads."""
        for i, spec in enumerate(v if isinstance(v, list) else [v]):
            try:
                check_spec(spec)
            except NTEError as e:
                raise ValueError(f"[{i}]: {e}" if isinstance(v, list) else str(e)) from None
        return v

    @field_validator("seed")
    @classmethod
    def _some_key(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("the NTE key is empty; give a long random key (a short one can be guessed), or pass "
                             "--key-file PATH / --key-env NAME to `nte-eval run`.")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_keys(cls, v: Any) -> Any:
        if v is not None and not v:
            raise ValueError("an empty list; give at least two NTE keys (e.g. [0, 1, 2]), or drop seeds and use seed.")
        repeated = sorted({str(k) for k in v or [] if v.count(k) > 1})
        if repeated:
            raise ValueError(f"the key {repeated[0]} appears more than once; every key must differ (a repeated key "
                             "encodes the same NTEs twice).")
        if any(isinstance(k, str) and not k.strip() for k in v or []):
            raise ValueError("an empty key; give long random keys.")
        return v

    @model_validator(mode="after")
    def _seed_or_seeds(self) -> Suite:
        if self.seeds is not None and "seed" in self.model_fields_set:
            raise ValueError("seed and seeds: give one key (seed) or several (seeds), not both.")
        return self

    def with_key(self, key: str) -> Suite:
        """This suite with the NTE key given outside its file (``--key-file``, ``--key-env``)."""
        if self.seeds is not None:
            raise NTEError("--key-file/--key-env give one NTE key, but the suite lists several (seeds); drop seeds, "
                           "or keep the keys in the suite.")
        return self.model_copy(update={"seed": key})

    @property
    def keys(self) -> list[int | str]:
        """The NTE keys: ``seeds``, else ``[seed]``."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @field_validator("designated")
    @classmethod
    def _some_designated(cls, v: Any) -> Any:
        if v == []:
            raise ValueError("an empty list; name at least one designated model (e.g. zoo:vit_null).")
        return v

    @field_validator("encoders", mode="before")
    @classmethod
    def _encoders(cls, v: Any) -> Any:
        for i, item in enumerate(v if isinstance(v, list) else []):
            encoder_cls = plugin_class(ENCODERS, item, f"[{i}]")
            for params in settings_of(item, encoder_cls, f"[{i}]"):
                errors = encoder_cls.validation_errors(params)
                if errors:
                    raise ValueError("; ".join(f"[{i}].{k}: {m}" for k, m in errors))
        return v

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, v: Any) -> Any:
        for i, item in enumerate(v if isinstance(v, list) else []):
            item = {"type": item} if isinstance(item, str) else item
            attack_cls = plugin_class(ATTACKS, item, f"[{i}]")
            for params in settings_of(item, attack_cls, f"[{i}]"):
                try:
                    attack_cls(**params)
                except NTEError as e:
                    raise ValueError(f"[{i}] {e}") from None
        return v

    @model_validator(mode="after")
    def _encoder_designated(self) -> Suite:
        names = self.designated_names()
        for i, item in enumerate(self.encoders):
            chosen = restriction(item, names)
            unknown = [d for d in chosen if d not in names]
            if unknown:
                raise ValueError(f"encoders[{i}].designated: {unknown[0]!r} is not one of the suite's designated "
                                 f"models ({', '.join(names)}).")
            if not chosen:
                raise ValueError(f"encoders[{i}].designated: an empty list, so the encoder would run for no model; "
                                 f"name some of {', '.join(names)}, or drop the key for all of them.")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        """Models are keyed by display name: a second model under a name already taken would be dropped."""
        seen: dict[str, tuple[str, ModelSpec]] = {}
        for where, spec in self.model_entries():
            name = spec_name(spec)
            first, first_spec = seen.setdefault(name, (where, spec))
            if first != where and first_spec != spec:
                mapping = "" if isinstance(spec, dict) else " (a mapping: {timm: NAME, checkpoint: PATH, name: N})"
                raise ValueError(f"{where}: {first} is another model named {name!r}; give each a distinct `name:`"
                                 f"{mapping} (models are told apart by name).")
            if first != where and first.partition("[")[0] == where.partition("[")[0]:
                raise ValueError(f"{where}: {name!r} is listed twice (also {first}); remove one.")
        return self

    @model_validator(mode="after")
    def _modality(self) -> Suite:
        modality = self.data.modality
        for i, item in enumerate(self.encoders):
            encoder = ENCODERS.get(item["type"])
            if modality not in encoder.modalities:
                fit = [n for n in ENCODERS.names() if modality in ENCODERS.get(n).modalities]
                raise ValueError(f"encoders[{i}]: {item['type']!r} recodes {', '.join(encoder.modalities)}, but the "
                                 f"data ({self.data.source}) is {modality}; use {', '.join(fit)}.")
        for name, params in self.attack_settings():
            if modality not in ATTACKS.get(name)(**params).modalities:
                fit = [n for n in ATTACKS.names() if modality in ATTACKS.get(n).modalities]
                raise ValueError(f"attacks: {name!r} works on {', '.join(ATTACKS.get(name).modalities)}, but the "
                                 f"data ({self.data.source}) is {modality}; {modality} attacks: {', '.join(fit)}.")
        if self.certify is not None and not self.data.kind.certifiable:
            raise ValueError(f"certify: certificates cover image classifiers; remove the certify section for "
                             f"{self.data.source} data.")
        return self

    @model_validator(mode="after")
    def _threat_model(self) -> Suite:
        surrogates = [spec_name(s) for s in self.surrogates]
        need_public: dict[str, str] = {}  # attack name -> its knowledge, for every attack that reads public data
        for name, params in self.attack_settings():
            attack = ATTACKS.get(name)(**params)
            level = attack.knowledge
            if level not in self.knowledge:
                raise ValueError(f"attacks: {name!r} needs knowledge {level!r}, which the suite does not allow "
                                 f"(knowledge: {self.knowledge}); allow it or remove the attack.")
            if level == "method" or (level != "none" and self.data.modality == "image"):
                need_public[name] = level
            if level == "surrogate" and not self.surrogates:
                raise ValueError(f"attacks: {name!r} needs surrogate models; list them under `surrogates:`.")
            try:
                attack.check_surrogates(surrogates)
            except NTEError as e:
                raise ValueError(f"attacks: {e}") from None
        if need_public and self.public_config() is None:
            named = ", ".join(f"{name!r} (knowledge {level!r})" for name, level in need_public.items())
            raise ValueError(f"attacks: {named} {'need' if len(need_public) > 1 else 'needs'} public clean "
                             f"{self.data.kind.unit} disjoint from the evaluated ones; set `public:`, e.g. "
                             f"public: {public_example(self.data)}.")
        return self

    def designated_list(self) -> list[ModelSpec]:
        return self.designated if isinstance(self.designated, list) else [self.designated]

    def model_entries(self) -> list[tuple[str, ModelSpec]]:
        """(key path, spec) of every model entry: designated, models and surrogates."""
        entries = []
        for key in ("designated", "models", "surrogates"):
            specs = getattr(self, key)
            entries += [(f"{key}[{i}]", s) for i, s in enumerate(specs)] if isinstance(specs, list) else [(key, specs)]
        return entries

    @property
    def base(self) -> Path:
        """The folder the suite's relative paths and plugins are read from (the suite file's)."""
        return self._base

    def path(self, value: str | None) -> str | None:
        """A path the suite names (data, public), a relative one read from the suite file's folder."""
        return None if value is None else read_from(self._base, value)

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        """A model spec with its relative paths (checkpoint, Hugging Face folder) read from the suite file's folder."""
        return with_base(spec, self._base)

    def check_files(self, source: str) -> None:
        """Every local path the suite names exists: data and public roots (folders) and files, checkpoints and
        Hugging Face folders; NTEError (``source``: the suite file) names the first that does not. Checked before a
        run loads any model (a suite is valid without them: templates name files the user provides)."""
        wanted: list[tuple[str, str, bool]] = []  # (key path, path, whether it names a folder)
        for key, cfg in (("data", self.data), ("public", self.public)):
            for field in ("root", "path"):
                if cfg is not None and getattr(cfg, field):
                    wanted.append((f"{key}.{field}", self.path(getattr(cfg, field)), field == "root"))
        for where, spec in self.model_entries():
            wanted += [(f"{where}.{k}", v, k in HF_SCHEMES) for k, v in spec_files(self.model_spec(spec)).items()]
        for where, value, folder in wanted:
            path = Path(value)
            if folder and not path.is_dir():
                problem = "is not a folder"
            elif not folder and not path.is_file():
                problem = "is a folder, not a file" if path.is_dir() else "does not exist"
            else:
                continue
            raise NTEError(f"{source}: {where}: {path} {problem} (relative paths are read from the suite file's "
                           f"folder, {self._base.resolve()}).")

    def public_config(self) -> DataConfig | None:
        """The attackers' public images: as given, else the training split when evaluating the test split of a
        bundled labelled data set (digits, textures)."""
        if self.public is not None:
            return self.public
        if self.data.source in ("digits", "textures") and self.data.split == "test":
            return DataConfig(source=self.data.source, split="train", size=self.data.size)
        return None

    def encoder_settings(self, designated: str) -> list[tuple[str, dict[str, Any]]]:
        """(encoder name, parameters) for every setting of every encoder sweep that applies to ``designated`` (an
        encoder entry's own ``designated`` key restricts it to some of the suite's designated models)."""
        return [(item["type"], params) for item in self.encoders
                if designated in restriction(item, self.designated_names())
                for params in sweep_of(item, ENCODERS.get(item["type"]))]

    def designated_names(self) -> list[str]:
        return [spec_name(s) for s in self.designated_list()]

    def attack_settings(self) -> list[tuple[str, dict[str, Any]]]:
        """(attack name, parameters) for every attack setting; ``identity`` first (added when missing): the
        no-attack baseline every summary and check needs."""
        items = [{"type": a} if isinstance(a, str) else a for a in self.attacks]
        settings = [(item["type"], params) for item in items for params in sweep_of(item, ATTACKS.get(item["type"]))]
        if not any(name == "identity" for name, _ in settings):
            settings.insert(0, ("identity", {}))
        return settings

    def config_hash(self) -> str:
        """The suite's fingerprint, with the results format: --resume continues only a run of the same suite written
        in the same format (its cell keys)."""
        config = {**self.model_dump(exclude=NO_EFFECT), "results_format": RESULTS_FORMAT}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


BRANCH_TAGS = {"str", "int", "float", "bool", "dict[str,any]"}


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
    return "; ".join(m if p == "(top level)" else f"{p}{m}" if m.startswith("[") else f"{p}: {m}"
                     for p, m in lines.items())


def parse_suite(data: dict[str, Any], source: str = "suite", base: str | Path = ".") -> Suite:
    """Validate a suite mapping; raise NTEError naming each bad key path and its allowed values.

    ``base``: the folder that relative paths (plugins, data, public, checkpoints, Hugging Face folders) are read from:
    the suite file's folder.
    """
    if not isinstance(data, dict):
        raise NTEError(f"{source}: the suite must be a YAML mapping with keys name, designated, encoders, ...")
    import_plugins(data.get("plugins", []), Path(base))
    unknown = set(data) - set(Suite.model_fields)
    if unknown:
        key = sorted(unknown)[0]
        raise NTEError(f"{source}: unknown key {key!r}; allowed: {', '.join(Suite.model_fields)}."
                       f"{did_you_mean(key, Suite.model_fields)}")
    try:
        suite = Suite(**data)
    except ValidationError as e:
        raise NTEError(f"{source}: {_format_errors(e)}") from None
    suite._base = Path(base)
    return suite



def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML file."""
    path = Path(path)
    return parse_suite(read_yaml(path), str(path), path.parent.resolve())
