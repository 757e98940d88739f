"""pytest plugin of tools/gpu_check.py: the GPU tests, each within its own time limit, with one
line per result printed as it happens (a stage killed at its budget still reports its counts).

    python -m pytest -p gpu_budget_plugin --per-test-timeout 30 --cuda-only FILES...
    (tests/ on PYTHONPATH; gpu_check sets it)

--per-test-timeout S: SIGALRM raises TestTimeout in a test (setup included) that runs past S
seconds, so the test fails and the next one runs; a test stuck inside a C call (where Python
cannot raise) is ended with the whole process by faulthandler GRACE_S later, after a traceback
of every thread (to --stuck-traceback FILE). --cuda-only keeps the tests that need a CUDA device (a ``skipif`` whose reason
names CUDA): their CPU twins already run in the CPU suite. Lines printed:

    gpu-test collected N
    gpu-test OUTCOME NODEID SECONDS      (OUTCOME: passed, failed, skipped, error, timeout)
"""
from __future__ import annotations

import faulthandler
import signal
import sys

import pytest

GRACE_S = 15  # after the limit, how long a test stuck in C code gets before the process ends


class TestTimeout(Exception):
    """A test ran past --per-test-timeout."""


def pytest_addoption(parser):
    group = parser.getgroup("gpu_check")
    group.addoption("--per-test-timeout", type=float, default=0.0, help="seconds per test (0: no limit)")
    group.addoption("--cuda-only", action="store_true", help="only the tests that need a CUDA device")
    group.addoption("--stuck-traceback", default=None,
                    help="file for the tracebacks of a test stuck past its limit (default: stderr, which "
                         "pytest may be capturing)")


def needs_cuda(item) -> bool:
    """A test marked to skip without a CUDA device."""
    return any("CUDA" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))


def pytest_configure(config):
    config.pluginmanager.register(BudgetReporter(config), "gpu_budget_reporter")


def _raise_timeout(signum, frame):
    raise TestTimeout("the test ran past its --per-test-timeout")


class BudgetReporter:
    """The plugin's hooks, bound to the session's config."""

    def __init__(self, config):
        self.config = config
        self.limit = config.getoption("per_test_timeout")
        path = config.getoption("stuck_traceback")
        self.stuck_file = open(path, "w") if path else sys.stderr

    def pytest_unconfigure(self, config):
        if self.stuck_file is not sys.stderr:
            self.stuck_file.close()

    def say(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text)
        sys.stdout.flush()

    def pytest_collection_modifyitems(self, config, items):
        if config.getoption("cuda_only"):
            dropped = [item for item in items if not needs_cuda(item)]
            items[:] = [item for item in items if needs_cuda(item)]
            if dropped:
                config.hook.pytest_deselected(items=dropped)

    def pytest_collection_finish(self, session):
        self.say(f"gpu-test collected {len(session.items)}")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if self.limit > 0:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, self.limit)
            faulthandler.dump_traceback_later(self.limit + GRACE_S, exit=True, file=self.stuck_file)
        try:
            yield
        finally:
            if self.limit > 0:
                signal.setitimer(signal.ITIMER_REAL, 0)
                faulthandler.cancel_dump_traceback_later()
                signal.signal(signal.SIGALRM, previous)

    def pytest_runtest_logreport(self, report):
        """One line per test: its call's outcome, or a setup/teardown failure or skip."""
        if not (report.when == "call" or report.failed or (report.when == "setup" and report.skipped)):
            return
        if report.failed and "TestTimeout" in str(report.longrepr):
            outcome = "timeout"
        elif report.failed and report.when != "call":
            outcome = "error"
        else:
            outcome = report.outcome
        self.say(f"gpu-test {outcome} {report.nodeid} {report.duration:.1f}")
