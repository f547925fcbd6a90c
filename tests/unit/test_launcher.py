"""The in-image launcher's exit-code rules (train.distributed._wait_all), with real
child processes standing in for workers."""

import subprocess
import sys

from train.distributed import _wait_all


def worker(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script])


def test_a_stopped_worker_leaves_its_saving_peer_alone():
    # Rank 0 still saving its checkpoint (default SIGTERM action, as in interpreter
    # shutdown) while rank 1 has already exited 143: a second SIGTERM would kill rank 0.
    saving = worker("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(1.5); sys.exit(143)")
    stopped = worker("import sys; sys.exit(143)")
    assert _wait_all([saving, stopped]) == 143
    assert saving.returncode == 143


def test_a_failed_worker_stops_the_rest_and_its_code_wins():
    hanging = worker("import time; time.sleep(60)")
    failed = worker("import sys; sys.exit(3)")
    assert _wait_all([hanging, failed], grace_s=5) == 3
    assert hanging.returncode == -15


def test_a_worker_killed_by_a_signal_reports_128_plus_it():
    killed = worker("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert _wait_all([killed]) == 137
