"""The report as one self-contained HTML file: inline CSS, PNGs as ``data:`` URIs, no script.

Opened from a mail attachment, an archive or a machine with no network it looks
the same: nothing is fetched (the tests load it in a headless browser and check
that no ``http(s)`` reference appears). Every map is a ``<figure class="map">``
with a ``data-layer`` attribute, one per resampled layer and per analysis map.

Maps are drawn one at a time, each read at a stride that fits what is left of
``memory.budget`` in this process when it is drawn (the worker draws the report
at the end of a run, under the run's budget); a map that no longer fits is a
caption saying so instead of an image.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import zarr

from pipeline.config import PipelineConfig
from pipeline.grid import TargetGrid
from pipeline.memory import format_bytes, own_rss
from pipeline.report import plots
from pipeline.report.model import ReportData
from pipeline.runner import STORE_NAME
from pipeline.store import NODATA_ATTR

log = logging.getLogger("geod.report")

#: Analysis outputs drawn as maps (by file suffix).
MAP_SUFFIXES = (".tif", ".tiff")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2330; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-done { color: #2e7d32; font-weight: bold; } .state-failed { color: #c62828;
  font-weight: bold; } .maps { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figure.map img { width: 520px; } img.wide { max-width: 100%; }
figcaption { font-size: 12px; color: #556; } .level-ERROR, .level-FAILED,
.level-CRITICAL { color: #c62828; } .level-WARNING { color: #a66a00; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(headers: list[str], rows: list[list[object]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            text = "—" if value is None else (f"{value:,}" if isinstance(value, int) else value)
            css = ' class="num"' if index in numeric else ""
            cells.append(f"<td{css}>{html.escape(str(text))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure(png: bytes, caption: str, layer: str | None = None) -> str:
    if layer is None:
        return (
            f'<figure><img class="wide" src="{data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return (
        f'<figure class="map" data-layer="{html.escape(layer)}">'
        f'<img src="{data_uri(png)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def room(budget: int) -> int:
    """Bytes of ``budget`` left for the next figure (the drawing stack counts until loaded)."""
    stack = 0 if plots.loaded() else plots.DRAWING_STACK_BYTES
    return budget - own_rss() - stack


def _not_drawn(what: str, budget: int, layer: str | None = None) -> str:
    """The place of a figure the memory budget leaves no room for."""
    log.warning(
        "report: %s not drawn: %s left of memory.budget %s",
        what, format_bytes(max(0, budget - own_rss())), format_bytes(budget),
    )  # fmt: skip
    text = f"{html.escape(what)}: not drawn, too little of memory.budget left"
    if layer is None:
        return f"<p>{text}.</p>"
    return (
        f'<figure class="map" data-layer="{html.escape(layer)}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def layer_maps(config: PipelineConfig, work_dir: Path, budget: int) -> list[str]:
    """A quick-look figure per resampled layer present in the store, within ``budget``."""
    grid = TargetGrid.from_config(config.grid)
    root = work_dir / STORE_NAME
    west, south, east, north = grid.bounds
    figures = []
    for dataset in config.datasets:
        if not (root / dataset.name / "zarr.json").is_file():
            continue
        attrs = zarr.open_array(store=str(root / dataset.name), mode="r").attrs
        nodata = attrs.get(NODATA_ATTR)
        cells = plots.quicklook_cells(room(budget))
        if not cells:
            figures.append(_not_drawn(f"map of {dataset.name}", budget, dataset.name))
            continue
        values, step = plots.decimated_store_layer(
            root, dataset.name, None if nodata is None else float(nodata), cells
        )
        caption = f"{dataset.name} ({dataset.resampling.value}); every {step}th cell shown"
        png = plots.quicklook(
            values, (west, east, south, north), dataset.name, grid.crs.to_string()
        )
        figures.append(_figure(png, caption, dataset.name))
    return figures


def analysis_maps(data: ReportData, budget: int) -> list[str]:
    """A quick-look figure per analysis map (GeoTIFF) the run published, within ``budget``."""
    figures = []
    for output in data.outputs:
        path = Path(output.path)
        if path.suffix.lower() not in MAP_SUFFIXES or not path.is_file():
            continue
        cells = plots.quicklook_cells(room(budget))
        if not cells:
            figures.append(_not_drawn(f"map of {path.name}", budget, path.stem))
            continue
        values, extent = plots.decimated_geotiff(path, cells)
        png = plots.quicklook(values, extent, path.stem, output.kind)
        figures.append(_figure(png, f"{path.name} ({output.kind})", path.stem))
    return figures


def render_html(data: ReportData, config: PipelineConfig, work_dir: Path) -> str:
    """The whole report page, its maps drawn within the config's ``memory.budget``."""
    budget = config.memory.budget_bytes()
    state = data.summary.get("State", "")
    summary = _table(
        ["", ""],
        [[key, value] for key, value in data.summary.items()],
        set(),
    ).replace("<tr><th></th><th></th></tr>", "")
    sections = [
        f"<h1>{html.escape(data.title)}</h1>",
        f'<p>State: <span class="state-{html.escape(state)}">{html.escape(state)}</span></p>',
        "<h2>Run</h2>",
        summary,
        "<h2>Stage timeline</h2>",
    ]
    if data.bars and room(budget) < plots.CHART_BYTES:
        sections.append(_not_drawn("stage timeline", budget))
    elif data.bars:
        sections.append(
            _figure(
                plots.timeline(data.bars, data.marks, data.start),
                "stage → dataset; dashed lines: pauses, resumes, stops, failures",
            )
        )
    else:
        sections.append("<p>No stage has started yet.</p>")
    sections.append("<h2>Memory</h2>")
    if data.memory:
        sections.append(
            _not_drawn("memory chart", budget)
            if room(budget) < plots.CHART_BYTES
            else _figure(
                plots.memory_chart(data),
                "worker RSS against the budget and the governor's warning/critical levels; "
                "purple: window size and its changes",
            )
        )
        if data.governor:
            sections.append(
                _table(
                    ["time (s)", "window", "level", "reason"],
                    [
                        [
                            f"{g.time - data.start:.1f}",
                            f"{g.old_size} → {g.new_size}",
                            g.level,
                            g.reason,
                        ]
                        for g in data.governor
                    ],
                    set(),
                )
            )
    else:
        sections.append("<p>No memory reading recorded.</p>")
    sections.append("<h2>Datasets</h2>")
    spot = [o.validated_cells for o in data.outputs if o.validated_cells]
    sections.append(
        _table(
            [
                "dataset",
                "source",
                "CRS",
                "size",
                "resolution",
                "dtype",
                "nodata",
                "method",
                "placement",
                "valid cells",
                "footprint cells",
            ],
            [
                [
                    d.name,
                    d.path,
                    d.crs,
                    d.size,
                    d.resolution,
                    d.dtype,
                    d.nodata,
                    d.method,
                    d.placement,
                    d.valid_cells,
                    d.footprint_cells,
                ]
                for d in data.datasets
            ],
            {9, 10},
        )
    )
    sections.append(
        f"<p>Validation: {max(spot):,} sampled cells per output compared with the store "
        f"(and passthrough sources); all {len(spot)} validated outputs passed.</p>"
        if spot
        else "<p>Validation: no output validated yet.</p>"
    )
    maps = layer_maps(config, work_dir, budget)
    sections.append("<h2>Resampled layers</h2>")
    sections.append(f'<div class="maps">{"".join(maps)}</div>' if maps else "<p>None yet.</p>")
    analysis = analysis_maps(data, budget)
    if analysis:
        sections.append("<h2>Analysis maps</h2>")
        sections.append(f'<div class="maps">{"".join(analysis)}</div>')
    sections.append("<h2>Outputs</h2>")
    sections.append(
        _table(
            ["kind", "path", "bytes", "rows", "validated cells"],
            [[o.kind, o.path, o.bytes, o.rows, o.validated_cells] for o in data.outputs],
            {2, 3, 4},
        )
        if data.outputs
        else "<p>No output published yet.</p>"
    )
    sections.append("<h2>Warnings and errors</h2>")
    if data.problems:
        rows = "".join(
            f'<tr class="level-{html.escape(level)}"><td class="num">{t - data.start:.1f}</td>'
            f"<td>{html.escape(level)}</td><td>{html.escape(message)}</td></tr>"
            for t, level, message in data.problems
        )
        sections.append(
            f"<table><tr><th>time (s)</th><th>level</th><th>message</th></tr>{rows}</table>"
        )
    else:
        sections.append("<p>None.</p>")
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(data.title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
