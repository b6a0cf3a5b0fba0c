"""Provenance of stages (benchmark/provenance.py): recorded when a stage finishes, carried into the
table, and a cached stage made by another commit or other library versions is flagged by
--dry-run and benchmark.status, and recomputed (with what was built on it) under strict."""

from __future__ import annotations

import json
import os

import pytest
from fakes import FakeRunner

from benchmark import lock, provenance
from benchmark.config import HydraResolver
from benchmark.run_table import run_table
from benchmark.store import STAGE, Store


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


def test_current_record_and_mismatches():
    now = provenance.current()
    assert set(provenance.LIBRARIES) <= set(now["versions"]) and now["versions"]["torch"]
    assert now["versions"]["numpy"] and now["versions"]["pillow"]  # what draws the synthetic worlds
    assert now["lock"]["file"] == lock.lock_path().relative_to(lock.REPO_ROOT).as_posix()
    assert now["device"] and now["command"]
    if now["commit"] is not None:  # a git checkout (the usual case)
        assert len(now["commit"]) == 40 and now["dirty"] in (True, False)
    assert provenance.mismatches(now, now) == []
    other = {**now, "commit": "0" * 40, "versions": {**now["versions"], "diffusers": "0.0.1"}}
    why = provenance.mismatches(other, now)
    assert why[0].startswith("commit 0000000000") and any(w.startswith("diffusers 0.0.1 (now ") for w in why)
    assert provenance.mismatches(None, now) == ["no provenance record (made before stages recorded one)"]
    # another lock file, and one package other than the caption's libraries
    relocked = {**now, "lock": {**now["lock"], "sha256": "0" * 64}, "versions": {**now["versions"], "pyyaml": "0.1"}}
    why = provenance.mismatches(relocked, now)
    assert why[0].startswith(f"lock {now['lock']['file']} 0000000000 (now ") and why[1].startswith("pyyaml 0.1 (now ")
    # a record from before locks: its few recorded libraries compared, the lock said to be unknown
    old = {k: v for k, v in now.items() if k != "lock"} | {"versions": {"torch": now["versions"]["torch"]}}
    assert provenance.mismatches(old, now) == ["lock unknown (recorded before stages recorded their lock)"]
    s = provenance.summarize([now, other, None])
    assert len(s["commits"]) == 2 and s["stages_without_record"] == 1
    assert "torch" in provenance.footnote(s) and "1 stage(s) without a provenance record" in provenance.footnote(s)
    assert f"lock {now['lock']['file']} {now['lock']['sha256'][:10]}" in provenance.footnote(s)


def _age(store: Store, h: str, commit: str = "0" * 40, lock_sha256: str | None = None) -> None:
    """Make stage h look as if another commit (or another lock) made it (its stage.json is part of its
    manifest, so the manifest is rewritten too: the stage stays intact, only older)."""
    from benchmark.manifest import write_manifest

    p = store.dir(h) / STAGE
    info = json.loads(p.read_text())
    info["provenance"]["commit"] = commit
    if lock_sha256:
        info["provenance"]["lock"]["sha256"] = lock_sha256
    p.write_text(json.dumps(info))
    write_manifest(store.dir(h))


