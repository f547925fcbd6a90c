"""What every command group shares: the --region/--local and --image/--role flags,
and reading them (the boto3 session, the image, the execution role)."""

from __future__ import annotations

import argparse
import os

from smvision_aws.sessions import ClientSession, make_client_session
from smvision_aws.usage import UsageError

LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"  # local mode never assumes it


def add_region(parser: argparse.ArgumentParser, local: bool = True) -> None:
    """--region, and --local for the commands that have a local mode."""
    parser.add_argument("--region", help="AWS region (default: from the AWS config/environment)")
    if local:
        parser.add_argument("--local", action="store_true", help="run on this machine's docker with file:// data instead of AWS")


def add_image_and_role(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="image URI: ACCOUNT.dkr.ecr.REGION.amazonaws.com/sagemaker-vision:TAG, or a local tag with --local")
    parser.add_argument(
        "--role",
        default=os.environ.get("SAGEMAKER_ROLE_ARN"),
        help="execution role ARN (default $SAGEMAKER_ROLE_ARN; not needed with --local)",
    )


def client_session(args, session: ClientSession | None) -> ClientSession:
    """The boto3 session of an AWS command (tests pass one whose clients are stubbed)."""
    return session or make_client_session(args.region)


def require_image(args) -> str:
    if not args.image:
        raise UsageError("--image is required: ACCOUNT.dkr.ecr.REGION.amazonaws.com/sagemaker-vision:TAG (or a local tag with --local)")
    return args.image


def require_role(args) -> str:
    """The execution role: required on AWS; local mode stands in a placeholder."""
    if getattr(args, "local", False):
        return args.role or LOCAL_ROLE
    if not args.role:
        raise UsageError("--role (or $SAGEMAKER_ROLE_ARN) is required: the execution role's ARN")
    return args.role
