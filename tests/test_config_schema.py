"""Typed, validated configs (trainers/config_schema.py): a wrong type or an out-of-range value fails
at start, naming the full key, the value and what is allowed; every composed group passes."""

from __future__ import annotations

import pytest

from trainers.config import load_config
from trainers.config_schema import ConfigError, problems, validate


def test_shipped_configs_are_valid():
    for overrides in (
        [],
        ["adapter=lora", "data=kitti", "schedule=joint", "model=svd"],
        ["data=nuscenes", "model=full-random"],
        ["data=folder", "+benchmark=paper"],
        ["+benchmark=smoke"],
        ["model=ltx-tiny", "data.clip_len=9"],
        ["model=ltx"],
        ["model=ltx-full-random"],
    ):
        assert problems(load_config(overrides)) == [], overrides


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("train.lr=abc", "train.lr='abc'", "a number > 0"),
        ("train.lr=0", "train.lr=0", "a number > 0"),
        ("loss.alpha=-10", "loss.alpha=-10", "a number > 0"),
        ("loss.lambda_feat=-1", "loss.lambda_feat=-1", "a number >= 0"),
        ("data.height=60", "data.height=60", "a multiple of 8"),
        ("data.clip_len=0", "data.clip_len=0", "an integer >= 1"),
        ("cond.dropout=1.5", "cond.dropout=1.5", ">= 0 and <= 1"),
        ("loss.variant=local", "loss.variant='local'", "one of global | box | hybrid"),
        ("train.mixed_precision=fp8", "train.mixed_precision='fp8'", "one of no | bf16 | fp16"),
        ("train.batch_size=1.5", "train.batch_size=1.5", "an integer >= 1"),
        ("train.compile=[unet,vae]", "train.compile=['unet', 'vae']", "any of unet, unet_blocks, vae_decoder, dino"),
        ("loss.decode_frames=every_k:0", "loss.decode_frames='every_k:0'", "every_k:<k>"),
        ("train.adam_fused=maybe", "train.adam_fused='maybe'", "true or false"),
    ],
)
def test_bad_value_names_key_value_and_range(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        validate(load_config([override]))
    msg = str(e.value)
    assert msg.startswith(key + ":") and allowed in msg, msg


def test_flow_backbone_keys_are_checked():
    found = problems(
        load_config(
            ["model=ltx-tiny", "model.flow.shift=big", "model.flow.sigma_dist=lognormal", "model.decode_timestep=2"]
        )
    )
    assert any(p.startswith("model.flow.shift='big': expected auto") for p in found), found
    assert any(
        p.startswith("model.flow.sigma_dist='lognormal': expected one of logit_normal | uniform") for p in found
    ), found
    assert any(p.startswith("model.decode_timestep=2: expected a number >= 0 and <= 1") for p in found), found


def test_group_keys_and_wildcards_are_checked():
    assert any(p.startswith("adapter.rank=0:") for p in problems(load_config(["adapter=lora", "adapter.rank=0"])))
    bad = problems(
        load_config(
            [
                "+benchmark=smoke",
                "metrics.det.protocols.ctrlv.ref_conf=2",
                "metrics.det.protocol=nope",
                "benchmark.generate.width=100",
            ]
        )
    )
    assert any(p.startswith("metrics.det.protocols.ctrlv.ref_conf=2:") for p in bad), bad
    assert any(p.startswith("metrics.det.protocol='nope':") and "lsa | ctrlv" in p for p in bad), bad
    assert any(p.startswith("benchmark.generate.width=100:") for p in bad), bad


def test_every_problem_is_reported_once_each():
    lines = problems(load_config(["train.lr=abc", "loss.alpha=-1"]))
    assert [ln.split("=")[0] for ln in lines] == ["loss.alpha", "train.lr"]


def test_unknown_key_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"^loss\.alfa: no such config key"):
        load_config(["loss.alfa=3"])


def test_trainer_refuses_bad_config_at_start(capsys):
    from trainers.train import main

    assert main(["loss.alpha=-1"]) == 2
    assert "loss.alpha=-1: expected a number > 0" in capsys.readouterr().err


def test_benchmark_dry_run_refuses_bad_value_naming_key_and_rows(capsys, tmp_path):
    from benchmark.run import main

    rc = main(["table=III", "rows=global,box", "train.lr=abc", f"store={tmp_path}/runs", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "table III: train.lr='abc': expected a number > 0  [rows: global, box]" in err
    assert not (tmp_path / "runs").exists()
