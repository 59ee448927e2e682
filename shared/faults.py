"""Crash points for the fault-injection suite (`make test-faults`).

`faults.point("billing.after_grant_commit")` kills the process with SIGKILL when the environment
variable BROWSERFLEET_CRASH_AT names that point; otherwise it costs one dict lookup. Production
never sets the variable.
"""
import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("BROWSERFLEET_CRASH_AT", "").split(",")))


def point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
