"""Metrics to scrape: the numbers ferrobatch already keeps, exported to Prometheus or
OpenTelemetry.

```python
from ferrobatch import metrics

metrics.track(embedder, name="embed")        # an AsyncBatcher, an HTTP batcher, a JobManager,
                                             # or a result Cache
metrics.enable_prometheus()                  # a collector on prometheus_client's REGISTRY
metrics.enable_opentelemetry()               # instruments on the global MeterProvider
```

Nothing is recorded per item in Python. The engine counts items and records queue waits and
batch durations in histograms in Rust, as it always does; an exporter reads one snapshot per
tracked object when it is collected (a scrape, an export interval). Tracking is weak: an
object that is garbage-collected drops out of the series.

The series (Prometheus names; OpenTelemetry uses the same with dots,
`ferrobatch.items.submitted`, without the `_total` and unit suffixes):

| series | type | labels |
|---|---|---|
| `ferrobatch_items_submitted_total` | counter | batcher |
| `ferrobatch_items_finished_total` | counter | batcher, outcome (completed, failed, ...) |
| `ferrobatch_items_rejected_total` | counter | batcher |
| `ferrobatch_items_deduplicated_total` | counter | batcher |
| `ferrobatch_batches_total` | counter | batcher |
| `ferrobatch_batch_size` | histogram | batcher |
| `ferrobatch_queue_wait_seconds` | histogram | batcher |
| `ferrobatch_batch_duration_seconds` | histogram | batcher |
| `ferrobatch_queue_depth` | gauge | batcher |
| `ferrobatch_waiting_items` | gauge | batcher |
| `ferrobatch_running_batches` | gauge | batcher |
| `ferrobatch_http_requests_total` | counter | batcher, model |
| `ferrobatch_http_retries_total` | counter | batcher, model |
| `ferrobatch_http_failed_requests_total` | counter | batcher, model |
| `ferrobatch_http_error_responses_total` | counter | batcher, model, status |
| `ferrobatch_tokens_total` | counter | batcher, model, direction (input, output) |
| `ferrobatch_cost_usd_total` | counter | batcher, model |
| `ferrobatch_cached_requests_total` | counter | batcher, model |
| `ferrobatch_cached_tokens_total` | counter | batcher, model |
| `ferrobatch_saved_cost_usd_total` | counter | batcher, model |
| `ferrobatch_streams_total` | counter | batcher, outcome (completed, failed, cancelled) |
| `ferrobatch_stream_first_chunk_seconds` | histogram | batcher |
| `ferrobatch_stream_chunk_gap_seconds` | histogram | batcher |
| `ferrobatch_streamed_tokens_total` | counter | batcher |
| `ferrobatch_cache_lookups_total` | counter | cache, result (hit, miss) |
| `ferrobatch_cache_writes_total` | counter | cache |
| `ferrobatch_cache_corrupt_entries_total` | counter | cache |
| `ferrobatch_cache_errors_total` | counter | cache |
| `ferrobatch_job_requests` | gauge | manager, job_id, state (pending, running, succeeded, ...) |
| `ferrobatch_job_tokens_total` | counter | manager, job_id, direction (input, output) |
| `ferrobatch_job_cost_usd_total` | counter | manager, job_id |

Labels name what you tracked (`name=`) and the model; never an API key or a URL, and never a
label Prometheus attaches itself (`job`, `instance`): a job is `job_id`.

Buckets: `ferrobatch_queue_wait_seconds` has the bounds of `LATENCY_BOUNDS` plus the batcher's
window and a little above it (1.1, 1.25, 1.5 and 2 times it; with `max_queue_time="auto"`,
around `max_latency` when given), so a p99 of one window plus noise reads as such, not as the next
default bound; `ferrobatch_batch_duration_seconds` has `LATENCY_BOUNDS`;
`ferrobatch_batch_size` has `BATCH_SIZE_BOUNDS`.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ferrobatch._batcher import AsyncBatcher
from ferrobatch._native import BatcherStats, Cache

__all__ = [
    "BATCH_SIZE_BOUNDS",
    "Sample",
    "enable_opentelemetry",
    "enable_prometheus",
    "samples",
    "track",
    "untrack",
]

#: Upper bounds of the batch size histogram's buckets.
BATCH_SIZE_BOUNDS: tuple[float, ...] = tuple(float(2**i) for i in range(13))

_lock = threading.Lock()
_tracked: dict[int, tuple[weakref.ref[Any], str]] = {}
_counter = itertools.count(1)


def track(obj: Any, name: str | None = None) -> Any:
    """Export `obj`'s numbers under `name` (default: its class name and a number). `obj` is
    an `AsyncBatcher` (HTTP batchers included: they add the HTTP series), a decorated
    `@batch` function, a `JobManager` (its jobs' progress) or a result `Cache` (its lookups).
    Returns `obj`."""
    target = getattr(obj, "batcher", obj)  # a @batch function's batcher
    if not (isinstance(target, (AsyncBatcher, Cache)) or _is_manager(target)):
        raise TypeError(
            f"track() takes an AsyncBatcher, an HTTP batcher, a @batch function, a "
            f"JobManager or a Cache, got {type(obj).__name__}"
        )
    label = name or f"{type(target).__name__.lower()}_{next(_counter)}"
    if not isinstance(label, str) or not label:
        raise ValueError("name must be a non-empty str")
    with _lock:
        _tracked[id(target)] = (weakref.ref(target), label)
    return obj


def untrack(obj: Any) -> None:
    """Stop exporting `obj`'s numbers."""
    target = getattr(obj, "batcher", obj)
    with _lock:
        _tracked.pop(id(target), None)


def _is_manager(obj: Any) -> bool:
    from ferrobatch.jobs import JobManager

    return isinstance(obj, JobManager)


def _live() -> list[tuple[Any, str]]:
    with _lock:
        out = []
        for key, (ref, label) in list(_tracked.items()):
            obj = ref()
            if obj is None:
                del _tracked[key]
            else:
                out.append((obj, label))
        return out


@dataclass
class Sample:
    """One series' value now, as every exporter reads it."""

    #: The Prometheus name without `_total` (`ferrobatch_items_submitted`).
    name: str
    #: `counter`, `gauge` or `histogram`.
    kind: str
    doc: str
    labels: dict[str, str]
    value: float = 0.0
    #: For histograms: `(upper bound, cumulative count)` and the sum.
    buckets: list[tuple[float, int]] = field(default_factory=list)
    total: float = 0.0
    unit: str = ""


def _seconds_histogram(name: str, doc: str, labels: dict[str, str], lat: Any) -> Sample:
    """A histogram in seconds from a `LatencySummary`."""
    return Sample(
        name,
        "histogram",
        doc,
        labels,
        buckets=list(lat.buckets),
        total=lat.sum,
        value=float(lat.count),
        unit="s",
    )


def _batcher_samples(stats: BatcherStats, labels: dict[str, str]) -> Iterator[Sample]:
    def c(name: str, doc: str, value: float, **extra: str) -> Sample:
        return Sample(name, "counter", doc, {**labels, **extra}, float(value))

    yield c("ferrobatch_items_submitted", "Items accepted by the batcher.", stats.submitted)
    for outcome in ("completed", "failed", "cancelled", "timed_out"):
        yield c(
            "ferrobatch_items_finished",
            "Items that ended, by outcome.",
            getattr(stats, outcome),
            outcome=outcome,
        )
    yield c("ferrobatch_items_rejected", "Items refused (the queue was full).", stats.rejected)
    yield c(
        "ferrobatch_items_deduplicated",
        "Calls that joined an identical item in flight.",
        stats.deduplicated,
    )
    yield c("ferrobatch_batches", "Batches dispatched.", stats.batches)
    sizes = stats.batch_sizes
    size_buckets = [(b, sum(n for s, n in sizes.items() if s <= b)) for b in BATCH_SIZE_BOUNDS]
    yield Sample(
        "ferrobatch_batch_size",
        "histogram",
        "Items per dispatched batch.",
        labels,
        buckets=size_buckets,
        total=float(sum(s * n for s, n in sizes.items())),
        value=float(sum(sizes.values())),
    )
    for name, doc, lat in (
        ("ferrobatch_queue_wait_seconds", "Time items waited before dispatch.", stats.queue_wait),
        (
            "ferrobatch_batch_duration_seconds",
            "Time from a batch's dispatch to its end.",
            stats.batch_duration,
        ),
    ):
        yield _seconds_histogram(name, doc, labels, lat)
    for name, doc, value in (
        ("ferrobatch_queue_depth", "Items queued now.", stats.queue_depth),
        ("ferrobatch_waiting_items", "Items waiting for room in a full queue.", stats.waiting),
        ("ferrobatch_running_batches", "Batches running now.", stats.running_batches),
    ):
        yield Sample(name, "gauge", doc, labels, float(value))


def _http_samples(usage: dict[str, Any], labels: dict[str, str]) -> Iterator[Sample]:
    for model, u in usage.items():
        m = {**labels, "model": model}

        def c(name: str, doc: str, value: float, unit: str = "", **extra: str) -> Sample:
            return Sample(name, "counter", doc, {**m, **extra}, float(value), unit=unit)  # noqa: B023

        yield c("ferrobatch_http_requests", "HTTP requests whose answer was used.", u["requests"])
        yield c("ferrobatch_http_retries", "HTTP attempts that were retried.", u["retries"])
        yield c(
            "ferrobatch_http_failed_requests",
            "Requests that failed after their retries.",
            u["failed_requests"],
        )
        for status, n in sorted(u.get("error_statuses", {}).items()):
            yield c(
                "ferrobatch_http_error_responses",
                "Error answers by HTTP status, every attempt.",
                n,
                status=str(status),
            )
        for direction in ("input", "output"):
            yield c(
                "ferrobatch_tokens",
                "Tokens the server reported.",
                u[f"{direction}_tokens"],
                direction=direction,
            )
        if u["cost"] is not None:
            yield c("ferrobatch_cost_usd", "Cost from the prices given.", u["cost"], unit="USD")
        yield c(
            "ferrobatch_cached_requests",
            "Requests (embeddings: texts) answered from the result cache, not sent.",
            u["cached_requests"],
        )
        yield c(
            "ferrobatch_cached_tokens",
            "Input tokens the cached answers used when they were paid for.",
            u["cached_input_tokens"],
        )
        if u["saved_cost"] is not None:
            yield c(
                "ferrobatch_saved_cost_usd",
                "What the cached answers would have cost, at the prices given.",
                u["saved_cost"],
                unit="USD",
            )


def _stream_samples(stats: dict[str, Any], labels: dict[str, str]) -> Iterator[Sample]:
    for outcome, n in stats["streams"].items():
        yield Sample(
            "ferrobatch_streams",
            "counter",
            "Streamed answers that ended, by outcome.",
            {**labels, "outcome": outcome},
            float(n),
        )
    for name, doc, lat in (
        (
            "ferrobatch_stream_first_chunk_seconds",
            "Time from a stream's request to its first chunk.",
            stats["time_to_first_chunk"],
        ),
        (
            "ferrobatch_stream_chunk_gap_seconds",
            "Time between consecutive chunks of a stream.",
            stats["chunk_gap"],
        ),
    ):
        yield _seconds_histogram(name, doc, labels, lat)
    yield Sample(
        "ferrobatch_streamed_tokens",
        "counter",
        "Output tokens of streams that ended (reported, or estimated).",
        labels,
        float(stats["output_tokens"]),
    )


def _cache_samples(stats: dict[str, int], labels: dict[str, str]) -> Iterator[Sample]:
    def c(name: str, doc: str, value: float, **extra: str) -> Sample:
        return Sample(name, "counter", doc, {**labels, **extra}, float(value))

    for result, key in (("hit", "hits"), ("miss", "misses")):
        yield c("ferrobatch_cache_lookups", "Result cache lookups.", stats[key], result=result)
    yield c("ferrobatch_cache_writes", "Entries written to the result cache.", stats["writes"])
    yield c(
        "ferrobatch_cache_corrupt_entries",
        "Unreadable entries met (each a miss).",
        stats["corrupt"],
    )
    yield c("ferrobatch_cache_errors", "Result cache store calls that failed.", stats["errors"])


def _job_samples(manager: Any, label: str) -> Iterator[Sample]:
    """The jobs this manager ran, and every unfinished job of its store (which its `work()`
    may be running)."""
    job_ids = dict.fromkeys(manager._runners)
    try:
        job_ids.update(
            dict.fromkeys(j.id for j in manager.store.jobs() if not j.status.is_terminal)
        )
    except Exception:  # the store is away: what this manager ran is still shown
        pass
    for job_id in job_ids:
        try:
            p = manager.store.progress(job_id)
        except Exception:  # the store is away: this scrape goes without the job
            continue
        labels = {"manager": label, "job_id": job_id}
        for state in ("pending", "running", "succeeded", "failed", "cancelled"):
            yield Sample(
                "ferrobatch_job_requests",
                "gauge",
                "A job's requests by state.",
                {**labels, "state": state},
                float(getattr(p, state)),
            )
        for direction in ("input", "output"):
            yield Sample(
                "ferrobatch_job_tokens",
                "counter",
                "Tokens a job used.",
                {**labels, "direction": direction},
                float(getattr(p, f"{direction}_tokens")),
            )
        if p.cost is not None:
            yield Sample(
                "ferrobatch_job_cost_usd", "counter", "Cost of a job.", labels, p.cost, unit="USD"
            )


def samples() -> list[Sample]:
    """Every tracked object's series now."""
    out: list[Sample] = []
    for obj, label in _live():
        if isinstance(obj, AsyncBatcher):
            labels = {"batcher": label}
            out.extend(_batcher_samples(obj.stats(), labels))
            usage = getattr(obj, "usage", None)
            if callable(usage):
                out.extend(_http_samples(usage(), labels))
            streams = getattr(obj, "stream_stats", None)
            if callable(streams):
                out.extend(_stream_samples(streams(), labels))
        elif isinstance(obj, Cache):
            out.extend(_cache_samples(dict(obj.stats()), {"cache": label}))
        else:
            out.extend(_job_samples(obj, label))
    return out


# --- Prometheus ---------------------------------------------------------------------------


class _PrometheusCollector:
    """A `prometheus_client` collector over `samples()`."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        families: dict[str, Any] = {}
        for s in samples():
            keys = sorted(s.labels)
            fam = families.get(s.name)
            if fam is None:
                cls = {
                    "counter": CounterMetricFamily,
                    "gauge": GaugeMetricFamily,
                    "histogram": HistogramMetricFamily,
                }[s.kind]
                fam = families[s.name] = cls(s.name, s.doc, labels=keys)
            values = [s.labels[k] for k in keys]
            if s.kind == "histogram":
                buckets = [(_le(b), float(n)) for b, n in s.buckets]
                buckets.append(("+Inf", s.value))
                fam.add_metric(values, buckets, s.total)
            else:
                fam.add_metric(values, s.value)
        yield from families.values()

    def describe(self) -> list[Any]:
        return []  # the series come and go with tracked objects


def _le(bound: float) -> str:
    return repr(float(bound))


_registries: set[int] = set()


def enable_prometheus(registry: Any = None) -> None:
    """Register the collector with `registry` (prometheus_client's default `REGISTRY`), once
    per registry. Needs `prometheus-client` (`pip install ferrobatch[prometheus]`)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        raise ImportError(
            "enable_prometheus() needs prometheus-client: pip install 'ferrobatch[prometheus]'"
        ) from None
    registry = registry or REGISTRY
    with _lock:
        if id(registry) in _registries:
            return
        _registries.add(id(registry))
    registry.register(_PrometheusCollector())


# --- OpenTelemetry ------------------------------------------------------------------------


class _OtelBridge:
    """Observable instruments read `samples()` at each collection. Histograms have no
    observable form in the OpenTelemetry API: what the engine's buckets gained since the last
    collection is recorded then, each value at its bucket's upper bound (batch sizes
    exactly)."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.instruments: dict[str, Any] = {}
        self.seen: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}
        self.sizes: dict[tuple[tuple[str, str], ...], dict[int, int]] = {}
        self.lock = threading.Lock()
        self.snapshot: list[Sample] = []
        for name, kind, unit, doc in _OTEL_SERIES:
            otel = _otel_name(name)
            if kind == "counter":
                inst = meter.create_observable_counter(
                    otel, callbacks=[self._callback(name)], unit=unit, description=doc
                )
            elif kind == "gauge":
                inst = meter.create_observable_gauge(
                    otel, callbacks=[self._callback(name)], unit=unit, description=doc
                )
            else:
                inst = meter.create_histogram(otel, unit=unit, description=doc)
            self.instruments[name] = inst

    def _callback(self, name: str) -> Any:
        from opentelemetry.metrics import Observation

        def observe(options: Any) -> list[Any]:
            if name == _OTEL_SERIES[0][0]:  # the first series read refreshes the snapshot
                self.refresh()
            with self.lock:
                snap = list(self.snapshot)
            return [Observation(s.value, s.labels) for s in snap if s.name == name]

        return observe

    def refresh(self) -> None:
        snap = samples()
        with self.lock:
            self.snapshot = snap
            for s in snap:
                if s.kind == "histogram":
                    self._replay(s)

    def _replay(self, s: Sample) -> None:
        hist = self.instruments[s.name]
        key = tuple(sorted(s.labels.items()))
        if s.name == "ferrobatch_batch_size":
            return self._replay_sizes(s, key)
        counts = [n for _, n in s.buckets] + [int(s.value)]
        before = self.seen.get((s.name, key), [0] * len(counts))
        self.seen[(s.name, key)] = counts
        prev_cum = prev_before = 0
        bounds = [b for b, _ in s.buckets] + [s.buckets[-1][0] * 2 if s.buckets else 1.0]
        for bound, cum, was in zip(bounds, counts, before):
            added = (cum - prev_cum) - (was - prev_before)
            prev_cum, prev_before = cum, was
            for _ in range(max(0, added)):
                hist.record(bound, s.labels)

    def _replay_sizes(self, s: Sample, key: tuple[tuple[str, str], ...]) -> None:
        # The exact sizes: re-read them, as Sample keeps only the buckets.
        for obj, label in _live():
            if {"batcher": label} == s.labels and isinstance(obj, AsyncBatcher):
                now = dict(obj.stats().batch_sizes)
                before = self.sizes.get(key, {})
                self.sizes[key] = now
                for size, n in now.items():
                    for _ in range(n - before.get(size, 0)):
                        self.instruments[s.name].record(size, s.labels)


_OTEL_SERIES: list[tuple[str, str, str, str]] = [
    ("ferrobatch_items_submitted", "counter", "{item}", "Items accepted by the batcher."),
    ("ferrobatch_items_finished", "counter", "{item}", "Items that ended, by outcome."),
    ("ferrobatch_items_rejected", "counter", "{item}", "Items refused (the queue was full)."),
    (
        "ferrobatch_items_deduplicated",
        "counter",
        "{item}",
        "Calls that joined an identical item in flight.",
    ),
    ("ferrobatch_batches", "counter", "{batch}", "Batches dispatched."),
    ("ferrobatch_batch_size", "histogram", "{item}", "Items per dispatched batch."),
    ("ferrobatch_queue_wait_seconds", "histogram", "s", "Time items waited before dispatch."),
    ("ferrobatch_batch_duration_seconds", "histogram", "s", "Time from dispatch to end."),
    ("ferrobatch_queue_depth", "gauge", "{item}", "Items queued now."),
    ("ferrobatch_waiting_items", "gauge", "{item}", "Items waiting for room in the queue."),
    ("ferrobatch_running_batches", "gauge", "{batch}", "Batches running now."),
    ("ferrobatch_http_requests", "counter", "{request}", "HTTP requests whose answer was used."),
    ("ferrobatch_http_retries", "counter", "{request}", "HTTP attempts that were retried."),
    ("ferrobatch_http_failed_requests", "counter", "{request}", "Requests failed for good."),
    ("ferrobatch_http_error_responses", "counter", "{response}", "Error answers by status."),
    ("ferrobatch_tokens", "counter", "{token}", "Tokens the server reported."),
    ("ferrobatch_cost_usd", "counter", "USD", "Cost from the prices given."),
    ("ferrobatch_job_requests", "gauge", "{request}", "A job's requests by state."),
    ("ferrobatch_job_tokens", "counter", "{token}", "Tokens a job used."),
    ("ferrobatch_job_cost_usd", "counter", "USD", "Cost of a job."),
]


def _otel_name(name: str) -> str:
    """`ferrobatch_queue_wait_seconds` is `ferrobatch.queue.wait` (the unit says seconds)."""
    return name.removesuffix("_seconds").removesuffix("_usd").replace("_", ".")


_bridges: dict[int, _OtelBridge] = {}


def enable_opentelemetry(meter_provider: Any = None) -> None:
    """Create the instruments on `meter_provider` (the global one by default), once per
    provider. Needs `opentelemetry-api` (`pip install ferrobatch[otel]`) and an SDK you
    configure (readers, exporters)."""
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError:
        raise ImportError(
            "enable_opentelemetry() needs opentelemetry-api: pip install 'ferrobatch[otel]'"
        ) from None
    provider = meter_provider or otel_metrics.get_meter_provider()
    with _lock:
        if id(provider) in _bridges:
            return
    bridge = _OtelBridge(provider.get_meter("ferrobatch"))
    with _lock:
        _bridges[id(provider)] = bridge
