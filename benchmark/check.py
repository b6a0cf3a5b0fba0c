"""python -m benchmark.check table=I[,II..] [profile=paper] [rows=a,b] [key=value ...]

The preflight alone (benchmark/preflight.py): every weight file, hub id and dataset folder the rows
of the table(s) read is opened the cheap way and checked for what it must be; nothing is trained or
submitted. Prints one `ok` line per input that passed and one line per problem (the key, the file,
what was expected and what was found, the rows); exit status 2 when anything is wrong.
Installed as `lsa-bench check`. `python -m benchmark.run ... --dry-run` runs the same checks.
"""

from __future__ import annotations

import sys

from ablations.registry import list_tables, load_table
from data.cli import UserError, command

OPTIONS = {"table": None, "profile": "paper", "rows": None, "config_dir": None}


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    opts, overrides = dict(OPTIONS), []
    for a in argv:
        if a.startswith("-") or "=" not in a:
            raise UserError(f"argument {a!r} is not key=value (e.g. table=I profile=paper)")
        k, v = a.split("=", 1)
        (opts.__setitem__(k, v) if k in OPTIONS else overrides.append(a))
    if not opts["table"]:
        raise UserError(f"say which table: table=<name>; valid tables: {', '.join(list_tables())}")
    from benchmark.config import HydraResolver
    from benchmark.preflight import refuse, run_preflight
    from benchmark.stages import expand

    resolver = HydraResolver(opts["profile"], overrides, config_dir=opts["config_dir"])
    rows = opts["rows"].split(",") if opts["rows"] else None
    for name in opts["table"].split(","):
        spec = load_table(name).select(rows)
        graph = expand(spec, resolver)
        report = run_preflight((p.row.name, p.cfg, spec.detectors_for(p.row)) for p in graph.rows if p.cfg is not None)
        bad = {(p.key, p.file) for p in report.problems}
        for (key, value), used in report.checked.items():
            if (key, value) not in bad and not any(k == key and (f == value or f.startswith(value)) for k, f in bad):
                print(f"ok  {key} = {value}  [rows: {', '.join(sorted(set(used)))}]")
        if report.problems:
            refuse(spec.name, report, print)
        print(f"table {spec.name} (profile {opts['profile']}): {len(report.checked)} input(s) checked, all as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
