"""A custom optimizer: momentum SGD that halves its learning rate every N steps."""

import keras
from keras import ops

__all__ = ["StepHalvingSGD"]


@keras.saving.register_keras_serializable(package="segment")
class StepHalvingSGD(keras.optimizers.Optimizer):
    """Momentum SGD whose learning rate halves every `halve_every` steps.

    The article's point: to converge fully with SGD you train at 0.01 for a while, halve the
    rate, train again, and so on; writing that into the optimizer saves stopping `fit`,
    changing the rate and compiling again. The rate at step `t` (`t = optimizer.iterations`,
    counted before the update) is

    ```
    lr_t = learning_rate * 0.5 ** floor(t / halve_every)
    velocity = momentum * velocity - lr_t * g
    w = w + velocity                                 # nesterov=False
    w = w + momentum * velocity - lr_t * g           # nesterov=True
    ```

    which is exactly `keras.optimizers.SGD(ExponentialDecay(learning_rate, halve_every, 0.5,
    staircase=True), momentum, nesterov)`; with `halvings` given, the exponent stops there
    (a `PiecewiseConstantDecay`).

    Args:
        learning_rate: float, the initial rate. Defaults to `0.01`.
        momentum: float in [0, 1]. Defaults to `0.9`.
        halve_every: positive int, the number of steps between halvings. Defaults to `1000`.
        halvings: the most halvings, or `None` (the default) for no limit.
        nesterov: whether to use Nesterov momentum. Defaults to `False`.
        **kwargs: base optimizer keyword arguments (`weight_decay`, `clipnorm`,
            `loss_scale_factor`, `name`, ...).
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.9, halve_every=1000, nesterov=False, halvings=None,
        **kwargs
    ):
        if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "StepHalvingSGD is its own schedule; pass a float learning_rate, got "
                f"{learning_rate!r}"
            )
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if int(halve_every) != halve_every or halve_every < 1:
            raise ValueError(f"halve_every must be a positive integer, got {halve_every}")
        if halvings is not None and (int(halvings) != halvings or halvings < 0):
            raise ValueError(f"halvings must be None or an integer of at least 0, got {halvings}")
        self.momentum = float(momentum)
        self.halve_every = int(halve_every)
        self.nesterov = bool(nesterov)
        self.halvings = None if halvings is None else int(halvings)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def halving_factor(self, step=None):
        """`0.5 ** floor(step / halve_every)` (at most `0.5 ** halvings`), for the current
        step by default."""
        step = self.iterations if step is None else step
        halvings = ops.floor_divide(ops.cast(step, "float32"), float(self.halve_every))
        if self.halvings is not None:
            halvings = ops.minimum(halvings, float(self.halvings))
        return ops.power(0.5, halvings)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate * self.halving_factor(), variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        velocity = self.velocities[self._get_variable_index(variable)]
        step = ops.multiply(gradient, learning_rate)
        self.assign(velocity, ops.subtract(ops.multiply(velocity, momentum), step))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(velocity, momentum), step))
        else:
            self.assign_add(variable, velocity)

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "halve_every": self.halve_every,
            "nesterov": self.nesterov,
            "halvings": self.halvings,
        }
