"""Render the event model as a Markdown field reference (docs/events.md)."""

from __future__ import annotations

import inspect
import typing

import msgspec

from . import events as ev

HEADER = """# Event reference

Generated from `xfrmwatch/events.py` by `xfrmwatch schema --markdown`; the tests check it is
current. The JSON Schema is `xfrmwatch/schema/events.schema.json` (schema version {version}).

Field names are the same everywhere: in JSON output, in filters, in rules (nested fields as
dotted paths, e.g. `sa.auth.name`, `policy.sel.src`). Optional fields are omitted when the
kernel did not send them. There is no field for key bytes: algorithms carry name, key length
and ICV/truncation length only.

"""


def _type_name(tp: object) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        opt = len(args) < len(typing.get_args(tp))
        name = " \\| ".join(_type_name(a) for a in args)
        return name + (" (optional)" if opt else "")
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp))


def _fields(cls: type[msgspec.Struct]) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    info = msgspec.structs.fields(cls)
    return [(f.encode_name, _type_name(hints[f.name])) for f in info]


def _section(cls: type[msgspec.Struct], title: str) -> str:
    doc = inspect.getdoc(cls) or ""
    if cls.__doc__ is None or doc == inspect.getdoc(msgspec.Struct):
        doc = ""
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| field | type |", "|---|---|"]
    skip = {"time", "mono", "netns", "kind", "nlmsg_pid", "nlmsg_seq"} if title.startswith("`") else set()
    for name, tname in _fields(cls):
        if name not in skip:
            lines.append(f"| `{name}` | {tname} |")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    out = [HEADER.format(version=ev.SCHEMA_VERSION)]
    out.append(_section(ev.Event, "Common fields (every event)"))
    out.append("`type` names the event; `kind` is `event` for every event this version emits.\n")
    for cls in typing.get_args(ev.AnyEvent):
        tag = cls.__struct_config__.tag
        out.append(_section(cls, f"`{tag}`"))
    seen = set()
    records: list[type[msgspec.Struct]] = []

    def walk(tp: object) -> None:
        for a in typing.get_args(tp) or ():
            walk(a)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and tp not in seen:
            seen.add(tp)
            if not issubclass(tp, ev.Event):
                records.append(tp)
            for h in typing.get_type_hints(tp).values():
                walk(h)

    for cls in typing.get_args(ev.AnyEvent):
        walk(cls)
    out.append("# Records\n")
    for rec in sorted(records, key=lambda c: c.__name__):
        out.append(_section(rec, rec.__name__))
    return "\n".join(out)
