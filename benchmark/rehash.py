"""python -m benchmark.rehash table=I[,II] profile=paper [store=runs] [rows=a,b] [--apply] [was.KEY=VALUE ...] [KEY=VALUE ...]

Carries a store made with location-based stage hashes over to content-based ones
(benchmark/identity.py). It expands the table twice, once hashing the configs as they are (the old
hashes: locations) and once by content, pairs the two hashes of every stage and prints
`kind old -> new state`; with --apply it renames each old stage folder that is in the store
(finished or partly trained) to its new hash and rewrites the records that name the hash
(stage_config.yaml, stage.json, and the two files' entries in MANIFEST.json of a finished stage).

Run it with the locations the old store was made with, before moving anything; when a dataset or
weights folder has already moved, give its old location with `was.<key>=<old value>` (used for the
old hashes only), e.g. `was.benchmark.data_roots.kitti=/old/kitti` or `was.model.svd=org/name`.
The new hashes read the inputs where the config now points. A finished stage whose files no longer
match its manifest is left where it is (it would be recomputed anyway). Do not run it while a
benchmark.run uses the store. Installed as `lsa-bench rehash`.
"""

from __future__ import annotations

import json
import os
import sys

import yaml

from data.atomic import atomic_write_json, atomic_write_text
from data.cli import UserError, command

OPTIONS = {"table": None, "profile": "smoke", "store": "runs", "rows": None, "config_dir": None}
WAS = "was."


def parse(argv: list[str]) -> tuple[dict, bool, list[str], list[str]]:
    opts, apply, now, was = dict(OPTIONS), False, [], []
    for a in argv:
        if a == "--apply":
            apply = True
        elif a.startswith("-") or "=" not in a:
            raise UserError(f"argument {a!r}: expected key=value or --apply (python -m benchmark.rehash --help)")
        else:
            k, v = a.split("=", 1)
            if k in opts:
                opts[k] = v
            elif k.startswith(WAS):
                was.append(a[len(WAS) :])
            else:
                now.append(a)
    if not opts["table"]:
        raise UserError("say which table: table=<name>[,<name>]")
    return opts, apply, now, was


def pairs(spec, resolver_now, resolver_was) -> tuple[list[tuple[str, str, str]], list[str], object]:
    """[(kind, old hash, new hash)] for every stage of the table, the new graph's unknown inputs and
    the new graph."""
    from benchmark.identity import ContentIdentity
    from benchmark.stages import expand

    new = expand(spec, resolver_now)
    old = expand(spec, resolver_was, ContentIdentity(legacy=True))
    if len(old.add_order) != len(new.add_order):
        raise UserError(f"table {spec.name}: the old and new graphs differ in shape; was.<key> values change rows")
    out, seen = [], {}
    for o, n in zip(old.add_order, new.add_order):
        if o in seen:
            if seen[o] != n:
                raise UserError(f"table {spec.name}: old stage {o} maps to two new stages ({seen[o]}, {n})")
            continue
        seen[o] = n
        out.append((new.stages[n].kind, o, n))
    return out, new.unknown_content, new


def state(store, old: str, new: str) -> str:
    if old == new:
        return "same"
    if store.dir(new).exists():
        return "new exists" if not store.dir(old).exists() else "both exist: left as they are"
    if store.is_done(old):
        return "finished"
    return "partial" if store.dir(old).exists() else "absent"


def carry(store, stage, old: str) -> str:
    """Rename runs/<old> to runs/<stage.hash> and rewrite the records that name the hash."""
    from benchmark.manifest import MANIFEST, file_hash, verify
    from benchmark.store import CONFIG, STAGE

    src, dst = store.dir(old), store.dir(stage.hash)
    done = store.is_done(old)
    if done:
        damage = verify(src, hashes=True)
        if damage:
            return f"left: damaged ({damage[0]})"
    os.replace(src, dst)
    atomic_write_text(dst / CONFIG, yaml.safe_dump(stage.config, sort_keys=True, default_flow_style=False))
    info = json.loads((dst / STAGE).read_text()) if (dst / STAGE).is_file() else {}
    info.update(hash=stage.hash, deps=list(stage.deps), config=stage.config, rehashed_from=old)
    atomic_write_json(dst / STAGE, info)
    if done and (dst / MANIFEST).is_file():
        doc = json.loads((dst / MANIFEST).read_text())
        for name in (CONFIG, STAGE):
            if name in doc.get("files", {}):
                size = (dst / name).stat().st_size
                doc["files"][name] = {"size": size, "hash": file_hash(dst / name, size, sync=True)}
        atomic_write_json(dst / MANIFEST, doc)
    return "moved"


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    opts, apply, now, was = parse(argv)
    from ablations.registry import load_table
    from benchmark.config import HydraResolver
    from benchmark.store import Store

    store = Store(opts["store"])
    resolver_now = HydraResolver(opts["profile"], now, config_dir=opts["config_dir"])
    resolver_was = HydraResolver(opts["profile"], now + was, config_dir=opts["config_dir"]) if was else resolver_now
    rows = opts["rows"].split(",") if opts["rows"] else None
    for name in opts["table"].split(","):
        spec = load_table(name).select(rows)
        mapping, unknown, graph = pairs(spec, resolver_now, resolver_was)
        if unknown and apply:
            raise UserError(f"table {name}: content unknown, nothing moved:\n  " + "\n  ".join(unknown))
        print(f"Table {name} (profile {opts['profile']}), store {store.root}/: old -> new stage hashes")
        for kind, old, new in mapping:
            st = state(store, old, new)
            if apply and st in ("finished", "partial"):
                st = f"{st}, {carry(store, graph.stages[new], old)}"
            print(f"  {kind:<15} {old} -> {new}  {st}")
        for line in unknown:
            print(f"  content unknown: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
