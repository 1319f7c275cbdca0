"""`train.py --strategy multiworker` with real worker processes on 127.0.0.1.

Two workers, each told its place by `TF_CONFIG`, train a tiny network for a few steps. The
result must equal a single process's run with the same global batch (so each worker read its
own half of every batch: duplicated samples would give other gradients), only the chief may
write, and killing a worker mid-epoch then starting both again with the same command must end
with the same weights as an uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from segment.inference import load_segmenter

pytestmark = pytest.mark.slow  # real worker processes

TRAIN = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
TINY = [
    "--epochs", "3", "--steps-per-epoch", "4", "--batch-size", "4", "--size", "32",
    "--depth", "2", "--base-filters", "4", "--val-count", "2", "--float32", "--lr", "0.05",
]  # fmt: skip
# A small rate: at the default 0.5 the few ulps by which an all-reduced gradient differs from a
# one-batch gradient grow step by step (2e-4 after 12 steps), hiding what the test is about.
DEADLINE = 90  # seconds any one run may take before the test gives up on it


def _free_ports(count):
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class Cluster:
    """Worker processes of one `train.py --strategy multiworker` run, always cleaned up."""

    def __init__(self, root, out, workers=2):
        self.root, self.out, self.workers = Path(root), Path(out), workers
        self.processes = []

    def start(self, attempt):
        addresses = [f"127.0.0.1:{port}" for port in _free_ports(self.workers)]
        for index in range(self.workers):
            # Each worker gets its own empty working and temporary folders, to show that it
            # writes nowhere (the run folder, written by the chief, is checked by the test).
            home = self.root / f"attempt{attempt}-worker{index}"
            (home / "tmp").mkdir(parents=True)
            env = {
                **os.environ,
                "TMPDIR": str(home / "tmp"),
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
                ),
            }
            command = [sys.executable, str(TRAIN), *TINY, "--strategy", "multiworker",
                       "--out", str(self.out)]  # fmt: skip
            log = open(home / "log.txt", "w")  # noqa: SIM115 (closed with the process)
            process = subprocess.Popen(
                command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            process.log, process.home = log, home
            self.processes.append(process)
        return self.processes[-self.workers:]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            process.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _wait(processes, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a worker did not finish in {timeout} s:\n{_log(process)}")
    return [process.returncode for process in processes]


def _log(process):
    process.log.flush()
    return (process.home / "log.txt").read_text()[-3000:]


def _weights(run):
    return np.concatenate([w.ravel() for w in load_segmenter(Path(run) / "model.keras").get_weights()])


def _relative_difference(a, b):
    difference = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"relative difference {difference:.2e}")
    return difference


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    subprocess.run(
        [sys.executable, str(TRAIN), *TINY, "--out", str(out)],
        check=True, capture_output=True, timeout=DEADLINE,
    )  # fmt: skip
    return out


def test_two_workers_train_like_one_process_and_only_the_chief_writes(tmp_path, single_run):
    out = tmp_path / "run"
    with Cluster(tmp_path, out) as cluster:
        chief, worker = cluster.start(attempt=0)
        codes = _wait([chief, worker])
        assert codes == [0, 0], _log(chief) + _log(worker)
        assert "worker done" in _log(worker)

    assert _relative_difference(_weights(out), _weights(single_run)) < 1e-5
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_run.iterdir())
    # One writer: the history has one row per epoch, as the single run's.
    assert (out / "history.csv").read_text().count("\n") == 4
    for process in (chief, worker):  # nothing left in either worker's own folders
        assert not any((process.home / "tmp").iterdir())
        assert sorted(p.name for p in process.home.iterdir()) == ["log.txt", "tmp"]


def test_a_killed_worker_is_resumed_by_the_same_command(tmp_path, single_run):
    out = tmp_path / "run"
    with Cluster(tmp_path, out) as cluster:
        chief, worker = cluster.start(attempt=0)
        backup = out / "backup" / "training_metadata.json"
        deadline = time.monotonic() + DEADLINE
        while not backup.exists():  # the first epoch is done and backed up
            assert chief.poll() is None and worker.poll() is None, _log(chief) + _log(worker)
            assert time.monotonic() < deadline, "no backup written:\n" + _log(chief)
            time.sleep(0.01)
        os.killpg(worker.pid, signal.SIGKILL)
        # The chief notices within seconds and stops with one line saying what to do.
        assert _wait([chief], timeout=60) == [2]
        assert "start every worker again with the same command" in _log(chief)
        assert not (out / "metrics.json").exists()

        chief, worker = cluster.start(attempt=1)
        codes = _wait([chief, worker])
        assert codes == [0, 0], _log(chief) + _log(worker)

    assert _relative_difference(_weights(out), _weights(single_run)) < 1e-5
    assert not (out / "backup").exists()
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]
