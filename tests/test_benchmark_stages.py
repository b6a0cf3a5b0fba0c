"""Table specs, stage expansion (sharing, hashing), the store, and resume after a crash or a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeRunner

from ablations.registry import SpecError, list_tables, load_table, parse_spec
from benchmark.config import HydraResolver
from benchmark.run_table import run_table
from benchmark.stage_runner import StageRunner
from benchmark.stages import DictResolver, expand, stage_hash
from benchmark.store import Store, atomic_dir

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "paper" / "lsa-paper.txt"


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


def by_kind(graph, kind):
    return [s for s in graph.order() if s.kind == kind]


# ------------------------------------------------------------------------------------ specs
def test_every_table_loads_and_unknown_names_list_valid_ones():
    assert list_tables() == ["I", "II", "III", "IV", "V", "VI", "VII"]  # VI, VII: ours, not in the paper
    with pytest.raises(KeyError, match="valid tables: I, II, III, IV, V, VI, VII"):
        load_table("VIII")
    with pytest.raises(KeyError, match="valid rows: svd_finetuned, global, box, hybrid"):
        load_table("III").row("hybird")
    assert load_table(3).name == load_table("table_III").name == "III"


def test_ctrlv_rows_are_specified():
    t1, t2 = load_table("I"), load_table("II")
    ctrlv1 = [r for r in t1.rows if r.baseline == "ctrlv"]
    assert [r.name for r in ctrlv1] == ["nuscenes_ctrlv_1to0", "kitti_ctrlv_1to0"]
    assert all(r.ctrlv["variant"] == "1-to-0" for r in ctrlv1)
    assert len(t2.rows) == 8
    assert {r.ctrlv["backbone"] for r in t2.rows} == {"svd_finetuned", "lsa"}
    # Table I's efficiency columns are measured by the generate stage, not copied
    assert [c.id for c in t1.columns if c.source == "generate"] == ["time_h", "params_m"]


def test_ctrlv_stages_share_the_backbone_rows_training(smoke):
    """Table II: Box2Video trains on the exact train stages of "SVD fine-tuned" / "SVD + LSA"; the BBox
    generator depends on the variant only, Box2Video on the backbone only."""
    g2, g1 = expand(load_table("II"), smoke), expand(load_table("I"), smoke)
    p1 = {p.row.name: p for p in g1.rows}
    p2 = {p.row.name: p for p in g2.rows}
    assert p2["nuscenes_1to1_svd_finetuned"].train == p1["nuscenes_svd_finetuned"].train
    assert p2["nuscenes_1to1_lsa"].train == p1["nuscenes_lsa"].train
    gens = {n: g2.stages[p.generate] for n, p in p2.items()}
    bbox = {n: s.params["ctrlv"]["bbox"] for n, s in gens.items()}
    b2v = {n: s.params["ctrlv"]["box2video"] for n, s in gens.items()}
    assert bbox["nuscenes_1to1_svd_finetuned"] == bbox["nuscenes_1to1_lsa"] != bbox["nuscenes_3to1_lsa"]
    assert b2v["nuscenes_1to1_lsa"] == b2v["nuscenes_3to1_lsa"] != b2v["nuscenes_1to1_svd_finetuned"]
    lsa_b2v = g2.stages[b2v["nuscenes_1to1_lsa"]]
    assert lsa_b2v.kind == "ctrlv_box2video" and lsa_b2v.deps == (p1["nuscenes_lsa"].train[-1],)
    assert g2.stages[bbox["nuscenes_1to1_lsa"]].run_cfg["ctrlv"]["variant"] == "1-to-1"
    # Table I's 1-to-0 uses the "SVD fine-tuned" backbone
    gen10 = g1.stages[p1["nuscenes_ctrlv_1to0"].generate]
    assert gen10.params["ctrlv"]["backbone"] == "svd_finetuned"


def _table_block(text: str, name: str) -> str:
    start = text.index(f"TABLE {name}\n")
    nxt = re.search(r"\nTABLE [IVX]+\n", text[start + 8 :])
    return text[start : start + 8 + nxt.start()] if nxt else text[start:]


@pytest.mark.skipif(not PAPER.exists(), reason=f"paper text not found at {PAPER}")
@pytest.mark.parametrize("name", ["I", "II", "III", "IV", "V"])
def test_paper_numbers_are_copied_exactly_in_column_order(name):
    """Each row's reference numbers appear, in the spec's column order, as consecutive cells of one
    line of the paper's table (underline markup removed)."""
    block = _table_block(PAPER.read_text(), name)
    lines = [re.sub(r"</?u>", "", ln).split("\t") for ln in block.splitlines()]
    lines = [[c.strip() for c in ln] for ln in lines]
    spec = load_table(name)
    for row in spec.rows:
        want = [row.paper[c.id].text for c in spec.columns]
        found = any(ln[i : i + len(want)] == want for ln in lines for i in range(len(ln)))
        assert found, f"table {name} row {row.name}: {want} not found as one line of the paper's table"


