"""Sigma rules: loading with pySigma, errors with file:line, matching, correlations, suppression."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from xfrmwatch import events as ev
from xfrmwatch.detect.sigma import SCHEMA_FIELDS, Hit, Limits, RuleError, RuleSet, RuleState, load_rules
from xfrmwatch.errors import EXIT_RULES, UserError

# --- events -------------------------------------------------------------------------------------

COMMON: dict[str, Any] = {
    "time": "2026-01-01T00:00:00Z",
    "mono": 0.0,
    "netns": "",
    "nlmsg_pid": 0,
    "nlmsg_seq": 0,
}


def selector(src: str = "10.0.0.0/24", dst: str = "10.0.1.0/24") -> ev.Selector:
    return ev.Selector(
        family="inet",
        src=src,
        dst=dst,
        proto="any",
        sport=0,
        sport_mask=0,
        dport=0,
        dport_mask=0,
        ifindex=0,
        user=0,
    )


def lifetime(hard_add: int | None = 3600) -> ev.Lifetime:
    return ev.Lifetime(
        soft_bytes=None,
        hard_bytes=None,
        soft_packets=None,
        hard_packets=None,
        soft_add_seconds=None,
        hard_add_seconds=hard_add,
        soft_use_seconds=None,
        hard_use_seconds=None,
    )


def sa(**kw: Any) -> ev.SA:
    fields: dict[str, Any] = {
        "family": "inet",
        "src": "192.0.2.1",
        "dst": "192.0.2.2",
        "proto": "esp",
        "spi": "0x0000c0de",
        "reqid": 1,
        "mode": "tunnel",
        "replay_window": 32,
        "flags": ["esn"],
        "seq": 0,
        "sel": selector(),
        "lifetime": lifetime(),
        "current": ev.Current(bytes=0, packets=0, add_time=None, use_time=None),
        "stats": ev.Stats(replay_window=32, replay=0, integrity_failed=0),
        "auth": ev.AuthAlg(name="hmac(md5)", key_bits=128),
    }
    fields.update(kw)
    return ev.SA(**fields)


def newsa(**kw: Any) -> ev.NewSA:
    return ev.NewSA(**COMMON, sa=sa(**kw))


def expire(hard: bool, **kw: Any) -> ev.Expire:
    return ev.Expire(**COMMON, hard=hard, sa=sa(**kw))


def template(proto: str = "esp", src: str = "192.0.2.1") -> ev.Template:
    return ev.Template(
        family="inet", src=src, dst="192.0.2.2", proto=proto, spi="0x00000000", reqid=1, mode="tunnel",
        share="any", optional=False, aalgos=0xFFFFFFFF, ealgos=0xFFFFFFFF, calgos=0xFFFFFFFF,
    )  # fmt: skip


def policy(tmpl: list[ev.Template] | None = None, action: str = "allow") -> ev.Policy:
    return ev.Policy(
        dir="out", action=action, index=8, priority=0, ptype="main", flags=[], share="any", sel=selector(),
        lifetime=lifetime(None), current=ev.Current(bytes=0, packets=0, add_time=None, use_time=None),
        tmpl=[template()] if tmpl is None else tmpl,
    )  # fmt: skip


def newpolicy(**kw: Any) -> ev.NewPolicy:
    return ev.NewPolicy(**COMMON, policy=policy(**kw))


def acquire(dst: str = "192.0.2.2") -> ev.AcquireEvent:
    acq = ev.Acquire(
        family="inet",
        src="192.0.2.1",
        dst=dst,
        proto="esp",
        spi="0x00000000",
        seq=1,
        aalgos=0,
        ealgos=0,
        calgos=0,
    )
    return ev.AcquireEvent(**COMMON, acquire=acq, sel=selector(), policy=policy())


def delsa(spi: str = "0x0000c0de") -> ev.DelSA:
    return ev.DelSA(**COMMON, id=ev.SaId(family="inet", dst="192.0.2.2", spi=spi, proto="esp"))


# --- rules --------------------------------------------------------------------------------------

HEAD = "title: test rule\nlogsource:\n  product: linux\n  service: xfrm\n"


def write(tmp_path: Path, text: str, name: str = "r.yml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str, **kw: Any) -> RuleState:
    """The rules in ``text``, loaded, with a fresh state to feed."""
    write(tmp_path, text)
    return load_rules([tmp_path], **kw).new_state()


def detection(selections: str, condition: str = "sel") -> str:
    """A rule with these selections (YAML at column 0, one mapping per selection)."""
    body = textwrap.indent(textwrap.dedent(selections).strip("\n"), "  ")
    return f"{HEAD}detection:\n{body}\n  condition: {condition}\n"


def matches(tmp_path: Path, selections: str, event: Any, condition: str = "sel") -> bool:
    rs = load(tmp_path, detection(selections, condition))
    return bool(rs.process(event, 0.0))


def errors(tmp_path: Path, *files: tuple[str, str]) -> list[str]:
    for name, text in files:
        write(tmp_path, text, name)
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path])
    return [e.replace(f"{tmp_path}/", "") for e in info.value.errors]


def error(tmp_path: Path, text: str) -> list[str]:
    return errors(tmp_path, ("r.yml", text))


def lines_of(text: str, needle: str) -> list[int]:
    """1-based numbers of the lines containing needle (of the text as written, dedented)."""
    lines = textwrap.dedent(text).lstrip("\n").splitlines()
    return [i + 1 for i, line in enumerate(lines) if needle in line]


def line_of(text: str, needle: str) -> int:
    return lines_of(text, needle)[0]


def last_line_of(text: str, needle: str) -> int:
    return lines_of(text, needle)[-1]


# --- the field schema ---------------------------------------------------------------------------


def test_schema_fields_cover_nested_paths() -> None:
    """The default valid fields are the dotted paths of every event struct, `type` and `in` included."""
    wanted = {
        "type",
        "nlmsg_pid",
        "sa.spi",
        "sa.auth.name",
        "sa.replay_window",
        "sa.lifetime.hard_add_seconds",
        "policy.sel.src",
        "policy.tmpl.proto",
        "counts.in",
        "in",
        "migrate.new_dst",
    }
    assert set() == wanted - SCHEMA_FIELDS


def test_valid_fields_parameter_accepts_prefixes(tmp_path: Path) -> None:
    """`valid_fields` replaces the schema; an entry `prefix.*` accepts every path below it."""
    write(tmp_path, detection("sel:\n  fields.peer: gw1"))
    rs = load_rules([tmp_path], valid_fields=SCHEMA_FIELDS | {"fields.*"}).new_state()
    assert [True, False] == [bool(rs.process({"fields": {"peer": g}}, 0.0)) for g in ("GW1", "gw2")]


# --- values and modifiers -----------------------------------------------------------------------

MODIFIER_CASES: list[tuple[str, Any, bool]] = [
    ("sa.auth.name: HMAC(MD5)", newsa(), True),
    ("sa.auth.name: hmac(sha1)", newsa(), False),
    ("sa.auth.name: 'hmac(*)'", newsa(), True),
    ("sa.auth.name: 'hmac(md?)'", newsa(), True),
    ("sa.auth.name: 'hmac(m?)'", newsa(), False),
    ("sa.auth.name: 'hmac(md5\\*'", newsa(auth=ev.AuthAlg(name="hmac(md5*", key_bits=1)), True),
    ("sa.auth.name: 'hmac(md5\\*'", newsa(), False),
    ("sa.auth.name|contains: MD", newsa(), True),
    ("sa.auth.name|contains: sha", newsa(), False),
    ("sa.auth.name|startswith: HMAC(", newsa(), True),
    ("sa.auth.name|startswith: md5", newsa(), False),
    ("sa.auth.name|endswith: MD5)", newsa(), True),
    ("sa.auth.name|endswith: hmac", newsa(), False),
    ("sa.auth.name|cased: hmac(md5)", newsa(), True),
    ("sa.auth.name|cased: HMAC(MD5)", newsa(), False),
    ("sa.auth.name|contains|all: [hmac, md5]", newsa(), True),
    ("sa.auth.name|contains|all: [hmac, sha]", newsa(), False),
    ("sa.auth.name|contains: [sha, md5]", newsa(), True),
    ("sa.auth.name|re: '^hmac\\((md5|sha1)\\)$'", newsa(), True),
    ("sa.auth.name|re: 'MD5'", newsa(), False),
    ("sa.auth.name|re|i: 'MD5'", newsa(), True),
    ("sa.auth.name|re: 'a.b'", {"sa": {"auth": {"name": "a\nb"}}}, False),
    ("sa.auth.name|re|s: 'a.b'", {"sa": {"auth": {"name": "a\nb"}}}, True),
    ("sa.auth.name|re|m: '^b$'", {"sa": {"auth": {"name": "a\nb"}}}, True),
    ("sa.dst|cidr: 192.0.2.0/24", newsa(), True),
    ("sa.dst|cidr: 198.51.100.0/24", newsa(), False),
    ("sa.sel.src|cidr: 10.0.0.0/16", newsa(), True),
    ("sa.sel.src|cidr: 10.0.0.0/25", newsa(), False),
    ("sa.dst|cidr: '2001:db8::/32'", newsa(), False),
    ("sa.dst|cidr: '2001:db8::/32'", newsa(family="inet6", dst="2001:db8::2"), True),
    ("sa.replay_window|gt: 31", newsa(), True),
    ("sa.replay_window|gt: 32", newsa(), False),
    ("sa.replay_window|gte: 32", newsa(), True),
    ("sa.replay_window|gte: 33", newsa(), False),
    ("sa.replay_window|lt: 33", newsa(), True),
    ("sa.replay_window|lt: 32", newsa(), False),
    ("sa.replay_window|lte: 32", newsa(), True),
    ("sa.replay_window|lte: 31", newsa(), False),
    ("sa.lifetime.hard_add_seconds|gt: 600", newsa(), True),
    ("sa.lifetime.hard_add_seconds|gt: 600", newsa(lifetime=lifetime(None)), False),
    ("sa.encap|exists: true", newsa(), False),
    ("sa.encap|exists: false", newsa(), True),
    ("sa.auth|exists: true", newsa(), True),
    ("sa.lifetime.hard_add_seconds: null", newsa(lifetime=lifetime(None)), True),
    ("sa.lifetime.hard_add_seconds: null", newsa(), False),
    ("sa.enc: null", newsa(), True),
    ("sa.replay_window: 32", newsa(), True),
    ("sa.replay_window: '32'", newsa(), True),
    ("sa.spi: 0xc0de", newsa(), True),
    ("sa.spi: 0x0000C0DE", newsa(), True),
    ("sa.spi: '0x0000C0DE'", newsa(), True),
    ("sa.spi: 0xbeef", newsa(), False),
    ("sa.spi|gte: 0x1000", newsa(), True),
    ("hard: true", expire(True), True),
    ("hard: true", expire(False), False),
    ("sa.flags: ESN", newsa(), True),
    ("sa.flags: decap_dscp", newsa(), False),
    ("sa.flags|all: [esn, af_unspec]", newsa(flags=["af_unspec", "esn"]), True),
    ("sa.flags|all: [esn, af_unspec]", newsa(), False),
    ("policy.tmpl.proto: ah", newpolicy(tmpl=[template("esp"), template("ah")]), True),
    ("policy.tmpl.proto: comp", newpolicy(tmpl=[template("esp"), template("ah")]), False),
    ("policy.tmpl.src|cidr: 192.0.2.0/30", newpolicy(), True),
    ("policy.tmpl.proto: null", newpolicy(tmpl=[]), True),
    ("type: newsa", newsa(), True),
    ("type: NEWPOLICY", newsa(), False),
    ("in: block", ev.DefaultPolicy(**COMMON, in_="block", fwd="accept", out="accept"), True),
    ("in: block", ev.DefaultPolicy(**COMMON, in_="accept", fwd="block", out="accept"), False),
    (
        "counts.in|gte: 2",
        ev.SpdInfo(
            **COMMON, counts=ev.SpdCounts(in_=2, out=0, fwd=0, in_socket=0, out_socket=0, fwd_socket=0)
        ),
        True,
    ),
    ("nlmsg_pid|gt: 0", newsa(), False),
    ("type: newsa", {"type": "newsa", "sa": {"spi": "0x1"}}, True),
    ("sa.spi: '0x1'", {"type": "newsa", "sa": {"spi": "0x1"}}, True),
    ("policy.tmpl.proto: ah", {"policy": {"tmpl": [{"proto": "esp"}, {"proto": "AH"}]}}, True),
    ("counts.in: 3", {"counts": {"in": 3}}, True),
    ("sa.enc.name: null", {"sa": {}}, True),
]


@pytest.mark.parametrize(("selection", "event", "expected"), MODIFIER_CASES)
def test_values_and_modifiers(tmp_path: Path, selection: str, event: Any, expected: bool) -> None:
    """Each value form and modifier matches what it should, and only that."""
    assert expected == matches(tmp_path, f"sel:\n  {selection}", event)


def test_map_is_and_list_of_maps_is_or(tmp_path: Path) -> None:
    """A selection map needs every field; a list of maps needs any one of them."""
    both = "sel:\n  sa.proto: esp\n  sa.mode: transport"
    either = "sel:\n  - sa.proto: ah\n  - sa.mode: tunnel"
    assert [False, True, True, False] == [
        matches(tmp_path, both, newsa()),
        matches(tmp_path, both, newsa(mode="transport")),
        matches(tmp_path, either, newsa()),
        matches(tmp_path, either, newsa(mode="transport")),
    ]


CONDITIONS: list[tuple[str, bool]] = [
    ("sel_esp and sel_md5", True),
    ("sel_esp and sel_ah", False),
    ("sel_ah or sel_md5", True),
    ("not sel_ah", True),
    ("not sel_esp", False),
    ("sel_esp and not (sel_ah or sel_md5)", False),
    ("(sel_esp or sel_ah) and not sel_ah", True),
    ("1 of sel_*", True),
    ("all of sel_*", False),
    ("all of sel_e*", True),
    ("1 of them", True),
    ("all of them", False),
    ("any of sel_a*", False),
]


@pytest.mark.parametrize(("condition", "expected"), CONDITIONS)
def test_conditions(tmp_path: Path, condition: str, expected: bool) -> None:
    """and, or, not, parentheses and `1 of`/`all of` patterns and `them` combine selections."""
    sels = "sel_esp:\n  sa.proto: esp\nsel_ah:\n  sa.proto: ah\nsel_md5:\n  sa.auth.name|contains: md5"
    assert expected == matches(tmp_path, sels, newsa(), condition)


def test_condition_list_is_or(tmp_path: Path) -> None:
    """A list of conditions fires when any of them holds."""
    text = (
        f"{HEAD}detection:\n  a:\n    sa.proto: ah\n  b:\n    sa.proto: esp\n  condition:\n    - a\n    - b\n"
    )
    assert 1 == len(load(tmp_path, text).process(newsa(), 0.0))


# --- errors, each with file:line ----------------------------------------------------------------


def test_rule_error_is_a_usage_error_listing_lines() -> None:
    """RuleError is a UserError (exit code EXIT_RULES) whose text is one problem per line."""
    e = RuleError(["a.yml:1: x", "a.yml:2: y"])
    assert (True, EXIT_RULES, "a.yml:1: x\na.yml:2: y") == (isinstance(e, UserError), e.exit_code, str(e))


SELECTION_ERRORS: list[tuple[str, str]] = [
    (
        "sa.dsst: 192.0.2.2",
        "unknown field 'sa.dsst': not in the xfrmwatch event schema; did you mean 'sa.dst'?",
    ),
    ("sa.nothing: 1", "unknown field 'sa.nothing': not in the xfrmwatch event schema (see docs/events.md)"),
    (
        "sa.spi|base64: x",
        "modifier 'base64' is not supported by xfrmwatch (supported: contains, startswith, endswith, all, "
        "cased, re, i, m, s, cidr, gt, gte, lt, lte, exists)",
    ),
    ("sa.spi|bogus: x", "unknown modifier 'bogus'"),
    ("sa.spi|re: '(unclosed'", "Regular expression '(unclosed' is invalid: missing ): (unclosed"),
    ("sa.dst|cidr: 10.0.0.1/24", "Invalid CIDR expression: 10.0.0.1/24 has host bits set"),
    ("sa.replay_window|gt: many", "Modifier SigmaGreaterThanModifier incompatible to value type of 'many'"),
    ("sa.encap|exists: maybe", "Modifier SigmaExistsModifier incompatible to value type of 'maybe'"),
    ("'|contains': md5", "keyword detections with modifiers are not supported: name a field"),
    ("sa.sel: {src: x}", "Unsupported type: <class 'dict'>"),
]


@pytest.mark.parametrize(("item", "reason"), SELECTION_ERRORS)
def test_selection_errors_name_the_line(tmp_path: Path, item: str, reason: str) -> None:
    """A bad detection item is reported at its own line with the reason."""
    text = detection(f"sel:\n  type: newsa\n  {item}")
    assert [f"r.yml:{line_of(text, item.split(':')[0])}: {reason}"] == error(tmp_path, text)


def test_keyword_detections_are_rejected(tmp_path: Path) -> None:
    """Plain values (keywords), alone or in lists, are rejected where they stand."""
    text = detection("kw1: esp\nkw2:\n  - a\n  - b\nsel:\n  - sa.proto: esp\n  - just a value", "1 of them")
    reason = (
        "keyword (plain value) detections are not supported: match a field, e.g. `sa.auth.name: hmac(md5)`"
    )
    assert [
        f"r.yml:{line_of(text, 'kw1')}: {reason}",
        f"r.yml:{line_of(text, 'kw2')}: {reason}",
        f"r.yml:{line_of(text, 'just a value')}: {reason}",
    ] == error(tmp_path, text)


LOGSOURCE_ERRORS: list[tuple[str, str, str]] = [
    (
        "  product: windows\n  service: xfrm\n",
        "product",
        "logsource product must be 'linux' (xfrmwatch's own events), not 'windows'",
    ),
    ("  product: linux\n  service: sshd\n", "service", "logsource service must be 'xfrm', not 'sshd'"),
    (
        "  product: linux\n  service: xfrm\n  category: network\n",
        "category",
        "logsource category is not used by xfrmwatch: select event types with `type:` in the detection",
    ),
    ("  product: linux\n", "logsource", "logsource must be {product: linux, service: xfrm}"),
]


@pytest.mark.parametrize(("logsource", "where", "reason"), LOGSOURCE_ERRORS)
def test_logsource_must_be_linux_xfrm(tmp_path: Path, logsource: str, where: str, reason: str) -> None:
    """Only `logsource: {product: linux, service: xfrm}` is accepted."""
    text = f"title: t\nlogsource:\n{logsource}detection:\n  sel:\n    type: newsa\n  condition: sel\n"
    assert [f"r.yml:{line_of(text, where)}: {reason}"] == error(tmp_path, text)


def test_missing_logsource_is_reported_at_the_rule(tmp_path: Path) -> None:
    """pySigma's own errors without a key to point at name the rule's first line."""
    text = "title: t\ndetection:\n  sel:\n    type: newsa\n  condition: sel\n"
    assert ["r.yml:1: Sigma rule must have a log source"] == error(tmp_path, text)


CONDITION_ERRORS: list[tuple[str, str]] = [
    ("sel and nope", "Detection 'nope' not defined in detections"),
    ("1 of other*", "Selector '1 of other*' doesn't match any detection"),
    (
        "sel and",
        "Expected {{{'1' | 'any' | 'all'} 'of' W:(*0-9A-Z_a-z)} | W:(-0-9A-Z_a-z)}, found end of text  (at char 7), (line:1, col:8)",
    ),
    (
        "sel | count() > 5",
        "The pipe syntax in Sigma conditions has been deprecated and replaced by Sigma correlations. "
        "pySigma doesn't supports this syntax.",
    ),
]


@pytest.mark.parametrize(("condition", "reason"), CONDITION_ERRORS)
def test_condition_errors_name_the_condition_line(tmp_path: Path, condition: str, reason: str) -> None:
    """pySigma's condition errors are reported at the condition's line."""
    text = detection("sel:\n  type: newsa", f"'{condition}'")
    assert [f"r.yml:{line_of(text, 'condition')}: {reason}"] == error(tmp_path, text)


def test_condition_checked_even_when_a_selection_is_wrong(tmp_path: Path) -> None:
    """A wrong selection does not hide a wrong condition: both are reported."""
    text = detection("sel:\n  sa.nope: 1", "sel and other")
    assert [
        f"r.yml:{line_of(text, 'sa.nope')}: unknown field 'sa.nope': not in the xfrmwatch event schema "
        "(see docs/events.md)",
        f"r.yml:{line_of(text, 'condition')}: Detection 'other' not defined in detections",
    ] == error(tmp_path, text)


def test_metadata_errors_name_their_keys(tmp_path: Path) -> None:
    """Bad level, id, status and tags are reported at their own lines."""
    text = detection("sel:\n  type: newsa") + "level: severe\nid: not-a-uuid\nstatus: shiny\ntags: notalist\n"
    assert [
        f"r.yml:{line_of(text, 'level')}: 'severe' is not a valid Sigma rule level",
        f"r.yml:{line_of(text, 'id:')}: Sigma rule identifier must be an UUID",
        f"r.yml:{line_of(text, 'status')}: 'shiny' is not a valid Sigma rule status",
        f"r.yml:{line_of(text, 'tags')}: Sigma tags fields must be a list",
    ] == error(tmp_path, text)


def test_generic_pysigma_errors_are_placed_by_probing(tmp_path: Path) -> None:
    """An error whose pySigma class names no key is placed at the optional key whose removal clears it."""
    rule = detection("sel:\n  type: newsa") + "name: base\ntags: [nodot]\n"
    corr = "---\ntitle: c\ncorrelation:\n  type: event_count\n  rules: base\n  generate: maybe\n  timespan: 1m\n  condition: {gte: 2}\n"
    got = error(tmp_path, rule + corr)
    assert [line_of(rule, "tags"), last_line_of(rule + corr, "generate")] == [
        int(e.split(":")[1]) for e in got
    ]


def test_error_lines_do_not_depend_on_pysigma_wording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pySigma messages replaced by opaque text land on the same lines."""
    import hashlib

    import sigma.exceptions

    rule = detection("sel:\n  type: newsa") + "name: base\nlevel: severe\ntags: [nodot]\n"
    corr = "---\ntitle: c\ncorrelation:\n  type: event_count\n  rules: base\n  generate: maybe\n  timespan: 1m\n  condition: {gte: 2}\n"

    def lines() -> list[str]:
        return [e.split(": ", 1)[0] for e in error(tmp_path, rule + corr)]

    before = lines()
    original = sigma.exceptions.SigmaError.__init__

    def reworded(self: Exception, *args: Any, **kw: Any) -> None:
        original(self, *[hashlib.sha1(a.encode()).hexdigest() if isinstance(a, str) else a for a in args], **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sigma.exceptions.SigmaError, "__init__", reworded)
    assert len(before) == 3
    assert before == lines()


