"""What every benchmark shares: the figure record, CPU pinning, server processes, wrk.

The server (or the engine under test) runs on `SERVER_CPU`, the load generator on `LOAD_CPU`,
so the two never compete for a core. Every figure carries its own same-run baseline: these
machines are shared and noisy, so a ratio travels better than an absolute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PYTHON = sys.executable
SERVER_CPU, LOAD_CPU = 0, 1
if (os.cpu_count() or 1) < 2:  # one core: the figures still run, but load and server compete
    SERVER_CPU = LOAD_CPU = 0


def default_models_dir() -> Path:
    return Path(os.environ.get("STREAMWATCH_BENCH_MODELS_DIR", ROOT / "models"))


def steady_after(settings: Any) -> int:
    """Readings of each stream before a benchmark of the engine alone measures: past the
    normalization's warm-up and the scorer's settling (in them a stream neither scores nor
    alerts and the scorer learns nothing, which is less work), and past the burst of alerts
    that follows when every stream of the benchmark settles at once (100 readings; an
    engine's streams in a fleet come of age one by one)."""
    return int(settings.normalization.warmup_n + settings.scoring.settle + 100)


@dataclass
class Figure:
    """One measured figure, its same-run baseline and how it stands against its target."""

    key: str
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: float | None = None
    target_on: Literal["value", "ratio"] = "value"
    higher_is_better: bool = True
    # The same rate per CPU-second the server process used (value / its CPU share): what one
    # core can do, whatever else the shared machine was running meanwhile.
    per_cpu_s: float | None = None
    baseline_per_cpu_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    @property
    def met(self) -> bool | None:
        measured = self.ratio if self.target_on == "ratio" else self.value
        if self.target is None or measured is None:
            return None
        return measured >= self.target if self.higher_is_better else measured <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        sign = ">=" if self.higher_is_better else "<="
        if self.target_on == "ratio":
            return f"{sign} {self.target:.0%} of baseline"
        return f"{sign} {fmt(self.target)} {self.unit}"

    def per_cpu(self) -> float | None:
        """Ours against the baseline, each per CPU-second of its server."""
        if self.per_cpu_s is None or not self.baseline_per_cpu_s:
            return None
        return self.per_cpu_s / self.baseline_per_cpu_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def print_figures(figures: Sequence[Figure]) -> None:
    print(table(figures))


def table(figures: Sequence[Figure]) -> str:
    rows = ["| figure | measured | baseline (same run) | ratio | target | met "
            "| per server CPU-s: ours / baseline |",
            "|---|---|---|---|---|---|---|"]
    for f in figures:
        baseline = f"{fmt(f.baseline)} ({f.baseline_name})" if f.baseline_name else "-"
        ratio = "-" if f.ratio is None else f"{f.ratio:.0%}" if f.ratio < 10 else f"{f.ratio:.1f}x"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        per_cpu = "-"
        if f.per_cpu_s is not None and f.baseline_per_cpu_s:
            per_cpu = (f"{fmt(f.per_cpu_s)} / {fmt(f.baseline_per_cpu_s)} "
                       f"({f.per_cpu_s / f.baseline_per_cpu_s:.0%})")
        rows.append(f"| {f.name} | {fmt(f.value)} {f.unit} | {baseline} | {ratio} | "
                    f"{f.target_text()} | {met} | {per_cpu} |")
    return "\n".join(rows)


def pin(cpu: int) -> None:
    """Pin this process (and what it starts later) to one core."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size from /proc (Linux)."""
    statm = Path(f"/proc/{pid or 'self'}/statm").read_text().split()
    return int(statm[1]) * os.sysconf("SC_PAGE_SIZE")


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    started_at: float  # time.perf_counter() just before the process was started
    ready_s: float  # seconds from start to the first 200 on the readiness path
    log: Path

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


def streamwatch_command(port: int) -> list[str]:
    return [PYTHON, "-m", "service", "serve", "--port", str(port)]


def trivial_command(port: int) -> list[str]:
    """The baseline: a trivial FastAPI app under uvicorn, configured as `streamwatch serve`."""
    return [PYTHON, "-m", "benchmarks.trivial_app", "--port", str(port)]


def streamwatch_env(models_dir: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "STREAMWATCH_MODEL__DIR": str(models_dir),
        "STREAMWATCH_DATA_DIR": str(data_dir),
        **extra,
    }


@contextlib.contextmanager
def running(command: Sequence[str], port: int, env: dict[str, str] | None = None,
            ready_path: str = "/readyz", timeout_s: float = 120.0) -> Iterator[Server]:
    """Start `command` pinned to SERVER_CPU; yield once `ready_path` answers 200."""
    log_dir = Path(tempfile.mkdtemp(prefix="swbench-"))
    log = log_dir / "server.log"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *command],
            cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = _wait_ready(process, url + ready_path, started, timeout_s, log)
        yield Server(url, process, started, ready_s, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_ready(process: subprocess.Popen[bytes], url: str, started: float, timeout_s: float,
                log: Path) -> float:
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        time.sleep(0.005)
    raise RuntimeError(f"{url} not ready in {timeout_s} s:\n{log.read_text()}")


def warm_streams(url: str, stream_ids: Sequence[str], t0: int,
                 value: Callable[[int], float]) -> int:
    """Take each of `stream_ids` past its warm-up before a figure measures it: `steady_after`
    readings each, a second apart from `t0`, each second's in one POST of columns (a warming
    stream is not scored and never alerts, which is less work than a fleet's). Reading n is stream
    `n % len(stream_ids)` at `t0 + n // len(stream_ids)` with `value(n)`, as the load
    generators number theirs; returns the number of the first reading after these."""
    from service.settings import Settings

    n_streams, steps = len(stream_ids), steady_after(Settings())
    for step in range(steps):
        first = step * n_streams
        body = json.dumps({"columns": {
            "stream_id": list(stream_ids), "timestamp": [t0 + step] * n_streams,
            "value": [value(first + i) for i in range(n_streams)],
        }}).encode()
        request = urllib.request.Request(f"{url}/v1/readings", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != 200:
                raise RuntimeError(f"warming the streams: {response.status}")
    return steps * n_streams


def stream_readings(url: str, stream_id: str) -> int:
    """How many readings a stream has had applied (0 if unknown): a check that the load was
    real work, not refusals."""
    try:
        with urllib.request.urlopen(f"{url}/v1/streams/{stream_id}", timeout=5) as response:
            return int(json.loads(response.read())["readings"])
    except OSError:
        return 0


# -- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    latency_ms: dict[str, float]  # p50, p90, p99, max, mean

    @property
    def rate(self) -> float:
        """Requests answered 2xx per second: a refused request (a 503 when the queue is full)
        did not do what is measured."""
        return (self.requests - self.non_2xx) / self.duration_s


def wrk(url: str, script: Path, *, duration_s: float, connections: int, threads: int = 1,
        env: dict[str, str] | None = None) -> WrkResult:
    """Run wrk (pinned to LOAD_CPU) with a Lua script whose done() prints one JSON line."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    command = ["taskset", "-c", str(LOAD_CPU), "wrk", f"-t{threads}", f"-c{connections}",
               f"-d{duration_s:g}s", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}, timeout=duration_s + 60)
    match = re.search(r"^JSON (.*)$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no JSON line:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(match.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(raw["errors"].values()),
        latency_ms={k: v / 1000 for k, v in raw["latency_us"].items()},
    )


def wrk_on_server(
    command: Sequence[str],
    port: int,
    env: dict[str, str] | None,
    script: Path,
    *,
    duration_s: float,
    warmup_s: float,
    connections: int,
    threads: int = 1,
    load_env: dict[str, str] | None = None,
    stream_id: str,
    prepare: Callable[[str], dict[str, str]] | None = None,
) -> tuple[WrkResult, int, float]:
    """Start the server, warm it up with `script`, then measure: wrk's result, how many
    readings `stream_id` had applied (0 on the trivial app), and the server's CPU use over the
    run (1.0: its core was saturated). The warm-up writes to streams prefixed `warm`;
    `prepare(url)` runs before it and returns more of the script's environment."""
    load = load_env or {}
    with running(command, port, env) as server:
        if prepare is not None:
            load = {**load, **prepare(server.url)}
        wrk(server.url, script, duration_s=warmup_s, connections=connections, threads=threads,
            env={**load, "SW_PREFIX": "warm"})
        cpu = server.cpu_s()
        result = wrk(server.url, script, duration_s=duration_s, connections=connections,
                     threads=threads, env=load)
        busy = (server.cpu_s() - cpu) / result.duration_s
        return result, stream_readings(server.url, stream_id), busy


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def script_main(run: Callable[[Path, float], list[Figure]], doc: str | None,
                duration_s: float) -> None:
    """The command line of a one-figure script: --models-dir, --duration; prints the table."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--duration", type=float, default=duration_s)
    args = parser.parse_args()
    print_figures(run(args.models_dir, args.duration))

