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
