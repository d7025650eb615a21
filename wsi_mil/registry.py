"""One generic, typed registry, after timm's: filled by a decorator, asked by name.

The encoders (:mod:`wsi_mil.features.registry`) and the MIL heads
(:mod:`wsi_mil.mil.registry`) are each one :class:`Registry`: every entry is a frozen
config (what the rest of the pipeline needs to know) and a builder. A *namespace*
resolves a whole family of names, ``prefix:<rest>``, through one handler (``timm:<name>``
builds any timm model), so no caller special-cases a name's spelling.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

ConfigT = TypeVar("ConfigT")
BuilderT = TypeVar("BuilderT")


@dataclass(frozen=True)
class Entry(Generic[ConfigT, BuilderT]):
    """One registered name: its frozen config and the function that builds it."""

    config: ConfigT
    build: BuilderT


@dataclass(frozen=True)
class Namespace(Generic[ConfigT, BuilderT]):
    """``prefix:<rest>`` names, resolved by ``resolve(rest)``; ``example`` shows one in messages."""

    prefix: str
    resolve: Callable[[str], Entry[ConfigT, BuilderT]]
    description: str
    example: str


class Registry(Generic[ConfigT, BuilderT]):
    """Named entries of one ``kind`` (``"encoder"``, ``"MIL head"``).

    ``error`` is the exception raised for an unknown name (a :class:`~wsi_mil.errors.WsiMilError`
    subclass of the caller's stage); ``load`` imports the modules whose decorators fill the
    registry, on first use, so importing the registry stays cheap.
    """

    def __init__(self, kind: str, *, error: type[Exception], load: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.error = error
        self._load = load
        self._loaded = load is None
        self._entries: dict[str, Entry[ConfigT, BuilderT]] = {}
        self._namespaces: dict[str, Namespace[ConfigT, BuilderT]] = {}
        self._resolved: dict[str, Entry[ConfigT, BuilderT]] = {}

    def register(self, name: str, config: ConfigT) -> Callable[[BuilderT], BuilderT]:
        """Decorator: register the decorated builder under ``name`` with ``config``."""

        def decorate(build: BuilderT) -> BuilderT:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if ":" in name:
                raise ValueError(f"{self.kind} name {name!r}: ':' is reserved for namespaces")
            self._entries[name] = Entry(config, build)
            return build

        return decorate

    def namespace(
        self, prefix: str, *, description: str, example: str
    ) -> Callable[[Callable[[str], Entry[ConfigT, BuilderT]]], Callable[[str], Entry[ConfigT, BuilderT]]]:
        """Decorator: the decorated ``resolve(rest) -> Entry`` handles every ``prefix:<rest>`` name."""

        def decorate(resolve: Callable[[str], Entry[ConfigT, BuilderT]]) -> Callable[[str], Entry[ConfigT, BuilderT]]:
            if prefix in self._namespaces:
                raise ValueError(f"{self.kind} namespace {prefix!r} registered twice")
            self._namespaces[prefix] = Namespace(prefix, resolve, description, example)
            return resolve

        return decorate

    def _ensure_loaded(self) -> None:
        if not self._loaded and self._load is not None:
            self._loaded = True
            self._load()

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the glob ``pattern``, sorted (namespaces not expanded)."""
        self._ensure_loaded()
        return sorted(name for name in self._entries if fnmatch.fnmatch(name, pattern))

    def namespaces(self) -> list[Namespace[ConfigT, BuilderT]]:
        """The registered namespaces, by prefix."""
        self._ensure_loaded()
        return [self._namespaces[prefix] for prefix in sorted(self._namespaces)]

    def choices(self) -> str:
        """What a user may ask for, for messages: every name, then each namespace's pattern."""
        patterns = [f"{ns.prefix}:<name> (e.g. {ns.example})" for ns in self.namespaces()]
        return ", ".join([*self.names(), *patterns])

    def get(self, name: str) -> Entry[ConfigT, BuilderT]:
        """The entry of ``name``; unknown names raise ``error`` listing the choices."""
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._namespaces:
            if name not in self._resolved:  # a namespace handler may be costly (it can build a model's shapes)
                self._resolved[name] = self._namespaces[prefix].resolve(rest)
            return self._resolved[name]
        raise self.error(f"unknown {self.kind} {name!r}; choose one of {self.choices()}")