def test_bad_specs_fail_naming_file_and_entry(tmp_path):
    good = (ROOT / "ablations" / "table_III.yaml").read_text()
    cases = {
        "direction: up, format": ("direction: sideways, format", "direction must be one of"),
        'map: "24.92"': ("map: 24.92", "quoted string"),
        "baseline: svd_finetuned": ("baseline: svd_tuned", "baseline must be one of"),
        '    labels: {Model: "SVD + LSA (Ours)", Feature loss version: "Box-only"}': (
            "    labelz: {}",
            "unknown keys ['labelz']",
        ),
    }
    for old, (new, msg) in cases.items():
        p = tmp_path / "table_X.yaml"
        assert old in good
        p.write_text(good.replace(old, new, 1))
        with pytest.raises(SpecError, match=re.escape(msg)) as e:
            parse_spec(p)
        assert str(p) in str(e.value)


# ------------------------------------------------------------------------------------ hashing
def test_hash_is_canonical():
    a = {"b": 1, "a": {"y": [1, 2], "x": 100.0}}
    b = {"a": {"x": 100, "y": (1, 2)}, "b": 1}
    assert stage_hash("train", a) == stage_hash("train", b)
    assert stage_hash("train", a) != stage_hash("generate", a)
    assert stage_hash("train", a) != stage_hash("train", {**a, "b": 2})
    assert len(stage_hash("train", a)) == 12


