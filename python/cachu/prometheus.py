"""``cachu.metrics()`` for Prometheus (``pip install cachu[prometheus]``)::

    from prometheus_client import REGISTRY
    from cachu.prometheus import CachuCollector

    REGISTRY.register(CachuCollector())

Exports ``cachu_hits_total``, ``cachu_misses_total`` and ``cachu_backend_errors_total``
labelled by package and function, and ``cachu_redis_outages_total`` and
``cachu_redis_down`` labelled by server (password masked), and
``cachu_backend_operations_total`` / ``cachu_backend_seconds_total`` per region (their
ratio is the mean latency of a backend operation), read at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import cachu

__all__ = ["CachuCollector"]


class CachuCollector(Collector):
    """A Prometheus collector of ``cachu.metrics()``."""

    def collect(self) -> Iterator[Any]:
        m = cachu.metrics()
        labels = ["package", "function"]
        families = {
            "hits": CounterMetricFamily(
                "cachu_hits", "Calls answered by the cache.", labels=labels
            ),
            "misses": CounterMetricFamily(
                "cachu_misses", "Calls that ran the function.", labels=labels
            ),
            "errors": CounterMetricFamily(
                "cachu_backend_errors", "Backend failures met by calls.", labels=labels
            ),
        }
        for f in m["functions"]:
            for name, family in families.items():
                family.add_metric([str(f["package"]), f["function"]], f[name])
        yield from families.values()
        outages = CounterMetricFamily(
            "cachu_redis_outages", "Outages of a Redis server.", labels=["server"]
        )
        down = GaugeMetricFamily(
            "cachu_redis_down", "1 while a Redis server is down.", labels=["server"]
        )
        for s in m["redis"]:
            outages.add_metric([s["server"]], s["outages"])
            down.add_metric([s["server"]], 1.0 if s["down"] else 0.0)
        yield outages
        yield down
        region = ["package", "backend", "ttl"]
        ops = CounterMetricFamily(
            "cachu_backend_operations", "Backend operations of sync calls.", labels=region
        )
        seconds = CounterMetricFamily(
            "cachu_backend_seconds", "Time backend operations of sync calls took.", labels=region
        )
        for b in m["backends"]:
            labels_of = [str(b["package"]), b["backend"], str(b["ttl"])]
            ops.add_metric(labels_of, b["operations"])
            seconds.add_metric(labels_of, b["seconds"])
        yield ops
        yield seconds