def test_missing_title_names_the_rule(tmp_path: Path) -> None:
    """A rule without title is reported at its first line."""
    text = "---\nlogsource:\n  product: linux\n  service: xfrm\ndetection:\n  sel:\n    type: newsa\n  condition: sel\n"
    assert ["r.yml:2: Sigma rule must have a title"] == error(tmp_path, text)


def test_timeframe_is_rejected(tmp_path: Path) -> None:
    """Sigma 1's `timeframe` is rejected in favour of correlation rules."""
    text = detection("sel:\n  type: newsa\ntimeframe: 5m")
    reason = "'timeframe' (Sigma 1) is not supported: use a correlation rule with a timespan"
    assert [f"r.yml:{line_of(text, 'timeframe')}: {reason}"] == error(tmp_path, text)


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported at the line the parser stopped."""
    text = detection("sel:\n  type: [newsa") + "level: high\n"
    got = error(tmp_path, text)
    assert (1, True) == (len(got), got[0].startswith(f"r.yml:{line_of(text, 'condition')}: invalid YAML: "))


def test_duplicate_key_has_its_line(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error at its second occurrence."""
    text = detection("sel:\n  type: newsa\n  type: updsa")
    assert [f"r.yml:{line_of(text, 'updsa')}: duplicate key 'type'"] == error(tmp_path, text)


