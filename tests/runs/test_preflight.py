"""Mistakes caught before compute is spent: `paal run` and `paal sweep` refuse them before Ray starts
(exit 2, one line naming the setting, no traceback); errors raised inside Ray reach the user as one
line naming the cause."""

from __future__ import annotations

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from paal_ray.cli.errors import user_errors
from paal_ray.cli.main import app
from paal_ray.data.pool import SLICES_DIR, PoolError, encode_slice_row, write_pool_shard
from tests.conftest import make_blob_pool


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray would mean the check came too late."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the mistake was caught")

    monkeypatch.setattr("paal_ray.runs.launch.connect_for", refuse)
    monkeypatch.setattr("paal_ray.cluster.connect", refuse)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_blob_pool(tmp_path_factory.mktemp("pre") / "pool", cases=4, slices=4)


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory):
    """ACDC-like: a pool ingested at native size, slices of two shapes."""
    import json

    path = tmp_path_factory.mktemp("mixed") / "pool"
    (path / SLICES_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [encode_slice_row(case_id=f"c{c}", patient_id=f"c{c}", slice_index=z,
                             image=rng.random((1, h, w)).astype(np.float16),
                             label=rng.integers(0, 2, (h, w)), num_classes=2)
            for c, (h, w) in enumerate([(48, 40), (32, 32), (48, 40)]) for z in range(3)]
    write_pool_shard(rows, path / SLICES_DIR / "part-00000.parquet")
    (path / "manifest.json").write_text(json.dumps({"num_slices": len(rows), "class_names": ["bg", "fg"],
                                                    "channels": 1, "image_size": None}))
    return path


def _run(args):
    res = CliRunner().invoke(app, args)
    if res.exit_code not in (0, 2):
        import traceback

        traceback.print_exception(res.exc_info[1])
    return res.exit_code, res.stderr, res.stdout


def _assert_refused(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_mixed_slice_shapes_without_image_size_say_which_set_to_use(no_ray, mixed_pool, tmp_path):
    code, err, _ = _run(["run", "cpu", "--set", f"pool={mixed_pool}", "--set", f"workspace={tmp_path}",
                         "--set", "model.image_size=null"])
    _assert_refused(code, err, "2 different shapes", "48x40 (6)", "--set model.image_size=48")
    assert not (tmp_path / "run").exists()


def test_native_slices_a_unet_cannot_take_are_refused(no_ray, pool, tmp_path):
    code, err, _ = _run(["run", "cpu", "--set", f"pool={pool}", "--set", f"workspace={tmp_path}",
                         "--set", "model.image_size=null", "--set", "model.encoder_depth=6"])
    _assert_refused(code, err, "32x32", "multiples of 64", "--set model.image_size=64")


def test_unknown_encoder_is_named_with_the_closest_names(no_ray, pool, tmp_path):
    code, err, _ = _run(["run", "cpu", "--set", f"pool={pool}", "--set", f"workspace={tmp_path}",
                         "--set", "model.encoder=resnet5O"])
    _assert_refused(code, err, "model.encoder 'resnet5O'", "did you mean resnet50")


def test_a_timm_encoder_passes_and_an_unknown_one_does_not(no_ray, pool, tmp_path):
    from paal_ray.runs.preflight import smp_encoder_known

    assert smp_encoder_known("tu-resnet10t") and smp_encoder_known("resnet50")
    assert not smp_encoder_known("tu-nonesuch") and not smp_encoder_known("resnet5O")


def test_unknown_ap_arch_is_named(no_ray, pool, tmp_path):
    code, err, _ = _run(["run", "cpu", "--set", f"pool={pool}", "--set", f"workspace={tmp_path}",
                         "--set", "model.ap_arch=resnet19"])
    _assert_refused(code, err, "model.ap_arch 'resnet19'", "resnet18, resnet34")


@pytest.mark.parametrize("strategy, params, message", [
    ("paal", "{n_init: 0}", "n_init=0: must be >= 1"),
    ("paal", "{kmeans_backend: faiss}", "kmeans_backend='faiss': must be auto, cuml, torch or sklearn"),
    ("kmeans", "{n_init: ten}", "n_init='ten': expected int"),
    ("coreset", "{pca_dims: 2.5}", "pca_dims=2.5: expected int"),
    ("max_entropy", "{reduction: voxel}", "must be 'image' or 'pixel'"),
    ("mc_dropout", "{passes: 1}", "passes=1: must be >= 2"),
    ("ceal", "{delta0: -1}", "delta0=-1: must be >= 0"),
    ("entropy_kmeans", "{pre_factor: true}", "pre_factor=True: expected int"),
])
def test_every_bad_strategy_parameter_fails_at_start(no_ray, pool, tmp_path, strategy, params, message):
    code, err, _ = _run(["run", "cpu", "--set", f"pool={pool}", "--set", f"workspace={tmp_path}",
                         "--set", f"strategy.name={strategy}", "--set", f"strategy.params={params}"])
    _assert_refused(code, err, f"strategy {strategy!r}", message)


def test_good_parameters_of_another_numeric_type_pass():
    from paal_ray.query import strategies

    assert strategies.get("ceal", delta0=0).params["delta0"] == 0  # an int where a float is expected
    assert strategies.get("paal", kmeans_backend="torch", n_init=3).params["n_init"] == 3


def test_sweep_refuses_a_bad_trial_before_ray_starts(no_ray, pool, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "base": "cpu",
                                    "set": [f"pool={pool}", f"workspace={tmp_path}"],
                                    "grid": {"model.encoder": ["plain_unet", "resnet5O"]}}))
    code, err, _ = _run(["sweep", str(spec)])
    _assert_refused(code, err, "trial encoder-resnet5O", "did you mean resnet50")


# -- errors that come through Ray -----------------------------------------------------------------
def _cli(fn):
    cli = typer.Typer()
    cli.command()(user_errors(PoolError)(fn))
    cli.command("other")(lambda: None)  # two commands: typer then takes the command's name
    return cli


def _invoke(fn, name):
    res = CliRunner().invoke(_cli(fn), [name])
    return res.exit_code, res.stderr


def test_an_error_of_ours_in_a_ray_task_is_one_line_naming_it(ray_session):
    import ray

    @ray.remote(max_retries=0)
    def read():
        raise PoolError("/pools/x/slices/part-0.parquet: cannot read row group 3 (truncated)")

    def cmd():
        ray.get(read.remote())

    code, err = _invoke(cmd, "cmd")
    _assert_refused(code, err, "in a Ray task: /pools/x/slices/part-0.parquet: cannot read row group 3")


def test_a_crash_in_a_ray_task_is_one_line_and_the_traceback_goes_to_a_file(ray_session):
    import ray

    @ray.remote(max_retries=0)
    def crash():
        return {}["missing"]

    def cmd():
        ray.get(crash.remote())

    code, err = _invoke(cmd, "cmd")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "in a Ray task: KeyError: 'missing'" in err
    path = err.split("full traceback: ")[1].rstrip(")\n")
    assert "KeyError" in open(path).read()


def test_a_ray_train_worker_failure_is_unwrapped_to_its_cause():
    from ray.train import WorkerGroupError

    def cmd():
        inner = PoolError("slices of different shapes [(1, 48, 40), (1, 32, 32)] in one batch: set model.image_size")
        failed = WorkerGroupError("rank 0 failed", {0: inner})
        raise RuntimeError("training round round-000 failed (storage /x)") from failed

    code, err = _invoke(cmd, "cmd")
    _assert_refused(code, err, "in a Ray Train worker: slices of different shapes")
