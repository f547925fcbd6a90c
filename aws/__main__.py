"""`python aws <command> ...` from the repository root: puts aws/ on sys.path and runs
the CLI, so a checkout works without installing anything but the SDK."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smvision_aws.cli import main

    raise SystemExit(main())
