"""Locust traffic for a tandem server: realistic queries, a configurable mix, phased load.

Run it through ``load/run.sh`` (headless, CSV + HTML, SLO check) or directly::

    locust -f load/locustfile.py --host http://127.0.0.1:8080 -u 8 -r 4 -t 30s --headless

Every option below is a Locust flag and a ``TANDEM_LOAD_*`` variable. Mixes
are ``value=weight`` lists: ``--variants bin-768=3,f32-768=1`` sends three
bin-768 searches for each f32-768 one; an empty mix leaves the field out of
the request so the server's default applies. Tasks are tagged with their
route (``search``, ``batch``, ``embeddings``) so ``--tags search`` or
``--exclude-tags embeddings`` narrows the traffic without editing the mix.

A 429 is recorded as a success under its own name (``/search [429]``): it is
the server shedding load as designed, and keeping it apart means its fast
answers do not flatter the latency of the requests that were served.
Timeouts, connection errors, 5xx and any other status are failures.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import locust.stats
from locust import FastHttpUser, LoadTestShape, events, tag, task
from locust.exception import StopUser

from tandem.data.fetch import data_dir

REPO = Path(__file__).resolve().parents[1]
# SciFact where `tandem data fetch scifact` puts it or beside the checkout, else the samples.
DEFAULT_QUERIES = (
    Path("scifact") / "queries.jsonl",  # under tandem.data.fetch.data_dir()
    REPO.parent / "shared" / "data" / "scifact" / "queries.jsonl",
    REPO / "samples" / "queries.jsonl",
)
PHASES = ("ramp", "steady", "spike")
TASK_TAGS = ("search", "batch", "embeddings")
SHED = 429


# flag, default, help; each is also TANDEM_LOAD_<FLAG> (e.g. TANDEM_LOAD_VARIANTS).
OPTIONS: list[tuple[str, Any, str]] = [
    ("--queries", "", "JSONL (text or query field), TXT (one a line) or a BEIR folder; "
     "default: SciFact queries, else samples/queries.jsonl"),
    ("--mix", "search=90,batch=5,embeddings=5", "task weights (integers) by tag"),
    ("--variants", "", "variant mix, e.g. bin-768=3,f32-768=1 (empty: the server's default)"),
    ("--k", "10=9,100=1", "k mix"),
    ("--rescore", "", "rescore mix, e.g. true=1,false=1 (empty: the server's default)"),
    ("--oversample", "", "oversample mix, e.g. 4=1,10=1 (empty: the server's default)"),
    ("--batch-size", 8, "queries per /search/batch request"),
    ("--pace", 1.0, "tasks per second per user (constant throughput); 0: back to back"),
    ("--timeout-s", 10.0, "client timeout; a request past it is an error"),
    ("--shape", "steady", "phases sharing --run-time equally, in order, from ramp, steady, "
     "spike: e.g. ramp,steady,spike,steady"),
    ("--spike-factor", 2.0, "users during a spike, times --users"),
]  # fmt: skip


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("tandem", "traffic sent to a tandem server")
    for flag, default, help_text in OPTIONS:
        env = "TANDEM_LOAD_" + flag[2:].upper().replace("-", "_")
        group.add_argument(flag, env_var=env, default=default, type=type(default), help=help_text)
    group.add_argument(
        "--api-key",
        env_var="TANDEM_API_KEY",
        default="",
        help="Bearer key (prefer the TANDEM_API_KEY variable: flags show up in ps)",
    )


def parse_mix(text: str, cast: type = str) -> list[tuple[Any, float]]:
    """``a=3,b=1`` -> [(a, 3.0), (b, 1.0)]; a bare value weighs 1."""
    mix = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, _, weight = item.partition("=")
        if cast is bool:
            parsed: Any = value.strip().lower() in ("1", "true", "yes", "on")
        else:
            parsed = cast(value.strip())
        mix.append((parsed, float(weight) if weight else 1.0))
    if any(weight < 0 for _, weight in mix):
        raise ValueError(f"negative weight in {text!r}")
    return mix


def load_queries(source: str) -> list[str]:
    """Query texts from a JSONL/TXT file or BEIR folder; the first default that exists."""
    candidates = [Path(source)] if source else [data_dir() / p for p in DEFAULT_QUERIES]
    for path in candidates:
        if path.is_dir():
            path = path / "queries.jsonl"
        if not path.exists():
            continue
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        if path.suffix == ".jsonl":
            rows = (json.loads(line) for line in lines if line)
            texts = [row.get("text") or row.get("query") or "" for row in rows]
        else:
            texts = lines
        texts = [text for text in texts if text.strip()]
        if texts:
            return texts
    raise FileNotFoundError(f"no queries in {', '.join(map(str, candidates))}")


@dataclass
class Traffic:
    """What users send and how often, fixed once per run from the parsed options."""

    queries: list[str]
    variants: list[tuple[Any, float]]
    ks: list[tuple[Any, float]]
    rescores: list[tuple[Any, float]]
    oversamples: list[tuple[Any, float]]
    batch_size: int
    headers: dict[str, str]
    task_weights: dict[str, float]
    pace: float

    def options(self) -> dict[str, Any]:
        """Search options drawn from the mixes; fields with an empty mix are left out."""
        body: dict[str, Any] = {}
        mixes = {
            "variant": self.variants,
            "k": self.ks,
            "rescore": self.rescores,
            "oversample": self.oversamples,
        }
        for field, mix in mixes.items():
            if mix:
                body[field] = pick(mix)
        return body


def pick(mix: list[tuple[Any, float]]) -> Any:
    values, weights = zip(*mix, strict=True)
    return random.choices(values, weights)[0]


TRAFFIC: Traffic | None = None  # set by the init listener, read by every user


@events.init.add_listener
def _configure(environment: Any, **_: Any) -> None:
    """Read and check every option once; an exception here stops Locust before any load."""
    global TRAFFIC
    opts = environment.parsed_options
    if opts is None:  # imported as a library, not run by locust
        return
    phases = [p.strip() for p in opts.shape.split(",") if p.strip()]
    if not phases or set(phases) - set(PHASES):
        raise ValueError(f"--shape {opts.shape!r}: use phases from {', '.join(PHASES)}")
    if not opts.run_time:
        raise ValueError("every run must be bounded: give --run-time")
    weights = dict(parse_mix(opts.mix))
    if unknown := set(weights) - set(TASK_TAGS):
        raise ValueError(f"--mix: unknown task(s) {sorted(unknown)}; use {', '.join(TASK_TAGS)}")
    headers = {"Content-Type": "application/json"}
    if opts.api_key:
        headers["Authorization"] = f"Bearer {opts.api_key}"
    TRAFFIC = Traffic(
        queries=load_queries(opts.queries),
        variants=parse_mix(opts.variants),
        ks=parse_mix(opts.k, int),
        rescores=parse_mix(opts.rescore, bool),
        oversamples=parse_mix(opts.oversample, int),
        batch_size=opts.batch_size,
        headers=headers,
        task_weights=weights,
        pace=opts.pace,
    )
    TandemUser.network_timeout = TandemUser.connection_timeout = opts.timeout_s


@events.test_stop.add_listener
def _settle(environment: Any, **_: Any) -> None:
    """Give Locust's CSV writer (it writes once a second) one more turn after users stop.

    Without it the last second of requests is missing from ``*_stats.csv``,
    which load/slo.py judges, while the HTML report and summary have them.
    """
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.3)


def _traffic() -> Traffic:
    if TRAFFIC is None:
        raise RuntimeError("the locustfile was not initialised by locust")
    return TRAFFIC


class TandemUser(FastHttpUser):
    """One client: picks a task from the mix, sends it, waits to keep its pace.

    FastHttpUser (geventhttpclient) because the load generator shares the
    machine's cores with the server; it costs a fraction of requests' CPU.
    """

    def on_start(self) -> None:
        # Per-user task list: the class's tasks are already filtered by --tags,
        # the weights come from --mix (Locust's @task weights are fixed at import).
        traffic = _traffic()
        self.tasks = [
            t
            for t in type(self).tasks
            for _ in range(round(traffic.task_weights.get(_tag_of(t), 0)))
        ]
        if not self.tasks:
            raise StopUser()  # --tags and --mix leave nothing to send: Locust logs and stops
        # Constant throughput, each user at a random phase: users spawned in the same
        # second would otherwise fire in lockstep (Locust's constant_throughput keeps the
        # spawn-time phase), sending bursts that no real population of clients sends.
        self._period = 1.0 / traffic.pace if traffic.pace > 0 else 0.0
        self._next = time.monotonic() + random.uniform(0, self._period)
        gevent.sleep(max(0.0, self._next - time.monotonic()))

    def wait_time(self) -> float:
        # Behind schedule (a slow answer), start now rather than catch up in a burst.
        now = time.monotonic()
        self._next = max(self._next + self._period, now)
        return self._next - now

    @tag("search")
    @task
    def search(self) -> None:
        traffic = _traffic()
        body = {"query": random.choice(traffic.queries), **traffic.options()}
        self._post("/search", body)

    @tag("batch")
    @task
    def search_batch(self) -> None:
        traffic = _traffic()
        queries = random.sample(traffic.queries, min(traffic.batch_size, len(traffic.queries)))
        self._post("/search/batch", {"queries": queries, **traffic.options()})

    @tag("embeddings")
    @task
    def embeddings(self) -> None:
        self._post("/v1/embeddings", {"input": random.choice(_traffic().queries)})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        with self.client.post(
            path,
            data=json.dumps(body).encode(),
            headers=_traffic().headers,
            name=path,
            catch_response=True,
        ) as response:
            if response.status_code == SHED:
                response.request_meta["name"] = f"{path} [{SHED}]"
                response.success()
            elif response.status_code == 0:
                response.failure(f"no response: {response.error!r}")  # timeout, refused
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


def _tag_of(task_fn: Any) -> str:
    return next(iter(task_fn.locust_tag_set))


class PhasedShape(LoadTestShape):
    """--shape phases over --run-time, each an equal share, at --users (x --spike-factor).

    ``ramp`` climbs linearly from the previous phase's level to --users;
    ``steady`` holds --users; ``spike`` jumps at once to --users x
    --spike-factor. ``steady`` alone is Locust's plain constant load. The
    shape returns None when --run-time is over, so a run always ends.
    """

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        phases = [p.strip() for p in opts.shape.split(",") if p.strip()]
        users, rate = int(opts.num_users or 1), float(opts.spawn_rate or 1)
        peak = max(users, round(users * opts.spike_factor))
        length = (opts.run_time or 0) / len(phases)
        elapsed = self.get_run_time()
        index = int(elapsed // length) if length else len(phases)
        if index >= len(phases):
            return None
        phase = phases[index]
        if phase == "spike":
            return peak, max(rate, float(peak))  # all at once: that is what a spike is
        if phase == "ramp":
            start = 1 if index == 0 else (peak if phases[index - 1] == "spike" else users)
            into = (elapsed - index * length) / length
            return max(1, round(start + (users - start) * into)), max(rate, float(users))
        return users, rate
