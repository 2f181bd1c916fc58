"""Reading a suite file: UTF-8 YAML in which ``1e9`` is a number and a repeated key an error, and importing the
plugins it names."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from nte_eval.errors import NTEError

#: Scientific notation without a dot or an exponent sign (1e9, 1.0e9, 2E-3): numbers in YAML 1.2, strings in the
#: YAML 1.1 that PyYAML reads.
SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
MERGE = "tag:yaml.org,2002:merge"


class SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader where YAML 1.1 would surprise: ``1e9`` is a number, and a repeated key is an error (not
    the last one silently winning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE:
                key = self.construct_object(key_node)
                if key in first:
                    mark = first[key]
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {key!r} (first at line {mark.line + 1}, column {mark.column + 1}); "
                                "keep one", problem_mark=key_node.start_mark)
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float", SCIENTIFIC, list("-+.0123456789"))


def read_yaml(path: Path) -> Any:
    """A suite file's contents; NTEError (one line) for a missing file, text that is not UTF-8, malformed YAML."""
    if not path.is_file():
        raise NTEError(f"suite file {path} does not exist.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise NTEError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the suite "
                       "as UTF-8.") from None
    try:
        data = yaml.load(text, Loader=SuiteLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(filter(None, (getattr(e, "problem", None), getattr(e, "context", None)))) or str(e)
        raise NTEError(f"{path}: malformed YAML{where}: {' '.join(what.split())}") from None
    return data


def import_plugins(plugins: Any, base: Path) -> None:
    """Import the suite's ``plugins``: module names, or ``.py`` files relative to the suite file. Importing a module
    defines its Attack/Encoder subclasses, which registers them."""
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise NTEError("plugins: a list of module names or .py files, e.g. [my_attacks.py].")
    for item in plugins:
        try:
            if item.endswith(".py"):
                path = (base / Path(item).expanduser()).resolve()
                if not path.is_file():
                    raise NTEError(f"file {path} does not exist")
                name = f"nte_eval_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
            else:
                importlib.import_module(item)
        except SystemExit as e:
            raise NTEError(f"plugins: {item!r} called sys.exit({e.code!r}) while being imported; a plugin module "
                           "only defines its classes (put script code under `if __name__ == '__main__':`).") from None
        except Exception as e:
            raise NTEError(f"plugins: {item!r} failed to import: {type(e).__name__}: {e}") from None
