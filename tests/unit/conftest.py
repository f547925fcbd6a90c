import pytest

from container import SageMakerPaths


@pytest.fixture
def sm_paths(tmp_path) -> SageMakerPaths:
    """A fake /opt/ml with SageMaker's real file names under a temp dir."""
    paths = SageMakerPaths(tmp_path / "opt_ml")
    for directory in (paths.config_dir, paths.data_dir, paths.model_dir, paths.output_data_dir, paths.checkpoint_dir):
        directory.mkdir(parents=True)
    return paths