def test_every_error_of_every_file_is_reported(tmp_path: Path) -> None:
    """Errors of several rules, documents and files are all reported, by file and line."""
    a = detection("sel:\n  sa.x: 1\n  sa.y|wide: 2") + "---\n" + detection("sel:\n  sa.z: 3")
    b = detection("sel:\n  type: newsa") + "level: loud\n"
    got = errors(tmp_path, ("a.yml", a), ("sub/b.yaml", b))
    assert [
        f"a.yml:{line_of(a, 'sa.x')}",
        f"a.yml:{line_of(a, 'sa.y')}",
        f"a.yml:{line_of(a, 'sa.y')}",
        f"a.yml:{line_of(a, 'sa.z')}",
        f"sub/b.yaml:{line_of(b, 'level')}",
    ] == [":".join(e.split(":")[:2]) for e in got]


OPTION_ERRORS: list[tuple[str, str, str]] = [
    (
        "xfrmwatch:\n  quiet: true\n",
        "quiet",
        "unknown xfrmwatch option 'quiet' (known: suppress, suppress_by)",
    ),
    (
        "xfrmwatch:\n  suppress: soon\n",
        "suppress",
        "suppress must be a period like 30s, 5m, 1h, 1d or seconds (0 turns suppression off)",
    ),
    (
        "xfrmwatch:\n  suppress_by: [sa.spi, sa.spy]\n",
        "sa.spy",
        "unknown field 'sa.spy': not in the xfrmwatch event schema; did you mean 'sa.spi'?",
    ),
    ("xfrmwatch: 5m\n", "xfrmwatch", "xfrmwatch: must be a mapping (keys: suppress, suppress_by)"),
]


