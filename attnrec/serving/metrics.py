"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "attnrec_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "attnrec_http_request_duration_seconds", "Request latency", ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.model_info = Gauge(
            "attnrec_model_info", "The model being served (value 1)", ["version", "model"], registry=r
        )
        self.model_loaded_at = Gauge(
            "attnrec_model_loaded_timestamp_seconds", "When the served model was loaded", registry=r
        )
        self.reloads = Counter("attnrec_model_reloads", "Model reloads", ["result"], registry=r)
        self.events = Counter("attnrec_events_ingested", "Events committed to the store", registry=r)
        self.unknown_item_events = Counter(
            "attnrec_unknown_item_events", "Ingested events whose item the model does not know", registry=r
        )
        self.unknown_user_events = Counter(
            "attnrec_unknown_user_events", "Ingested events whose user the model does not know", registry=r
        )
        self.fallbacks = Counter(
            "attnrec_popularity_fallbacks", "Recommendations served by the popularity fallback", registry=r
        )
        self.deleted_users = Counter("attnrec_users_deleted", "Users deleted", registry=r)
        self.cached_users = Gauge("attnrec_cached_users", "Users whose sequence is cached", registry=r)
        self.cache_bytes = Gauge(
            "attnrec_cache_bytes", "Estimated memory held by the per-user caches (bounded by "
            "cache_max_bytes)", registry=r)
        self.filter_cache_bytes = Gauge(
            "attnrec_filter_cache_bytes", "Memory held by cached category-filter masks (bounded)",
            registry=r)
        self.db_errors = Counter(
            "attnrec_database_unavailable", "Requests answered 503 because the database timed out",
            registry=r)
        self._model_labels: tuple[str, str] | None = None

    def set_model(self, version: str, model: str, loaded_at: float) -> None:
        if self._model_labels is not None:
            try:
                self.model_info.remove(*self._model_labels)
            except KeyError:
                pass
        self._model_labels = (version, model)
        self.model_info.labels(version, model).set(1)
        self.model_loaded_at.set(loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
