"""The SLURM launcher without a cluster: array / dependency plan, cluster config, sbatch parameters,
the accelerate command, and whole tables through submitit's DebugExecutor (launcher=debug)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakes import FakeRunner

from ablations.registry import load_table
from benchmark.config import HydraResolver
from benchmark.job import load_stage, prepare_stage
from benchmark.run_table import StagesFailed, run_table
from benchmark.stages import KINDS, expand
from benchmark.store import Store
from slurm.config import ClusterConfigError, executor_parameters, kind_settings, load_cluster
from slurm.multigpu import accelerate_command, main_process_port
from slurm.plan import Item, dependency_string, plan_arrays


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


@pytest.fixture(scope="module")
def graph(smoke):
    return expand(load_table("III"), smoke)


def items_of(graph):
    return [Item(s.hash, s.kind, s.deps) for s in graph.order()]


# ------------------------------------------------------------------------------------ the plan
def test_table_III_becomes_one_array_per_kind_with_exact_task_dependencies(graph):
    arrays = plan_arrays(items_of(graph), lambda h: False, {}, KINDS)
    assert [(a.name, len(a.keys)) for a in arrays] == [
        ("testset", 1),
        ("train", 1),
        ("train-2", 4),
        ("generate", 4),
        ("evaluate", 4),
    ]
    testset, e1 = arrays[0].keys[0], arrays[1].keys[0]
    assert all(arrays[2].needs[k] == [e1] for k in arrays[2].keys)  # every epoch 2 after the shared epoch 1
    for plan in graph.rows:  # each generation after its own epoch 2
        assert arrays[3].needs[plan.generate] == [plan.train[-1], testset]
        assert arrays[4].needs[plan.evaluate["dn_detr"]] == [plan.generate, testset]
    assert set(arrays[3].union()) == set(arrays[2].keys) | {testset}


def test_done_stages_are_not_planned_and_running_jobs_are_waited_for(graph):
    by_kind = lambda k: [s.hash for s in graph.order() if s.kind == k]  # noqa: E731
    testset, e1 = by_kind("testset")[0], by_kind("train")[0]
    e2 = by_kind("train")[1:]
    done = {testset, e1}
    running = {e2[0]: "41_0"}  # queued by an earlier benchmark.run
    arrays = plan_arrays(items_of(graph), done.__contains__, running, KINDS)
    assert [a.name for a in arrays] == ["train", "generate", "evaluate"]
    assert sorted(arrays[0].keys) == sorted(e2[1:]) and all(arrays[0].needs[k] == [] for k in arrays[0].keys)
    gen_of_running = next(p.generate for p in graph.rows if p.train[-1] == e2[0])
    assert arrays[1].needs[gen_of_running] == [e2[0]]  # waits for the queued job, not resubmitted
    assert e2[0] not in [k for a in arrays for k in a.keys]


def test_plan_errors_and_dependency_strings():
    with pytest.raises(ValueError, match="neither done, running nor planned"):
        plan_arrays([Item("b", "generate", ("a",))], lambda k: False)
    with pytest.raises(ValueError, match="cycle"):
        plan_arrays([Item("a", "x", ("b",)), Item("b", "y", ("a",))], lambda k: False)
    assert dependency_string(["12_0", "13", "12_0"]) == "afterok:12_0:13"
    assert dependency_string([], "afterany") is None


# ------------------------------------------------------------------------------------ cluster config
def test_cluster_config_kinds_inherit_and_overrides():
    c = load_cluster("local", ["slurm.job.account=proj", "slurm.kinds.train.time_min=90"])
    assert c["name"] == "local" and c["job"]["partition"] == "debug" and c["job"]["account"] == "proj"
    train, render = kind_settings(c, "train"), kind_settings(c, "render")
    assert train["time_min"] == 90 and train["account"] == "proj" and render["time_min"] == 10
    d = load_cluster("default")
    assert kind_settings(d, "train")["gpus_per_task"] == 1 and kind_settings(d, "render")["gpus_per_task"] == 0
    assert kind_settings(d, "train")["time_min"] > kind_settings(d, "render")["time_min"]


def test_cluster_config_errors_name_the_file_or_override(tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "bad.yaml").write_text("job: {partiton: gpu}\n")
    with pytest.raises(ClusterConfigError, match=r"bad\.yaml.*unknown key\(s\) \['partiton'\] in job"):
        load_cluster("bad", config_dir=tmp_path)
    with pytest.raises(ClusterConfigError, match="clusters: bad"):
        load_cluster("nope", config_dir=tmp_path)
    with pytest.raises(ClusterConfigError, match=r"slurm\.<key>=<value>"):
        load_cluster("default", ["job.partition=gpu"])
    with pytest.raises(ClusterConfigError, match=r"unknown key\(s\) \['gpu'\] in kinds.train"):
        load_cluster("default", ["slurm.kinds.train.gpu=2"])


def test_executor_parameters_map_the_settings_to_sbatch(tmp_path):
    c = load_cluster(
        "default",
        [
            "slurm.job.partition=gpu",
            "slurm.job.qos=high",
            "slurm.kinds.train.gpus_per_task=4",
            "slurm.kinds.train.additional={reservation: r1}",
        ],
    )
    p = executor_parameters(
        kind_settings(c, "train"),
        name="lsa-train",
        array_parallelism=8,
        chdir=tmp_path,
        pythonpath="/src/lsa",
        kill_on_invalid_dep=True,
    )
    assert p["gpus_per_node"] == 4 and p["tasks_per_node"] == 1 and p["nodes"] == 1
    assert p["slurm_partition"] == "gpu" and p["slurm_qos"] == "high" and "slurm_account" not in p
    assert p["timeout_min"] == 1440 and p["slurm_array_parallelism"] == 8
    assert p["slurm_additional_parameters"] == {
        "chdir": str(tmp_path),
        "kill-on-invalid-dep": "yes",
        "reservation": "r1",
    }
    assert p["slurm_setup"][0].startswith("export PYTHONPATH=/src/lsa")
    render = executor_parameters(
        kind_settings(c, "render"),
        name="r",
        array_parallelism=1,
        chdir=tmp_path,
        pythonpath="/x",
        kill_on_invalid_dep=False,
    )
    assert "gpus_per_node" not in render and "kill-on-invalid-dep" not in render["slurm_additional_parameters"]
    # submitit itself accepts them and writes the sbatch lines we expect
    from submitit.slurm.slurm import _make_sbatch_string

    conv = {
        k.removeprefix("slurm_"): v
        for k, v in p.items()
        if k not in ("name", "timeout_min", "tasks_per_node", "mem_gb")
    }
    text = _make_sbatch_string(
        command="true", folder=tmp_path, job_name="lsa-train", time=1440, ntasks_per_node=1, mem="96GB", **conv
    )
    for line in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --kill-on-invalid-dep=yes",
        f"#SBATCH --chdir={tmp_path}",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --reservation=r1",
    ):
        assert line in text, f"{line!r} not in:\n{text}"


# ------------------------------------------------------------------------------------ multi-GPU
def test_accelerate_command_for_several_gpus():
    cmd = accelerate_command(
        4,
        "/runs/abc/.multigpu_call.pkl",
        port=21234,
        python="/venv/bin/python",
        cpus=32,
        extra_args=["--mixed_precision", "bf16"],
    )
    assert cmd[:3] == ["/venv/bin/python", "-m", "accelerate.commands.launch"]
    joined = " ".join(cmd)
    for part in (
        "--num_processes 4",
        "--num_machines 1",
        "--machine_rank 0",
        "--main_process_port 21234",
        "--multi_gpu",
        "--num_cpu_threads_per_process 8",
        "--mixed_precision bf16",
        "-m slurm.multigpu /runs/abc/.multigpu_call.pkl",
    ):
        assert part in joined
    assert "--multi_gpu" not in accelerate_command(1, "p", port=1)
    assert main_process_port("auto", "123456_7") == 20000 + 1234567 % 20000
    assert main_process_port(29500) == 29500
    with pytest.raises(ValueError):
        accelerate_command(0, "p", port=1)


def test_training_runs_under_accelerate_launch_and_commits_once(graph, tmp_path):
    """The real `accelerate launch` path of a train stage (1 process on the CPU: no GPU here; N > 1 only
    changes the command above): the parent prepares and commits, the launched process trains."""
    from types import SimpleNamespace

    from benchmark.job import MultiProcess
    from benchmark.local import execute_stage

    store = Store(tmp_path)
    stage = next(s for s in graph.order() if s.kind == "train" and not s.deps)
    prepare_stage(store, stage)
    runner = FakeRunner(log=tmp_path / "calls.log")
    wrapped = MultiProcess(runner, "run_train", 1, {"main_process_port": 29731, "extra_args": ["--cpu"]})
    execute_stage(load_stage(store, stage.hash), SimpleNamespace(stages={}), store, wrapped, lambda m: None)
    assert store.is_done(stage.hash) and runner.history == []  # trained in the launched process
    assert (tmp_path / "calls.log").read_text().split() == ["start", "train", stage.hash, "end", "train", stage.hash]
    assert store.result(stage.hash)["log"] == str(tmp_path / stage.hash / "log.jsonl")
    assert not list((tmp_path / stage.hash).glob(".multigpu_*"))
    assert wrapped.run_testset == runner.run_testset  # other kinds are not launched


# ------------------------------------------------------------------------------------ the job's entry point
def test_a_prepared_stage_loads_back_and_must_still_hash_to_its_name(graph, tmp_path):
    store = Store(tmp_path)
    stage = next(s for s in graph.order() if s.kind == "train" and s.params["objective"] == "lsa")
    prepare_stage(store, stage)
    back = load_stage(store, stage.hash)
    assert (back.kind, back.deps, back.params, back.rows) == (stage.kind, stage.deps, stage.params, stage.rows)
    assert back.run_cfg == stage.run_cfg and back.config == stage.config
    (tmp_path / stage.hash / "config.yaml").write_text("written: by the trainer\n")  # does not matter
    assert load_stage(store, stage.hash).config == stage.config
    info = json.loads((tmp_path / stage.hash / "stage.json").read_text())
    info["config"]["cfg"]["loss"]["alpha"] = 99
    (tmp_path / stage.hash / "stage.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"does not hash to {stage.hash}"):
        load_stage(store, stage.hash)


def table_cells(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {r["name"]: {c: v["ours"] for c, v in r["cells"].items()} for r in doc["rows"]}


def test_debug_launcher_gives_the_local_numbers(smoke, tmp_path):
    local = run_table(
        "III", smoke, FakeRunner(), store=tmp_path / "a", results=tmp_path / "ra", echo=lambda s: None, figures=False
    )
    runner = FakeRunner()
    debug = run_table(
        "III",
        smoke,
        runner,
        "debug",
        store=tmp_path / "b",
        results=tmp_path / "rb",
        cluster=load_cluster("local"),
        echo=lambda s: None,
        figures=False,
    )
    assert table_cells(debug.outputs["json"]) == table_cells(local.outputs["json"])
    assert sorted(h for _, h in runner.history) == sorted(debug.graph.stages)  # every stage once
    rec = json.loads((tmp_path / "b" / debug.graph.rows[0].generate / "slurm.json").read_text())
    sub = rec["submissions"][0]
    assert sub["executor"] == "debug" and sub["array"] == "generate" and sub["stderr"].endswith("_log.err")


def test_debug_launcher_a_failed_stage_stops_only_its_own_row(smoke, tmp_path, capsys):
    store, results = tmp_path / "runs", tmp_path / "res"
    cluster = load_cluster("local")
    with pytest.raises(StagesFailed) as e:
        run_table(
            "III",
            smoke,
            FakeRunner(fail_row="box"),
            "debug",
            store=store,
            results=results,
            cluster=cluster,
            echo=lambda s: None,
            figures=False,
        )
    msg = str(e.value)
    assert "3 stage(s)" in msg and "planned failure of box" in msg and "its input train" in msg
    g = expand(load_table("III"), smoke)
    box = next(p for p in g.rows if p.row.name == "box")
    done = {p.parent.name for p in store.glob("*/DONE")}
    assert not {box.train[-1], box.generate, box.evaluate["dn_detr"]} & {d.parent.name for d in store.glob("*/DONE")}
    assert len(done) == 14 - 3
    cells = table_cells(results / "smoke-fake" / "table_III.json")  # the partial table is drawn
    assert cells["box"]["map"] is None and cells["hybrid"]["map"] is not None
    from benchmark.status import main as status

    assert status(["table=III", f"store={store}", "--logs"]) == 0
    text = capsys.readouterr().out
    assert "11 done, 1 failed, 2 pending" in text and f"failed   train     {box.train[-1]}" in text
    assert "ended without a result; log " in text and "planned failure of box" in text  # --logs: the error

    again = FakeRunner()
    run_table(
        "III", smoke, again, "debug", store=store, results=results, cluster=cluster, echo=lambda s: None, figures=False
    )
    assert sorted(h for _, h in again.history) == sorted([box.train[-1], box.generate, box.evaluate["dn_detr"]])


def test_cli_slurm_options(capsys, tmp_path):
    from benchmark.run import main

    assert main(["table=III", "slurm.job.partition=gpu", f"store={tmp_path}"]) == 2
    assert "only with launcher=slurm" in capsys.readouterr().err
    assert main(["table=III", "launcher=slurm", "cluster=nope", f"store={tmp_path}"]) == 2
    assert "clusters: default, local" in capsys.readouterr().err
    assert main(["table=III", "launcher=cloud", f"store={tmp_path}"]) == 2
    assert "valid: local, slurm, debug" in capsys.readouterr().err
    assert main(["table=III", "launcher=slurm", "--dry-run", f"store={tmp_path}", "slurm.job.partition=gpu"]) == 0
    out = capsys.readouterr().out
    assert "job arrays (5)" in out and "train-2          4 task(s)" in out
