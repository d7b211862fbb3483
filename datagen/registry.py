"""Parts chosen by name: each kind (judges, builders, generate modes, RL estimators, stages, training
algorithms) has one ``Registry``; the built-in parts register under a short name, and a user's own part
is named ``"package.module:Name"`` in the config, imported when it is asked for.

A leaf like ``datagen.records``: it imports nothing of the project, so ``judges`` may use it too.

>>> colours = Registry("colour")
>>> @colours.register("red")
... def red() -> str:
...     return "#f00"
>>> colours.get("red")()
'#f00'
>>> colours.get("green")
Traceback (most recent call last):
...
ValueError: unknown colour 'green': expected one of ['red'] or 'package.module:Name'
>>> colours.get("datagen.registry:Registry") is Registry
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> part for one ``kind`` of part.

    ``builtins`` are modules that register the built-in parts when imported; they are imported on the
    first look-up, so a registry's own module stays light. ``adapt(spec, obj)`` checks (and may convert)
    what a ``"package.module:Name"`` names, raising ``ValueError`` with the reason.
    """

    def __init__(
        self,
        kind: str,
        *,
        builtins: tuple[str, ...] = (),
        adapt: Callable[[str, Any], T] | None = None,
    ):
        self.kind = kind
        self._parts: dict[str, T] = {}
        self._builtins = builtins
        self._adapt = adapt

    def register(self, name: str, part: Any = None) -> Any:
        """``register(name, part)``, or ``@register(name)`` over a function or class."""
        if part is not None:
            self._parts[name] = part
            return part

        def deco(obj: Any) -> Any:
            self._parts[name] = obj
            return obj

        return deco

    def _load_builtins(self) -> None:
        for module in self._builtins:
            importlib.import_module(module)

    def get(self, spec: str) -> T:
        """The part registered as ``spec``, or the object ``"package.module:Name"`` names."""
        self._load_builtins()
        if spec in self._parts:
            return self._parts[spec]
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"unknown {self.kind} {spec!r}: expected one of {self.names()} or 'package.module:Name'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"{self.kind} {spec!r}: cannot import {module_name}: {e}") from None
        obj = getattr(module, attr, None)
        if obj is None:
            raise ValueError(f"{self.kind} {spec!r}: {module_name} has no attribute {attr!r}")
        return self._adapt(spec, obj) if self._adapt is not None else obj

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._parts)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        self._load_builtins()
        return iter(list(self._parts))

    def __getitem__(self, name: str) -> T:
        self._load_builtins()
        return self._parts[name]

    def values(self) -> list[T]:
        self._load_builtins()
        return list(self._parts.values())

    def items(self) -> list[tuple[str, T]]:
        """The registered parts, in the order they were registered."""
        self._load_builtins()
        return list(self._parts.items())
