"""Run one service under cProfile: `python -m bench.profiled OUT.prof stager|dispatcher|ingest`.

The profile is written when the service ends after SIGTERM. The stager and dispatcher stop on their own
signal handlers; the ingest API's uvicorn re-raises the SIGTERM it caught once it has stopped, which the
handler installed here turns into a normal exit, so the profile is written for it too.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from types import FrameType


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main() -> None:
    out, kind = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, _exit)
    sys.argv = ["lifecycle", kind]
    # the main thread's CPU time, not the wall clock: on two shared cores a wall-clock profile charges
    # to whatever call was running every moment the process waited for a core (a socket write that
    # woke the SMTP sink, above all)
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        runpy.run_module("lifecycle.cli", run_name="__main__", alter_sys=True)
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
