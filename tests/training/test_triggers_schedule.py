"""Round-ending triggers on scripted validation curves, the global LR schedule, AdamW groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paal_ray.config import ScheduleConfig
from paal_ray.training import EarlyStopping, FixedIntervalTrigger, IQTrigger, query_trigger
from paal_ray.training.schedule import lr_at, param_groups


def _fires(trigger, curve):
    return [i + 1 for i, s in enumerate(curve) if trigger.update(s)]


def test_iq_fires_after_patience_epochs_without_improvement_above_min_delta():
    t = IQTrigger(patience=3, min_delta=1e-3)
    # rises to 0.5 (epoch 3), then only sub-delta gains: epochs 4, 5, 6 count -> fire at 6
    curve = [0.1, 0.3, 0.5, 0.5005, 0.4, 0.5009]
    assert _fires(t, curve) == [6]
    assert t.best == 0.5 and t.counter == 0  # the counter resets, the best score stays


def test_iq_best_is_never_reset_after_a_query():
    t = IQTrigger(patience=2, min_delta=1e-3)
    assert _fires(t, [0.6, 0.5, 0.5]) == [3]
    # after the query the model dips (new data); only beating 0.6 + delta resets the counter
    assert _fires(t, [0.55, 0.58]) == [2]
    assert _fires(t, [0.62, 0.61, 0.63]) == []
    assert t.best == 0.63


def test_iq_state_round_trip_continues_identically():
    a = IQTrigger(patience=3)
    _fires(a, [0.2, 0.3, 0.3])
    b = IQTrigger(patience=3)
    b.load_state_dict(a.state_dict())
    assert _fires(a, [0.3, 0.3, 0.3, 0.3]) == _fires(b, [0.3, 0.3, 0.3, 0.3]) == [2]


def test_iq_does_not_count_the_lr_warm_up_and_remembers_it_across_rounds():
    flat = [0.002] * 6  # a model still predicting background only
    assert _fires(IQTrigger(patience=2), flat) == [3, 5]
    t = IQTrigger(patience=2, warmup=3)
    assert _fires(t, flat[:3]) == []  # warm-up: neither counted nor taken as the best score
    assert t.best == float("-inf") and t.counter == 0
    u = IQTrigger(patience=2, warmup=3)
    u.load_state_dict(t.state_dict())  # the next round knows the warm-up is over
    assert _fires(u, flat[3:]) == [3]  # epoch 4 sets the best; 5 and 6 do not beat it


def test_fixed_interval_fires_after_warmup_then_every_interval_across_rounds():
    t = FixedIntervalTrigger(warmup=10, interval=5)
    assert _fires(t, [0.5] * 10) == [10]
    u = FixedIntervalTrigger(warmup=10, interval=5)
    u.load_state_dict(t.state_dict())  # the next round continues the run's epoch count
    assert _fires(u, [0.1] * 11) == [5, 10]


def test_early_stopping_patience_and_improvement():
    t = EarlyStopping(patience=3)
    assert t.improved(0.1)
    assert _fires(t, [0.1, 0.2, 0.2, 0.19, 0.3, 0.3, 0.3]) == []
    assert t.update(0.25) and t.best == 0.3


def test_query_trigger_follows_schedule_mode():
    iq = query_trigger(ScheduleConfig(mode="iq"), warmup_epochs=4)
    assert isinstance(iq, IQTrigger) and iq.warmup == 4
    fixed = query_trigger(ScheduleConfig(mode="fixed", fixed_warmup=2, fixed_interval=3))
    assert isinstance(fixed, FixedIntervalTrigger) and _fires(fixed, [0.0] * 6) == [2, 5]


def test_lr_schedule_warmup_cosine_floor():
    kw = {"warmup_epochs": 10, "schedule_epochs": 400, "min_lr": 1e-6}
    assert lr_at(0, 1e-3, **kw) < 1e-6 < lr_at(0.5, 1e-3, **kw) < lr_at(5, 1e-3, **kw) == pytest.approx(5e-4, rel=1e-3)
    assert lr_at(10, 1e-3, **kw) == pytest.approx(1e-3)
    assert lr_at(205, 1e-3, **kw) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-6)
    assert lr_at(400, 1e-3, **kw) == pytest.approx(1e-6) == lr_at(900, 1e-3, **kw)
    lrs = [lr_at(e, 1e-3, **kw) for e in range(10, 401)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_no_weight_decay_on_biases_and_norm_weights():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias
    opt = torch.optim.AdamW([decay, no_decay], lr=1e-3)
    assert len(opt.param_groups) == 2
