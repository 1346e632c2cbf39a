"""The fleet table: every device's newest reading, lag, jobs, forecast quality and status.

Built for a thousand devices: the table is Bokeh's DataTable (rows rendered
lazily, sorted in the browser by clicking a header), the search box filters on
the server through the table's view, and each refresh patches only the cells
that changed (``ColumnDataSource.patch``); the whole table is resent only when
the set of devices changes. Clicking a row opens that device below.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from bokeh.layouts import column, row
from bokeh.models import (
    AllIndices,
    CDSView,
    ColumnDataSource,
    DataTable,
    DateFormatter,
    Div,
    IndexFilter,
    NumberFormatter,
    StringFormatter,
    TableColumn,
    TextInput,
)
from bokeh.transform import factor_cmap

from dashboard.data import DeviceRow

NAN = float("nan")
STATUS_COLORS = {"live": "#2ca02c", "silent": "#b8860b", "failing": "#d62728"}
TIME_FORMAT = "%m-%d %H:%M"


def _ms(seconds: float | None) -> float:
    return NAN if seconds is None else seconds * 1000.0


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)


def columns_of(row_: DeviceRow) -> dict[str, object]:
    """One table row as column values (times in ms for the datetime formatter, NaN: unknown)."""
    return {
        "device_id": row_.device_id,
        "status": row_.status,
        "newest_time": _ms(row_.newest_time),
        "temperature": _num(row_.temperature),
        "humidity": _num(row_.humidity),
        "lag_minutes": NAN if row_.event_time_lag is None else row_.event_time_lag / 60.0,
        "jobs_emitted": _num(row_.jobs_emitted),
        "last_job": row_.last_job_state or "—",
        "last_job_end": _ms(row_.last_job_end),
        "forecast_until": _ms(row_.forecast_until),
        "forecast_error": _num(row_.forecast_error),
        "anomalies": _num(row_.anomalies),
    }


COLUMNS = (
    "device_id", "status", "newest_time", "temperature", "humidity", "lag_minutes",
    "jobs_emitted", "last_job", "last_job_end", "forecast_until", "forecast_error", "anomalies",
)  # fmt: skip


def _same(a: object, b: object) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _table_columns() -> list[TableColumn]:
    when = DateFormatter(format=TIME_FORMAT, nan_format="—", null_format="—")

    def number(pattern: str) -> NumberFormatter:
        return NumberFormatter(format=pattern, nan_format="—", null_format="—")

    status = StringFormatter(
        font_style="bold",
        text_color=factor_cmap("status", list(STATUS_COLORS.values()), list(STATUS_COLORS)),
    )
    return [
        TableColumn(field="device_id", title="device", width=110),
        TableColumn(field="status", title="status", formatter=status, width=60),
        TableColumn(field="newest_time", title="newest reading", formatter=when, width=100),
        TableColumn(field="temperature", title="°C", formatter=number("0.0"), width=45),
        TableColumn(field="humidity", title="%RH", formatter=number("0"), width=45),
        TableColumn(field="lag_minutes", title="lag min", formatter=number("0"), width=55),
        TableColumn(field="jobs_emitted", title="jobs", formatter=number("0"), width=45),
        TableColumn(field="last_job", title="last job", width=65),
        TableColumn(field="last_job_end", title="its window end", formatter=when, width=100),
        TableColumn(field="forecast_until", title="trained until", formatter=when, width=100),
        TableColumn(field="forecast_error", title="error °C", formatter=number("0.00"), width=60),
        TableColumn(field="anomalies", title="anomalies", formatter=number("0"), width=65),
    ]


class FleetPanel:
    """The table, its search box and summary line; patched from fleet snapshots."""

    def __init__(self, on_pick: Callable[[str], None]) -> None:
        self.rows: list[DeviceRow] = []
        self.source = ColumnDataSource({name: [] for name in COLUMNS}, name="fleet")
        self.view = CDSView(filter=AllIndices())
        self.search = TextInput(
            placeholder="search device or status", name="search", width=240, title="Fleet"
        )
        self.summary = Div(text="", name="fleet_summary")
        self.table = DataTable(
            source=self.source,
            view=self.view,
            columns=_table_columns(),
            name="fleet_table",
            height=300,
            sizing_mode="stretch_width",
            index_position=None,
            sortable=True,
            reorderable=False,
            selectable=True,
        )
        self.search.on_change("value_input", lambda _a, _o, _n: self._filter())
        self.source.selected.on_change("indices", self._on_selected)
        self._on_pick = on_pick
        self.layout = column(
            row(self.search, self.summary), self.table, sizing_mode="stretch_width"
        )

    def apply(self, rows: tuple[DeviceRow, ...]) -> None:
        """Show a new snapshot's rows, sending only what changed."""
        new = list(rows)
        if [r.device_id for r in new] != [r.device_id for r in self.rows]:
            self.source.data = {name: [columns_of(r)[name] for r in new] for name in COLUMNS}
            self.rows = new
            self._filter()
        else:
            patches: dict[str, list[tuple[int, object]]] = {}
            for index, (old_row, new_row) in enumerate(zip(self.rows, new, strict=True)):
                if old_row == new_row:
                    continue
                before, after = columns_of(old_row), columns_of(new_row)
                for name in COLUMNS:
                    if not _same(before[name], after[name]):
                        patches.setdefault(name, []).append((index, after[name]))
            if patches:
                self.source.patch(patches)
            self.rows = new
        summary = self._summary()
        if summary != self.summary.text:
            self.summary.text = summary

    def _summary(self) -> str:
        counts = Counter(r.status for r in self.rows)
        parts = [f"{len(self.rows)} device{'' if len(self.rows) == 1 else 's'}"]
        parts += [
            f"<span style='color:{color}'>{counts[s]} {s}</span>"
            for s, color in STATUS_COLORS.items()
        ]
        return " · ".join(parts)

    def _filter(self) -> None:
        text = (self.search.value_input or "").strip().lower()
        if not text:
            if not isinstance(self.view.filter, AllIndices):
                self.view.filter = AllIndices()
            return
        self.view.filter = IndexFilter(
            [i for i, r in enumerate(self.rows) if text in r.device_id.lower() or text == r.status]
        )

    def _on_selected(self, _attr: str, _old: list[int], new: list[int]) -> None:
        if new and new[0] < len(self.rows):
            self._on_pick(self.rows[new[0]].device_id)
