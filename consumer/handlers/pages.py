"""What the browser pages show, computed from the job record: no I/O here, only shaping.

`GET /jobs/<id>` and `GET /models/<name>` answer JSON by default and a server-rendered page to a
browser (`Accept: text/html` preferred over JSON). Pages need no JavaScript and no network beyond
this service: styles are inline, loss curves are inline SVG polylines drawn here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Request, Response, make_response, render_template

from rvc_core.train.config import MEL_LOSS_WEIGHT

if TYPE_CHECKING:
    from consumer.jobs.records import JobRecord

REFRESH_SECONDS = 5  # meta refresh while the job is not final
DOWNLOADS = (("pth", "Model weights (.pth)"), ("index", "Retrieval index (.index)"), ("zip", "Model zip"))
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
CURVE_POINTS = 200  # at most this many points per curve (evenly thinned, last point kept)
REJECTED_SHOWN = 50  # rejected files listed on the page; the JSON has all
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")  # artifact file names the api serves


def wants_html(request: Request) -> bool:
    """A browser asks for text/html first; API clients (`*/*`, `application/json`, no Accept) get JSON.
    `?format=json|html` overrides the header, for links and quick checks."""
    forced = request.args.get("format")
    if forced in ("json", "html"):
        return forced == "html"
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "text/html"
        and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]
    )


def servable(models_url: str, record: JobRecord) -> dict[str, str]:
    """The job's artifacts (kind → URI) that `GET /jobs/<id>/files/<name>` serves: those directly in
    the job's own model folder, `MODELS/<model>/<job_id>/<name>`, with a plain file name."""
    folder = f"{models_url.rstrip('/')}/{record.model_name}/{record.job_id}/"
    return {
        kind: uri
        for kind, uri in record.artifacts.items()
        if isinstance(uri, str) and uri.startswith(folder) and SAFE_NAME.match(uri[len(folder) :])
    }


def render(template: str, status: int, **context: object) -> tuple[Response, int]:
    """A page from `consumer/handlers/templates/`, never cached (it changes while the job runs)."""
    response = make_response(render_template(template, **context))
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Cache-Control"] = "no-store"
    return vary(response), status


def vary(response: Response) -> Response:
    """The same URL answers JSON or HTML by the Accept header: caches must key on it."""
    response.vary.add("Accept")
    return response


def file_url(job_id: str, uri: str) -> str:
    """The api URL serving one artifact of a job (see `consumer.handlers.files`)."""
    return f"/jobs/{job_id}/files/{quote(uri.rsplit('/', 1)[-1])}"


# --- loss curves ---------------------------------------------------------------------------------
@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (epoch, value), finite values only
    color: str = ""
    polyline: str = ""  # SVG points attribute, set by `Chart.layout`
    last: tuple[float, float] | None = None  # the last point in SVG coordinates