@pytest.mark.parametrize(("options", "where", "reason"), OPTION_ERRORS)
def test_xfrmwatch_options_are_checked(tmp_path: Path, options: str, where: str, reason: str) -> None:
    """The `xfrmwatch` key accepts only suppress and suppress_by with valid values."""
    text = detection("sel:\n  type: newsa") + options
    assert [f"r.yml:{line_of(text, where)}: {reason}"] == error(tmp_path, text)


def test_filters_and_collection_actions_are_rejected(tmp_path: Path) -> None:
    """Sigma filter rules and `action: global` documents are unsupported, at their key."""
    text = "action: global\nlogsource:\n  product: linux\n---\ntitle: f\nfilter:\n  rules: [x]\n"
    assert [
        "r.yml:1: Sigma collection actions (global, reset, repeat) are not supported: write rules out",
        "r.yml:6: Sigma filter rules are not supported",
    ] == error(tmp_path, text)


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    """Two rules with one id are an error at the second, naming the first."""
    rid = "id: 5638f7c0-ac70-491d-8465-2a65075e0d86\n"
    a = detection("sel:\n  type: newsa") + rid
    got = errors(tmp_path, ("a.yml", a), ("b.yml", a))
    line = line_of(a, "id:")
    assert [
        f"b.yml:{line}: duplicate rule id '5638f7c0-ac70-491d-8465-2a65075e0d86' (first at a.yml:{line})"
    ] == got


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    """A rule path that does not exist is reported."""
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path / "nope.yml"])
    assert [f"{tmp_path}/nope.yml:1: no such file or directory"] == info.value.errors


