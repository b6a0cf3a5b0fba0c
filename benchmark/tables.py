"""Rendering a table: our numbers beside the paper's, as markdown, LaTeX and JSON (one function).

`make_table(spec, cells, ...)` builds all three from the spec and a {row: {column id: value}} dict;
`render_table(...)` writes them atomically as results/<profile>/table_<N>.{md,tex,json}.

Marks, per column and within each `rank_within` group of rows, following the column's direction:
best in bold (markdown **x**, LaTeX \\textbf{x}), second best underlined (<u>x</u>, \\underline{x}).
Ties share the mark. The second best is marked only when at least three rows have a value (with two,
"second" would just be "worst"). A column (or group) whose values all tie, or that has a single value,
is not marked at all: bolding 0.00 in every row as "best" would claim a ranking there is not. Our
numbers and the paper's are ranked separately.
Missing cells: "n/a" (not computed or metric absent; never dropped, never filled in).
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ablations.registry import Column, TableSpec
from benchmark.store import atomic_write_json, atomic_write_text

NA = "n/a"
PM = "±"
DAGGER = "†"  # the paired difference to the baseline row excludes 0 (uncertainty_text says so)
BEST, SECOND = "best", "second"
MIN_ROWS_FOR_SECOND = 3


# ------------------------------------------------------------------------------------ ranking
def rank_marks(values: Sequence[float | None], direction: str) -> list[str | None]:
    """'best' / 'second' / None for each value (None values get None); nothing is marked unless at
    least two distinct values are present."""
    present = sorted({v for v in values if _ok(v)}, reverse=(direction == "up"))
    n_present = sum(_ok(v) for v in values)
    if len(present) < 2:
        return [None] * len(values)
    best = present[0]
    second = present[1] if len(present) > 1 and n_present >= MIN_ROWS_FOR_SECOND else None
    out = []
    for v in values:
        out.append(BEST if _ok(v) and v == best else SECOND if _ok(v) and v == second else None)
    return out


def _ok(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _groups(spec: TableSpec) -> list[list[int]]:
    """Row indices split by the `rank_within` label columns (order kept)."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(spec.rows):
        groups.setdefault(tuple(r.labels.get(k) for k in spec.rank_within), []).append(i)
    return list(groups.values())


def _displayed(col: Column, v: float | None) -> float | None:
    """The value as printed (rounded by the column's format), so marks agree with what one reads:
    two cells that both print 0.01 tie."""
    if not _ok(v):
        return None
    try:
        return float(col.format.format(v))
    except ValueError:
        return v


def enough_digits(col: Column, values: Sequence[float | None], most: int = 4) -> Column:
    """`col` with up to `most` more decimals, as many as it takes for our distinct values to print
    distinct: at the paper's {:.2f}, FVDs of 0.0474 and 0.0460 (the mini profile's random I3D) would
    both print 0.05 and look equal in every row. Formats other than {:.Nf} are kept."""
    m = re.fullmatch(r"\{:\.(\d+)f\}", col.format)
    distinct = sorted({float(v) for v in values if _ok(v)})
    if not m or len(distinct) < 2:
        return col
    d = int(m.group(1))
    for extra in range(most + 1):
        fmt = f"{{:.{d + extra}f}}"
        if len({fmt.format(v) for v in distinct}) == len(distinct):
            break
    return col if extra == 0 else dataclasses.replace(col, format=fmt)


def _marks(spec: TableSpec, col: Column, values: Sequence[float | None]) -> list[str | None]:
    values = [_displayed(col, v) for v in values]
    out: list[str | None] = [None] * len(values)
    for idx in _groups(spec):
        for i, m in zip(idx, rank_marks([values[i] for i in idx], col.direction)):
            out[i] = m
    return out


