"""The paper's tables as specs: `load_table("III")` reads `ablations/table_III.yaml`.

A spec is data only (rows = named config overrides, columns = metric keys with a direction, the
paper's reference number for every cell); `benchmark` turns it into stages and renders it.
Paper numbers are kept as the paper's text (e.g. "80.6", "529.80", "2254 (+0%)") and parsed to a
float for ranking, so a rendered reference cell reads exactly as in the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.cli import UserError

SPEC_DIR = Path(__file__).resolve().parent

BASELINES = ("none", "svd", "svd_finetuned", "ctrlv")
CTRLV_VARIANTS = ("1-to-0", "1-to-1", "3-to-1")
CTRLV_BACKBONES = ("svd", "svd_finetuned", "lsa")
DIRECTIONS = ("up", "down")
SOURCES = ("evaluate", "generate", "perf")  # perf: timed at render (benchmark/perf/table_cost.py)

_TABLE_KEYS = {
    "table",
    "title",
    "label_columns",
    "overrides",
    "detector",
    "rank_within",
    "compare_to",
    "columns",
    "rows",
    "in_paper",
}
_COLUMN_KEYS = {"id", "name", "key", "direction", "format", "scale", "source", "detector", "group", "per_videos"}
_ROW_KEYS = {"name", "labels", "baseline", "overrides", "ctrlv", "paper", "detector"}
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)")


class SpecError(UserError, ValueError):
    """A malformed table spec; the message names the file and the offending entry."""


class UnknownName(UserError, KeyError):
    """A table, row or column name that does not exist; the message lists the valid ones."""


@dataclass(frozen=True)
class Column:
    id: str  # unique within the table; keys the paper numbers and the JSON cells
    name: str  # header text
    key: str  # dotted path in the stage result: metrics.json (fvd.value, det.mAP, ...)
    # for evaluate columns; hours / params_m for generate columns
    direction: str  # "up": higher is better, "down": lower is better
    format: str = "{:.2f}"
    scale: float = 1.0  # ours = result[key] * scale (metrics/ reports mAP, mIoU in percent already)
    source: str = "evaluate"  # which stage kind produces the value
    detector: str | None = None  # evaluate with this detector (Table V); None = the row's / table's
    group: str | None = None  # a spanning header above several columns
    per_videos: int | None = None  # efficiency: time scaled to this many videos

    @property
    def arrow(self) -> str:
        return "\u2191" if self.direction == "up" else "\u2193"


@dataclass(frozen=True)
class PaperCell:
    text: str  # exactly as printed in the paper
    value: float  # the leading number, for ranking


@dataclass(frozen=True)
class Row:
    name: str
    labels: dict[str, str]
    baseline: str = "none"  # none (an LSA row) | svd | svd_finetuned | ctrlv
    overrides: dict[str, Any] = field(default_factory=dict)
    ctrlv: dict[str, str] | None = None  # {variant: 1-to-0|1-to-1|3-to-1, backbone: svd|svd_finetuned|lsa}
    paper: dict[str, PaperCell] = field(default_factory=dict)
    detector: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str  # roman numeral as in the paper: "I" ... "V"
    title: str
    label_columns: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every row (row wins)
    detector: str | None = None
    rank_within: tuple[str, ...] = ()  # label columns that split the ranking
    path: Path | None = None
    in_paper: bool = True  # false: a table of ours (Table VI): no paper numbers, the caption says so
    # the baseline row(s) of the paired differences (one per rank_within group): docs/benchmark.md
    compare_to: tuple[str, ...] = ()

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise UnknownName(f"table {self.name} has no row {name!r}; valid rows: {', '.join(r.name for r in self.rows)}")

    def select(self, names) -> TableSpec:
        """The same table restricted to `names` (in the table's order); unknown names fail."""
        if not names:
            return self
        wanted = list(names)
        for n in wanted:
            self.row(n)
        rows = tuple(r for r in self.rows if r.name in wanted)
        return TableSpec(
            self.name,
            self.title,
            self.label_columns,
            self.columns,
            rows,
            self.overrides,
            self.detector,
            self.rank_within,
            self.path,
            self.in_paper,
            self.compare_to,
        )

    def group_of(self, row: Row) -> tuple:
        """The row's rank_within group (its labels in those columns; () when the table is one group)."""
        return tuple(row.labels.get(k) for k in self.rank_within)

    def compare_row(self, row: Row) -> str | None:
        """The baseline row this row's paired differences are taken against: the `compare_to` row of its
        rank_within group (None for the baseline itself, or when its group has none in this selection)."""
        for name in self.compare_to:
            base = next((r for r in self.rows if r.name == name), None)
            if base is not None and self.group_of(base) == self.group_of(row):
                return None if base.name == row.name else base.name
        return None

    def column(self, cid: str) -> Column:
        for c in self.columns:
            if c.id == cid:
                return c
        raise UnknownName(f"table {self.name} has no column {cid!r}; valid: {', '.join(c.id for c in self.columns)}")

    def detectors_for(self, row: Row) -> list[str]:
        """Detectors the row's evaluations need (one evaluate stage each), in column order."""
        out = []
        for c in self.columns:
            if c.source == "evaluate":
                d = self.detector_of(row, c)
                if d not in out:
                    out.append(d)
        return out

    def detector_of(self, row: Row, column: Column) -> str:
        d = column.detector or row.detector or self.detector
        if d is None:
            raise SpecError(
                f"{self.path}: column {column.id!r} of row {row.name!r} has no detector "
                f"(set `detector` on the table, the row or the column)"
            )
        return d


# ------------------------------------------------------------------------------------ loading
def list_tables() -> list[str]:
    """Names of the tables with a spec, in the paper's order."""
    names = [p.stem[len("table_") :] for p in SPEC_DIR.glob("table_*.yaml")]
    return sorted(names, key=_roman_value)


def load_table(name: str | int) -> TableSpec:
    """'III', 'iii', 3, 'table_III' -> the spec of ablations/table_III.yaml."""
    key = _normalise_name(name)
    valid = list_tables()
    if key not in valid:
        raise UnknownName(f"unknown table {name!r}; valid tables: {', '.join(valid)}")
    return parse_spec(SPEC_DIR / f"table_{key}.yaml")


def parse_spec(path: Path) -> TableSpec:
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    _check_keys(raw, _TABLE_KEYS, f"{path}")
    for k in ("table", "title", "columns", "rows"):
        if k not in raw:
            raise SpecError(f"{path}: missing key {k!r}")
    columns = tuple(_column(c, path, i) for i, c in enumerate(raw["columns"]))
    ids = [c.id for c in columns]
    if len(set(ids)) != len(ids):
        raise SpecError(f"{path}: duplicate column ids in {ids}")
    label_columns = tuple(raw.get("label_columns") or ())
    in_paper = raw.get("in_paper", True)
    if not isinstance(in_paper, bool):
        raise SpecError(f"{path}: in_paper must be true or false, got {in_paper!r}")
    rows = tuple(_row(r, path, i, ids, label_columns, in_paper) for i, r in enumerate(raw["rows"]))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: duplicate row names in {names}")
    rank_within = tuple(raw.get("rank_within") or ())
    for lc in rank_within:
        if lc not in label_columns:
            raise SpecError(f"{path}: rank_within names {lc!r}, which is not one of label_columns {label_columns}")
    compare_to = raw.get("compare_to") or ()
    compare_to = (compare_to,) if isinstance(compare_to, str) else tuple(compare_to)
    spec = TableSpec(
        name=str(raw["table"]),
        title=str(raw["title"]),
        label_columns=label_columns,
        columns=columns,
        rows=rows,
        overrides=dict(raw.get("overrides") or {}),
        detector=raw.get("detector"),
        rank_within=rank_within,
        path=path,
        in_paper=in_paper,
        compare_to=compare_to,
    )
    groups = {}
    for name in compare_to:
        if name not in names:
            raise SpecError(f"{path}: compare_to names {name!r}, which is not a row; rows are {names}")
        g = spec.group_of(spec.row(name))
        if g in groups:
            raise SpecError(
                f"{path}: compare_to names {groups[g]!r} and {name!r} in one rank_within group {g}; "
                f"give one baseline row per group"
            )
        groups[g] = name
    for r in rows:  # every evaluate column must resolve to a detector
        spec.detectors_for(r)
    return spec


def _column(c: dict, path: Path, i: int) -> Column:
    where = f"{path}: columns[{i}]"
    if not isinstance(c, dict):
        raise SpecError(f"{where}: expected a mapping")
    _check_keys(c, _COLUMN_KEYS, where)
    for k in ("id", "name", "key", "direction"):
        if k not in c:
            raise SpecError(f"{where}: missing key {k!r}")
    if c["direction"] not in DIRECTIONS:
        raise SpecError(f"{where}: direction must be one of {DIRECTIONS}, got {c['direction']!r}")
    source = c.get("source", "evaluate")
    if source not in SOURCES:
        raise SpecError(f"{where}: source must be one of {SOURCES}, got {source!r}")
    fmt = c.get("format", "{:.2f}")
    try:
        fmt.format(1.0)
    except (ValueError, IndexError, KeyError) as e:
        raise SpecError(f"{where}: format {fmt!r} does not format a number ({e})") from e
    return Column(
        id=str(c["id"]),
        name=str(c["name"]),
        key=str(c["key"]),
        direction=c["direction"],
        format=fmt,
        scale=float(c.get("scale", 1.0)),
        source=source,
        detector=c.get("detector"),
        group=c.get("group"),
        per_videos=c.get("per_videos"),
    )


def _row(
    r: dict, path: Path, i: int, column_ids: list[str], label_columns: tuple[str, ...], in_paper: bool = True
) -> Row:
    where = f"{path}: rows[{i}]" + (f" ({r.get('name')})" if isinstance(r, dict) and r.get("name") else "")
    if not isinstance(r, dict):
        raise SpecError(f"{where}: expected a mapping")
    _check_keys(r, _ROW_KEYS, where)
    if "name" not in r:
        raise SpecError(f"{where}: missing key 'name'")
    baseline = r.get("baseline", "none")
    if baseline not in BASELINES:
        raise SpecError(f"{where}: baseline must be one of {BASELINES}, got {baseline!r}")
    ctrlv = r.get("ctrlv")
    if baseline == "ctrlv":
        if (
            not isinstance(ctrlv, dict)
            or ctrlv.get("variant") not in CTRLV_VARIANTS
            or ctrlv.get("backbone") not in CTRLV_BACKBONES
        ):
            raise SpecError(
                f"{where}: a ctrlv row needs ctrlv: {{variant: one of {CTRLV_VARIANTS}, "
                f"backbone: one of {CTRLV_BACKBONES}}}, got {ctrlv!r}"
            )
    elif ctrlv is not None:
        raise SpecError(f"{where}: `ctrlv` is only meaningful with baseline: ctrlv")
    labels = {str(k): str(v) for k, v in (r.get("labels") or {}).items()}
    missing_labels = [lc for lc in label_columns if lc not in labels]
    if missing_labels:
        raise SpecError(f"{where}: labels lack {missing_labels} (label_columns of the table)")
    paper_raw = r.get("paper") or {}
    unknown = sorted(set(paper_raw) - set(column_ids))
    if unknown:
        raise SpecError(f"{where}: paper numbers for unknown columns {unknown}; columns are {column_ids}")
    if not in_paper and paper_raw:
        raise SpecError(f"{where}: the table is not in the paper (in_paper: false), so its rows have no paper numbers")
    missing = [c for c in column_ids if c not in paper_raw] if in_paper else []
    if missing:
        raise SpecError(f"{where}: no paper number for columns {missing} (every cell has a reference)")
    paper = {cid: _paper_cell(paper_raw[cid], f"{where}: paper.{cid}") for cid in column_ids if cid in paper_raw}
    return Row(
        name=str(r["name"]),
        labels=labels,
        baseline=baseline,
        overrides=dict(r.get("overrides") or {}),
        ctrlv=dict(ctrlv) if ctrlv else None,
        paper=paper,
        detector=r.get("detector"),
    )


def _paper_cell(v: Any, where: str) -> PaperCell:
    if not isinstance(v, str):
        # a bare YAML float loses the paper's text ("529.80" -> 529.8): insist on quotes
        raise SpecError(f"{where}: write the paper number as a quoted string (exact text), got {v!r}")
    m = _NUMBER.match(v)
    if not m:
        raise SpecError(f"{where}: {v!r} does not start with a number")
    return PaperCell(text=v, value=float(m.group(1)))


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}


def _roman_value(s: str) -> int:
    return _ROMAN.get(s, 99)


def _normalise_name(name: str | int) -> str:
    s = str(name).strip()
    if s.lower().startswith("table_"):
        s = s[len("table_") :]
    if s.isdigit():
        inv = {v: k for k, v in _ROMAN.items()}
        return inv.get(int(s), s)
    return s.upper()
