"""A small typed registry of named plugin classes (attacks, encoders), filled lazily.

Built-ins register themselves when their modules are imported: the first lookup imports every module under the
registry's package (subpackages included), so a new built-in module needs no list entry. Third-party packages
register through an entry-point group, loaded only when a name is not built in or when everything is listed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

from nte_eval.errors import NTEError, did_you_mean

T = TypeVar("T")


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry(Generic[T]):
    """Name -> class for one plugin kind: the classes of every module under ``package`` (imported on first use) and
    of the entry-point ``group``."""

    def __init__(self, kind: str, group: str, package: str):
        self.kind, self.group, self.package = kind, group, package
        self._classes: dict[str, type[T]] = {}
        self._builtins_loaded = self._plugins_loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Add ``cls`` under ``cls.name``; a second class with the same name is an error naming both."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise NTEError(f"{qualified(cls)}: a registered {self.kind} needs a non-empty string `name`.")
        old = self._classes.get(name)
        if old is not None and qualified(old) != qualified(cls):  # same qualified name: a module re-import
            raise NTEError(f"duplicate {self.kind} name {name!r}: {qualified(old)} and {qualified(cls)}; "
                           f"rename one of them.")
        self._classes[name] = cls
        return cls

    def _load_builtins(self) -> None:
        """Import every module under the package; defining a class with a ``name`` registers it."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            root = importlib.import_module(self.package)
            for module in pkgutil.walk_packages(root.__path__, f"{self.package}."):
                importlib.import_module(module.name)  # before walk_packages' own import, which hides ImportErrors

    def load_plugins(self) -> None:
        """Import every entry point of the group; importing a module defines (and so registers) its classes."""
        self._load_builtins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken third-party plugin must not hide the others
                raise NTEError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {e}") from e
            if isinstance(obj, type) and getattr(obj, "name", None) not in self._classes:
                self.register(obj)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; unknown names raise NTEError with a 'did you mean'."""
        self._load_builtins()
        if name not in self._classes:
            self.load_plugins()
        if name not in self._classes:
            raise NTEError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._classes))}."
                           f"{did_you_mean(str(name), self._classes)}")
        return self._classes[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._classes)

    @contextlib.contextmanager
    def scope(self, *classes: type[T]) -> Iterator[Registry[T]]:
        """Register ``classes`` (and whatever is defined or registered inside the block) until the block ends, then
        restore the registry as it was: test plugins that do not leak into later lookups."""
        self._load_builtins()  # built-ins stay: their modules would not register them again
        saved = dict(self._classes), self._plugins_loaded
        try:
            for cls in classes:
                self.register(cls)
            yield self
        finally:
            self._classes, self._plugins_loaded = saved

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except NTEError:
            return False
        return True
