"""Declared plugin parameters (type + default): validation with clear errors, sweep expansion, description, and
``Parametrised``, the base that attacks and encoders share for them."""

from __future__ import annotations

import inspect
import itertools
import types
import typing
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from nte_eval.errors import NTEError, did_you_mean

Fields = dict[str, tuple[Any, Any]]  # name -> (annotation, default)


def param_model(owner: str, fields: Fields) -> type[BaseModel]:
    """A pydantic model validating ``fields`` (unknown keys forbidden, no silent coercion of str/float to int)."""
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{owner}_params", __config__=config, **fields)


def param_errors(model: type[BaseModel], params: dict[str, Any]) -> list[tuple[str, str]]:
    """(parameter, message) for every problem with ``params``; empty when they validate."""
    unknown = [k for k in params if k not in model.model_fields]
    if unknown:
        return [(unknown[0], f"unknown parameter; parameters: {', '.join(model.model_fields) or '(none)'}."
                             f"{did_you_mean(unknown[0], model.model_fields)}")]
    try:
        model(**params)
    except ValidationError as e:
        out = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "lax-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                msg = f"got {err['input']!r}; allowed: {err['ctx']['expected']}"
            elif set(err.get("ctx", {})) & {"gt", "ge", "lt", "le"} and len(err["loc"]) == 1:  # the whole range
                field = model.model_fields[err["loc"][0]]
                msg = f"{msg}; allowed: {type_name(Annotated[(field.annotation, *field.metadata)])}"
            out.append((where, msg))
        return list(dict.fromkeys(out))
    return []


def validate_params(owner: str, model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """Validated parameters with defaults filled in; NTEError names the bad parameter and what is allowed."""
    errors = param_errors(model, params)
    if errors:
        raise NTEError(f"{owner}: " + "; ".join(f"{k}: {m}" for k, m in errors))
    return model(**params).model_dump()


def is_list_type(annotation: Any) -> bool:
    """True when the declared type itself is a list (then a list value is one setting, a list of lists a sweep)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return is_list_type(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(is_list_type(a) for a in typing.get_args(annotation))
    return annotation in (list, tuple)


def expand_sweeps(fields: Fields, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued (swept) parameters, in declaration order of ``params``."""
    grids = []
    for key, value in params.items():
        listy = key in fields and is_list_type(fields[key][0])
        sweep = isinstance(value, list) and (not listy or (value and all(isinstance(v, list) for v in value)))
        if sweep and not value:
            raise NTEError(f"{key}: [] sweeps over no values, so it would add no settings; give at least one value.")
        grids.append(value if sweep else [value])
    return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*grids)]


def type_name(annotation: Any) -> str:
    """A readable type, e.g. ``int >= 1``, ``'bilinear' | 'nearest'``, ``list[str]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        bounds = []
        for m in meta:
            for item in getattr(m, "metadata", [m]):
                for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(item, attr, None) is not None:
                        bounds.append(f"{op} {getattr(item, attr)}")
        return type_name(base) + (f" {', '.join(bounds)}" if bounds else "")
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_params(fields: Fields) -> dict[str, dict[str, Any]]:
    return {k: {"type": type_name(ann), "default": default} for k, (ann, default) in fields.items()}


class Parametrised:
    """A plugin whose parameters are annotated class attributes with defaults, e.g. ``quality: Annotated[int,
    Field(ge=1, le=100)] = 75``: each subclass collects them into a pydantic model (``Field`` bounds, ``Literal``
    choices, validators that normalise), so that a suite is checked, swept and recorded from the declarations alone.
    """

    _fields: ClassVar[Fields] = {}
    _model: ClassVar[type[BaseModel]]
    #: Constructor arguments that are not parameters (an encoder's model handle).
    _init_args: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = {k: hint for k, hint in typing.get_type_hints(cls, include_extras=True).items()
                 if typing.get_origin(hint) is not ClassVar and hint is not ClassVar and not k.startswith("_")}
        missing = [k for k in hints if not hasattr(cls, k)]
        if missing:
            raise NTEError(f"{cls.__qualname__}: parameter {missing[0]!r} is annotated but has no default; give it one "
                           f"(e.g. `{missing[0]}: float = 1.0`), or annotate it ClassVar if it is not a parameter.")
        cls._fields = {k: (hint, getattr(cls, k)) for k, hint in hints.items()}
        cls._model = param_model(cls.__name__, cls._fields)
        cls._check_init()

    @classmethod
    def _check_init(cls) -> None:
        """A parameter taken by ``__init__`` instead of declared is an error at class definition (it would be
        invisible to suite validation, sweeps and the results)."""
        if "__init__" not in cls.__dict__:
            return
        skip = {"self", *cls._init_args}
        named = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in skip]
        undeclared = [n for n in named if n not in cls._fields]
        if undeclared:
            raise NTEError(f"{cls.__qualname__}: declare {', '.join(undeclared)} as annotated class attributes with "
                           f"defaults (e.g. `{undeclared[0]}: float = 1.0`), not as __init__ arguments; __init__ takes "
                           f"{', '.join([*cls._init_args, '**params'])} and passes them to super().__init__.")

    def set_params(self, owner: str, params: dict[str, Any]) -> None:
        """Validate ``params`` (NTEError names ``owner`` and the bad parameter), fill in defaults, set each as an
        attribute and record the validated values for ``params()``."""
        values = validate_params(owner, self._model, params)
        for k, v in values.items():
            setattr(self, k, v)
        self._params = values

    def params(self) -> dict[str, Any]:
        """Every declared parameter as validated (defaults included, normalised), as written to the results."""
        return dict(self._params)

    @classmethod
    def sweep(cls, params: dict[str, Any]) -> list[dict[str, Any]]:
        """All settings of a sweep (list values of non-list parameters expand)."""
        return expand_sweeps(cls._fields, params)

    @classmethod
    def validation_errors(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """(parameter, message) for every problem with ``params`` (suite validation); empty when they validate."""
        return param_errors(cls._model, params)

    @classmethod
    def declared(cls) -> dict[str, dict[str, Any]]:
        """Each declared parameter's readable type and default."""
        return describe_params(cls._fields)
