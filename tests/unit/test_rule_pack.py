"""The shipped rule pack: valid, and each rule proven by a positive and a negative case."""

import tomllib
from pathlib import Path

from support import ROOT, run_cli

from xfrmwatch.detect.cases import run_cases
from xfrmwatch.detect.pack import shipped_rules

RULES = ROOT / "rules"


def test_shipped_pack_is_installed_with_the_package() -> None:
    """The package's rule pack is the rules/ directory of the source tree."""
    assert RULES.resolve() == shipped_rules().resolve()


def test_rules_check_accepts_the_pack() -> None:
    """`xfrmwatch rules check` accepts every shipped rule."""
    p = run_cli("rules", "check")
    assert 0 == p.returncode, p.stderr
    assert p.stdout.startswith(f"{len(list(RULES.glob('*.yml'))) + 1} rules OK")  # + the ACQUIRE base rule


def test_every_rule_has_a_positive_and_a_negative_case() -> None:
    """Each rule file has NAME.pos.jsonl expecting it to fire and NAME.neg.jsonl expecting nothing."""
    expected = tomllib.loads((RULES / "tests" / "expected.toml").read_text())
    for rule in sorted(RULES.glob("*.yml")):
        assert (RULES / "tests" / f"{rule.stem}.pos.jsonl").exists(), rule.name
        assert (RULES / "tests" / f"{rule.stem}.neg.jsonl").exists(), rule.name
        assert expected[f"{rule.stem}.pos"].get(rule.stem, 0) >= 1, rule.name
        assert f"{rule.stem}.neg" not in expected, rule.name


def test_rules_test_passes_on_the_pack() -> None:
    """Every case raises exactly the expected alerts (negatives: none)."""
    results = run_cases(None, RULES / "tests")
    assert [] == [(r.name, r.expected, r.got) for r in results if not r.ok]
    assert len(results) == 2 * len(list(RULES.glob("*.yml")))


def test_rules_test_reports_a_wrong_expectation(tmp_path: Path) -> None:
    """A case whose expectation is wrong fails, and the CLI says which and exits 1."""
    case = (RULES / "tests" / "policy-flush.pos.jsonl").read_text()
    (tmp_path / "flush.jsonl").write_text(case)
    (tmp_path / "expected.toml").write_text('["flush"]\nsad-flush = 1\n')
    p = run_cli("rules", "test", str(tmp_path))
    assert 1 == p.returncode
    assert "FAIL  flush: expected {'sad-flush': 1}, got {'policy-flush': 1}" in p.stdout
    assert p.stdout.strip().endswith("0 passed, 1 failed")


def test_rules_check_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    """Bad rules: each error as file:line, a distinct exit code, no traceback."""
    (tmp_path / "bad.yml").write_text(
        "title: bad\nlogsource:\n    product: linux\n    service: xfrm\ndetection:\n"
        "    sel:\n        sa.nosuchfield: 1\n        sa.spi|base64offset: x\n    condition: sel\n"
    )
    p = run_cli("rules", "check", str(tmp_path))
    assert 8 == p.returncode
    lines = p.stderr.strip().splitlines()
    assert 2 <= len(lines)
    assert all(line.startswith(f"xfrmwatch: {tmp_path / 'bad.yml'}:") for line in lines)
    assert any(":7:" in line and "nosuchfield" in line for line in lines)
    assert any(":8:" in line and "base64offset" in line for line in lines)
    assert "Traceback" not in p.stderr
