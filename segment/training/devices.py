"""Where training runs: `tf.distribute` strategies across devices and machines, the chief
worker, lost workers, and mixed precision where the hardware computes it natively."""

import contextlib
import os
import re
from pathlib import Path

import keras
import tensorflow as tf

from segment.model import spans_workers


def make_strategy(name):
    """The `tf.distribute` strategy called `name`: default, mirrored or multiworker."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


# How a collective operation ends when another worker has gone away.
LOST_PEER = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


def is_chief(strategy):
    """Whether this process writes the run folder: the only process, the `chief` task, or
    worker 0 of a cluster without one (TF_CONFIG)."""
    if not spans_workers(strategy):
        return True
    resolver = strategy.cluster_resolver
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def lost_worker(error):
    """The error a run gives when a collective operation ended because a worker went away."""
    reason = re.sub(r"\{\{.*?\}\}\s*", "", str(error.message)).strip().splitlines()[0]
    return RuntimeError(
        f"lost another worker ({reason}); start every worker again with the same command to "
        "continue from the last completed epoch"
    )


@contextlib.contextmanager
def precision(mixed):
    """Keras's global dtype policy set to mixed precision (`mixed`) or left as it is, then
    restored: bfloat16 on a CPU, float16 on a GPU."""
    previous = keras.mixed_precision.global_policy()
    if mixed:
        gpu = tf.config.list_physical_devices("GPU")
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def usable_cores():
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def native_half_precision():
    """Whether this machine computes half precision natively: a GPU, or a CPU whose flags
    (Linux /proc/cpuinfo) show bfloat16 instructions (AVX512-BF16, AMX, Arm BF16). Elsewhere
    bfloat16 is emulated and slower than float32."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    flags = set(match.group(1).split()) if match else set()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
