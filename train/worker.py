"""One process of a multi-process job, started by train.distributed.launch with the
resolved config in the environment (python -m train.worker)."""

import json
import os
import sys

from container import SageMakerPaths
from train.cli import run_worker
from train.config import TrainConfig
from train.distributed import CONFIG_ENV_VAR


def main() -> int:
    config = TrainConfig(**json.loads(os.environ[CONFIG_ENV_VAR]))
    return run_worker(config, SageMakerPaths.from_env())


if __name__ == "__main__":
    sys.exit(main())
