"""Drawing the report page from a run's facts, and writing it.

The page is a Jinja2 template with autoescaping on, so every name, path and
message read from a run folder is escaped by the template engine rather than
by hand at each place it is printed. The SVG charts are built in Python
(``charts``, which escapes its own text) and handed to the template as
``Markup``. Styles, script and images are inline, and the page's
Content-Security-Policy forbids any network load, so the file opens offline
and can be mailed on its own.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from zsplg import __version__
from zsplg.data.errors import InputError
from zsplg.data.labels import atomic_write_text
from zsplg.data.run_folder import (
    CONFIG_FILE,
    ERRORS_FILE,
    HISTORY_FILE,
    LABELS,
    METRICS_FILE,
    RUN_FILE,
)
from zsplg.report.charts import bar_chart, heatmap, line_chart
from zsplg.report.facts import ReportOptions, RunFacts, gather
from zsplg.runtime.progress import Reporter

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
SUMMARY_KEYS = (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"),
                ("mean_accuracy", "mean accuracy"),
                ("frequency_weighted_iou", "frequency-weighted IoU"), ("coverage", "coverage"),
                ("num_classes_evaluated", "classes evaluated"), ("valid_pixels", "valid pixels"),
                ("unlabelled_pixels", "unlabelled (abstained) pixels"),
                ("images_evaluated", "images evaluated"), ("images_failed", "images failed"))
_FILES = {"run": RUN_FILE, "labels": LABELS, "errors": ERRORS_FILE, "metrics": METRICS_FILE,
          "history": HISTORY_FILE, "config": CONFIG_FILE}
_LONG_SETTING = 300


@dataclass
class Section:
    """One part of the page: its anchor, heading, which template block draws it, and its data."""

    anchor: str
    heading: str
    kind: str
    data: Any


def fmt(value: Any, digits: int = 2) -> str:
    """A value as the page prints it: thousands separators, a dash for missing or NaN."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "\u2013" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, short text) rows, so one table shows them all."""
    if isinstance(data, Mapping):
        rows = []
        for key, value in data.items():
            rows.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(data, list | tuple):
        if all(not isinstance(v, dict | list) for v in data):
            text = ", ".join(fmt(v) for v in data)
        else:
            text = json.dumps(data)
        if len(text) > _LONG_SETTING:
            text = text[:_LONG_SETTING - 1] + "\u2026"
        return [(prefix, text)]
    return [(prefix, fmt(data, 4))]


def _markup(draw: Callable[..., str]) -> Callable[..., Markup]:
    """A chart function for the template: its SVG is already escaped where it was built."""

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> Markup:
        return Markup(draw(*args, **kwargs))  # noqa: S704 - charts.py escapes every text

    return drawn


@functools.cache
def environment() -> Environment:
    """The template environment (built once): autoescaping, the filters and charts it uses."""
    env = Environment(loader=PackageLoader("zsplg.report", "templates"),
                      autoescape=select_autoescape(("html", "j2"), default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["flatten"] = flatten
    env.globals.update(bar_chart=_markup(bar_chart), heatmap=_markup(heatmap),
                       line_chart=_markup(line_chart), summary_keys=SUMMARY_KEYS,
                       files=_FILES)
    return env


def sections(facts: RunFacts) -> list[Section]:
    """The page's parts in reading order: the label run, its scores, gallery, evals, training."""
    found = []
    if facts.label is not None:
        found.append(Section("label", "Labelling run", "label", facts.label))
        if facts.label.computed is not None:
            found.append(Section("label-eval",
                                 "Evaluation against ground truth (computed for this report)",
                                 "label-eval", facts.label.computed))
        if facts.label.gallery is not None:
            found.append(Section("gallery", "Gallery", "gallery", facts.label.gallery))
    for item in facts.evals:
        found.append(Section(f"eval-{item.stem}", f"Evaluation: {item.name}", "eval", item))
    if facts.train is not None:
        found.append(Section("train", "Training run", "train", facts.train))
    return found


def render_page(facts: RunFacts, generated: _dt.datetime | None = None) -> str:
    """The whole HTML document for these facts."""
    generated = generated or _dt.datetime.now(_dt.UTC)
    return environment().get_template(TEMPLATE).render(
        title=f"zsplg report: {facts.path.name}",
        subtitle=f"{', '.join(facts.kinds)} run \u2014 {facts.path.resolve()}",
        generated=generated.strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        warnings=facts.warnings, sections=sections(facts))


def render_report(run_dir: str | PathLike[str], options: ReportOptions | None = None,
                  reporter: Reporter | None = None) -> str:
    """The report of a run folder (or an eval JSON file) as one HTML string."""
    return render_page(gather(run_dir, options, reporter))


def default_report_path(run_dir: str | PathLike[str]) -> Path:
    """RUN_DIR/report.html, or NAME_report.html beside an eval JSON file."""
    path = Path(run_dir)
    return path.with_name(f"{path.stem}_report.html") if path.is_file() else path / REPORT_FILE


def write_report(run_dir: str | PathLike[str], out: str | PathLike[str] | None = None,
                 options: ReportOptions | None = None,
                 reporter: Reporter | None = None) -> Path:
    """Render the report and write it atomically; returns the file written."""
    html = render_report(run_dir, options, reporter)
    target = Path(out) if out is not None else default_report_path(run_dir)
    try:
        atomic_write_text(target, html)
    except OSError as exc:
        raise InputError(target, f"cannot write the report ({exc.strerror or exc})") from None
    return target
