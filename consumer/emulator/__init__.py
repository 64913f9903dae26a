"""A local Knock-compatible API server ("the emulator") for tests and benchmarks.

It never imports the sink: the two stay independent. :class:`EmulatorServer` runs it in a
background thread; :func:`create_app` builds the ASGI app; ``knock-sink emulator`` (see
:mod:`.cli`) serves it in the foreground.
"""

from __future__ import annotations

from .app import create_app
from .server import EmulatorServer

__all__ = ["EmulatorServer", "create_app"]
