"""launcher=slurm on a real SLURM (slurm/start-local-slurm.sh; .ci/run starts it): job arrays,
exact dependencies, failures reported and resubmitted, submit-and-return with a render job, the
smoke Table III with the real stage runner, and a training stage requeued by the timeout signal that
ends with the same weights as an uninterrupted run. Skipped when no SLURM answers here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeRunner

from ablations.registry import load_table
from benchmark.config import HydraResolver
from benchmark.job import run_stage
from benchmark.run_table import StagesFailed, run_table
from benchmark.stages import expand
from benchmark.status import format_statuses, stage_statuses
from benchmark.store import Store
from slurm.config import load_cluster
from slurm.launch import Work, launch
from slurm.records import query_jobs, read_record, slurm_available

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["svd_finetuned", "hybrid"]


def _cluster_problem() -> str | None:
    why = slurm_available()
    if why:
        return why
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    states = r.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"sinfo shows no usable node ({' '.join(states) or r.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _cluster_problem()
    if why:
        pytest.skip(
            f"no SLURM cluster here ({why}); start one as root with slurm/start-local-slurm.sh "
            f"(.ci/run does; it needs root and apt)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load_cluster("local")


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


def table_cells(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {r["name"]: {c: v["ours"] for c, v in r["cells"].items()} for r in doc["rows"]}


def quiet(_msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------ fake stages
def test_sharded_stages_on_slurm_give_the_local_numbers(cluster, smoke, tmp_path):
    """benchmark.shards=2: each generate / evaluate stage is 2 array tasks plus a merge task that
    waits for exactly them; the table equals the unsharded local one."""
    local = run_table(
        "III",
        smoke,
        FakeRunner(),
        store=tmp_path / "a",
        results=tmp_path / "ra",
        rows=["hybrid"],
        echo=quiet,
        figures=False,
    )
    sharded = HydraResolver("smoke", ["benchmark.shards=2"])
    run = run_table(
        "III",
        sharded,
        FakeRunner(),
        "slurm",
        store=tmp_path / "b",
        results=tmp_path / "rb",
        rows=["hybrid"],
        cluster=cluster,
        echo=quiet,
        figures=False,
    )
    assert table_cells(run.outputs["json"]) == table_cells(local.outputs["json"])
    assert [a.name for a in run.launch.arrays] == [
        "testset",
        "train",
        "train-2",
        "generate",
        "merge",
        "evaluate",
        "merge-2",
    ]
    store = Store(tmp_path / "b")
    gen = run.graph.rows[0].generate
    merge = read_record(store.dir(gen))["submissions"][-1]
    shard_jobs = [read_record(store.shard_dir(gen, i, 2))["submissions"][-1]["job_id"] for i in range(2)]
    assert merge["kind"] == "merge" and sorted(merge["depends_on"]) == sorted(shard_jobs)
    assert all(store.shard_done(gen, i, 2) for i in range(2)) and store.is_done(gen)


def test_fake_table_on_slurm_gives_the_local_numbers(cluster, smoke, tmp_path):
    local = run_table(
        "III", smoke, FakeRunner(), store=tmp_path / "a", results=tmp_path / "ra", rows=ROWS, echo=quiet, figures=False
    )
    run = run_table(
        "III",
        smoke,
        FakeRunner(),
        "slurm",
        store=tmp_path / "b",
        results=tmp_path / "rb",
        rows=ROWS,
        cluster=cluster,
        echo=quiet,
        figures=False,
    )
    assert table_cells(run.outputs["json"]) == table_cells(local.outputs["json"])
    assert [a.name for a in run.launch.arrays] == ["testset", "train", "train-2", "generate", "evaluate"]
    store = Store(tmp_path / "b")
    ids = run.launch.job_ids
    for plan in run.graph.rows:  # each generation waited for exactly its own training and the test set
        sub = read_record(store.dir(plan.generate))["submissions"][-1]
        assert sub["depends_on"] == [ids[plan.train[-1]], ids[plan.testset]] and sub["executor"] == "slurm"
        assert Path(sub["stdout"]).is_file()
    text = format_statuses(run.graph, stage_statuses(run.graph, store), store)
    assert "8 stages: 8 done" in text and ids[run.graph.rows[1].evaluate["dn_detr"]] in text


def test_a_failed_job_cancels_only_its_row_is_reported_and_resubmitted(cluster, smoke, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs cannot import this test module
    store, results = Store(tmp_path / "runs"), tmp_path / "res"
    with pytest.raises(StagesFailed) as e:
        run_table(
            "III",
            smoke,
            FakeRunner(fail_row="hybrid"),
            "slurm",
            store=store,
            results=results,
            rows=ROWS,
            cluster=cluster,
            echo=quiet,
            figures=False,
        )
    g = expand(load_table("III").select(ROWS), smoke)
    hybrid = next(p for p in g.rows if p.row.name == "hybrid")
    bad = [hybrid.train[-1], hybrid.generate, hybrid.evaluate["dn_detr"]]
    msg = str(e.value)
    assert "3 stage(s)" in msg and all(h in msg for h in bad) and "its input train" in msg
    assert not any(store.is_done(h) for h in bad)
    assert sum(store.is_done(s.hash) for s in g.order()) == 8 - 3
    cells = table_cells(results / "smoke-fake" / "table_III.json")  # the other row went through
    assert cells["svd_finetuned"]["map"] is not None and cells["hybrid"]["map"] is None

    deadline = time.time() + 30  # slurmdbd records the final state a moment after the job left the queue
    while True:
        status = {s.hash: s for s in stage_statuses(g, store)}
        train = status[hybrid.train[-1]]
        settled = train.detail == "FAILED" and "CANCELLED" in status[hybrid.generate].detail
        if settled or time.time() > deadline:
            break
        time.sleep(0.5)
    assert train.status == "failed" and train.detail == "FAILED" and Path(train.log).is_file()
    assert "planned failure of hybrid" in Path(train.log).read_text()
    assert status[hybrid.generate].status == "failed" and "CANCELLED" in status[hybrid.generate].detail

    again = run_table(
        "III",
        smoke,
        FakeRunner(),
        "slurm",
        store=store,
        results=results,
        rows=ROWS,
        cluster=cluster,
        echo=quiet,
        figures=False,
    )
    assert sorted(again.launch.submitted) == sorted(bad)
    assert all(store.is_done(s.hash) for s in g.order())
    assert len(read_record(store.dir(hybrid.train[-1]))["submissions"]) == 2


def test_submit_and_return_then_a_second_run_waits_for_the_same_jobs(cluster, smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("LSA_FAKE_RUNNER_SLEEP", "1")  # exported to the jobs by sbatch
    store = Store(tmp_path / "runs")
    first = run_table(
        "III",
        smoke,
        FakeRunner(),
        "slurm",
        store=store,
        results=tmp_path / "r1",
        rows=["svd_finetuned"],
        cluster=cluster,
        echo=quiet,
        wait=False,
    )
    assert first.launch.after_job and len(first.launch.submitted) == 5 and first.outputs == {}
    second = run_table(
        "III",
        smoke,
        FakeRunner(),
        "slurm",
        store=store,
        results=tmp_path / "r2",
        rows=["svd_finetuned"],
        cluster=cluster,
        echo=quiet,
        figures=False,
    )
    assert second.launch.submitted == [] and sorted(second.launch.adopted) == sorted(first.launch.submitted)
    assert all(store.is_done(h) for h in first.launch.submitted)
    render = first.launch.after_job  # afterany: runs once all five jobs ended
    deadline = time.time() + 60
    while query_jobs([render])[render].state != "COMPLETED" and time.time() < deadline:
        time.sleep(0.5)  # (the accounting has the final state a moment after the job left the queue)
    assert query_jobs([render])[render].state == "COMPLETED"
    assert (tmp_path / "r1" / "smoke-fake" / "table_III.md").is_file()


# ------------------------------------------------------------------------------------ the real stages
@pytest.mark.slow
def test_smoke_table_III_on_slurm_with_the_real_runner(cluster, tiny_cache, tmp_path):
    from benchmark.trainer_runner import TrainerRunner

    resolver = HydraResolver(
        "smoke",
        [
            "benchmark.num_test_clips=2",
            "benchmark.generate.num_inference_steps=1",
            "data.train.num_clips=1",
            "data.clip_len=4",
        ],
    )
    run = run_table(
        "III",
        resolver,
        TrainerRunner(),
        "slurm",
        store=tmp_path / "runs",
        results=tmp_path / "res",
        rows=["hybrid"],  # every stage kind, both training epochs, one row's jobs (the CI's cores are shared)
        cluster=cluster,
        echo=quiet,
    )
    doc = json.loads(run.outputs["json"].read_text())
    assert not doc["fake"] and len(doc["rows"]) == 1
    assert all(c["ours"] is not None for r in doc["rows"] for c in r["cells"].values())
    assert all((tmp_path / "runs" / h / "DONE").is_file() for h in run.graph.stages)
    assert sorted(run.launch.submitted) == sorted(run.graph.stages)
    assert {"loss_curves", "per_frame", "frames"} <= set(run.outputs)


def _submit_train(store: Path, stage, cluster: dict) -> str:
    """One training stage as one job, through the same Work / run_stage path as benchmark.run."""
    from benchmark.job import prepare_stage
    from benchmark.trainer_runner import TrainerRunner

    s = Store(store)
    work = Work(
        stage.hash,
        "train",
        run_stage,
        (str(s.root.resolve()), stage.hash, TrainerRunner(), 1, {}),
        (),
        s.dir(stage.hash),
    )
    res = launch(
        [work],
        is_done=s.is_done,
        cluster=cluster,
        folder=s.root.resolve() / ".slurm",
        chdir=os.getcwd(),
        pythonpath=ROOT,
        wait=False,
        echo=quiet,
        prepare=lambda h: prepare_stage(s, stage),
    )
    return res.job_ids[stage.hash]


@pytest.mark.slow
def test_training_requeued_by_the_timeout_signal_ends_with_the_uninterrupted_weights(cluster, tiny_cache, tmp_path):
    """Two jobs train the same epoch side by side; one gets USR2 (what SLURM sends before the time
    limit) mid-epoch, checkpoints through submitit, is requeued and resumes from the trainer's newest
    checkpoint. Both must end with bit-identical U-Net weights and the same loss log."""
    from safetensors.torch import load_file

    steps = 30
    resolver = HydraResolver(
        "smoke",
        [f"data.train.num_clips={steps}", "data.clip_len=4", "train.checkpoint_every=4", "benchmark.num_test_clips=1"],
    )
    graph = expand(load_table("III").select(["svd_finetuned"]), resolver)
    epoch1 = graph.stages[graph.rows[0].train[0]]
    stores = {name: tmp_path / name for name in ("interrupted", "straight")}
    jobs = {name: _submit_train(store, epoch1, cluster) for name, store in stores.items()}
    log = stores["interrupted"] / epoch1.hash / "log.jsonl"
    deadline = time.time() + 120
    while (not log.is_file() or len(log.read_text().splitlines()) < 6) and time.time() < deadline:
        time.sleep(0.05)
    assert log.is_file(), "the training job did not start within 120 s"
    subprocess.run(["scancel", "--signal=USR2", jobs["interrupted"]], check=True)
    at_signal = len(log.read_text().splitlines())
    assert at_signal < steps, "training finished before the signal; make it longer"

    # a guard against a hang, not a speed check: under a loaded CI machine (the other test workers
    # share its cores with both jobs) the two runs have taken over 4 minutes
    deadline = time.time() + 900
    while not all(Store(s).is_done(epoch1.hash) for s in stores.values()):
        states = query_jobs(jobs.values())
        dead = [n for n, j in jobs.items() if not states[j].live and not Store(stores[n]).is_done(epoch1.hash)]
        assert not dead, f"job(s) {dead} ended without a result: {states}"
        assert time.time() < deadline, "training did not finish within 900 s"
        time.sleep(0.5)

    folder = stores["interrupted"] / epoch1.hash
    attempts = json.loads((folder / "stage.json").read_text())["attempts"]
    assert len(attempts) == 2 and "finished" not in attempts[0], attempts
    last = read_record(folder)["submissions"][-1]
    job_log = Path(last["stdout"]).read_text() + Path(last["stderr"]).read_text()  # progress is logged to stderr
    assert "resumed from" in job_log and "Requeued job" in job_log
    a = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(stores["straight"] / epoch1.hash / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "weights differ after the requeue"
    lines = lambda s: [json.loads(x) for x in (stores[s] / epoch1.hash / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in lines("interrupted")] == list(range(1, steps + 1))
    assert [r["loss"] for r in lines("interrupted")] == [r["loss"] for r in lines("straight")]
