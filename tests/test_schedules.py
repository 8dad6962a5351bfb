"""Schedules: teacher forcing closed form vs the lab's loop, KL weights vs Fu et al.'s frange_cycle_linear."""

import math

import numpy as np

import pytest

from toolkit.config import ScheduleConfig
from toolkit.errors import ConfigError
from toolkit.train.schedules import kl_weight, schedule_values, teacher_forcing_ratio


def frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. 2019 (github.com/haofuml/cyclical_annealing), copied as the reference."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)  # linear schedule

    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and (int(i + c * period) < n_iter):
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


def test_tfr_formula_points():
    args = dict(tfr=1.0, start_decay_epoch=10, decay_step=0.1, lower_bound=0.3)
    assert teacher_forcing_ratio(0, **args) == 1.0
    assert teacher_forcing_ratio(10, **args) == 1.0  # the first decrease happens at the end of epoch 10
    assert teacher_forcing_ratio(11, **args) == pytest.approx(0.9)
    assert teacher_forcing_ratio(15, **args) == pytest.approx(0.5)
    assert teacher_forcing_ratio(17, **args) == pytest.approx(0.3)
    assert teacher_forcing_ratio(18, **args) == pytest.approx(0.3)  # lower bound reached
    assert teacher_forcing_ratio(300, **args) == pytest.approx(0.3)
    assert teacher_forcing_ratio(50, 0.2, 0, 0.1, 0.3) == 0.2  # starts below the bound: kept


@pytest.mark.parametrize("tfr,start,step,lower", [(1.0, 10, 0.1, 0.0), (1.0, 0, 0.03, 0.25), (0.8, 5, 0.0, 0.0),
                                                  (0.5, 49, 0.2, 0.1), (0.9, 3, 0.07, 0.5)])
def test_tfr_matches_lab_loop(tfr, start, step, lower):
    current = tfr
    for epoch in range(50):
        assert teacher_forcing_ratio(epoch, tfr, start, step, lower) == pytest.approx(current, abs=1e-12)
        # the lab's end-of-epoch update
        if epoch >= start:
            current = max(lower, current - step)


def test_kl_weight_cycle_points():
    # total 100, 4 cycles -> period 25, ratio 0.4 -> ramp over 10 steps
    w = lambda t: kl_weight(t, 100, "cyclical", 4, 0.4)  # noqa: E731
    assert w(0) == 0.0
    assert w(5) == pytest.approx(0.5)
    assert w(10) == 1.0
    assert w(17) == 1.0
    assert w(24) == 1.0
    assert w(25) == 0.0  # first step of the next cycle
    assert w(26) == pytest.approx(0.1)
    assert w(99) == 1.0


@pytest.mark.parametrize("n_iter,n_cycle,ratio", [(100, 4, 0.5), (300, 3, 0.5), (60, 6, 0.25), (40, 1, 1.0),
                                                  (90, 3, 0.7)])
def test_kl_weight_equals_frange_cycle_linear(n_iter, n_cycle, ratio):
    ref = frange_cycle_linear(n_iter, 0.0, 1.0, n_cycle, ratio)
    ours = np.array([kl_weight(t, n_iter, "cyclical", n_cycle, ratio) for t in range(n_iter)])
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_monotonic_and_none():
    assert kl_weight(0, 300, "monotonic", 3, 0.5) == 0.0
    assert kl_weight(75, 300, "monotonic", 3, 0.5) == pytest.approx(0.5)
    assert kl_weight(150, 300, "monotonic", 3, 0.5) == 1.0  # reaches 1 at ratio * total
    assert all(kl_weight(t, 300, "monotonic", 3, 0.5) == 1.0 for t in range(150, 400))
    assert kl_weight(0, 300, "none", 3, 0.5) == 1.0
    with pytest.raises(ConfigError):
        kl_weight(0, 300, "linear", 3, 0.5)


def test_schedule_values_epoch_and_step_granularity():
    cfg = ScheduleConfig(tfr=1.0, tfr_start_decay_epoch=1, tfr_decay_step=0.25, tfr_lower_bound=0.0,
                         kl_anneal="cyclical", kl_anneal_cycle=2, kl_anneal_ratio=0.5, beta=1e-4)
    # per epoch: 10 epochs, 2 cycles -> period 5 epochs, ramp over 2.5 epochs
    tfr, beta = schedule_values(cfg, epoch=3, step_in_epoch=7, steps_per_epoch=10, epochs=10)
    assert tfr == pytest.approx(0.5)
    assert beta == pytest.approx(1e-4)  # epoch 3: 3 / 2.5 > 1, top of the ramp
    assert schedule_values(cfg, 1, 9, 10, 10)[1] == pytest.approx(1e-4 * 1 / 2.5)  # constant within the epoch
    assert schedule_values(cfg, 1, 0, 10, 10)[1] == pytest.approx(1e-4 * 1 / 2.5)
    # per step: t = 1 * 10 + 5 = 15 of 100; period 50 steps, ramp over 25 steps -> 15 / 25
    cfg.kl_per_step = True
    assert schedule_values(cfg, 1, 5, 10, 10)[1] == pytest.approx(1e-4 * 15 / 25)
    assert schedule_values(cfg, 5, 0, 10, 10)[1] == 0.0  # step 50: second cycle starts
    assert schedule_values(cfg, 4, 9, 10, 10)[1] == pytest.approx(1e-4)
    ref = frange_cycle_linear(100, 0.0, 1.0, 2, 0.5) * 1e-4
    ours = [schedule_values(cfg, s // 10, s % 10, 10, 10)[1] for s in range(100)]
    np.testing.assert_allclose(ours, ref, atol=1e-15)


def test_learning_rate_warm_up_then_cosine():
    from toolkit.config import OptimConfig
    from toolkit.train.schedules import learning_rate

    constant = OptimConfig(lr=0.004)
    assert [learning_rate(constant, k, 10) for k in (0, 5, 9)] == [0.004] * 3
    cfg = OptimConfig(lr=1.0, lr_schedule="cosine", lr_final=0.1, warmup_steps=2)
    rates = [learning_rate(cfg, k, 10) for k in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0] and rates[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates[2:], rates[3:]))  # falls monotonically after the warm-up
    assert rates[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))