def test_hash_is_stable_across_processes(smoke):
    """Python's hash randomisation and dict insertion order must not reach the stage hash."""
    graph = expand(load_table("III"), smoke)
    here = [s.hash for s in graph.order()]
    code = (
        "from benchmark.config import HydraResolver; from benchmark.stages import expand; "
        "from ablations import load_table; "
        "print(' '.join(s.hash for s in expand(load_table('III'), HydraResolver('smoke')).order()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == here


# ------------------------------------------------------------------------------------ expansion
def test_table_III_shares_the_diffusion_only_first_epoch(smoke):
    g = expand(load_table("III"), smoke)
    trains = by_kind(g, "train")
    epoch1 = [s for s in trains if s.params["epoch"] == 1]
    assert len(epoch1) == 1, "every staged row and SVD fine-tuned must share one epoch-1 stage"
    e1 = epoch1[0]
    assert e1.params["objective"] == "diffusion" and set(e1.rows) == {"svd_finetuned", "global", "box", "hybrid"}
    assert "variant" not in e1.config["cfg"]["loss"] and "alpha" not in e1.config["cfg"]["loss"]
    assert "lambda_feat" not in e1.config["cfg"]["data"] and "schedule" not in e1.config["cfg"]
    epoch2 = {s.rows[0]: s for s in trains if s.params["epoch"] == 2}
    assert epoch2["svd_finetuned"].params["objective"] == "diffusion"
    assert {epoch2[r].params["variant"] for r in ("global", "box", "hybrid")} == {"global", "box", "hybrid"}
    assert all(s.deps == (e1.hash,) for s in epoch2.values())
    assert len(by_kind(g, "testset")) == 1 and len(by_kind(g, "generate")) == 4 and len(by_kind(g, "evaluate")) == 4
    assert len(g.stages) == 1 + 1 + 4 + 4 + 4
    # the runner trains exactly one epoch per stage
    assert e1.run_cfg["train"]["epochs"] == 1 and epoch2["hybrid"].run_cfg["train"]["epochs"] == 2


def test_table_IV_joint_gets_its_own_first_epoch_and_lora_shares_it(smoke):
    g = expand(load_table("IV"), smoke)
    plans = {p.row.name: p for p in g.rows}
    e1 = {name: g.stages[p.train[0]] for name, p in plans.items()}
    assert e1["svd_finetuned"].hash == e1["unet_staged"].hash
    assert e1["unet_joint"].params["objective"] == "lsa" and e1["unet_joint"].hash != e1["unet_staged"].hash
    # the paper uses LoRA "when adding our feature loss": epoch 1 is the full-U-Net diffusion epoch
    assert e1["lora_staged"].hash == e1["unet_staged"].hash
    assert g.stages[plans["lora_staged"].train[1]].params["adapter"] == "lora"
    assert len(by_kind(g, "train")) == 1 + 1 + 2 + 1 + 1


def test_table_V_evaluates_one_generation_with_two_detectors(smoke):
    g = expand(load_table("V"), smoke)
    assert len(by_kind(g, "generate")) == 2 and len(by_kind(g, "evaluate")) == 4
    for p in g.rows:
        assert set(p.evaluate) == {"dn_detr", "yolo"}
        ev = [g.stages[h] for h in p.evaluate.values()]
        assert {s.deps[0] for s in ev} == {p.generate}
        assert {s.run_cfg["metrics"]["det"]["detector"]["name"] for s in ev} == {"dn_detr", "yolo11"}


def test_table_I_svd_row_generates_from_the_base_model(smoke):
    g = expand(load_table("I"), smoke)
    plans = {p.row.name: p for p in g.rows}
    svd = plans["nuscenes_svd"]
    assert svd.train == [] and g.stages[svd.generate].params["checkpoint"] is None
    assert plans["nuscenes_ctrlv_1to0"].generate
    ft = plans["nuscenes_svd_finetuned"]
    assert [g.stages[h].params["objective"] for h in ft.train] == ["diffusion", "diffusion"]


def test_stages_are_shared_across_tables(smoke):
    iii, iv, v = (expand(load_table(t), smoke) for t in ("III", "IV", "V"))
    hybrid = {p.row.name: p for p in iii.rows}["hybrid"]
    staged = {p.row.name: p for p in iv.rows}["unet_staged"]
    lsa = {p.row.name: p for p in v.rows}["lsa"]
    assert hybrid.train == staged.train == lsa.train
    assert hybrid.generate == staged.generate == lsa.generate
    assert hybrid.evaluate["dn_detr"] == staged.evaluate["dn_detr"] == lsa.evaluate["dn_detr"]


def test_hash_follows_only_the_keys_that_influence_a_stage():
    base = HydraResolver("smoke").base  # noqa: F841  (composes once; fails early if configs are broken)
    plain = {p.row.name: p for p in expand(load_table("III"), HydraResolver("smoke")).rows}
    alpha = {p.row.name: p for p in expand(load_table("III"), HydraResolver("smoke", ["loss.alpha=5"])).rows}
    lr = {p.row.name: p for p in expand(load_table("III"), HydraResolver("smoke", ["train.lr=2e-5"])).rows}
    clips = {
        p.row.name: p for p in expand(load_table("III"), HydraResolver("smoke", ["benchmark.num_test_clips=1"])).rows
    }
    h = "hybrid"
    assert alpha[h].train[0] == plain[h].train[0]  # diffusion-only epoch: alpha is not read
    assert alpha[h].train[1] != plain[h].train[1]  # the LSA epoch reads it
    assert alpha["svd_finetuned"].train == plain["svd_finetuned"].train
    assert lr[h].train[0] != plain[h].train[0]  # the learning rate changes every epoch
    assert clips[h].train == plain[h].train  # test clips never change training
    assert clips[h].testset != plain[h].testset and clips[h].generate != plain[h].generate


def test_paper_profile_trains_in_the_setting_measured_to_fit_80gb():
    """docs/perf.md: at 25 x 320 x 512 the full-U-Net LSA step fits one 80 GB GPU only with U-Net and
    decoder checkpointing; compiling the decoder and DINOv2 is the measured exact speed-up. Every frame
    is decoded (no approximation) in the paper profile."""
    rows = {p.row.name: p for p in expand(load_table("III"), HydraResolver("paper")).rows}
    for cfg in (rows["hybrid"].cfg, rows["svd_finetuned"].cfg):
        assert (cfg["train"]["mixed_precision"], cfg["train"]["grad_checkpointing"], cfg["train"]["adam_fused"]) == (
            "bf16",
            True,
            True,
        )
        assert list(cfg["train"]["compile"]) == ["vae_decoder", "dino"]
        assert (cfg["loss"]["decode_checkpoint"], cfg["loss"]["decode_chunk"], cfg["loss"]["decode_frames"]) == (
            True,
            5,
            "all",
        )
        assert (cfg["data"]["clip_len"], cfg["data"]["height"], cfg["data"]["width"]) == (25, 320, 512)


def test_command_line_data_replaces_every_rows_dataset(smoke):
    g = expand(load_table("III"), HydraResolver("smoke", ["data=synthetic", "data.test.seed=7"]))
    assert all(p.cfg["data"]["name"] == "synthetic" and p.cfg["data"]["test"]["seed"] == 7 for p in g.rows)


def test_svd_finetuned_with_a_feature_loss_schedule_is_rejected():
    base = {
        "train": {"epochs": 2},
        "schedule": {"name": "diffusion", "feat_from_epoch": None},
        "benchmark": {"num_test_clips": 1, "generate": {}, "eval": {"detectors": {"dn_detr": {}}}},
        "metrics": {},
        "data": {"name": "x"},
    }
    groups = {
        "schedule": {
            "diffusion": {"name": "diffusion", "feat_from_epoch": None},
            "staged": {"name": "staged", "feat_from_epoch": 2},
        },
        "adapter": {"unet": {"name": "unet"}},
        "data": {"nuscenes": {"name": "nuscenes"}},
    }
    spec = load_table("III").select(["svd_finetuned"])
    expand(spec, DictResolver(base, groups))
    bad = DictResolver(base, {**groups, "schedule": {"diffusion": groups["schedule"]["staged"]}})
    with pytest.raises(ValueError, match="SVD fine-tuned"):
        expand(spec, bad)


# ------------------------------------------------------------------------------------ store
def test_store_atomic_dir_and_relative_paths(tmp_path):
    target = tmp_path / "videos"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["videos"]  # no temp folder left behind

    class S:
        kind, hash, config, run_cfg, deps, params, rows = "train", "abc123", {"x": 1}, {"x": 1}, (), {}, ["r"]

    store = Store(tmp_path / "runs")
    d = store.begin(S)
    assert not store.is_done("abc123") and store.result("abc123") is None
    store.commit(S, {"log": d / "log.jsonl", "steps": 3})
    assert json.loads((d / "result.json").read_text())["log"] == "log.jsonl"
    assert store.result("abc123")["log"] == str(d / "log.jsonl") and store.is_done("abc123")
    with pytest.raises(ValueError, match="outside the stage folder"):
        store.commit(S, {"log": tmp_path / "elsewhere.jsonl"})


# ------------------------------------------------------------------------------------ running
def test_fake_runner_satisfies_the_protocol():
    assert isinstance(FakeRunner(), StageRunner)


def test_resume_after_a_crash_does_not_redo_finished_stages(smoke, tmp_path):
    store, results = tmp_path / "runs", tmp_path / "results"
    crashing = FakeRunner(fail_at=6)
    with pytest.raises(RuntimeError, match="simulated crash at stage 6"):
        run_table("III", smoke, crashing, store=store, results=results, echo=lambda s: None, figures=False)
    finished = [h for _, h in crashing.history[:5]]
    assert all((store / h / "DONE").exists() for h in finished)
    crashed = crashing.history[5][1]
    assert not (store / crashed / "DONE").exists() and (store / crashed).is_dir()
    mtimes = {h: (store / h / "DONE").stat().st_mtime_ns for h in finished}

    again = FakeRunner()
    run = run_table("III", smoke, again, store=store, results=results, echo=lambda s: None, figures=False)
    redone = {h for _, h in again.history}
    assert not redone & set(finished), "a finished stage was recomputed"
    assert crashed in redone and len(again.history) == 14 - 5
    assert {h: (store / h / "DONE").stat().st_mtime_ns for h in finished} == mtimes
    info = json.loads((store / crashed / "stage.json").read_text())
    assert [a["resumed"] for a in info["attempts"]] == [False, True]

    third = FakeRunner()
    run_table("III", smoke, third, store=store, results=results, echo=lambda s: None, figures=False)
    assert third.history == [] and (results / "smoke-fake" / "table_III.md").exists()
    assert set(run.executed) == redone


def test_train_stages_chain_their_checkpoints(smoke, tmp_path):
    run_table(
        "III",
        smoke,
        FakeRunner(),
        store=tmp_path,
        results=tmp_path / "res",
        echo=lambda s: None,
        figures=False,
        rows=["hybrid"],
    )
    g = expand(load_table("III").select(["hybrid"]), smoke)
    e1, e2 = g.rows[0].train
    assert json.loads((tmp_path / e2 / "weights.json").read_text())["chain"] == [e1, e2]


def test_dry_run_marks_cached_and_pending_without_running(smoke, tmp_path):
    run_table(
        "III",
        smoke,
        FakeRunner(),
        store=tmp_path,
        results=tmp_path / "res",
        echo=lambda s: None,
        figures=False,
        rows=["svd_finetuned"],
    )
    lines = []
    runner = FakeRunner()
    run_table("III", smoke, runner, store=tmp_path, dry_run=True, echo=lines.append)
    text = "\n".join(lines)
    assert runner.history == []
    assert "5 cached, 9 pending" in text
    assert re.search(r"cached\s+train\s+\w+\s+epoch 1 diffusion", text)
    assert re.search(r"pending\s+train\s+\w+\s+epoch 2 lsa variant=hybrid", text)
    assert re.search(r"always\s+render", text)


def test_slurm_launcher_needs_a_cluster(smoke, tmp_path, monkeypatch):
    from slurm.records import QueueUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue / sbatch
    with pytest.raises(QueueUnavailable, match="no SLURM cluster answers here"):
        run_table("III", smoke, FakeRunner(), launcher="slurm", store=tmp_path)


def test_paper_profile_names_every_missing_path_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSA_BENCH_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("LSA_KITTI_ROOT", str(tmp_path / "no-kitti"))
    monkeypatch.delenv("LSA_NUSCENES_ROOT", raising=False)
    runner = FakeRunner()
    with pytest.raises(FileNotFoundError) as e:
        run_table(
            "I", HydraResolver("paper", ["model.svd=" + str(tmp_path / "no-svd")]), runner, store=tmp_path / "runs"
        )
    msg = str(e.value)
    for key in (
        "data.root (data=nuscenes) is not set",
        f"data.root (data=kitti) = {tmp_path / 'no-kitti'}",
        "metrics.fvd.weights",
        "metrics.fid.weights",
        "detectors.dn_detr.weights",
        f"model.svd = {tmp_path / 'no-svd'}",
        "model.dino = facebook/dinov2-base",
    ):
        assert key in msg, f"{key!r} not named in:\n{msg}"
    assert "detectors.yolo" not in msg  # Table I scores with DN-DETR only
    assert runner.history == [] and not (tmp_path / "runs").exists()
    with pytest.raises(FileNotFoundError) as e:  # Table V scores with both detectors
        run_table("V", HydraResolver("paper", []), runner, store=tmp_path / "runs")
    assert "detectors.yolo.weights" in str(e.value) and "detectors.dn_detr.weights" in str(e.value)


def test_cli_errors_and_dry_run(capsys, tmp_path, monkeypatch):
    from benchmark.run import main

    assert main(["table=VIII"]) == 2
    assert "valid tables: I, II, III, IV, V, VI, VII" in capsys.readouterr().err
    assert main(["table=III", "rows=nope"]) == 2
    assert "valid rows:" in capsys.readouterr().err
    assert main(["table=III", "profile=laptop"]) == 2
    assert "valid profiles: mini, paper, rehearsal, smoke" in capsys.readouterr().err
    assert main(["table=V", "--dry-run", f"store={tmp_path}"]) == 0
    assert "10 pending" in capsys.readouterr().out
    assert main(["table=III", "launcher=slurm", "--dry-run", f"store={tmp_path}"]) == 0
    assert "job arrays (5)" in capsys.readouterr().out
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["table=III", "launcher=slurm", f"store={tmp_path}"]) == 2
    assert "no SLURM cluster answers here" in capsys.readouterr().err


