"""Field names in rules: the event schema's dotted paths, and reading them off events.

A rule names event fields as dotted paths (``sa.spi``, ``policy.sel.src``).
:data:`SCHEMA_FIELDS` is every such path of every event class; :class:`FieldNames`
tells whether a rule's field is one of them (with a "did you mean" hint);
:func:`resolve` reads the values at a path from a msgspec struct or a plain dict.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from types import UnionType
from typing import Any, Union

import msgspec

from ... import events as ev

__all__ = ["MISSING", "SCHEMA_FIELDS", "FieldNames", "Path", "get", "resolve", "schema_fields", "split"]

#: a dotted field path, split at the dots
Path = tuple[str, ...]


def split(name: str) -> Path:
    return tuple(name.split("."))


# --- the event schema's field paths ------------------------------------------------------------


def _struct_types(tp: Any) -> Iterator[type[msgspec.Struct]]:
    """The struct classes inside a type hint (through unions, optionals and lists)."""
    origin = typing.get_origin(tp)
    if origin in (Union, UnionType, list, tuple, set, frozenset):
        for arg in typing.get_args(tp):
            yield from _struct_types(arg)
    elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp


def _walk_struct(cls: type[msgspec.Struct], prefix: str, out: set[str], stack: tuple[type, ...]) -> None:
    if cls in stack:  # a recursive type: stop, its paths are already there
        return
    hints = typing.get_type_hints(cls)
    tag_field = cls.__struct_config__.tag_field
    if tag_field is not None and cls.__struct_config__.tag is not None:
        out.add(prefix + tag_field)
    for f in msgspec.structs.fields(cls):
        for name in {f.encode_name, f.name}:
            path = prefix + name
            out.add(path)
            for sub in _struct_types(hints.get(f.name, f.type)):
                _walk_struct(sub, path + ".", out, (*stack, cls))


def schema_fields() -> frozenset[str]:
    """Every dotted field path of every event class (``in`` also as ``in_``), with ``type``."""
    out: set[str] = set()
    for cls in typing.get_args(ev.AnyEvent):
        _walk_struct(cls, "", out, ())
    return frozenset(out)


#: The default set of valid fields: every path of the event schema.
SCHEMA_FIELDS: frozenset[str] = schema_fields()


class FieldNames:
    """The field names rules may use: exact paths, and ``prefix.*`` for every path below a prefix."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, valid: AbstractSet[str]) -> None:
        self.exact = frozenset(f for f in valid if not f.endswith(".*"))
        self.prefixes = tuple(f[:-1] for f in valid if f.endswith(".*"))

    def problem(self, name: object) -> str | None:
        """Why ``name`` is no usable field path (``None`` if it is one)."""
        if not isinstance(name, str):
            return "a field name must be a string"
        if name in self.exact or name.startswith(self.prefixes):
            return None
        close = difflib.get_close_matches(name, self.exact, n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else " (see docs/events.md)"
        return f"unknown field '{name}': not in the xfrmwatch event schema{hint}"


# --- reading dotted paths off structs and dicts ----------------------------------------------------

#: what :func:`get` returns for an absent field
MISSING: Any = object()


@functools.cache
def _struct_names(cls: type[msgspec.Struct]) -> tuple[dict[str, str], str | None, Any]:
    names: dict[str, str] = {}
    for f in msgspec.structs.fields(cls):
        names[f.encode_name] = f.name
        names.setdefault(f.name, f.name)
    cfg = cls.__struct_config__
    return names, cfg.tag_field, cfg.tag


def get(obj: Any, name: str) -> Any:
    """One field of a struct (by encoded or attribute name, or the tag field) or a dict; :data:`MISSING` if absent."""
    if isinstance(obj, msgspec.Struct):
        # fast path: most encoded names are the attribute names (field paths are
        # validated against the schema at load time, so no other attribute is asked for)
        value = getattr(obj, name, MISSING)
        if value is not MISSING and name in obj.__struct_fields__:
            return value
        names, tag_field, tag = _struct_names(type(obj))
        attr = names.get(name)
        if attr is not None:
            return getattr(obj, attr)
        if name == tag_field and tag is not None:
            return tag
        return MISSING
    if isinstance(obj, Mapping):
        if name in obj:
            return obj[name]
        return obj.get(name[:-1] if name.endswith("_") else name + "_", MISSING)
    return MISSING


def _walk(obj: Any, parts: Path, i: int, out: list[Any]) -> None:
    while True:
        if obj is None or obj is MISSING:
            return
        if isinstance(obj, (list, tuple)):
            for x in obj:
                _walk(x, parts, i, out)
            return
        if i == len(parts):
            out.append(obj)
            return
        obj = get(obj, parts[i])
        i += 1


def resolve(obj: Any, parts: Path) -> list[Any]:
    """The values at a dotted path: lists on the way (and at the end) are flattened, nulls dropped."""
    out: list[Any] = []
    _walk(obj, parts, 0, out)
    return out
