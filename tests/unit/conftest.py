from pathlib import Path

import pytest

from container import SageMakerPaths


@pytest.fixture
def sm_paths(tmp_path) -> SageMakerPaths:
    """A fake /opt/ml with SageMaker's real file names under a temp dir."""
    paths = SageMakerPaths(tmp_path / "opt_ml")
    for directory in (paths.config_dir, paths.data_dir, paths.model_dir, paths.output_data_dir, paths.checkpoint_dir):
        directory.mkdir(parents=True)
    return paths


# --- serving: a tiny trained-format model and the app, as `serve` builds it -------------


@pytest.fixture(scope="session")
def test_machine():
    """A small CPU machine: one forward at a time (ServeConfig.resolve picks the rest from
    it, as `serve` does from the real machine)."""
    from container.serving import Machine

    return Machine(device="cpu", cpus=1, memory_bytes=8 << 30, processes=1)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A resnet18 with classes a, b, c in the trainer's format (model.pt + model_spec.json), 32-pixel input."""
    import torch

    from vision.artifact import ModelSpec
    from vision.models import build_model

    directory = tmp_path / "model"
    directory.mkdir()
    torch.save(build_model("resnet18", 3).state_dict(), directory / "model.pt")
    ModelSpec("resnet18", ("a", "b", "c"), 32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).save(directory)
    return directory


@pytest.fixture
def serve_app(tmp_path, test_machine):
    """serve_app(model_dir, **settings): the ASGI app `serve` would run with these ServeConfig
    fields (extracting under tmp_path, /opt/ml at tmp_path/opt_ml), resolved against test_machine."""
    from container import ServeConfig
    from serve.app import create_app

    def make(model_dir=None, **settings):
        settings.setdefault("opt_ml", str(tmp_path / "opt_ml"))
        settings.setdefault("scratch_dir", str(tmp_path / "scratch"))
        config = ServeConfig(model_dir=str(model_dir) if model_dir is not None else None, **settings)
        return create_app(config.resolve(test_machine), test_machine)

    return make
