"""The bin-counting workflow through the real image: metadata JSONs -> prepare-bins ->
ImageFolder split -> train -> metrics and plots."""

import json

from tests.support.containers import mount, opt_ml, wait_exit
from train import synthetic


def test_prepare_then_train_on_bin_style_data(image, containers, tmp_path):
    root = opt_ml(tmp_path)
    raw = root / "input/data/raw"
    synthetic.make_bins(raw, count=150, size=64, seed=0)
    (raw / "metadata/00000.json").write_text("{broken")  # counted and reported, not fatal
    (raw / "metadata/00001.json").unlink()
    script = (
        "train prepare-bins --images /opt/ml/input/data/raw/images --metadata /opt/ml/input/data/raw/metadata "
        "--out /opt/ml/input/data/training --seed 0 && "
        "train --epochs 3 --image-size 64 --batch-size 16 --lr 0.003 --log-interval 100"
    )
    container = containers.run(image, ["bash", "-c", script], volumes=mount(root))
    code, logs = wait_exit(container, timeout=600)
    assert code == 0, logs
    training = root / "input/data/training"
    assert sorted(p.name for p in training.iterdir()) == ["test", "train", "valid"]
    assert sorted(p.name for p in (training / "train").iterdir()) == ["1", "2", "3", "4", "5"]
    images = sum(1 for _ in training.rglob("*.jpg"))
    assert images == 148  # two images lost their metadata
    report = json.loads((root / "output/data/metrics.json").read_text())
    assert report["data"]["classes"] == ["1", "2", "3", "4", "5"]
    assert report["final"]["split"] == "test"
    assert len(report["epochs"]) == 3
    assert (root / "output/data/confusion_matrix.png").stat().st_size > 1000
    assert (root / "output/data/learning_curves.png").stat().st_size > 1000
