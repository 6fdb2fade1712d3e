"""The wheel carries what an installed xfrmwatch needs: the rule pack and its cases, the schemas,
the demo's recording."""

import subprocess
import sys
import zipfile
from pathlib import Path

from support import ROOT


def test_wheel_contents(tmp_path: Path) -> None:
    """`pip wheel .` includes rules/*.yml as xfrmwatch/rules, their test cases, the schemas, and
    the demo's recording with its README."""
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert 0 == p.returncode, p.stderr
    (wheel,) = tmp_path.glob("xfrmwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    rules = {f"xfrmwatch/rules/{f.name}" for f in (ROOT / "rules").glob("*.yml")}
    assert rules <= names
    assert "xfrmwatch/rules/tests/expected.toml" in names
    assert {f"xfrmwatch/rules/tests/{f.name}" for f in (ROOT / "rules" / "tests").glob("*.jsonl")} <= names
    for schema in ("events", "ecs", "ocsf"):
        assert f"xfrmwatch/schema/{schema}.schema.json" in names
    assert {"xfrmwatch/demo/session.pcap", "xfrmwatch/demo/session.json", "xfrmwatch/demo/README.md"} <= names
    assert "xfrmwatch/py.typed" in names
    modules = {str(f.relative_to(ROOT)) for f in (ROOT / "xfrmwatch").rglob("*.py") if "__pycache__" not in f.parts}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