BASE = detection("sel:\n  type: newsa") + "name: base\n"


def correlation(body: str, extra: str = "") -> str:
    return (
        BASE
        + "---\ntitle: corr\ncorrelation:\n"
        + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ")
        + "\n"
        + extra
    )


CORRELATION_ERRORS: list[tuple[str, str, str]] = [
    (
        "type: value_sum\nrules: base\ntimespan: 1m\ncondition: {field: sa.replay_window, gte: 5}",
        "value_sum",
        "correlation type 'value_sum' is not supported by xfrmwatch "
        "(supported: event_count, value_count, temporal, temporal_ordered)",
    ),
    (
        "type: event_count\nrules: [base, ghost]\ntimespan: 1m\ncondition: {gte: 5}",
        "ghost",
        "rule 'ghost' not found (no rule has this name or id)",
    ),
    (
        "type: event_count\nrules: base\ngroup-by: [sa.dts]\ntimespan: 1m\ncondition: {gte: 5}",
        "sa.dts",
        "unknown field 'sa.dts': not in the xfrmwatch event schema; did you mean 'sa.dst'?",
    ),
    (
        "type: event_count\nrules: base\ntimespan: 1m\ncondition: {gt: 5, lte: 10}",
        "condition",
        "one comparison per condition (pySigma): chain two correlations for a range",
    ),
    (
        "type: temporal\nrules: base\ntimespan: 1m\ncondition: base and not base",
        "condition",
        "extended (string) correlation conditions are not supported: list the rules instead",
    ),
    (
        "type: temporal_ordered\nrules: base\ntimespan: 1m\ncondition: {gte: 1}",
        "condition",
        "temporal_ordered takes no condition: every rule must match, in order",
    ),
    (
        "type: value_count\nrules: base\ntimespan: 1m\ncondition: {gte: 3}",
        "condition",
        "value_count needs the field whose distinct values it counts: {field: ..., gte: N}",
    ),
    (
        "type: event_count\nrules: base\ntimespan: 1m\ncondition: {gte: many}",
        "gte",
        "'gte' needs a number, not 'many'",
    ),
    (
        "type: event_count\nrules: base\ntimespan: 5 minutes\ncondition: {gte: 2}",
        "timespan",
        "Timespan '5 minutes' is invalid.",
    ),
    (
        "type: event_count\nrules: base\ngroupby: sa.dst\ntimespan: 1m\ncondition: {gte: 2}",
        "groupby",
        "unknown correlation key 'groupby' (known: aliases, condition, generate, group-by, rules, timespan, type)",
    ),
    (
        "type: temporal\nrules: base\ngroup-by: ip\ntimespan: 1m\naliases:\n  ip:\n    base: sa.dst\n    other: sa.src",
        "other",
        "alias names rule 'other', which is not in rules",
    ),
    (
        "type: event_count\nrules: base\ntimespan: 1m",
        "correlation",
        "event_count needs a condition such as {gte: 10}",
    ),
]


@pytest.mark.parametrize(("body", "where", "reason"), CORRELATION_ERRORS)
def test_correlation_errors_name_the_line(tmp_path: Path, body: str, where: str, reason: str) -> None:
    """Unsupported or wrong correlation settings are reported at their line."""
    text = correlation(body)
    assert [f"r.yml:{last_line_of(text, where)}: {reason}"] == error(tmp_path, text)


