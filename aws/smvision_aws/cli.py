"""smvision-aws: the seed workflow as commands (train, tune, deploy, transform, process,
register, pipeline, cleanup, lambda-package, iam-policies), on SageMaker Python SDK 3
(ModelTrainer, its tuner and workflow package) and boto3. `--local` runs
train/tune/deploy/transform on this machine's docker (file:// data) before paying for
AWS: training through SDK 3's local container mode, hosting as SageMaker runs it.

    python aws train --image IMAGE --role ROLE --channel training=s3://b/p/ --hp epochs=10 ...
    python aws train --local --image sagemaker-vision:latest --channel training=file://$PWD/data ...

Every command prints one JSON object on stdout (job names, endpoint, best trial...), so
notebooks and shell scripts can read the result; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from smvision_aws import local_mode
from smvision_aws.commands import endpoints, training, workflow
from smvision_aws.usage import UsageError

# Each group adds its commands' parsers, each parser naming its command as `run`.
COMMAND_GROUPS = (training, endpoints, workflow)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smvision-aws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        result = args.run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except local_mode.LocalJobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not getattr(args, "local", False):
            raise
        # SDK 3's local mode fails with RuntimeError after the containers' logs; the logs above say why.
        print(f"error: local mode: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
