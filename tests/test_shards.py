"""Generate / evaluate stages split into shards of test clips (benchmark.shards, benchmark/shards.py):
the same hashes, bit-identical frames and identical metrics as one unsharded stage, resume of a
killed shard, local worker processes, and the SLURM plan (shard tasks + a merge task)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fakes import FakeRunner

from ablations.registry import load_table
from benchmark import shards as shards_mod
from benchmark.cluster import stage_works, work_done
from benchmark.config import HydraResolver
from benchmark.run_table import run_table
from benchmark.shards import shard_bounds, shard_names
from benchmark.stages import KINDS, expand
from benchmark.store import Store
from slurm.config import load_cluster
from slurm.plan import Item, plan_arrays

quiet = dict(echo=lambda s: None, figures=False)


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


@pytest.fixture(scope="module")
def smoke2():
    return HydraResolver("smoke", ["benchmark.shards=2"])


def cells(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    return {r["name"]: {c: v["ours"] for c, v in r["cells"].items()} for r in doc["rows"]}


# ------------------------------------------------------------------------------------ the split itself
@pytest.mark.parametrize("total,count,align", [(10, 3, 1), (200, 4, 8), (3, 2, 2), (2, 5, 1), (0, 2, 4), (7, 7, 3)])
def test_shards_cover_every_clip_once_in_order_aligned(total, count, align):
    names = [f"c{k:03d}" for k in range(total)]
    blocks = [shard_names(names, i, count, align) for i in range(count)]
    assert [n for b, _ in blocks for n in b] == names  # all, once, in order
    for b, start in blocks:
        assert start % align == 0 or not b
        assert names[start : start + len(b)] == b
    sizes = [len(b) for b, _ in blocks]
    assert max(sizes) - min(sizes) <= 2 * align  # as even as the alignment allows
    with pytest.raises(ValueError):
        shard_bounds(total, count, count)


def test_shards_key_is_not_hashed_and_bad_values_name_it(smoke, smoke2, tmp_path, capsys):
    a, b = expand(load_table("III"), smoke), expand(load_table("III"), smoke2)
    assert list(a.stages) == list(b.stages)  # sharding never changes a stage's identity
    from benchmark.run import main

    for bad in ("0", "two", "true", "1.5"):
        assert main(["table=III", f"benchmark.shards={bad}", f"store={tmp_path}", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "error: benchmark.shards=" in err and "expected a whole number >= 1" in err


# ------------------------------------------------------------------------------------ FakeRunner: the machinery
def test_sharded_table_equals_unsharded_and_a_failed_shard_resumes_alone(smoke, smoke2, tmp_path):
    one = run_table("III", smoke, FakeRunner(), store=tmp_path / "a", results=tmp_path / "ra", **quiet)

    class CrashOnce(FakeRunner):
        def run_evaluate(self, stage, cfg, videos_dir, out_dir, *, real_dir, shard=None):
            if shard is not None and shard.index == 1 and not getattr(self, "crashed", False):
                self.crashed = True
                raise RuntimeError("shard killed")
            return super().run_evaluate(stage, cfg, videos_dir, out_dir, real_dir=real_dir, shard=shard)

    store = Store(tmp_path / "b")
    with pytest.raises(RuntimeError, match="shard killed"):
        run_table("III", smoke2, CrashOnce(), store=store, results=tmp_path / "rb", **quiet)
    g = expand(load_table("III"), smoke2)
    ev = g.rows[0].evaluate["dn_detr"]
    assert store.shard_done(ev, 0, 2) and not store.shard_done(ev, 1, 2) and not store.is_done(ev)
    from benchmark.status import stage_statuses

    st = {x.hash: x for x in stage_statuses(g, store)}[ev]
    # the attempt raised: the runner recorded it (FAILED), status says so with the shard count
    assert st.status == "failed" and "RuntimeError: shard killed" in st.detail, st
    assert st.detail.endswith("1 of 2 shards done"), st
    again = FakeRunner()
    two = run_table("III", smoke2, again, store=store, results=tmp_path / "rb", **quiet)
    assert cells(two.outputs["json"]) == cells(one.outputs["json"])
    # only shard 1 of that stage ran again (then the other 3 rows' generate + evaluate, 2 shards each)
    assert again.history.count(("evaluate", ev)) == 1 and again.calls["evaluate"] == 1 + 3 * 2
    for h in g.stages:  # the same frames as the unsharded run
        if g.stages[h].kind == "generate":
            a, b = (sorted((tmp_path / s / h / "frames").rglob("*.png")) for s in ("a", "b"))
            assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
            assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
            assert store.result(h)["num_videos"] == 2


def test_local_workers_one_process_per_device(smoke2, tmp_path, monkeypatch):
    """With several GPUs each shard runs in its own process (CUDA_VISIBLE_DEVICES); here two
    unpinned CPU processes stand in for them."""
    log = tmp_path / "events.log"
    monkeypatch.setenv("LSA_FAKE_RUNNER_LOG", str(log))
    monkeypatch.setattr(shards_mod, "local_devices", lambda: [None, None])
    run = run_table(
        "III", smoke2, FakeRunner(), store=tmp_path / "runs", results=tmp_path / "r", rows=["hybrid"], **quiet
    )
    gen = run.graph.rows[0].generate
    store = Store(tmp_path / "runs")
    assert store.is_done(gen) and store.shard_done(gen, 0, 2) and store.shard_done(gen, 1, 2)
    assert (store.shard_dir(gen, 1, 2) / "worker.log").is_file()
    events = log.read_text().splitlines()
    assert events.count(f"start generate {gen}") == 2  # one line per shard, written by the workers
    assert store.result(gen)["num_videos"] == 2
    single = run_table(
        "III",
        HydraResolver("smoke"),
        FakeRunner(),
        store=tmp_path / "one",
        results=tmp_path / "r1",
        rows=["hybrid"],
        **quiet,
    )
    assert cells(run.outputs["json"]) == cells(single.outputs["json"])


def test_a_failing_worker_is_named_with_its_log(smoke2, tmp_path, monkeypatch):
    class Broken(FakeRunner):
        def run_generate(self, stage, cfg, checkpoint, out_dir, *, test_clips, shard=None):
            if shard is not None and shard.index == 1:
                raise RuntimeError("GPU fell off")
            return super().run_generate(stage, cfg, checkpoint, out_dir, test_clips=test_clips, shard=shard)

    monkeypatch.setattr(shards_mod, "local_devices", lambda: [None, None])
    with pytest.raises(RuntimeError, match=r"(?s)1 shard worker\(s\) failed.*shard 2/2.*worker.log.*GPU fell off"):
        run_table("III", smoke2, Broken(), store=tmp_path / "runs", results=tmp_path / "r", rows=["hybrid"], **quiet)
    gen = expand(load_table("III"), smoke2).rows[-1].generate
    store = Store(tmp_path / "runs")
    assert store.shard_done(gen, 0, 2) and not store.shard_done(gen, 1, 2) and not store.is_done(gen)


def test_runner_without_merge_cannot_be_split(smoke2, tmp_path):
    class Plain(FakeRunner):
        merge_generate = None

    with pytest.raises(ValueError, match="benchmark.shards=2.*no merge_generate"):
        run_table("III", smoke2, Plain(), store=tmp_path / "runs", results=tmp_path / "r", **quiet)
    assert not list((tmp_path / "runs").glob("*/DONE"))  # checked before any work


# ------------------------------------------------------------------------------------ SLURM
def test_slurm_plan_shard_tasks_then_a_merge_task(smoke2, tmp_path):
    g = expand(load_table("III"), smoke2)
    store = Store(tmp_path)
    works = stage_works(g, store, None)
    arrays = plan_arrays(
        [Item(w.key, w.kind, tuple(w.deps)) for w in works], lambda k: work_done(store, k), {}, KINDS + ("merge",)
    )
    by = {a.name: a for a in arrays}
    assert [a.name for a in arrays] == ["testset", "train", "train-2", "generate", "merge", "evaluate", "merge-2"]
    assert [len(by[k].keys) for k in ("generate", "merge", "evaluate", "merge-2")] == [8, 4, 8, 4]
    for p in g.rows:
        gen, ev = p.generate, p.evaluate["dn_detr"]
        assert by["generate"].needs[f"{gen}:0/2"] == [p.train[-1], p.testset]  # a shard: the stage's inputs
        assert by["merge"].needs[gen] == [f"{gen}:0/2", f"{gen}:1/2"]  # the merge: its shards
        assert by["evaluate"].needs[f"{ev}:1/2"] == [gen, p.testset]  # dependants: the merge
        assert by["merge-2"].needs[ev] == [f"{ev}:0/2", f"{ev}:1/2"]
    # a recorded shard is not planned again
    store.commit_shard(g.rows[0].generate, 0, 2, {"num_videos": 1})
    works = stage_works(g, store, None)
    arrays = plan_arrays(
        [Item(w.key, w.kind, tuple(w.deps)) for w in works], lambda k: work_done(store, k), {}, KINDS + ("merge",)
    )
    gen_array = next(a for a in arrays if a.name == "generate")
    assert f"{g.rows[0].generate}:0/2" not in gen_array.keys and len(gen_array.keys) == 7
    merge = next(a for a in arrays if a.name == "merge")
    assert merge.needs[g.rows[0].generate] == [f"{g.rows[0].generate}:1/2"]
    assert load_cluster("default")["kinds"]["merge"]["gpus_per_task"] == 0


def test_debug_launcher_shards_give_the_local_numbers(smoke, smoke2, tmp_path):
    local = run_table("III", smoke, FakeRunner(), store=tmp_path / "a", results=tmp_path / "ra", **quiet)
    runner = FakeRunner()
    debug = run_table(
        "III",
        smoke2,
        runner,
        "debug",
        store=tmp_path / "b",
        results=tmp_path / "rb",
        cluster=load_cluster("local"),
        **quiet,
    )
    assert cells(debug.outputs["json"]) == cells(local.outputs["json"])
    store = Store(tmp_path / "b")
    gen = debug.graph.rows[0].generate
    assert all(store.is_done(h) for h in debug.graph.stages)
    rec = json.loads((store.dir(gen) / "slurm.json").read_text())["submissions"][0]
    shard_rec = json.loads((store.shard_dir(gen, 1, 2) / "slurm.json").read_text())["submissions"][0]
    assert rec["array"] == "merge" and rec["kind"] == "merge" and shard_rec["array"] == "generate"
    assert sorted(rec["depends_on"]) == sorted(
        [
            shard_rec["job_id"],
            json.loads((store.shard_dir(gen, 0, 2) / "slurm.json").read_text())["submissions"][0]["job_id"],
        ]
    )


# ------------------------------------------------------------------------------------ the real runner
@pytest.mark.slow
def test_real_runner_sharded_equals_unsharded_bit_for_bit(tiny_cache, tmp_path, monkeypatch):
    """The smoke SVD row of Table I (no training): 3 clips, 2 shards. Frames bit-identical, every
    metric identical; shard 1 killed after one of its two clips resumes with the other one only."""
    import benchmark.generate as gen_mod
    from benchmark.trainer_runner import TrainerRunner

    over = [
        "benchmark.num_test_clips=3",
        "benchmark.generate.num_inference_steps=1",
        "data.clip_len=2",
        "metrics.fvd.batch_size=2",
        "benchmark.generate.save_mp4=false",
    ]
    store = Store(tmp_path / "runs")
    kw = dict(store=store, results=tmp_path / "res", rows=["nuscenes_svd"], **quiet)
    one = run_table("I", HydraResolver("smoke", over), TrainerRunner(), **kw)
    p = one.graph.rows[0]
    gen, ev = p.generate, p.evaluate[next(iter(p.evaluate))]
    ref = tmp_path / "ref"
    shutil.copytree(store.dir(gen) / "frames", ref / "frames")
    metrics_one = json.loads((store.dir(ev) / "metrics.json").read_text())
    shutil.rmtree(store.dir(gen))
    shutil.rmtree(store.dir(ev))

    written = []
    real_write = gen_mod.write_frames

    def crash_on_third(folder, frames):  # shard 0 writes clip 0, shard 1 clip 1, then dies on clip 2
        if len(written) == 2:
            raise RuntimeError("killed")
        written.append(Path(folder).name)
        return real_write(folder, frames)

    monkeypatch.setattr(gen_mod, "write_frames", crash_on_third)
    sharded = HydraResolver("smoke", over + ["benchmark.shards=2"])
    with pytest.raises(RuntimeError, match="killed"):
        run_table("I", sharded, TrainerRunner(), **kw)
    assert store.shard_done(gen, 0, 2) and not store.shard_done(gen, 1, 2)
    monkeypatch.setattr(
        gen_mod,
        "write_frames",
        lambda folder, frames: (written.append(Path(folder).name), real_write(folder, frames))[1],
    )
    two = run_table("I", sharded, TrainerRunner(), **kw)
    assert two.graph.rows[0].generate == gen and store.is_done(ev)
    names = sorted(d.name for d in (ref / "frames").iterdir())
    assert written == names  # each clip generated once: the rerun made only the third
    for n in names:
        a, b = sorted((ref / "frames" / n).glob("*.png")), sorted((store.dir(gen) / "frames" / n).glob("*.png"))
        assert len(a) == 2 and [x.read_bytes() for x in a] == [y.read_bytes() for y in b]
    res = store.result(gen)
    assert res["num_videos"] == 3 and res["shards"] == 2 and res["num_params"] > 0
    metrics_two = json.loads((store.dir(ev) / "metrics.json").read_text())
    for key in ("fvd", "fid"):
        assert metrics_two[key]["value"] == metrics_one[key]["value"]
        assert metrics_two[key]["n_real"] == metrics_one[key]["n_real"] == (3 if key == "fvd" else 6)
    assert metrics_two["det"] == metrics_one["det"]
    assert {k: v for k, v in metrics_two.items() if k not in ("timing", "warnings")} == {
        k: v for k, v in metrics_one.items() if k not in ("timing", "warnings")
    }
    assert sorted(os.listdir(store.dir(ev) / "detections")) == [f"{n}.json" for n in names]
