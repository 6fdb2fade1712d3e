"""The per-type pre-filter of detection rules never changes what matches."""

from pathlib import Path

from support import ROOT

from xfrmwatch import events as ev
from xfrmwatch.detect.sigma import load_rules
from xfrmwatch.netlink.decode import Decoder

HEAD = "logsource:\n    product: linux\n    service: xfrm\n"
EVENTS = [
    e
    for f in sorted((ROOT / "tests/fixtures").rglob("*.bin"))
    for e in Decoder("t").decode(f.read_bytes(), 0.0, 0.0)
]
RULES = {
    "type-only": "sel:\n        type: newsa\n    condition: sel",
    "type-or-field": "t:\n        type: newsa\n    p:\n        sa.proto: esp\n    condition: t or p",
    "not-type": "t:\n        type: newsa\n    condition: not t",
    "type-modifier": "t:\n        type|startswith: new\n    condition: t",
    "type-and-field": "t:\n        type: [expire, updsa]\n        sa.proto: esp\n    condition: t",
    "list-of-maps": "t:\n        - type: newae\n        - sa.mode: tunnel\n    condition: t",
    "one-of": "t_a:\n        type: acquire\n    t_b:\n        policy.dir: out\n    condition: 1 of t_*",
}


def _hits(rule: str, tmp: Path, events: list[ev.Event]) -> list[int]:
    (tmp / "r.yml").write_text(f"title: {rule}\n{HEAD}detection:\n    {RULES[rule]}\nlevel: low\n")
    rs = load_rules([tmp / "r.yml"], default_suppress=0.0).new_state()
    return [i for i, e in enumerate(events) if rs.process(e, float(i))]


def _brute(rule: str, events: list[ev.Event]) -> list[int]:
    """The same rule's meaning, written out in Python."""
    def tag(e: ev.Event) -> str:
        return str(e.__struct_config__.tag)

    def sa(e: ev.Event) -> ev.SA | None:
        return getattr(e, "sa", None)

    def pol(e: ev.Event) -> ev.Policy | None:
        return getattr(e, "policy", None)

    fns = {
        "type-only": lambda e: tag(e) == "newsa",
        "type-or-field": lambda e: tag(e) == "newsa" or (sa(e) is not None and sa(e).proto == "esp"),
        "not-type": lambda e: tag(e) != "newsa",
        "type-modifier": lambda e: tag(e).startswith("new"),
        "type-and-field": lambda e: tag(e) in ("expire", "updsa") and sa(e) is not None and sa(e).proto == "esp",
        "list-of-maps": lambda e: tag(e) == "newae" or (sa(e) is not None and sa(e).mode == "tunnel"),
        "one-of": lambda e: tag(e) == "acquire" or (pol(e) is not None and pol(e).dir == "out"),
    }
    return [i for i, e in enumerate(events) if fns[rule](e)]


def test_prefilter_keeps_every_match(tmp_path: Path) -> None:
    """For rules that do and do not restrict `type`, hits over every recorded event equal the rule's meaning."""
    for rule in RULES:
        expected = _brute(rule, EVENTS)
        assert expected, rule  # the fixtures exercise each rule
        assert expected == _hits(rule, tmp_path, EVENTS), rule