# ------------------------------------------------------------------------------------ building
def make_table(
    spec: TableSpec,
    cells: Mapping[str, Mapping[str, float | None]],
    *,
    caption: str,
    profile: str = "",
    fake: bool = False,
    extra: Mapping[str, dict] | None = None,
    provenance: Mapping | None = None,
    stats: Mapping[str, Mapping[str, dict]] | None = None,
    uncertainty: Mapping | None = None,
) -> dict:
    """{'md': str, 'tex': str, 'json': dict} for the table. `cells[row][column id]` is our value
    (already scaled to the paper's units; the mean over seeds) or None (rendered n/a).
    `stats[row][column id]` holds the cell's bootstrap interval, paired difference to its baseline row
    and mark (benchmark.render.cell_statistics); extra[row]["seeds"] the values per seed. With
    uncertainty["show"], cells read `value ± half-width` (one seed) or `mean ± std` (several seeds),
    and a marked cell gets a dagger; ranking uses the values alone."""
    stats = stats or {}
    show = bool((uncertainty or {}).get("show"))
    rows = spec.rows
    ours = {c.id: [(cells.get(r.name) or {}).get(c.id) for r in rows] for c in spec.columns}
    paper = {c.id: [r.paper[c.id].value if c.id in r.paper else None for r in rows] for c in spec.columns}
    shown = {c.id: enough_digits(c, ours[c.id]) for c in spec.columns}  # our cells' format per column
    ours_marks = {c.id: _marks(spec, shown[c.id], ours[c.id]) for c in spec.columns}
    paper_marks = {c.id: _marks(spec, c, paper[c.id]) for c in spec.columns}

    json_rows = []
    for i, r in enumerate(rows):
        row_cells = {}
        seeds = ((extra or {}).get(r.name) or {}).get("seeds")
        for c in spec.columns:
            v = ours[c.id][i]
            st = dict((stats.get(r.name) or {}).get(c.id) or {})
            if seeds:
                st["seeds"] = {"seeds": seeds["seeds"], "values": seeds["values"][c.id], "std": seeds["std"][c.id]}
            parts = _text_parts(shown[c.id], v, st, show) if _ok(v) else None
            row_cells[c.id] = {
                "ours": v if _ok(v) else None,
                "ours_text": _join_md(parts) if parts else NA,
                "ours_parts": parts,
                "ours_mark": ours_marks[c.id][i],
                "paper": paper[c.id][i],
                "paper_text": r.paper[c.id].text if c.id in r.paper else NA,
                "paper_mark": paper_marks[c.id][i],
                **st,
            }
        json_rows.append(
            {
                "name": r.name,
                "labels": r.labels,
                "baseline": r.baseline,
                "ctrlv": r.ctrlv,
                "cells": row_cells,
                **({"extra": extra[r.name]} if extra and r.name in extra else {}),
            }
        )
    doc = {
        "table": spec.name,
        "title": spec.title,
        "profile": profile,
        "fake": fake,
        "caption": caption,
        "label_columns": list(spec.label_columns),
        "rank_within": list(spec.rank_within),
        "columns": [
            {
                "id": c.id,
                "name": c.name,
                "key": c.key,
                "direction": c.direction,
                "group": c.group,
                "detector": c.detector,
                "source": c.source,
                "scale": c.scale,
            }
            for c in spec.columns
        ],
        "rows": json_rows,
        **({"provenance": dict(provenance)} if provenance is not None else {}),
    }
    return {"md": _markdown(spec, doc), "tex": _latex(spec, doc), "json": doc}


def _text_parts(c: Column, v: float, st: dict, show: bool) -> dict:
    """The printed pieces of one of our cells: value, the ± part (std over seeds, or the interval's
    half-width) and the mark; without `show` the value alone (the paper's style)."""
    pm = None
    if show:
        seeds = st.get("seeds")
        if seeds and len(seeds["seeds"]) > 1:
            pm = seeds["std"]
        elif st.get("interval") and st["interval"].get("half_width") is not None:
            pm = st["interval"]["half_width"]
    return {
        "value": c.format.format(v),
        "pm": None if pm is None else c.format.format(pm),
        "mark": bool(show and st.get("significant")),
    }


def _join_md(parts: dict) -> str:
    text = parts["value"] + (f" {PM} {parts['pm']}" if parts["pm"] is not None else "")
    return text + (DAGGER if parts["mark"] else "")


def uncertainty_text(spec: TableSpec, u: Mapping | None) -> str:
    """The caption sentences saying what `±` and the dagger mean (empty in the paper's style)."""
    if not u:
        return ""
    b = u["bootstrap"]
    conf = f"{100 * float(b['confidence']):g}%"
    seeds = [s for s in u["seeds"] if s is not None]
    where = f"table_{spec.name}.json"
    if not u["show"]:
        return (
            f"{conf} bootstrap intervals over the test videos and paired differences to the baseline row are in {where}"
        )
    if len(seeds) > 1:
        s = (
            f"Ours: mean {PM} standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each "
            f"seed trains and generates anew; every seed's value and {conf} interval in {where}); "
            f"bold / underline rank the means"
        )
    else:
        s = (
            f"Ours: value {PM} half-width of its {conf} percentile bootstrap interval over the test videos "
            f"({b['n_resamples']} resamples, seed {b['seed']}; each metric recomputed from the resampled videos)"
        )
    if u.get("baselines"):
        every = " in every seed, on the same side" if len(seeds) > 1 else ""
        s += (
            f". {DAGGER}: the {conf} paired bootstrap interval (same test clips, same resamples) of the "
            f"difference to the baseline row ({', '.join(u['baselines'])}) excludes 0{every}"
        )
    return s


