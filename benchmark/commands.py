"""lsa-bench <command> [args ...]: one entry point (pyproject's [project.scripts]) for the suite's commands.

Each command is the `main(argv)` of a module that also runs as `python -m <module>`, with the same
arguments, help (`lsa-bench <command> --help`) and error policy (data/cli.py: a user error is one
line and exit 2, anything else keeps its traceback).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) it runs, one line of help)
COMMANDS = {
    "run": ("benchmark.run", "regenerate paper tables: stages, store, tables (lsa-bench run table=III)"),
    "status": ("benchmark.status", "done / running / failed / pending per stage of a table"),
    "train": ("trainers.train", "train one model (LSA, its ablations, plain fine-tuning)"),
    "generate": ("benchmark.generate", "generate videos from first frames with a trained run or U-Net"),
    "evaluate": ("metrics.evaluate", "score a folder of generated videos against real ones (FVD, FID, mAP, mIoU)"),
    "compare": ("benchmark.compare", "do two table JSONs hold the same numbers (e.g. yours and the committed one)"),
    "check": (
        "benchmark.check",
        "the preflight alone: every input of a table opened and checked (lsa-bench check table=I profile=paper)",
    ),
    "weights": (
        "benchmark.weights_fetch",
        "lsa-bench weights fetch [--to DIR]: download the paper profile's weights, verified",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        __doc__.split("\n\n")[0]
        + "\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`lsa-bench <command> --help` shows a command's options."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "main", None)
    if entry is None:
        print(
            f"error: `lsa-bench {name}` is not available in this version ({COMMANDS[name][0]} has no main)",
            file=sys.stderr,
        )
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
