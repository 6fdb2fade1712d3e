"""Stage 1's machinery: NETLINK_XFRM sockets on trio, framing, XFRM layouts, the decoder, read-only queries, namespaces, /proc readers.

pyroute2's package ``__init__`` imports every API it has (IPRoute, NDB, IPDB, nftables,
asyncio...): about 70 ms before the first line of output, where the netlink message
classes used here (``pyroute2.netlink``) and ``pyroute2.netns`` take 20 ms.  So, unless
something already imported pyroute2, its package is registered first without running
that ``__init__``; the first access to any other top-level name (``pyroute2.IPRoute``...)
runs it then, so every user still sees the whole package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _light_pyroute2() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    pkg = types.ModuleType("pyroute2")
    pkg.__file__ = spec.origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__loader__ = spec.loader
    pkg.__package__ = "pyroute2"
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # a submodule: just that
            return importlib.import_module(f"pyroute2.{name}")
        delattr(pkg, "__getattr__")  # anything else: the whole package
        loader.exec_module(pkg)
        return getattr(pkg, name)

    setattr(pkg, "__getattr__", __getattr__)  # noqa: B010  (a module's __getattr__: PEP 562)
    sys.modules["pyroute2"] = pkg


_light_pyroute2()
