"""The performance harness runs on the CPU with the tiny model (a smoke test, not a timed assertion)."""
import json

from benchmark.perf import main


def test_perf_harness_writes_json_and_markdown(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LSA_PERF_GEN_STEPS", "1")
    rc = main(["--steps", "1", "--gen-videos", "1", "--out-dir", str(tmp_path / "perf"),
               "data.clip_len=4", f"train.out_dir={tmp_path / 'run'}"])
    assert rc == 0
    js = list((tmp_path / "perf").glob("*.json"))
    md = list((tmp_path / "perf").glob("*.md"))
    assert len(js) == 1 and len(md) == 1 and js[0].stem.startswith("cpu")
    res = json.loads(js[0].read_text())
    assert set(res["steps"]) == {"unet", "lora"}
    for r in res["steps"].values():
        assert r["diffusion"]["clips_per_s"] > 0 and r["lsa"]["peak_mem_gib"] > 0 and r["lsa_over_diffusion"] > 0
    assert res["generation"]["generated"] == 1 and res["generation"]["hours_per_200_videos"] > 0
    assert "LSA / diffusion" in md[0].read_text() and res["device"] in md[0].read_text()