def render_table(
    spec: TableSpec,
    cells,
    *,
    caption: str,
    out_dir: str | Path,
    profile: str = "",
    fake: bool = False,
    extra=None,
    **options,
) -> dict[str, Path]:
    """Write table_<N>.md, .tex and .json under out_dir (each atomically); returns their paths.
    `options` go to make_table (provenance, stats, uncertainty)."""
    t = make_table(spec, cells, caption=caption, profile=profile, fake=fake, extra=extra, **options)
    out = Path(out_dir)
    stem = f"table_{spec.name}"
    return {
        "md": atomic_write_text(out / f"{stem}.md", t["md"]),
        "tex": atomic_write_text(out / f"{stem}.tex", t["tex"]),
        "json": atomic_write_json(out / f"{stem}.json", t["json"]),
    }


MIOU_TEXT = {
    "hungarian_ref": "mIoU = mean over reference boxes of the IoU with their Hungarian partner (unmatched = 0)",
    "matched_mean": "mIoU = IoU averaged over Hungarian-matched pairs with IoU >= {match}",
}


def protocol_text(cfgs: Sequence[Mapping]) -> str:
    """The protocol facts a reader needs beside the numbers (docs/protocol.md), from the rows' resolved
    configs (a Ctrl-V row: its generate stage's): base model, mIoU definition, the overlap of the test
    clips per dataset, and Ctrl-V's ground-truth-selected box video when it is on."""
    cfgs = [c for c in cfgs if c]
    if not cfgs:
        return ""
    parts = []
    models = sorted(
        {
            str(c.get("model", {}).get("svd") or c.get("model", {}).get("ltx"))
            + (f" ({c['model']['variant']} files)" if c.get("model", {}).get("variant") else "")
            for c in cfgs
        }
    )
    parts.append("Base model: " + ", ".join(models))
    mious = []
    for c in cfgs:
        det = c.get("metrics", {}).get("det", {})
        text = MIOU_TEXT.get(det.get("miou", "hungarian_ref"), str(det.get("miou")))
        text = text.format(match=det.get("miou_match_iou", 0.5))
        if text not in mious:
            mious.append(text)
    parts.append("; ".join(mious))
    clips = {}
    for c in cfgs:
        data = c.get("data", {})
        test = data.get("test") or {}
        step = test.get("window_step")
        if data.get("name") == "synthetic":
            text = "independent synthetic clips"
        elif step is None:
            text = "non-overlapping clips"
        else:
            span = (int(data.get("clip_len", 1)) - 1) * int(data.get("stride", 1)) + 1
            text = f"{data.get('clip_len')}-frame windows starting every {step} frame(s), " + (
                "overlapping" if int(step) < span else "non-overlapping"
            )
        text += f", {test.get('select', 'even')} selection" if data.get("name") != "synthetic" else ""
        clips[str(data.get("name"))] = text
    parts.append("Test clips: " + "; ".join(f"{d}: {t}" for d, t in sorted(clips.items())))
    if any(((c.get("ctrlv") or {}).get("inference") or {}).get("bbox", {}).get("best_of_gt") for c in cfgs):
        parts.append(
            "Ctrl-V: its BBox generator's box video is the best of several guidance settings, "
            "chosen against the ground-truth boxes of every frame (Ctrl-V's evaluation)"
        )
    return ". ".join(parts) + "."


def caption_text(
    spec: TableSpec,
    *,
    description: str,
    sizes: Sequence[tuple[str, int, int]],
    fake: bool = False,
    notes: Sequence[str] = (),
) -> str:
    """'Table III (smoke). <title> N = 2 test videos x 8 frames (synthetic). <notes> <profile text>';
    `notes` are the protocol sentences (protocol_text, the metric protocols), empty ones skipped."""
    if sizes:
        n = "; ".join(
            f"{nv} test videos x {nf} frames" + (f" ({d})" if len(sizes) > 1 or d else "") for d, nv, nf in sizes
        )
    else:
        n = "0 (no test videos generated yet)"
    rank = f" within each {' / '.join(spec.rank_within)}" if spec.rank_within else ""
    ours = "Ours beside the paper's numbers" if spec.in_paper else "Ours only: this table is not in the paper"
    s = (
        f"Table {spec.name}. {spec.title} {ours}; per column{rank}, best in bold, "
        f"second best underlined (three or more rows; a column whose values all tie is not marked). N = {n}. "
        + "".join(f"{note.rstrip('.')}. " for note in notes if note)
        + f"{description.rstrip('.')}."
    )
    if fake:
        s += " FAKE RUNNER (tests/fakes.py): every 'ours' number is a placeholder, not a measurement."
    return s


