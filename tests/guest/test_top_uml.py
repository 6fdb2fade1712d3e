"""`xfrmwatch top` in a real terminal (tmux) over a real strongSwan tunnel in the UML guest:
the tunnel with its selectors, SPIs, countdowns and traffic; its rekeys counted; when the
peer's charon dies, overdue then down, with the rules' alerts in the panel."""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from support import ROOT
from swan import have_strongswan, swan_pair
from tmux import restored, terminal

ROW = r"10\.10\.1\.0/24 -> 10\.10\.2\.0/24 +192\.0\.2\.1 <-> 192\.0\.2\.2 +"


def test_top_shows_rekeys_and_a_dead_peer() -> None:
    """Left's dashboard: the tunnel up with countdowns and rates, then rekeyed (the count and
    the last rekey move, new SPIs), then right's charon killed: overdue, then down, and the
    alerts 'Rekey overdue' and 'Tunnel down without a replacement' open."""
    if (missing := have_strongswan()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"strongSwan is needed in CI: {missing}")
        pytest.skip(missing)
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed (apt-get install tmux)")
    svg = Path(os.environ.get("TMPDIR", "/tmp")) / "top.svg"
    with (
        swan_pair(left_rekey=10, left_life=16, right_rekey=20, right_life=26, initiate=False) as p,
        terminal(f"--netns {p.left} --liveness-interval 1 --svg {svg}", width=160, height=36) as t,
    ):
        t.wait(rf"netns {p.left} ")
        p.initiate()
        traffic = p.send_traffic(count=900, interval=0.05, duration=60)
        text = t.wait(ROW + r"[0-9a-f]{8}/[0-9a-f]{8} +up ")
        first = re.search(ROW + r"([0-9a-f]{8})/([0-9a-f]{8}) +up +\S+ +(\d+)s +(\d+)s +(\d+)s", text)
        assert first is not None, text
        rekey, soft, hard = (int(first.group(i)) for i in (3, 4, 5))
        assert 0 < rekey <= 10 and rekey == soft and soft < hard <= 16, text
        text = t.wait(ROW + r"\S+ +up .* (?!0/0)[\d.]+[kMG]?/[\d.]+[kMG]? .*$", timeout=15)  # traffic measured
        text = t.wait(ROW + r"\S+ +up .* 1\s*$", timeout=30)  # the first rekey (left's, at 10 s)
        spis = re.search(ROW + r"([0-9a-f]{8})/([0-9a-f]{8})", text)
        assert spis is not None and spis.groups() != first.groups()[:2], text
        assert "rekey_completed" in t.screen()
        p.kill("right")
        t_kill = time.monotonic()
        text = t.wait(ROW + r"\S+ +overdue ", timeout=40)
        overdue_after = time.monotonic() - t_kill
        t.wait(r"high +Rekey overdue", timeout=5)
        text = t.wait(r"down hard_expire", timeout=30)
        down_after = time.monotonic() - t_kill
        t.wait(r"crit +Tunnel down without a replacement", timeout=5)
        traffic.stop()
        assert re.search(r"1 critical", t.screen())
        print(f"top: overdue {overdue_after:.1f} s and down {down_after:.1f} s after right's charon was killed")
        t.keys("q")
        restored(t)
    picture = html.unescape(svg.read_text()).replace("\xa0", " ")  # the last frame shown, as an SVG picture
    assert "Tunnel down without a replacement" in picture and "hard_expire" in picture
    if os.environ.get("XW_TOP_SVG"):  # regenerate the README's picture from this real session
        shutil.copy(svg, ROOT / "docs" / "top.svg")
