"""Test topologies in pytest without a broker: :class:`TopologyTestDriver` runs the real
operators on an in-memory cluster with a simulated clock, and :func:`check_crash_safety` proves
that crashes at any point leave the committed output equal to a failure-free run."""

from streamproc.testing.crashes import (
    Advance,
    CrashSafetyError,
    Fault,
    Pipe,
    Step,
    check_crash_safety,
    committed_output,
    run_steps,
)
from streamproc.testing.driver import TestRecord, TopologyTestDriver

__all__ = [
    "Advance",
    "CrashSafetyError",
    "Fault",
    "Pipe",
    "Step",
    "TestRecord",
    "TopologyTestDriver",
    "check_crash_safety",
    "committed_output",
    "run_steps",
]
