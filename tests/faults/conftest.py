"""Fault-injection suite (`make test-faults`): a fresh platform per scenario, and the results
table printed at the end and written into docs/RELIABILITY.md."""
import os
import shlex
import signal
import sys
import time
from datetime import datetime, timezone

import pytest

from tests import infra
from tests.faults.harness import FaultPlatform, chromium_dirs
from tests.helpers import chromium_pids

ROWS: list[dict] = []
COLUMNS = ("scenario", "fault injected", "outcome", "messages lost", "effects doubled")
REPORT = infra.ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
_started = time.monotonic()


class Row:
    def __init__(self, scenario: str, fault: str):
        self.scenario, self.fault = scenario, fault
        self.outcome, self.lost, self.doubled = "", "?", "?"

    def done(self, outcome: str, lost: int = 0, doubled: int = 0) -> None:
        self.outcome, self.lost, self.doubled = outcome, lost, doubled


@pytest.fixture
def report(request):
    """`row = report(scenario, fault)`; the test fills `row.done(outcome, lost, doubled)`."""
    rows: list[Row] = []
    request.node.fault_rows = rows

    def add(scenario: str, fault: str) -> Row:
        rows.append(Row(scenario, fault))
        return rows[-1]
    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    failures = item.__dict__.setdefault("fault_failures", [])
    if rep.failed:
        failures.append(f"{rep.when}: {call.excinfo.exconly().splitlines()[0][:160]}" if call.excinfo else rep.when)
    if rep.when == "teardown":
        for row in getattr(item, "fault_rows", []):
            outcome_text = row.outcome if not failures else "FAILED: " + "; ".join(failures)
            ROWS.append({"scenario": row.scenario, "fault injected": row.fault, "outcome": outcome_text,
                         "messages lost": row.lost, "effects doubled": row.doubled})


@pytest.fixture
def fault_platform(pg_server, mq_server, tmp_path):
    """`start(crash={service: point}, **env)` → a running FaultPlatform on a fresh database and vhost.
    Stopping it (SIGTERM) must leave no browser and no profile directory behind."""
    started: list[FaultPlatform] = []
    with infra.fresh_database(pg_server) as db_url, infra.fresh_vhost(mq_server) as mq_url:
        def start(*, crash: dict | None = None, **env) -> FaultPlatform:
            platform = FaultPlatform(db_url, mq_url, tmp_path, crash=crash, **env)
            started.append(platform)
            return platform.start()
        yield start
        for platform in started:
            platform.stop()
            left = chromium_dirs(platform), sorted(p.name for p in platform.profile_root.iterdir())
            for pid in chromium_pids(str(platform.profile_root)):  # only ever ours: our temp dir
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert left == (set(), []), f"left after a graceful stop: chromium {left[0]}, dirs {left[1]}"


def pytest_terminal_summary(terminalreporter):
    if ROWS:
        terminalreporter.write_sep("=", "fault injection results")
        terminalreporter.write_line(table())


def pytest_sessionfinish(session, exitstatus):
    if not ROWS:
        return
    command = shlex.join([".venv/bin/python", "-m", "pytest", *sys.argv[1:]])
    failed = sum(r["outcome"].startswith("FAILED") for r in ROWS)
    body = "\n".join([
        BEGIN,
        f"Latest run: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {len(ROWS)} scenarios, {failed} failed, "
        f"{time.monotonic() - _started:.0f} s on {os.cpu_count()} cores "
        f"(FAULTS_SESSIONS={os.environ.get('FAULTS_SESSIONS', 'default')}).",
        "", "Produced by" + (" `make test-faults`, i.e." if sys.argv[1:] == ["-m", "faults", "tests"] else ":"),
        "", "```", command, "```", "", table(), END])
    text = REPORT.read_text() if REPORT.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text += "\n" + body + "\n"
    REPORT.write_text(text)


def table() -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    rows = sorted(ROWS, key=lambda r: r["scenario"].split(".")[0])  # by scenario number, stable
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)
