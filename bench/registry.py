"""One small registry class, used for models, datasets and metrics.

Built-ins register through the same public ``register`` a user would call. An unknown name fails
with the valid names and a "did you mean".
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    return f"unknown {kind} '{name}'{did_you_mean(name, choices)}; valid: {', '.join(sorted(choices))}"


class Registry(Generic[T]):
    """Maps names (as written in suite files) to entries of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove ``name`` (a plugin's entry, a test's); returns its entry. Raises ConfigError if unknown."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, list(self._entries))) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
