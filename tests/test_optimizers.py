"""StepHalvingSGD against stock SGD with a staircase schedule, and against hand arithmetic."""

import keras
import numpy as np
import pytest

from segment.optimizers import StepHalvingSGD


def _run(optimizer, gradients):
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], dtype="float32"))
    for gradient in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    return np.asarray(variable)


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_sgd_with_staircase_exponential_decay(nesterov):
    # 11 steps with halve_every=3: the rate halves at steps 3, 6 and 9.
    gradients = np.random.default_rng(0).normal(size=(11, 3)).astype("float32")
    ours = StepHalvingSGD(learning_rate=0.1, momentum=0.9, halve_every=3, nesterov=nesterov)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 3, 0.5, staircase=True)
    stock = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov)
    np.testing.assert_allclose(_run(ours, gradients), _run(stock, gradients), rtol=1e-6)


def test_halvings_stop_at_their_limit_as_a_piecewise_constant_schedule():
    # 11 steps, halving every 3, at most twice: the rate halves at steps 3 and 6, not at 9.
    gradients = np.random.default_rng(1).normal(size=(11, 3)).astype("float32")
    ours = StepHalvingSGD(learning_rate=0.1, momentum=0.9, halve_every=3, halvings=2)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.025])
    stock = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    np.testing.assert_allclose(_run(ours, gradients), _run(stock, gradients), rtol=1e-6)
    assert float(ours.halving_factor(100)) == 0.25


def test_steps_by_hand():
    # w=1, g=0.5, momentum 0.9, lr 0.1 halving every step:
    # step 0: lr 0.1,  v = -0.05,                    w = 0.95
    # step 1: lr 0.05, v = 0.9*-0.05 - 0.05*0.5 = -0.07, w = 0.88
    # step 2: lr 0.025, v = 0.9*-0.07 - 0.025*0.5 = -0.0755, w = 0.8045
    optimizer = StepHalvingSGD(learning_rate=0.1, momentum=0.9, halve_every=1)
    variable = keras.Variable([1.0])
    for expected in (0.95, 0.88, 0.8045):
        optimizer.apply([keras.ops.convert_to_tensor([0.5])], [variable])
        np.testing.assert_allclose(np.asarray(variable), [expected], rtol=1e-6)
    np.testing.assert_allclose(float(optimizer.halving_factor()), 0.125)


def test_config_round_trip():
    optimizer = StepHalvingSGD(learning_rate=0.05, momentum=0.8, halve_every=7, nesterov=True,
                               halvings=3)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, StepHalvingSGD)
    assert (restored.momentum, restored.halve_every, restored.nesterov, restored.halvings) == (
        0.8, 7, True, 3)
    assert float(restored.learning_rate) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs", [{"momentum": 1.5}, {"halve_every": 0}, {"halve_every": 2.5}, {"halvings": -1},
               {"halvings": 1.5}]
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        StepHalvingSGD(**kwargs)
