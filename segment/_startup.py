"""Hide TensorFlow's C++ start-up messages, so that a user's first screen is our own output.

Importing TensorFlow 2.21 prints absl log lines straight to file descriptor 2 (the oneDNN
notice, "Could not find cuda drivers", a cuInit error on machines without a GPU), and no
environment variable silences them all. They are written while TensorFlow loads and while it
first looks for devices, so both happen here with descriptor 2 pointed at a temporary file;
if that fails, what was captured is shown. TensorFlow's later C++ notices are left out too
(`TF_CPP_MIN_LOG_LEVEL=2`, unless set otherwise): errors still show. This is the one place
the project sets up TensorFlow's logging. `SEGMENT_TF_LOGS=1` keeps every message.

This module must not import TensorFlow itself: `segment/__init__.py` calls it first.
"""

import contextlib
import os
import sys
import tempfile

__all__ = ["tensorflow_start_up_hidden"]


@contextlib.contextmanager
def tensorflow_start_up_hidden():
    if os.environ.get("SEGMENT_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
