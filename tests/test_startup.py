"""A new user's first screen: no TensorFlow C++ start-up lines from our scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # new Python processes

ROOT = Path(__file__).resolve().parents[1]


def _stderr(*args, **env):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_CPP_MIN_LOG_LEVEL", "SEGMENT_TF_LOGS")}
    environment.update(env)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            env=environment, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_importing_the_package_and_running_a_script_print_no_start_up_lines():
    for args in (["-c", "import segment, tensorflow as tf; print(tf.constant(1.0) + 1)"],
                 ["scripts/predict.py", "--help"], ["scripts/benchmark_real.py", "--help"]):
        stderr = _stderr(*args)
        for marker in ("oneDNN", "cuda", "cuInit", "absl", "I0000", "E0000"):
            assert marker not in stderr, (args, stderr)


def test_the_messages_can_be_asked_for():
    # With the switch on, whatever TensorFlow prints at start-up reaches stderr unchanged:
    # the same text as a plain `import tensorflow` gives.
    plain = _stderr("-c", "import tensorflow as tf; tf.config.list_physical_devices()")
    asked = _stderr("-c", "import segment", SEGMENT_TF_LOGS="1")
    assert asked.count("\n") >= plain.count("\n") - 1