# ------------------------------------------------------------------------------------ markdown
def _md_mark(text: str, mark: str | None) -> str:
    return f"**{text}**" if mark == BEST else f"<u>{text}</u>" if mark == SECOND else text


def _header(c: Column) -> str:
    det = f"{c.group} " if c.group else ""
    return f"{det}{c.name} {c.arrow}"


def _markdown(spec: TableSpec, doc: dict) -> str:
    heads = list(spec.label_columns)
    per = 2 if spec.in_paper else 1  # (ours, paper) per column, or ours alone
    for c in spec.columns:
        heads += [f"{_header(c)} (ours)", f"{_header(c)} (paper)"][:per]
    lines = [
        f"**{_md_escape(doc['caption'])}**",
        "",
        "| " + " | ".join(_md_escape(h) for h in heads) + " |",
        "|" + "|".join([":--"] * len(spec.label_columns) + ["--:"] * (per * len(spec.columns))) + "|",
    ]
    for r in doc["rows"]:
        vals = [_md_escape(r["labels"].get(k, "")) for k in spec.label_columns]
        for c in spec.columns:
            cell = r["cells"][c.id]
            vals.append(_md_mark(cell["ours_text"], cell["ours_mark"]))
            if spec.in_paper:
                vals.append(_md_mark(_md_escape(cell["paper_text"]), cell["paper_mark"]))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(s: str) -> str:
    """Text from specs and configs (labels, a profile's description, paths) as markdown shows it
    literally: HTML's special characters as entities (a description holding `<script>` stays text;
    the .html and .tex escape theirs too) and `|`, which would end a table cell."""
    return html.escape(str(s), quote=False).replace("|", "\\|")


# ------------------------------------------------------------------------------------ LaTeX
_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    PM: r"$\pm$",
    DAGGER: r"$^\dagger$",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(s))


def _tex_mark(text: str, mark: str | None) -> str:
    return rf"\textbf{{{text}}}" if mark == BEST else rf"\underline{{{text}}}" if mark == SECOND else text


def _tex_parts(parts: dict | None, text: str) -> str:
    if not parts:
        return tex_escape(text)
    out = tex_escape(parts["value"]) + (rf" $\pm$ {tex_escape(parts['pm'])}" if parts["pm"] is not None else "")
    return out + (r"$^\dagger$" if parts["mark"] else "")


def _latex(spec: TableSpec, doc: dict) -> str:
    nl = len(spec.label_columns)
    per = 2 if spec.in_paper else 1
    arrow = {"up": r"$\uparrow$", "down": r"$\downarrow$"}
    lines = [
        r"% generated by benchmark.tables (LSA-Bench); needs \usepackage{booktabs}",
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(doc['caption'])}}}",
        rf"\label{{tab:lsa-bench-{spec.name}}}",
        r"\begin{tabular}{" + "l" * nl + "r" * per * len(spec.columns) + "}",
        r"\toprule",
    ]
    if any(c.group for c in spec.columns):  # spanning group headers (Table I, Table V)
        cells, rules, col = [""] * nl, [], nl + 1
        i = 0
        while i < len(spec.columns):
            g, j = spec.columns[i].group, i
            while j < len(spec.columns) and spec.columns[j].group == g:
                j += 1
            width = per * (j - i)
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{tex_escape(g or '')}}}")
            if g:
                rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
            col += width
            i = j
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    head = [tex_escape(k) for k in spec.label_columns]
    head += [rf"\multicolumn{{{per}}}{{c}}{{{tex_escape(c.name)} {arrow[c.direction]}}}" for c in spec.columns]
    sub = [""] * nl + ["ours", "paper"][:per] * len(spec.columns)
    lines += [" & ".join(head) + r" \\", " & ".join(sub) + r" \\", r"\midrule"]
    prev_group = None
    for r in doc["rows"]:
        group = r["labels"].get(spec.label_columns[0]) if spec.label_columns else None
        if prev_group is not None and group != prev_group and spec.rank_within:
            lines.append(r"\midrule")
        prev_group = group
        vals = [tex_escape(r["labels"].get(k, "")) for k in spec.label_columns]
        for c in spec.columns:
            cell = r["cells"][c.id]
            ours = cell["ours_text"]
            ours = _tex_parts(cell["ours_parts"], ours)
            vals.append(_tex_mark(ours, cell["ours_mark"]))
            if spec.in_paper:
                vals.append(_tex_mark(tex_escape(cell["paper_text"]), cell["paper_mark"]))
        lines.append(" & ".join(vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    return "\n".join(lines) + "\n"