def test_alias_needs_a_field_for_every_rule(tmp_path: Path) -> None:
    """An alias must give a field for each rule of the correlation."""
    text = TWO_RULES + (
        "title: c\ncorrelation:\n  type: temporal\n  rules: [hard, acq]\n  group-by: dst\n  timespan: 1m\n"
        "  aliases:\n    dst:\n      hard: sa.dst\n"
    )
    assert [f"r.yml:{line_of(text, 'dst:')}: alias 'dst' has no field for rule 'acq'"] == error(
        tmp_path, text
    )


def test_suppress_by_is_for_detection_rules(tmp_path: Path) -> None:
    """A correlation cannot say suppress_by: it suppresses per group-by."""
    text = correlation(
        "type: event_count\nrules: base\ntimespan: 1m\ncondition: {gte: 2}",
        "xfrmwatch:\n  suppress_by: sa.spi\n",
    )
    reason = "suppress_by is for detection rules: a correlation suppresses per group-by"
    assert [f"r.yml:{line_of(text, 'suppress_by')}: {reason}"] == error(tmp_path, text)


def test_correlation_cycle_is_an_error(tmp_path: Path) -> None:
    """Correlations that reference each other in a cycle are rejected."""
    text = (
        "title: a\nname: a\ncorrelation:\n  type: event_count\n  rules: b\n  timespan: 1m\n  condition: {gte: 2}\n"
        "---\ntitle: b\nname: b\ncorrelation:\n  type: event_count\n  rules: a\n  timespan: 1m\n  condition: {gte: 2}\n"
    )
    assert ["r.yml:5: correlation rules reference each other in a cycle"] == error(tmp_path, text)


# --- loading -------------------------------------------------------------------------------------


def test_directories_load_recursively(tmp_path: Path) -> None:
    """Every .yml and .yaml file below a directory is loaded, other files are not."""
    write(tmp_path, detection("sel:\n  type: newsa"), "a.yml")
    write(
        tmp_path, detection("sel:\n  type: delsa") + "---\n" + detection("sel:\n  type: expire"), "x/y/b.yaml"
    )
    write(tmp_path, "not: [a rule", "notes.txt")
    rs = load_rules([tmp_path])
    assert (3, ["a.yml:1", "x/y/b.yaml:1", "x/y/b.yaml:10"]) == (
        len(rs),
        sorted(r.source.replace(f"{tmp_path}/", "") for r in rs.rules),
    )


def test_hit_carries_rule_metadata(tmp_path: Path) -> None:
    """A hit has the rule's id, title, level, tags, its kind and the event."""
    text = detection("sel:\n  type: newsa") + (
        "id: 5638f7c0-ac70-491d-8465-2a65075e0d86\nlevel: high\ntags:\n  - attack.t1600\n  - xfrm.weak\n"
    )
    rs = load(tmp_path, text)
    event = newsa()
    hit = Hit(
        rule_id="5638f7c0-ac70-491d-8465-2a65075e0d86", title="test rule", level="high",
        tags=["attack.t1600", "xfrm.weak"], kind="detection", group={}, events=[event], time=5.0,
        source=f"{tmp_path}/r.yml:1",
    )  # fmt: skip
    assert [hit] == rs.process(event, 5.0)


def test_rule_without_id_or_level(tmp_path: Path) -> None:
    """Without id the hit names the rule by name (else file:line); without level it is medium."""
    rs = load(
        tmp_path, detection("sel:\n  type: newsa") + "name: weak\n---\n" + detection("sel:\n  type: newsa")
    )
    assert [("weak", "medium"), (f"{tmp_path}/r.yml:11", "medium")] == [
        (h.rule_id, h.level) for h in rs.process(newsa(), 0.0)
    ]


def test_alerts_are_schema_events(tmp_path: Path) -> None:
    """Hit.to_alert gives the schema's `alert` event: a rule reference and string group values."""
    text = (
        detection("sel:\n  type: newsa") + "name: weak\nlevel: low\nxfrmwatch:\n  suppress_by: [sa.reqid]\n"
    )
    rs = load(tmp_path, text)
    event = newsa()
    expected = ev.Alert(
        **{**COMMON, "mono": 7.0, "time": "2026-01-01T00:00:00.250000Z"},
        rule=ev.RuleRef(id="weak", title="test rule", level="low", tags=[]),
        group={"sa.reqid": "1"},
        events=[event],
    )
    assert [expected] == [h.to_alert(wall=1767225600.25, netns="") for h in rs.process(event, 7.0)]


# --- correlations ---------------------------------------------------------------------------------


def event_count(extra: str = "", gte: int = 3, group_by: str = "[sa.dst]") -> str:
    return correlation(
        f"type: event_count\nrules: base\ngroup-by: {group_by}\ntimespan: 30s\ncondition: {{gte: {gte}}}",
        "name: many\nxfrmwatch:\n  suppress: 0\n" + extra,
    )


def feed(rules: RuleSet | RuleState, events: list[tuple[float, Any]]) -> list[tuple[float, Hit]]:
    state = rules.new_state() if isinstance(rules, RuleSet) else rules
    return [(t, h) for t, e in events for h in state.process(e, t)]


def test_event_count_fires_within_the_timespan(tmp_path: Path) -> None:
    """event_count fires when the count per group reaches the condition inside the window."""
    rs = load(tmp_path, event_count())
    got = feed(rs, [(0.0, newsa()), (10.0, newsa()), (20.0, newsa())])
    assert [(20.0, "many", {"sa.dst": "192.0.2.2"}, 3)] == [
        (t, h.name, h.group, len(h.events)) for t, h in got
    ]


def test_event_count_window_slides(tmp_path: Path) -> None:
    """Matches older than the timespan no longer count."""
    rs = load(tmp_path, event_count())
    assert [] == feed(rs, [(0.0, newsa()), (20.0, newsa()), (31.0, newsa()), (52.0, newsa())])


def test_event_count_groups_are_separate(tmp_path: Path) -> None:
    """Counts are kept per group-by value."""
    rs = load(tmp_path, event_count(gte=2))
    got = feed(
        rs, [(0.0, newsa(dst="192.0.2.7")), (1.0, newsa()), (2.0, newsa(dst="192.0.2.8")), (3.0, newsa())]
    )
    assert [(3.0, {"sa.dst": "192.0.2.2"})] == [(t, h.group) for t, h in got]


