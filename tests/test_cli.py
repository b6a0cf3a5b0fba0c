"""The command line: the `lsa-bench` entry point (benchmark/commands.py), `--cfg job`, help texts read
from the config groups, and the error policy seen from a shell (data/cli.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from fakes import FakeRunner
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _sh(*args, **kw):
    # tests/ on the path: the failing runner below is this module, imported by name in the child
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


class KeyErrorInsideTraining(FakeRunner):
    """A bug deep inside a stage: a KeyError, which is not a user error."""

    def run_testset(self, stage, cfg, out_dir):
        return self.lookup({})

    def lookup(self, table):
        return table["key_that_a_bug_forgot"]


def test_an_exception_inside_a_stage_reaches_the_user_with_its_traceback(tmp_path):
    r = _sh(
        "-m",
        "benchmark.commands",
        "run",
        "table=V",
        f"store={tmp_path / 'runs'}",
        f"results={tmp_path / 'results'}",
        f"runner={__name__}:KeyErrorInsideTraining",
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback (most recent call last)" in r.stderr
    assert "KeyError: 'key_that_a_bug_forgot'" in r.stderr
    assert "in lookup" in r.stderr  # the frame that raised, not only the message
    assert not r.stderr.lstrip().startswith("error:")


def test_a_usage_error_is_one_line_and_exit_2():
    r = _sh("-m", "benchmark.commands", "run", "table=IX")  # no such table (a real one would run here)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "IX" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _sh("-m", "benchmark.commands", "run", "table=III", "loss.alfa=3", "--dry-run")
    assert r.returncode == 2 and "alfa" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _sh("-m", "benchmark.commands", "nonsense")
    assert r.returncode == 2 and "unknown command" in r.stderr and "train" in r.stderr


def test_entry_point_is_declared_and_every_command_has_a_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lsa-bench"] == "benchmark.commands:main"
    import importlib

    from benchmark.commands import COMMANDS

    assert set(COMMANDS) >= {"run", "status", "train", "generate", "evaluate"}
    missing = [n for n, (mod, _) in COMMANDS.items() if not hasattr(importlib.import_module(mod), "main")]
    if missing:
        pytest.skip(f"commands without a main() in this tree yet: {missing}")


def test_installed_entry_point_runs(tmp_path):
    exe = shutil.which("lsa-bench") or str(Path(sys.executable).parent / "lsa-bench")
    if not Path(exe).exists():
        pytest.skip("the lsa-bench script is not installed (pip install -e .)")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout and "generate" in r.stdout
    r = subprocess.run(
        [exe, "train", "loss.alpha=3.5", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert OmegaConf.create(r.stdout).loss.alpha == 3.5


def test_train_cfg_job_prints_the_resolved_config_and_trains_nothing(tmp_path):
    out = tmp_path / "never"
    r = _sh("-m", "trainers.train", "model=svd", "loss.alpha=3.5", f"train.out_dir={out}", "--cfg", "job")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = OmegaConf.create(r.stdout)
    assert cfg.loss.alpha == 3.5 and cfg.model.name == "svd" and cfg.loss.lambda_feat == cfg.data.lambda_feat
    assert not out.exists()
    r = _sh("-m", "trainers.train", "--cfg", "hydra")
    assert r.returncode == 2 and "--cfg" in r.stderr


def test_run_cfg_job_prints_each_rows_config(capsys):
    from benchmark.run import main

    assert main(["table=III", "loss.alpha=4", "--cfg", "job"]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("# table III, row ")]
    assert [r.rsplit(" ", 1)[1] for r in rows] == ["svd_finetuned", "global", "box", "hybrid"]
    docs = text.split("# table III, row ")[1:]
    variants = [OmegaConf.create(d.split("\n", 1)[1]).loss.variant for d in docs]
    assert variants[1:] == ["global", "box", "hybrid"]
    assert all(OmegaConf.create(d.split("\n", 1)[1]).loss.alpha == 4 for d in docs)


def test_help_lists_every_option_of_the_config_groups(capsys):
    """The group listings come from configs/<group>/; model=full-random was missing from a hand-written list."""
    from trainers.train import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for group in ("model", "data", "schedule", "adapter"):
        options = sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{group}="))
        assert sorted(line.strip().split("=", 1)[1].split("|")) == options, line
    assert "full-random" in text
    from benchmark.run import main as run_main

    assert run_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "I|II|III|IV|V|VI|VII" in text and "local|slurm|debug" in text
    assert "mini|paper|rehearsal|smoke" in text
