"""agentd's helper inside a sandbox.

    import agentd
    agentd.result({"ok": True})

writes the structured result (any JSON value) to the descriptor the daemon
reads. The last call wins. Everything written there is parsed by the daemon
as untrusted input.
"""

import json as _json
import os as _os

__all__ = ["result"]

_FD = int(_os.environ.get("AGENTD_RESULT_FD", "3"))


def result(value):
    """Record `value` (JSON-serialisable) as this sandbox's result."""
    data = (_json.dumps(value, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        written = _os.write(_FD, view)
        view = view[written:]
