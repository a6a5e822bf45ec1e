"""One Prometheus exposition from the driver's and every machine's: parse, label by machine, merge.

Each source is parsed with ``prometheus_client.parser``; a machine's samples get the
label ``machine="ADDR"`` (a ``machine`` label already there becomes
``exported_machine``, as Prometheus itself does); families of the same name are
merged into one (one HELP and TYPE), and the result is rendered by
``prometheus_client``. A family whose type disagrees with the first one of its name
(or whose name in the text clashes with another's) is dropped rather than made
invalid, and counted in ``bigmachine_scrape_dropped_families``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["CONTENT_TYPE", "aggregate"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labelled(sample: Sample, machine: str) -> Sample:
    labels = dict(sample.labels)
    if "machine" in labels:
        labels["exported_machine"] = labels.pop("machine")
    labels["machine"] = machine
    return sample._replace(labels=labels)


class _Merged:
    """Families by name, in first-seen order; what ``generate_latest`` collects from."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.dropped: dict[str, int] = {}
        self._exposed: dict[str, str] = {}  # name in the text (a counter's ends in _total) -> family

    def add(self, text: str, machine: str | None) -> None:
        """Adds one exposition; raises ValueError (and adds nothing) if it does not parse."""
        parsed = [f for f in text_string_to_metric_families(text) if f.samples]
        for family in parsed:
            have = self.families.get(family.name)
            exposed = _exposed_name(family)
            if have is None and self._exposed.setdefault(exposed, family.name) == family.name:
                have = self.families[family.name] = Metric(family.name, family.documentation, family.type,
                                                           family.unit)
            elif have is None or have.type != family.type:
                key = machine or "driver"
                self.dropped[key] = self.dropped.get(key, 0) + 1
                continue
            for sample in family.samples:
                if machine is not None:
                    sample = _labelled(sample, machine)
                series = (sample.name, tuple(sorted(sample.labels.items())))
                if series not in self._seen:  # a series twice would make the whole exposition invalid
                    self._seen.add(series)
                    have.samples.append(sample)

    def collect(self) -> Iterator[Metric]:
        yield from self.families.values()


def _exposed_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def aggregate(driver: bytes | str, machines: Sequence[tuple[str, bytes | str | None]]) -> bytes:
    """The driver's exposition plus each ``(addr, exposition or None if unreachable)``, merged."""
    merged = _Merged()
    merged.add(_text(driver), None)
    up = GaugeMetricFamily("bigmachine_scrape_up",
                           "Whether the driver got this machine's metrics (1) or not (0) on this scrape.",
                           labels=["machine"])
    for addr, text in machines:
        ok = text is not None
        if ok:
            try:
                merged.add(_text(text), addr)
            except ValueError:
                ok = False
        up.add_metric([addr], 1.0 if ok else 0.0)
    merged.families.setdefault(up.name, up)
    dropped = GaugeMetricFamily("bigmachine_scrape_dropped_families",
                                "Families of a source left out: their type differs from another source's.",
                                labels=["source"])
    for source, n in merged.dropped.items():
        dropped.add_metric([source], n)
    merged.families.setdefault(dropped.name, dropped)
    return generate_latest(merged)


def _text(data: Any) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
