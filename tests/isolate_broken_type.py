"""A type whose module kills any worker process that imports it (for WorkerStartError tests).

Passed as ``plain_types``, it is unpickled (so imported) while a worker
starts, before the worker is ready: every new worker dies at start-up. Only
the process named in ``ISOLATE_BROKEN_TYPE_PARENT`` (the test's) survives the
import.
"""

from __future__ import annotations

import os

if os.environ.get("ISOLATE_BROKEN_TYPE_PARENT") != str(os.getpid()):
    os._exit(7)


class Payload:
    """Harmless in the parent."""
