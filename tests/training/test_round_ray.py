"""Training rounds on Ray Train (CPU, gloo): learning with 2 workers, continuing across rounds,
a worker killed mid-round, a driver killed mid-round. Tiny: plain U-Net, 32 px blob pool."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from paal_ray.config import load_config
from paal_ray.data.pool import Pool
from paal_ray.models import load_model_bundle
from paal_ray.training import RoundSpec, train_round

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # Ray Train runs: ~25 s each on 2 cores, before any epoch


def _spec(pool: Path, tmp: Path, name: str, *overrides: str, **kw) -> RoundSpec:
    cfg = load_config("cpu", [f"pool={pool}", "model.image_size=32", "train.batch_size=16",
                              "train.samples_per_epoch=64", "train.warmup_epochs=1", "train.ap_silent_epochs=1",
                              "schedule.mode=fixed", "schedule.fixed_warmup=3", *overrides])
    ids = Pool.open(pool).slice_ids()
    fields = {"pool_path": str(pool), "train_ids": ids[:32], "val_ids": ids[32:], "phase": "query",
              "storage_path": str(tmp / "train"), "name": name, "config": cfg, "in_channels": 1, "num_classes": 3,
              "seed": 0}
    fields.update(kw)
    return RoundSpec(**fields)


def _state(folder: str) -> dict:
    return torch.load(Path(folder) / "train_state.pt", map_location="cpu", weights_only=False)


def test_two_workers_learn_survive_a_killed_worker_and_the_final_phase_continues_on_its_own_budget(
        ray_session, blob_pool, tmp_path):
    """Round 0 (LPL's extension, 2 workers) loses rank 1 after its epoch-3 report: the worker group is
    restarted and the round finishes from its checkpoint. It ends once the run reaches
    schedule.max_epochs (before its query trigger); the final phase still trains its own epochs on
    the same cosine (it once stopped after one epoch there)."""
    # Rank 1 dies after its epoch-3 report. DDP keeps the ranks in step, so rank 0 is then past its
    # epoch-2 report, which (one-slot result queue) means the controller took both epoch-1 reports:
    # checkpoint 1 at least is registered. (Dying after epoch 2 races with that bookkeeping.)
    spec = _spec(blob_pool, tmp_path, "round-000", "scaling.num_workers=2", "train.samples_per_epoch=128",
                 "schedule.fixed_warmup=10", "schedule.max_epochs=6", "scaling.max_failures=1",
                 extension="lpl", fault_injection={"kill_rank": 1, "at_epoch": 3})
    r = train_round(spec)
    assert (Path(spec.storage_path) / spec.name / ".fault-injected-rank1-epoch3").exists()
    starts = _state(r.checkpoint)["starts"]
    assert [s["source"] for s in starts] == ["fresh", "resumed"]
    assert starts[1]["global_epoch"] >= 1  # resumed from a checkpoint, not from scratch
    assert "lpl" in load_model_bundle(r.checkpoint).extensions
    dice = [e["val_dice"] for e in r.epochs]
    assert r.stopped_by == "max_epochs" and r.global_epoch == 6 and len(dice) == 6
    assert [e["global_epoch"] for e in r.epochs] == [1, 2, 3, 4, 5, 6]  # the restart neither repeats nor skips
    assert max(dice[-2:]) > dice[0] + 0.15, dice
    assert {"lr", "train_loss", "ap_loss", "val_dice_per_class", "val_ap_mae"} <= set(r.epochs[0])
    assert r.epochs[0]["ap_loss"] is None and r.epochs[1]["ap_loss"] is not None  # AP silent in epoch 1
    assert load_model_bundle(r.checkpoint).meta["global_epoch"] == 6
    assert Path(r.checkpoint).parent == Path(spec.storage_path) / "round-000"

    final = _spec(blob_pool, tmp_path, "final", "scaling.num_workers=2", "schedule.max_epochs=6",
                  "schedule.max_final_epochs=2", phase="final", init_checkpoint=r.checkpoint, seed=1,
                  extension="lpl")
    f = train_round(final)
    assert [e["global_epoch"] for e in f.epochs] == [7, 8] and f.global_epoch == 8
    assert f.stopped_by == "max_epochs" and f.best_score >= r.best_score
    assert f.epochs[0]["lr"] < r.epochs[-1]["lr"]  # one cosine schedule across rounds
    assert f.best_checkpoint and (Path(f.best_checkpoint) / "model.pt").is_file()
    assert _state(f.checkpoint)["round_index"] == 1


_DRIVER = """
import pickle, sys
from paal_ray.training import train_round
spec = pickle.load(open(sys.argv[1], "rb"))
train_round(spec)
"""


def test_a_rerun_driver_resumes_a_killed_round(ray_session, blob_pool, tmp_path):
    ids = Pool.open(blob_pool).slice_ids()
    spec = _spec(blob_pool, tmp_path, "round-001", "schedule.fixed_warmup=5", extension="ceal",
                 pseudo_ids=ids[40:44])
    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(spec))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path / "spec.pkl")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = Path(spec.storage_path) / spec.name
    try:
        deadline = time.time() + 240
        # checkpoint_000003 being written means epoch 1's report was consumed by the controller (its
        # result queue holds one): at least that checkpoint is registered when the driver dies.
        while not (run_dir / "checkpoint_000003").is_dir():
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert time.time() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    r = train_round(spec)
    starts = _state(r.checkpoint)["starts"]
    assert starts[0]["source"] == "fresh" and starts[-1]["source"] == "resumed"
    assert starts[-1]["global_epoch"] >= 1  # continued, not restarted at 0
    assert [e["global_epoch"] for e in r.epochs] == [1, 2, 3, 4, 5] and r.global_epoch == 5
    again = train_round(spec)  # the round had ended: same result, nothing retrained
    assert again.checkpoint == r.checkpoint and again.epochs == r.epochs


def test_bad_specs_fail_before_any_worker_starts(tmp_path, blob_pool):
    with pytest.raises(ValueError, match="storage_path"):
        train_round(_spec(blob_pool, tmp_path, "x", storage_path="relative/dir"))
    with pytest.raises(ValueError, match="unknown training extension"):
        train_round(_spec(blob_pool, tmp_path, "x", extension="nope"))
    with pytest.raises(ValueError, match="train_ids"):
        train_round(_spec(blob_pool, tmp_path, "x", train_ids=[]))


def test_a_fixed_final_phase_from_scratch_runs_its_own_schedule(ray_session, blob_pool, tmp_path):
    """A fixed-length final phase from scratch runs exactly final_epochs on an LR schedule of its
    own, whatever the query rounds used (here the run's max_epochs is already spent)."""
    sets = ("schedule.mode=iq", "schedule.iq_patience=50", "schedule.max_epochs=2", "schedule.early_stop_patience=2")
    fixed = _spec(blob_pool, tmp_path, "final-scratch", *sets, "schedule.final_epochs=3", "schedule.final_init=scratch",
                  "schedule.final_warmup_epochs=1", "schedule.final_val_every=2", phase="final", seed=2)
    s = train_round(fixed)
    lr0 = fixed.config.train.lr
    assert [e["global_epoch"] for e in s.epochs] == [1, 2, 3] and s.stopped_by == "final_epochs"
    # validated every 2nd epoch and at the last: the last epoch's Dice is the final model's
    assert [e["val_dice"] is not None for e in s.epochs] == [False, True, True]
    assert s.best_score == max(s.epochs[1]["val_dice"], s.epochs[2]["val_dice"])
    assert _state(s.checkpoint)["starts"][0]["source"] == "fresh"
    assert s.epochs[0]["lr"] < lr0 and s.epochs[1]["lr"] > 0.5 * lr0  # its own warm-up, then the cosine
    assert s.epochs[-1]["lr"] < 0.05 * lr0  # annealed to its minimum by the last epoch