def test_event_count_starts_afresh_after_firing(tmp_path: Path) -> None:
    """After a firing the group counts from zero again."""
    rs = load(tmp_path, event_count(gte=2))
    assert [1.0, 3.0] == [t for t, _ in feed(rs, [(float(t), newsa()) for t in range(5)])]


def test_event_count_without_group_by_counts_all(tmp_path: Path) -> None:
    """Without group-by every match counts in one group."""
    text = correlation(
        "type: event_count\nrules: base\ntimespan: 30s\ncondition: {eq: 2}", "xfrmwatch:\n  suppress: 0\n"
    )
    rs = load(tmp_path, text)
    assert [(1.0, {})] == [(t, h.group) for t, h in feed(rs, [(0.0, newsa(dst="a")), (1.0, newsa(dst="b"))])]


def test_hit_events_are_capped(tmp_path: Path) -> None:
    """A correlation hit carries at most max_hit_events events, the latest ones."""
    write(tmp_path, event_count(gte=25))
    rs = load_rules([tmp_path], max_hit_events=20)
    got = feed(rs, [(float(i), newsa(reqid=i)) for i in range(25)])
    assert [list(range(5, 25))] == [[e.sa.reqid for e in h.events] for _, h in got]


def test_events_without_group_field_are_not_counted(tmp_path: Path) -> None:
    """A match lacking a group-by field does not count for the correlation."""
    base = detection("sel:\n  type: [newsa, delsa]") + "name: base\n"
    text = base + "---\ntitle: c\ncorrelation:\n  type: event_count\n  rules: base\n  group-by: sa.spi\n"
    text += "  timespan: 1m\n  condition: {gte: 2}\n"
    rs = load(tmp_path, text)
    assert [] == feed(rs, [(0.0, delsa()), (1.0, delsa()), (2.0, newsa())])


def test_value_count_counts_distinct_values(tmp_path: Path) -> None:
    """value_count fires on the number of distinct values of its field per group."""
    text = correlation(
        "type: value_count\nrules: base\ngroup-by: sa.dst\ntimespan: 1m\ncondition: {field: sa.spi, gte: 3}",
        "xfrmwatch:\n  suppress: 0\n",
    )
    rs = load(tmp_path, text)
    spis = ["0x1", "0x2", "0x1", "0x2", "0x3"]
    got = feed(rs, [(float(i), newsa(spi=s)) for i, s in enumerate(spis)])
    assert [(4.0, 5)] == [(t, len(h.events)) for t, h in got]


def test_value_count_window_forgets_values(tmp_path: Path) -> None:
    """Values that left the window are no longer distinct values of it."""
    text = correlation(
        "type: value_count\nrules: base\ntimespan: 10s\ncondition: {field: sa.spi, gte: 2}",
        "xfrmwatch:\n  suppress: 0\n",
    )
    rs = load(tmp_path, text)
    assert [] == feed(rs, [(0.0, newsa(spi="0x1")), (11.0, newsa(spi="0x2")), (22.0, newsa(spi="0x3"))])


TWO_RULES = (
    detection("sel:\n  type: expire\n  hard: true")
    + "name: hard\n---\n"
    + detection("sel:\n  type: acquire")
    + "name: acq\n---\n"
)


def temporal(kind: str, timespan: str = "1m") -> str:
    return TWO_RULES + (
        f"title: blackhole\ncorrelation:\n  type: {kind}\n  rules: [hard, acq]\n  group-by: dst\n"
        f"  timespan: {timespan}\n  aliases:\n    dst:\n      hard: sa.dst\n      acq: acquire.dst\n"
        "xfrmwatch:\n  suppress: 0\n"
    )


def test_temporal_needs_every_rule_in_any_order(tmp_path: Path) -> None:
    """temporal fires when every rule matched in the window, whatever the order, grouped via aliases."""
    rs = load(tmp_path, temporal("temporal"))
    got = feed(rs, [(0.0, acquire()), (1.0, acquire("198.51.100.1")), (5.0, expire(True))])
    assert [(5.0, {"dst": "192.0.2.2"}, ["acquire", "expire"])] == [
        (t, h.group, [type(e).__struct_config__.tag for e in h.events]) for t, h in got
    ]


def test_temporal_window_expires(tmp_path: Path) -> None:
    """temporal does not fire when the rules matched further apart than the timespan."""
    rs = load(tmp_path, temporal("temporal", "10s"))
    assert [] == feed(rs, [(0.0, acquire()), (11.0, expire(True))])


def test_temporal_ordered_needs_the_order(tmp_path: Path) -> None:
    """temporal_ordered fires only when the rules matched in the listed order."""
    rs = load(tmp_path, temporal("temporal_ordered"))
    wrong_order = feed(rs, [(0.0, acquire()), (1.0, expire(True))])
    right_order = feed(rs, [(2.0, expire(True)), (3.0, acquire())])
    assert ([], [3.0]) == (wrong_order, [t for t, _ in right_order])


def test_temporal_ordered_needs_distinct_events(tmp_path: Path) -> None:
    """One event matching two rules of a temporal_ordered correlation does not complete it."""
    text = (
        detection("sel:\n  type: newsa")
        + "name: a\n---\n"
        + detection("sel:\n  sa.proto: esp")
        + "name: b\n---\n"
        "title: seq\ncorrelation:\n  type: temporal_ordered\n  rules: [a, b]\n  timespan: 1m\n"
    )
    rs = load(tmp_path, text)
    assert [[], [1.0]] == [
        [t for t, _ in feed(rs, [(0.0, newsa())])],
        [t for t, _ in feed(rs, [(1.0, newsa())])],
    ]


def test_temporal_condition_counts_distinct_rules(tmp_path: Path) -> None:
    """A temporal condition compares the number of distinct rules that matched."""
    text = TWO_RULES + (
        "title: any\ncorrelation:\n  type: temporal\n  rules: [hard, acq]\n  timespan: 1m\n  condition: {gte: 1}\n"
    )
    rs = load(tmp_path, text)
    assert [0.0] == [t for t, _ in feed(rs, [(0.0, acquire())])]


