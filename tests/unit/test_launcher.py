"""The launcher's rules (train.launcher.launch: PyTorch's elastic agent, torchrun's
engine), with real child processes standing in for workers: stops, failures, the
root cause and its error message, exit codes, and max_restarts."""

import os
import signal
import time

import pytest

from container import EXIT_STOPPED
from tests.support.net import free_port
from train.launcher import Topology, launch


@pytest.fixture(autouse=True)
def own_environment():
    # launch() sets worker defaults (OMP_NUM_THREADS, ...) in the environment it hands down.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run(script: str, nproc: int = 2, max_restarts: int = 0):
    """Launch `python -c script` as nproc workers on this host."""
    topology = Topology(nnodes=1, node_rank=0, nproc_per_node=nproc, master_addr="127.0.0.1", master_port=free_port(), host_name="here")
    return launch(topology, ["-c", script], max_restarts=max_restarts, timeout_s=60)


def test_a_stopped_worker_leaves_its_saving_peer_alone(tmp_path):
    # Rank 1 has stopped (143) while rank 0 is still saving its checkpoint: the agent
    # signals it, and it must be allowed to finish, not be killed.
    saved = tmp_path / "saved"
    script = f"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: None)  # the trainer's handler: finish, then stop
if os.environ["RANK"] == "0":
    time.sleep(2)
    open({str(saved)!r}, "w").close()
sys.exit(143)
"""
    result = run(script)
    assert (result.exit_code, result.stopped, result.failure) == (EXIT_STOPPED, True, None)
    assert saved.exists()


def test_a_failed_worker_stops_the_rest_and_its_code_and_error_win():
    script = """
import os, sys, time
from torch.distributed.elastic.multiprocessing.errors import get_error_handler
if os.environ["RANK"] == "0":
    time.sleep(60)
try:
    raise ValueError("bad batch")
except ValueError as err:
    get_error_handler().record_exception(err)  # what train.cli's worker does
sys.exit(3)
"""
    started = time.monotonic()
    result = run(script)
    assert time.monotonic() - started < 40, "the hanging peer was not stopped"
    assert (result.exit_code, result.stopped) == (3, False)
    assert result.failure == "rank 1 on host here failed with exit code 3: ValueError: bad batch"


def test_a_worker_killed_by_a_signal_reports_128_plus_it():
    result = run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", nproc=1)
    assert result.exit_code == 128 + signal.SIGKILL
    assert "rank 0 on host here failed with exit code 137: Signal 9 (SIGKILL)" in result.failure


def test_max_restarts_restarts_a_failed_group(tmp_path):
    # Fails on the first attempt only, as a transient fault would.
    script = """
import os, sys
sys.exit(1 if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" else 0)
"""
    assert run(script, max_restarts=0).exit_code == 1
    assert run(script, max_restarts=1).exit_code == 0


def test_a_stop_is_not_restarted(tmp_path):
    attempts = tmp_path / "attempts"
    script = f"""
import os, sys
with open({str(attempts)!r}, "a") as f:
    f.write(os.environ["TORCHELASTIC_RESTART_COUNT"] + os.linesep)
sys.exit(143)
"""
    result = run(script, nproc=1, max_restarts=2)
    assert (result.exit_code, result.stopped) == (EXIT_STOPPED, True)
    assert attempts.read_text().split() == ["0"]
