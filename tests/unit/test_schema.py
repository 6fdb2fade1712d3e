"""The committed JSON Schema is the one generated from the event classes."""

import json

from support import SCHEMA_PATH, event_validator

from xfrmwatch import events as ev


def test_committed_schema_is_generated() -> None:
    """`xfrmwatch schema` output equals xfrmwatch/schema/events.schema.json."""
    assert ev.json_schema() == json.loads(SCHEMA_PATH.read_text())


def test_schema_names_every_event_type() -> None:
    """Each event type is one tagged alternative of the schema."""
    schema = json.loads(SCHEMA_PATH.read_text())
    tags = set()
    for d in schema["$defs"].values():
        t = d.get("properties", {}).get("type", {})
        if "enum" in t:
            tags.update(t["enum"])
        elif "const" in t:
            tags.add(t["const"])
    assert set(ev.EVENT_TYPES) == tags


def test_schema_rejects_key_fields() -> None:
    """An algorithm object with a key field is invalid: the schema forbids extra fields."""
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"]["Alg"].get("additionalProperties") is False
    assert "key" not in schema["$defs"]["Alg"]["properties"]
    event_validator()  # the schema itself is valid draft 2020-12


def test_event_docs_are_current() -> None:
    """docs/events.md is what `xfrmwatch schema --markdown` generates."""
    from support import ROOT

    from xfrmwatch.schema_doc import markdown

    assert markdown() == (ROOT / "docs" / "events.md").read_text()