@dataclass
class Chart:
    title: str
    series: list[Series]
    width: int = 560
    height: int = 220
    pad_left: int = 56
    pad_right: int = 12
    pad_top: int = 12
    pad_bottom: int = 30
    y_ticks: list[tuple[float, str]] = field(default_factory=list)  # (svg y, label)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)  # (svg x, label)

    def layout(self) -> Chart:
        xs = [x for s in self.series for x, _ in s.points]
        ys = [y for s in self.series for _, y in s.points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 == y0:
            y0, y1 = y0 - abs(y0) * 0.1 - 1e-6, y1 + abs(y1) * 0.1 + 1e-6
        span_x, span_y = x1 - x0, y1 - y0
        inner_w = self.width - self.pad_left - self.pad_right
        inner_h = self.height - self.pad_top - self.pad_bottom

        def sx(x: float) -> float:
            return round(self.pad_left + (x - x0) / span_x * inner_w, 1)

        def sy(y: float) -> float:
            return round(self.pad_top + (1 - (y - y0) / span_y) * inner_h, 1)

        for i, s in enumerate(self.series):
            s.color = s.color or PALETTE[i % len(PALETTE)]
            coords = [(sx(x), sy(y)) for x, y in s.points]
            s.polyline = " ".join(f"{x},{y}" for x, y in coords)
            s.last = coords[-1]
        self.y_ticks = [(sy(v), _num(v)) for v in (y0, (y0 + y1) / 2, y1)]
        self.x_ticks = [(sx(v), _num(v)) for v in sorted({x0, x1} if len(set(xs)) > 1 else {xs[0]})]
        return self


def loss_points(record: JobRecord) -> list[tuple[float, dict[str, float]]]:
    """(epoch, losses) per epoch, from the best source there is: the finished job's
    `metrics.history` (every epoch), the running job's `progress.history` (when the worker keeps one),
    else the latest numbers in `progress`."""
    rows: list[tuple[float, dict[str, float]]] = []
    for entry in _history_entries(record):
        epoch = entry.get("epoch")
        losses = dict(entry.get("losses") or {})
        if entry.get("validation_mel") is not None:
            losses["validation_mel"] = entry["validation_mel"]
        if isinstance(epoch, int | float) and losses:
            rows.append((float(epoch), losses))
    if not rows:
        progress = record.progress or {}
        if progress.get("epoch") and progress.get("losses"):
            rows.append((float(progress["epoch"]), dict(progress["losses"])))
    return rows


def _history_entries(record: JobRecord) -> list[Mapping[str, Any]]:
    for source in ((record.metrics or {}).get("history"), (record.progress or {}).get("history")):
        if isinstance(source, list) and source:
            return [e for e in source if isinstance(e, Mapping)]
    return []


def loss_charts(record: JobRecord) -> list[Chart]:
    """Mel L1 (training, unweighted, and validation) in one chart, the other losses in another."""
    rows = loss_points(record)
    mel: dict[str, list[tuple[float, float]]] = {}
    other: dict[str, list[tuple[float, float]]] = {}
    for epoch, losses in rows:
        for key, value in losses.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                continue
            if key == "g_mel":
                mel.setdefault("mel (train)", []).append((epoch, value / MEL_LOSS_WEIGHT))
            elif key == "mel":
                mel.setdefault("mel (train)", []).append((epoch, float(value)))
            elif key == "validation_mel":
                mel.setdefault("mel (validation)", []).append((epoch, float(value)))
            else:
                other.setdefault(key, []).append((epoch, float(value)))
    charts = []
    for title, group in (("Mel L1 loss", mel), ("Other losses", other)):
        series = [Series(name, _thin(points)) for name, points in group.items() if points]
        if series:
            charts.append(Chart(title, series).layout())
    return charts


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    points = sorted(dict(points).items())  # one value per epoch, the last one reported
    if len(points) <= CURVE_POINTS:
        return points
    step = len(points) / (CURVE_POINTS - 1)
    return [points[int(i * step)] for i in range(CURVE_POINTS - 1)] + [points[-1]]


def _num(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 10000:
        return f"{v:.3g}"
    return f"{v:.2e}"


# --- dataset report ------------------------------------------------------------------------------
@dataclass
class DatasetSummary:
    totals: list[tuple[str, str]]  # (label, value)
    rejected: list[dict[str, str]]  # {name, reason}
    rejected_more: int
    ignored: list[dict[str, str]]
    ignored_more: int
    warnings: list[str]
    error: str | None


def dataset_summary(report: Mapping[str, Any] | None) -> DatasetSummary | None:
    """The report's totals, rejected files with reasons, ignored entries and warnings. Accepts
    rvc_core's report (`totals`, `files[]`) and flatter ones (`files_used`, `files_rejected`)."""
    if not report:
        return None
    totals = report.get("totals") if isinstance(report.get("totals"), Mapping) else report
    rejected = [
        {"name": str(f.get("name", "?")), "reason": str(f.get("reason") or f.get("status") or "")}
        for f in report.get("files") or []
        if isinstance(f, Mapping) and f.get("status") not in (None, "used")
    ]
    listed = totals.get("files_rejected")
    if isinstance(listed, list):  # a flat report lists them itself
        rejected += [_named(f) for f in listed]
    ignored = [_named(i) for i in report.get("ignored") or []]
    labels = (
        ("files", "audio files"),
        ("files_used", "used"),
        ("files_rejected", "rejected"),
        ("ignored_entries", "other entries ignored"),
        ("input_seconds", "seconds of audio in"),
        ("usable_seconds", "seconds usable"),
        ("segments", "segments"),
        ("dropped_chunks", "chunks dropped"),
    )
    rows = []
    for key, label in labels:
        value = totals.get(key)
        if isinstance(value, list):
            value = len(value)
        if value is not None:
            rows.append((label, _num(value) if isinstance(value, float) else str(value)))
    error = report.get("error")
    return DatasetSummary(
        totals=rows,
        rejected=rejected[:REJECTED_SHOWN],
        rejected_more=max(0, len(rejected) - REJECTED_SHOWN),
        ignored=ignored[:20],
        ignored_more=max(0, len(ignored) - 20),
        warnings=[str(w) for w in report.get("warnings") or []],
        error=f"{error.get('code')}: {error.get('message')}" if isinstance(error, Mapping) else None,
    )


def _named(entry: Any) -> dict[str, str]:
    if isinstance(entry, Mapping):
        return {
            "name": str(entry.get("name", entry.get("file", "?"))),
            "reason": str(entry.get("reason", "")),
        }
    return {"name": str(entry), "reason": ""}


# --- the job page --------------------------------------------------------------------------------
@dataclass
class Link:
    kind: str
    label: str
    url: str
    filename: str


def artifact_links(record: JobRecord, servable: Iterable[str]) -> tuple[list[Link], list[Link]]:
    """(the main downloads: .pth, index, zip; every other servable artifact) as api URLs."""
    allowed = set(servable)
    main: list[Link] = []
    for kind, label in DOWNLOADS:
        uri = record.artifacts.get(kind)
        if uri and kind in allowed:
            main.append(Link(kind, label, file_url(record.job_id, uri), uri.rsplit("/", 1)[-1]))
    main_kinds = {kind for kind, _ in DOWNLOADS}
    others = [
        Link(kind, kind, file_url(record.job_id, uri), uri.rsplit("/", 1)[-1])
        for kind, uri in sorted(record.artifacts.items())
        if kind in allowed and kind not in main_kinds
    ]
    return main, others


def progress_fraction(record: JobRecord) -> tuple[int, int] | None:
    """(epochs done, epochs asked) when known."""
    progress = record.progress or {}
    epochs = progress.get("epochs") or (record.spec or {}).get("epochs")
    if not epochs:
        return None
    epoch = progress.get("epoch") or 0
    if record.status == "succeeded":
        epoch = epochs
    return int(min(epoch, epochs)), int(epochs)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
