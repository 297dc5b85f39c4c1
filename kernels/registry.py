"""One helper for every name -> object table of the suite.

Methods, sizes, datasets, loss weights, MoE and mask backends, benchmark
providers and command-line verbs are each a ``Registry``: a read-only mapping
whose entries are added through ``register`` (a second entry under one name is
refused, so two plugins cannot silently shadow each other) and looked up
through ``lookup``, which answers an unknown name in one line with the valid
names and the closest one. It lives in the lowest layer (standard library
only) so kernels, methods and the harness can all use it.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class UnknownName(ValueError, KeyError):
    """A name that is not in a registry; the message lists the valid names.

    A ``ValueError`` for callers that validate input, a ``KeyError`` for those
    that treat the registry as a mapping.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def closest(name: object, valid: list[str]) -> str | None:
    """The valid name closest to ``name`` (case-insensitive), or None when nothing is near."""
    lowered = {v.lower(): v for v in valid}
    match = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


class Registry(Mapping[str, T], Generic[T]):
    """A named table: ``register`` adds, ``lookup`` finds or explains.

    ``kind`` names the entries in messages ("method", "MoE backend").
    ``case_insensitive`` lets ``lookup``/``canonical`` accept ``xl`` for ``XL``.
    ``sort_names`` lists the valid names sorted rather than in registration order.
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *,
                 case_insensitive: bool = False, sort_names: bool = False) -> None:
        self.kind = kind
        self.case_insensitive = case_insensitive
        self.sort_names = sort_names
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    # -- mapping interface ------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return self._find(name) is not None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    # -- registry ---------------------------------------------------------------------
    def register(self, name: str, value: T) -> T:
        """Add ``value`` under ``name``; a name already taken is refused."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        taken = self._find(name)
        if taken is not None:
            raise ValueError(f"{self.kind} '{name}' is already registered (as '{taken}'); "
                             "choose another name or unregister the first")
        self._entries[name] = value
        return value

    def unregister(self, name: str) -> T:
        """Remove and return an entry (for plugins and tests that add one temporarily)."""
        return self._entries.pop(self.canonical(name))

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@TABLE.decorator("name")`` registers the decorated object under ``name``."""
        return lambda value: self.register(name, value)

    def names(self) -> list[str]:
        names = list(self._entries)
        return sorted(names) if self.sort_names else names

    def _find(self, name: object) -> str | None:
        if not isinstance(name, str):
            return None
        if name in self._entries:
            return name
        if self.case_insensitive:
            for key in self._entries:
                if key.lower() == name.lower():
                    return key
        return None

    def unknown(self, name: object) -> UnknownName:
        """The one-line error for a name that is not here."""
        valid = self.names()
        near = closest(name, valid)
        hint = f" (did you mean '{near}'?)" if near is not None else ""
        return UnknownName(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid) or '(none)'}")

    def canonical(self, name: object) -> str:
        """The registered spelling of ``name`` ('xl' -> 'XL' when case-insensitive)."""
        key = self._find(name)
        if key is None:
            raise self.unknown(name)
        return key

    def lookup(self, name: object) -> T:
        """The entry for ``name``, or ``UnknownName`` naming the valid ones."""
        return self._entries[self.canonical(name)]