def test_referenced_rules_do_not_fire_unless_generate(tmp_path: Path) -> None:
    """Rules referenced by a correlation give no hits of their own unless it says generate: true."""
    quiet = load(tmp_path, event_count(gte=5))
    (tmp_path / "r.yml").unlink()
    loud = load(
        tmp_path, event_count(gte=5).replace("condition: {gte: 5}", "condition: {gte: 5}\n  generate: true")
    )
    assert ([], ["test rule"]) == (
        [h.title for h in quiet.process(newsa(), 0.0)],
        [h.title for h in loud.process(newsa(), 0.0)],
    )


def test_correlations_chain(tmp_path: Path) -> None:
    """A correlation may reference a correlation (the specification's failed-then-success example)."""
    text = (
        detection("sel:\n  type: expire")
        + "name: exp\n---\n"
        + detection("sel:\n  type: newsa")
        + "name: new\n---\n"
        "title: many expires\nname: many\ncorrelation:\n  type: event_count\n  rules: exp\n  group-by: sa.dst\n"
        "  timespan: 1m\n  condition: {gte: 2}\n---\n"
        "title: churn\ncorrelation:\n  type: temporal_ordered\n  rules: [many, new]\n  group-by: sa.dst\n"
        "  timespan: 5m\nlevel: high\n"
    )
    rs = load(tmp_path, text)
    got = feed(rs, [(0.0, expire(False)), (10.0, expire(True)), (20.0, newsa())])
    assert [(20.0, "churn", "high", {"sa.dst": "192.0.2.2"}, ["expire", "expire", "newsa"])] == [
        (t, h.title, h.level, h.group, [type(e).__struct_config__.tag for e in h.events]) for t, h in got
    ]


def test_group_count_is_bounded(tmp_path: Path) -> None:
    """Past max_groups the least recently used group is forgotten."""
    write(tmp_path, event_count(gte=2))
    rs = load_rules([tmp_path], max_groups=2)
    events = [(0.0, newsa(dst="a")), (1.0, newsa(dst="b")), (2.0, newsa(dst="c")), (3.0, newsa(dst="a"))]
    assert [] == feed(rs, events)


def test_idle_groups_are_swept(tmp_path: Path) -> None:
    """Groups untouched for longer than the timespan are dropped."""
    rs = load(tmp_path, event_count(gte=2))
    feed(rs, [(0.0, newsa(dst="a")), (1.0, newsa(dst="b")), (40.0, newsa(dst="c"))])
    assert (1,) == rs.statistics().groups


async def test_trio_clock_drives_the_window(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """With trio's (mock) clock as `now`, a window spans trio time."""
    rs = load(tmp_path, event_count(gte=2))
    first = rs.process(newsa(), trio.current_time())
    await trio.sleep(31)
    late = rs.process(newsa(), trio.current_time())
    await trio.sleep(29)
    on_time = rs.process(newsa(), trio.current_time())
    assert ([], [], ["many"]) == (first, late, [h.name for h in on_time])


# --- suppression ------------------------------------------------------------------------------------


def test_detection_rules_are_not_suppressed_by_default(tmp_path: Path) -> None:
    """A detection rule without xfrmwatch options reports every match."""
    rs = load(tmp_path, detection("sel:\n  type: newsa"))
    assert 3 == len(feed(rs, [(0.0, newsa()), (1.0, newsa()), (2.0, newsa())]))


def test_suppress_holds_back_and_counts(tmp_path: Path) -> None:
    """Within `suppress` repeats are held back; the next hit after it carries their count."""
    rs = load(tmp_path, detection("sel:\n  type: newsa") + "xfrmwatch:\n  suppress: 10s\n")
    got = feed(rs, [(float(t), newsa()) for t in (0, 1, 2, 9, 10, 11)])
    assert [(0.0, 0), (10.0, 3)] == [(t, h.suppressed) for t, h in got]


def test_suppress_by_separates_groups(tmp_path: Path) -> None:
    """suppress_by makes each value its own group, with default_suppress as the period."""
    write(tmp_path, detection("sel:\n  type: newsa") + "xfrmwatch:\n  suppress_by: sa.spi\n")
    rs = load_rules([tmp_path], default_suppress=5.0)
    events = [
        (0.0, newsa(spi="0x1")),
        (1.0, newsa(spi="0x2")),
        (2.0, newsa(spi="0x1")),
        (6.0, newsa(spi="0x1")),
    ]
    assert [(0.0, "0x1", 0), (1.0, "0x2", 0), (6.0, "0x1", 1)] == [
        (t, h.group["sa.spi"], h.suppressed) for t, h in feed(rs, events)
    ]


def test_correlations_use_the_default_suppression(tmp_path: Path) -> None:
    """A correlation without `suppress` is suppressed per group for default_suppress."""
    write(tmp_path, event_count(gte=1).replace("xfrmwatch:\n  suppress: 0\n", ""))
    rs = load_rules([tmp_path], default_suppress=10.0)
    events = [(0.0, newsa()), (1.0, newsa(dst="x")), (2.0, newsa()), (3.0, newsa()), (10.0, newsa())]
    assert [(0.0, "192.0.2.2", 0), (1.0, "x", 0), (10.0, "192.0.2.2", 2)] == [
        (t, h.group["sa.dst"], h.suppressed) for t, h in feed(rs, events)
    ]


def test_suppress_zero_turns_it_off(tmp_path: Path) -> None:
    """`suppress: 0` reports every firing, whatever the default."""
    write(tmp_path, event_count(gte=1))
    rs = load_rules([tmp_path], default_suppress=100.0)
    assert [0, 0, 0] == [h.suppressed for _, h in feed(rs, [(0.0, newsa()), (1.0, newsa()), (2.0, newsa())])]


def test_limits_must_be_positive() -> None:
    """Rule set limits that would make a state drop what it must keep are refused."""
    with pytest.raises(ValueError):
        Limits(max_hit_events=0)
    with pytest.raises(ValueError):
        RuleSet(default_suppress=-1.0)


def test_namespaces_share_rules_not_state(tmp_path: Path) -> None:
    """Two states of one rule set count their windows apart; the rule set itself holds no state."""
    write(tmp_path, event_count(gte=2))
    rules = load_rules([tmp_path])
    a, b = rules.new_state(), rules.new_state()
    assert [] == feed(a, [(0.0, newsa())])
    assert [] == feed(b, [(1.0, newsa())])
    assert ["many"] == [h.name for _, h in feed(a, [(2.0, newsa())])]
    assert (1,) == b.statistics().groups