def _fake_env(**extra: str) -> dict:
    """The environment of a `python -m benchmark.run ... runner=fakes:FakeRunner` subprocess: tests/
    on PYTHONPATH so that `fakes` (tests/fakes.py) imports there too."""
    path = os.pathsep.join([str(ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}


def _done(store: Path) -> set[str]:
    return {p.parent.name for p in store.glob("*/DONE")}


def test_resume_after_the_process_is_killed(tmp_path):
    """Kill `python -m benchmark.run` mid-table with SIGKILL, run the same command: it finishes
    without redoing the stages that were done."""
    store, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "benchmark.run",
        "table=V",
        f"store={store}",
        f"results={results}",
        "runner=fakes:FakeRunner",
    ]
    env = _fake_env(LSA_FAKE_RUNNER_SLEEP="0.4", LSA_FAKE_RUNNER_LOG=str(tmp_path / "first.log"))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while len(_done(store)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _done(store)
    assert 3 <= len(done_at_kill) < 10, f"the kill should land mid-table, {len(done_at_kill)} stages were done"

    env.update(LSA_FAKE_RUNNER_SLEEP="0", LSA_FAKE_RUNNER_LOG=str(tmp_path / "second.log"))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    started_again = {
        ln.split()[2] for ln in (tmp_path / "second.log").read_text().splitlines() if ln.startswith("start")
    }
    assert not started_again & done_at_kill, "stages finished before the kill were recomputed"
    assert len(_done(store)) == 10 and len(started_again) == 10 - len(done_at_kill)
    assert (results / "smoke-fake" / "table_V.md").exists()


def test_two_runs_sharing_stages_run_each_stage_once(tmp_path):
    """Tables III and IV at once on one store: they share stages (the test set, the diffusion-only
    first epoch); each stage runs in exactly one process, the other waits for it and reuses it."""
    store, results = tmp_path / "runs", tmp_path / "results"
    procs = []
    for table in ("III", "IV"):
        env = _fake_env(LSA_FAKE_RUNNER_SLEEP="0.3", LSA_FAKE_RUNNER_LOG=str(tmp_path / f"{table}.log"))
        cmd = [
            sys.executable,
            "-m",
            "benchmark.run",
            f"table={table}",
            f"store={store}",
            f"results={results}",
            "runner=fakes:FakeRunner",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    started = [
        {ln.split()[2] for ln in (tmp_path / f"{t}.log").read_text().splitlines() if ln.startswith("start")}
        for t in ("III", "IV")
    ]
    assert not started[0] & started[1], "a shared stage ran in both processes"
    assert started[0] | started[1] == _done(store)
    assert any("was done by another process" in o or "waiting for it" in o for o in outs), outs
    assert (results / "smoke-fake" / "table_III.md").exists() and (results / "smoke-fake" / "table_IV.md").exists()


def test_a_decaying_lr_schedule_spans_the_rows_epochs_in_every_stage():
    """Each epoch stage trains with train.epochs = its own epoch; a cosine schedule must still decay
    over the row's two epochs, so the staged rows' shared first epoch is the same as a 2-epoch run's.
    The constant schedule has no horizon: its stages keep the key null and their old sharing."""
    cosine = expand(load_table("III"), HydraResolver("smoke", ["train.lr_scheduler=cosine"]))
    train = [s for s in cosine.stages.values() if s.kind == "train"]
    assert train and all(s.run_cfg["train"]["lr_schedule_epochs"] == 2 for s in train)
    assert {s.run_cfg["train"]["epochs"] for s in train} == {1, 2}
    constant = expand(load_table("III"), HydraResolver("smoke"))
    assert all(s.run_cfg["train"]["lr_schedule_epochs"] is None for s in constant.stages.values() if s.kind == "train")
    assert len([s for s in constant.stages.values() if s.kind == "train"]) == len(train)  # same sharing


def test_tracking_and_validation_keys_stay_out_of_stage_hashes():
    """A run with TensorBoard and validation videos reuses every stage of a plain run (and vice versa)."""
    plain = expand(load_table("III"), HydraResolver("smoke"))
    tracked = expand(
        load_table("III"), HydraResolver("smoke", ["train.report_to=tensorboard", "train.validation_every=5"])
    )
    assert set(plain.stages) == set(tracked.stages)
    ema = expand(load_table("III"), HydraResolver("smoke", ["train.ema.enabled=true"]))
    trains = {h for h, s in plain.stages.items() if s.kind == "train"}
    assert not trains & set(ema.stages)  # EMA changes what a train stage exports
