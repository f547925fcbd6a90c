"""benchmarks/gpu/run.py --dry-run: the GPU benchmark runs end to end on the CPU at tiny
sizes, says which parts need CUDA, and writes its JSON and Markdown."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "run.py"


def test_dry_run_runs_every_part_on_cpu_and_names_what_needs_cuda(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "decode 64x48 on the GPU (nvJPEG): needs CUDA, skipped" in result.stdout
    assert "NCCL initialisation: needs CUDA" in result.stdout
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["dry_run"] is True and data["environment"]["device"] == "cpu"
    assert [row["precision"] for row in data["train"]] == ["fp32"] and data["train"][0]["img_s"] > 0
    assert {(row["batch"], row["precision"]) for row in data["forward"]} == {(1, "fp32"), (2, "fp32")}
    assert all(row["ms_per_batch"] > 0 for row in data["forward"])
    assert data["decode"][0]["cpu_1_thread_img_s"] > 0 and data["decode"][0]["gpu_img_s"] is None
    assert data["collective"]["backend"] == "gloo" and data["collective"]["world_size"] == 1
    assert data["collective"]["first_all_reduce_s"] >= 0
    table = (tmp_path / "gpu.md").read_text()
    assert "DRY RUN" in table and "needs CUDA" in table and "2,470" in table


def test_without_cuda_and_without_dry_run_it_refuses_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stdout and "--dry-run" in result.stdout
    assert not (tmp_path / "gpu.json").exists()
