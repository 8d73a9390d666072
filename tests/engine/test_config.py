"""Config composition, the method registry and bad-config messages."""

from __future__ import annotations

import pytest

from cxrdist.config import compose, list_options, to_container, validate_config
from cxrdist.methods import get_method, list_methods


def test_registry_equals_config_group():
    assert set(list_options("method")) == set(list_methods())


@pytest.mark.parametrize("name", list_options("method"))
def test_every_method_composes_and_validates(name: str):
    cfg = compose([f"method={name}", "data.root=/nowhere"])
    assert cfg.method.name == name
    validate_config(cfg)
    method = get_method(name)(cfg)
    assert method.stages(), name
    d = to_container(cfg)
    published = d["method"]["published"]
    assert published["split"] in ("official", "random-image") and published["source"]


@pytest.mark.parametrize("group", ["loader", "engine", "cluster", "logger"])
def test_every_infra_option_composes(group: str):
    for opt in list_options(group):
        assert compose([f"{group}={opt}", "data.root=/x"])[group] is not None


def test_loader_resample_choices():
    """loader.resample: float is the exact default, uint8 the opt-in; anything else is one line naming the key."""
    assert compose(["data.root=/x"]).loader.resample == "float"
    validate_config(compose(["method=chexnet", "data.root=/x", "loader.resample=uint8"]))
    with pytest.raises(ValueError, match="loader.resample='int8': choose one of float, uint8"):
        validate_config(compose(["method=chexnet", "data.root=/x", "loader.resample=int8"]))


def test_unknown_option_lists_choices():
    with pytest.raises(ValueError, match="unknown method option 'nope'; choose one of .*chexnet"):
        compose(["method=nope"])
    with pytest.raises(ValueError, match="unknown loader option 'nvjpeg'; choose one of dali, torch"):
        compose(["loader=nvjpeg"])


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "method.stages.train.epoch=1",
            "unknown config key method.stages.train.epoch; did you mean method.stages.train.epochs?",
        ),
        ("engine.zero_stag=1", "unknown config key engine.zero_stag; did you mean engine.zero_stage?"),
        (
            "method.stages.train.optim.lrr=1",
            "unknown config key method.stages.train.optim.lrr; did you mean method.stages.train.optim.lr?",
        ),
        ("method.model.pretraind=false", "did you mean method.model.pretrained?"),
        ("foo=1", r"unknown config key foo \(the root has: data, loader"),
        ("engine.max_batch_per_rank=abc", "bad value for engine.max_batch_per_rank=abc: Value 'abc'"),
        ("2", "'2' is not a config override: write key=value"),
    ],
)
def test_mistyped_key_is_named(override: str, message: str):
    with pytest.raises(ValueError, match=message) as e:
        compose(["method=chexnet", override])
    assert "\n" not in str(e.value)


def test_unknown_option_suggests_the_closest():
    with pytest.raises(ValueError, match="unknown method option 'chexnte'; did you mean chexnet\\? choose one of"):
        compose(["method=chexnte"])


def test_method_option_validated_by_method():
    cfg = compose(["method=dcnn", "+method.model.pooling=max", "data.root=/x"])
    with pytest.raises(ValueError, match="method.model.*pooling"):
        get_method("dcnn")(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.stages.train.epochs=0", "method.stages.train.epochs=0: must be ≥ 1"),
        ("method.stages.train.global_batch=0", "method.stages.train.global_batch=0: must be ≥ 1"),
        ("method.stages.train.optim.lr=0", "method.stages.train.optim.lr=0.0: must be > 0"),
        ("method.stages.train.optim.lr=-0.1", "method.stages.train.optim.lr=-0.1: must be > 0"),
        ("engine.ckpt_every_steps=0", "engine.ckpt_every_steps=0: must be ≥ 1"),
        ("loader.eval_batch_per_rank=0", "loader.eval_batch_per_rank=0: must be ≥ 1"),
    ],
)
def test_impossible_values_are_refused_before_anything_is_created(override: str, message: str, shard_root, tmp_path):
    """An epochs=0 run used to mark training DONE with no model: refused by the launcher and prepare_run."""
    import re

    from cxrdist.run.launcher import submit
    from cxrdist.run.prepare import prepare_run

    run = tmp_path / "r"
    argv = ["--cluster", "local", "--run-dir", str(run), f"data.root={shard_root}", "method=chexnet", override]
    with pytest.raises(ValueError, match=re.escape(message)):
        submit(argv)
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_run(compose(["method=chexnet", f"data.root={shard_root}", f"run_dir={run}", override]), lock="t")
    assert not run.exists()
