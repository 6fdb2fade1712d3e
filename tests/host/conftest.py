"""Host-kernel tier: real XFRM netlink in fresh network namespaces (needs root)."""

from collections.abc import Iterator

import pytest
from support import IN_UML, IS_ROOT, fresh_netns


@pytest.fixture
def netns() -> Iterator[str]:
    with fresh_netns() as name:
        yield name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if not IS_ROOT:
        reason = "host tier needs root (network namespaces, XFRM netlink)"
    elif IN_UML:
        reason = "host tier runs on the host kernel, not in the UML guest"
    if reason:
        for item in items:
            if "tests/host/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
