"""Command-line behaviour that needs no privileges."""

import pytest
from support import run_cli


def test_help_has_examples_and_exit_codes() -> None:
    """`--help` shows examples and the documented exit codes."""
    p = run_cli("--help")
    assert p.returncode == 0
    assert "examples:" in p.stdout and "exit codes:" in p.stdout
    assert "xfrmwatch monitor" in p.stdout
    p = run_cli("monitor", "--help")
    assert "--aevents" in p.stdout and "--acquire" in p.stdout and "exit codes:" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("monitor", "--spi", "nope"), "--spi"),
        (("monitor", "--src", "300.1.1.1/8"), "--src"),
        (("monitor", "--proto", "tcp"), "--proto"),
        (("monitor", "--type", "newthing"), "--type"),
        (("monitor", "--mark", "1/x"), "--mark"),
        (("monitor", "--dir", "up"), "--dir"),
        (("monitor", "--reqid", "-3"), "--reqid"),
    ],
)
def test_bad_filter_values(args: tuple[str, ...], needle: str) -> None:
    """A bad filter value: exit 2, one line naming the option, no traceback."""
    p = run_cli(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("xfrmwatch: ")


def test_schema_command_prints_json_schema() -> None:
    import json

    p = run_cli("schema")
    assert p.returncode == 0
    assert json.loads(p.stdout)["$id"].startswith("urn:xfrmwatch:events:")


@pytest.mark.parametrize(
    "args,needle",
    [
        (("monitor", "--overdue-share", "2"), "--overdue-share"),
        (("monitor", "--rcvbuf", "-5"), "--rcvbuf"),
        (("monitor", "--state-file", "/nonexistent-dir/state.json"), "--state-file"),
    ],
)
def test_bad_monitor_options(args: tuple[str, ...], needle: str) -> None:
    """Out-of-range options are refused before anything is opened: one line, exit 2."""
    p = run_cli(*args)
    assert 2 == p.returncode
    (line,) = p.stderr.strip().splitlines()
    assert needle in line and "Traceback" not in p.stderr


def test_rules_check_on_an_empty_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No rules at all is an error, not "0 rules OK"."""
    p = run_cli("rules", "check", str(tmp_path))
    assert 2 == p.returncode and "no rules found" in p.stderr


def test_config_error_line_inside_a_multiline_array(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A key-looking string inside a multi-line array is not taken for the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[output]]\ntype = "exec"\nargv = [\n  "/bin/x",\n  "timeout=5",\n]\ntimeout = "x"\n')
    p = run_cli("config", "check", "--config", str(cfg))
    assert 2 == p.returncode and f"{cfg}:7:" in p.stderr


def test_config_lists_every_mistake_at_its_line() -> None:
    """msgspec stops at the first mistake; config parsing reports every one, each at its line."""
    from xfrmwatch.config import ConfigError, parse

    text = (
        '[watch]\nbogus = 1\nrcvbuf = 5\n[[output]]\ntype = "file"\n'
        '[[output]]\ntype = "stdout"\nqueue = 0\nselect = "x"\n'
    )
    try:
        parse(text, "c.toml")
    except ConfigError as exc:
        errors = exc.errors
    else:
        raise AssertionError("no error")
    assert [
        "c.toml:2: Object contains unknown field `bogus`",
        "c.toml:3: Expected `int` >= 4096 (at watch.rcvbuf)",
        "c.toml:4: Object missing required field `path` (at output.0)",
        "c.toml:8: Expected `int` >= 1 (at output.1.queue)",
        "c.toml:9: select must be all, alerts or events, not 'x'",
    ] == errors
