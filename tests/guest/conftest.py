"""UML tier: runs inside the User-Mode Linux guest (full IPsec kernel), started by
`scripts/test` through tests/uml/run_guest.sh.  Outside the guest it is skipped."""

import json
from collections.abc import Iterator

import pytest
from support import IN_UML, fresh_netns


@pytest.fixture
def netns() -> Iterator[str]:
    with fresh_netns() as name:
        yield name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if IN_UML:
        return
    for item in items:
        if "tests/guest/" in str(item.fspath):
            item.add_marker(
                pytest.mark.skip(reason="UML tier: runs inside the guest (scripts/test boots it)")
            )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The tunnel tests' measured figures (figures.py), whether they passed or not."""
    from figures import FIGURES

    if FIGURES:
        terminalreporter.section("tunnel figures (real daemons in UML)")
        for name, figures in FIGURES:
            terminalreporter.write_line(f"{name}: {json.dumps(figures)}")
