"""The CI smoke run: load/run.sh against a real server, and the SLO checker's verdicts.

One bounded Locust run (15 s, at most 8 users, 127.0.0.1 only) exercises
the locustfile end to end: every task, the variant/k/rescore/oversample
mixes, the API key and the ramp -> steady -> spike shape. The checker is
then judged on that run's CSV and on small hand-written ones (429s,
errors). Locust is only ever run as a subprocess: importing it here would
monkey-patch this process with gevent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import API_KEY, ServerProcess

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "load" / "run.sh"
SLO_PY = REPO / "load" / "slo.py"
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def run_load(url: str, out: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TANDEM_API_KEY": API_KEY}
    return subprocess.run(
        ["bash", str(RUN_SH), url, "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def slo(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SLO_PY), str(prefix), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def smoke(load_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 15 s run with loose SLOs (any machine, even a busy CI runner, meets them)."""
    out = tmp_path_factory.mktemp("smoke")
    # fmt: off
    result = run_load(
        load_server.url, out,
        "--users", "4", "--spawn-rate", "4", "--run-time", "15", "--shape", "ramp,steady,spike",
        "--pace", "2", "--queries", str(REPO / "samples" / "queries.jsonl"),
        "--variants", "f32-768=1,bin-768=1", "--rescore", "true=1,false=1", "--k", "5=3,20=1",
        "--oversample", "2=1,10=1",
        "--mix", "search=6,batch=1,embeddings=1",
        "--p99-ms", "3000", "--max-error-rate", "0", "--min-rps", "0.5",
    )
    # fmt: on
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{load_server.logs()}"
    return out


def test_smoke_run_is_green_and_writes_reports(smoke: Path) -> None:
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html"):
        assert (smoke / name).stat().st_size > 0, name
    summary = json.loads((smoke / "locust_slo.json").read_text())
    assert summary["total"] > 0 and summary["errors"] == 0
    assert set(summary["routes"]) == {"/search", "/search/batch", "/v1/embeddings"}
    assert all(check["ok"] for check in summary["checks"])


def test_impossible_slo_fails(smoke: Path) -> None:
    result = slo(smoke / "locust", "--p99-ms", "0.001")
    assert result.returncode == 1, result.stdout
    assert "MISS p99 ms /search" in result.stdout


def test_bad_option_stops_locust_before_any_load(tmp_path: Path) -> None:
    """A typo in --shape is refused at start-up (exit 3), not after a run; no server needed."""
    result = run_load("http://127.0.0.1:9", tmp_path, "--run-time", "5", "--shape", "sprike")
    assert result.returncode == 3, result.stderr
    assert "sprike" in result.stderr


def write_stats(prefix: Path, rows: list[str]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}_stats.csv").write_text("\n".join([STATS_HEADER, *rows]) + "\n")


def row(name: str, count: int, fails: int, p99: int, rps: float) -> str:
    pcts = ",".join([str(p99 // 2)] * 7 + [str(p99)] * 4)
    return f"POST,{name},{count},{fails},{p99 // 2},{p99 // 2},1,{p99},100,{rps},0,{pcts}"


def test_429_is_shed_not_error_and_not_in_latency(tmp_path: Path) -> None:
    prefix = tmp_path / "run" / "locust"
    write_stats(
        prefix,
        [
            row("/search", 900, 0, 40, 90.0),
            row("/search [429]", 100, 0, 2, 10.0),
            row("Aggregated", 1000, 0, 40, 100.0),
        ],
    )
    result = slo(prefix, "--p99-ms", "50", "--max-error-rate", "0", "--min-rps", "85")
    assert result.returncode == 0, result.stdout
    summary = json.loads(Path(f"{prefix}_slo.json").read_text())
    assert (summary["shed"], summary["errors"], summary["total"]) == (100, 0, 1000)
    assert summary["shed_rate"] == pytest.approx(0.1)
    assert summary["served_rps"] == pytest.approx(90.0)
    assert slo(prefix, "--max-shed-rate", "0.05").returncode == 1


def test_timeouts_and_5xx_are_errors(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    write_stats(prefix, [row("/search", 100, 5, 40, 10.0), row("Aggregated", 100, 5, 40, 10.0)])
    assert slo(prefix, "--max-error-rate", "0.01").returncode == 1
    assert slo(prefix, "--max-error-rate", "0.05").returncode == 0


def test_nothing_to_judge_is_exit_2(tmp_path: Path) -> None:
    assert slo(tmp_path / "missing").returncode == 2
    write_stats(tmp_path / "empty", [row("Aggregated", 0, 0, 0, 0.0)])
    assert slo(tmp_path / "empty").returncode == 2
