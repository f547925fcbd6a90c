"""Not root where it need not be (issue 22), through the real image: `serve` runs as
the unprivileged model-server user with no capabilities, and so do the user's hooks
and the `pip install -r code/requirements.txt` at model load; other commands (train,
processing) stay root as SageMaker's mounts need; no setuid or setgid binary is left."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import requests

from tests.support.containers import host_port, mount, opt_ml, wait_exit, wait_ping

DATA = Path(__file__).parent / "data"
WHEEL = "inflection-0.5.1-py2.py3-none-any.whl"  # a tiny pure-Python PyPI package, vendored: no index at test time

# model_fn and predict_fn only: the default input_fn reads JSON, output_fn writes it.
INFERENCE = r"""
import os
import inflection  # installed from code/requirements.txt when the model loads
import torch

def model_fn(model_dir):
    return torch.nn.Identity()

def predict_fn(data, model):
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "home": os.environ.get("HOME"),
        "word": inflection.underscore("ModelServer"),
        "module": inflection.__file__,
        "sum": float(model(data).sum()),
    }
"""


def user_model(root: Path) -> Path:
    code = root / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(INFERENCE)
    shutil.copy(DATA / WHEEL, code / WHEEL)
    (code / "requirements.txt").write_text("--no-index\n--find-links .\ninflection==0.5.1\n")
    for path in [root / "model", code, *code.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return code


def serve(containers, image, root: Path, environment: dict | None = None):
    container = containers.run(image, ["serve"], volumes=mount(root), environment=environment or {}, ports={"8080/tcp": None})
    base = f"http://127.0.0.1:{host_port(container)}"
    wait_ping(base, container, timeout=300)  # the requirements install comes first
    return container, base


def predict(base: str) -> dict:
    response = requests.post(base + "/invocations", json=[[1, 2], [3, 4]], timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def status_fields(container, pid: int = 1) -> dict[str, str]:
    code, output = container.exec_run(["cat", f"/proc/{pid}/status"])
    assert code == 0, output
    return dict(line.split(":\t", 1) for line in output.decode().splitlines() if ":\t" in line)


def test_no_setuid_or_setgid_binaries_remain(containers, image):
    container = containers.run(image, ["find", "/", "-xdev", "-perm", "/6000", "-type", "f"])
    code, logs = wait_exit(container, timeout=300)
    assert code == 0 and logs.strip() == "", logs


def test_serve_hooks_and_requirements_run_unprivileged(containers, image, tmp_path):
    root = opt_ml(tmp_path)
    user_model(root)
    container, base = serve(containers, image, root)
    answer = predict(base)
    assert answer["uid"] == answer["euid"] == 1000 and answer["home"] == "/home/model-server", answer
    assert answer["word"] == "model_server" and answer["sum"] == 10.0
    assert answer["module"].startswith("/home/model-server/.local/"), answer  # pip installed it as the user
    server = status_fields(container)
    assert server["Uid"].split() == ["1000"] * 4 and server["Gid"].split() == ["1000"] * 4, server
    assert int(server["CapEff"], 16) == 0 and int(server["CapPrm"], 16) == 0, server
    assert server["NoNewPrivs"].strip() == "1", server
    logs = container.logs().decode(errors="replace")
    assert "serving as root" not in logs
    container.kill(signal="SIGTERM")
    assert wait_exit(container, timeout=60)[0] == 0


def test_other_commands_stay_root(containers, image):
    container = containers.run(image, ["python", "-c", "import os; print(os.getuid(), os.geteuid())"])
    code, logs = wait_exit(container, timeout=120)
    assert code == 0 and logs.split() == ["0", "0"], logs


def test_serve_user_root_keeps_root(containers, image, tmp_path):
    root = opt_ml(tmp_path)
    user_model(root)
    container, base = serve(containers, image, root, {"SM_VISION_SERVE_USER": "root"})
    assert predict(base)["uid"] == 0


def test_a_model_only_root_can_read_is_served_as_root_with_a_warning(containers, image, tmp_path):
    """SageMaker only guarantees root can read what it downloads: a file the serve user
    cannot read keeps serve root (and the log says why) unless the user was named."""
    root = opt_ml(tmp_path)
    code = user_model(root)
    os.chmod(code / "inference.py", 0o000)  # unreadable to every user but root (CAP_DAC_OVERRIDE)
    container, base = serve(containers, image, root)
    assert predict(base)["uid"] == 0
    assert "holds files model-server cannot read; serving as root" in container.logs().decode(errors="replace")