def test_stage_from_another_commit_is_flagged_and_recomputed_under_strict(smoke, tmp_path, capsys):
    store = Store(tmp_path / "runs")
    kw = {"store": store, "results": tmp_path / "res", "rows": ["svd_finetuned", "hybrid"], "figures": False}
    first = run_table("III", smoke, FakeRunner(), echo=lambda s: None, **kw)
    graph = first.graph
    for s in graph.order():  # every finished stage carries its provenance
        rec = store.stage_info(s.hash)["provenance"]
        assert rec["versions"] == provenance.current()["versions"] and rec["command"]
    doc = json.loads((tmp_path / "res" / "smoke-fake" / "table_III.json").read_text())
    assert doc["provenance"]["commits"] and "Code: commit" in doc["caption"]

    gen = graph.rows[1].generate  # hybrid's generate stage
    _age(store, gen)
    # --dry-run and benchmark.status name it, with the commit
    lines = []
    run_table("III", smoke, None, dry_run=True, echo=lines.append, **kw)
    assert "other code made it: commit 0000000000 (now" in "\n".join(lines)
    from benchmark.status import main as status_main

    status_main(["table=III", "rows=svd_finetuned,hybrid", f"store={store.root}"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if gen in ln)
    assert "done" in line and "other code made it: commit 0000000000" in line

    # default (record): flagged and reused
    runner = FakeRunner()
    msgs = []
    run_table("III", smoke, runner, echo=msgs.append, **kw)
    assert sum(runner.calls.values()) == 0
    assert any(f"stage generate {gen}" in m and "was made by other code" in m for m in msgs)

    # strict: that stage and what is built on it (its evaluate stage) are recomputed, nothing else
    strict = HydraResolver("smoke", ["benchmark.provenance=strict"])
    runner = FakeRunner()
    run_table("III", strict, runner, echo=lambda s: None, **kw)
    evaluate = graph.rows[1].evaluate["dn_detr"]
    assert sorted(h for _, h in runner.history) == sorted([gen, evaluate])
    assert provenance.flag_stages(graph, store) == {}
    assert len(list((store.root / provenance.STALE).iterdir())) == 2


def test_stage_made_under_another_lock_is_flagged(smoke, tmp_path, capsys):
    """Same commit, another lock file: --dry-run and benchmark.status say so, as for another commit."""
    store = Store(tmp_path / "runs")
    kw = {"store": store, "results": tmp_path / "res", "rows": ["svd_finetuned"], "figures": False}
    graph = run_table("III", smoke, FakeRunner(), echo=lambda s: None, **kw).graph
    now = provenance.current()
    gen = graph.rows[0].generate
    _age(store, gen, commit=now["commit"], lock_sha256="f" * 64)
    lines = []
    run_table("III", smoke, None, dry_run=True, echo=lines.append, **kw)
    expected = f"other code made it: lock {now['lock']['file']} ffffffffff (now {now['lock']['file']} "
    assert expected in "\n".join(lines)
    from benchmark.status import main as status_main

    status_main(["table=III", "rows=svd_finetuned", f"store={store.root}"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if gen in ln)
    assert expected in line and "commit" not in line.split("other code made it:")[1]


def test_unknown_provenance_mode_is_a_user_error(tmp_path):
    from data.cli import UserError

    with pytest.raises(UserError, match="benchmark.provenance='sloppy'"):
        run_table(
            "III",
            HydraResolver("smoke", ["benchmark.provenance=sloppy"]),
            FakeRunner(),
            store=tmp_path / "runs",
            results=tmp_path / "res",
            echo=lambda s: None,
        )


def test_results_folder_does_not_make_the_tree_dirty(tmp_path):
    """A run writes its tables under results/ (committed ones too): that is output, not code. A
    changed code file is dirty."""
    import subprocess

    from benchmark.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table_I.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    commit, dirty = git_state(tmp_path)
    assert commit and dirty is False
    (tmp_path / "results" / "table_I.md").write_text("new\n")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (commit, True)


def test_files_sha256_of_a_folder_and_a_file(tmp_path):
    import hashlib

    (tmp_path / "part" / "unet").mkdir(parents=True)
    (tmp_path / "part" / "unet" / "w.safetensors").write_bytes(b"weights")
    (tmp_path / "part" / "config.json").write_text("{}")
    digest = provenance.files_sha256(tmp_path / "part")
    assert digest == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),
        "unet/w.safetensors": hashlib.sha256(b"weights").hexdigest(),
    }
    assert provenance.files_sha256(tmp_path / "part" / "config.json") == {"config.json": digest["config.json"]}
