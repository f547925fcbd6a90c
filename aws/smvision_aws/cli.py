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
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from smvision_aws import cleanup as cleanup_mod
from smvision_aws import hosting, iam, lambda_package, local_hosting, local_mode, local_training, processing, registry, tuning
from smvision_aws.sessions import ClientSession, make_client_session
from smvision_aws.training import (
    TrainSpec,
    UsageError,
    build_trainer,
    parse_channels,
    parse_pairs,
    parse_tags,
    start_training_job,
    trainer_field,
    validate_hyperparameters,
)

log = logging.getLogger("smvision_aws")
LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"  # local mode never assumes it


def _common(parser: argparse.ArgumentParser, local: bool = True) -> None:
    parser.add_argument("--region", help="AWS region (default: from the AWS config/environment)")
    if local:
        parser.add_argument("--local", action="store_true", help="run on this machine's docker with file:// data instead of AWS")


def _image_role(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="image URI: ACCOUNT.dkr.ecr.REGION.amazonaws.com/sagemaker-vision:TAG, or a local tag with --local")
    parser.add_argument(
        "--role",
        default=os.environ.get("SAGEMAKER_ROLE_ARN"),
        help="execution role ARN (default $SAGEMAKER_ROLE_ARN; not needed with --local)",
    )


def _train_options(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    _image_role(parser)
    parser.add_argument(
        "--instance-type", default="ml.g4dn.xlarge", help="training instance type (ignored with --local: 'local' or 'local_gpu')"
    )
    parser.add_argument("--instance-count", type=int, default=1, help="hosts; >1 trains with DDP across them")
    parser.add_argument("--gpu", action="store_true", help="with --local: instance_type local_gpu")
    parser.add_argument(
        "--channel",
        action="append",
        metavar="NAME=URI",
        help="input channel, repeatable: training=s3://bucket/prefix/ (ImageFolder with "
        "train/ valid/ [test/]) or train=..., validation=..., test=...; file:///dir with --local",
    )
    parser.add_argument(
        "--hp",
        action="append",
        metavar="NAME=VALUE",
        help="trainer hyperparameter, repeatable, the trainer's names: epochs, batch-size, lr, "
        "weight-decay, freeze-backbone, early-stopping-patience, arch, image-size, amp, ...",
    )
    parser.add_argument(
        "--no-validate-hyperparameters",
        action="store_true",
        help="skip the host-side check of names/values (script mode: your own script's names)",
    )
    parser.add_argument(
        "--output-path", help="s3://bucket/prefix/ for model.tar.gz (file:///dir with --local; default there: file://$PWD/sm-local-output)"
    )
    parser.add_argument("--spot", action="store_true", help="managed spot training (needs --checkpoint-s3-uri)")
    parser.add_argument("--max-run", type=int, default=24 * 3600, help="seconds of training at most")
    parser.add_argument("--max-wait", type=int, help="spot: seconds to wait for capacity + run (default 2x max-run)")
    parser.add_argument("--checkpoint-s3-uri", help="s3:// prefix synced with /opt/ml/checkpoints (spot resume)")
    parser.add_argument("--volume-size", type=int, default=30, help="GB of EBS per instance")
    parser.add_argument("--tag", action="append", metavar="KEY=VALUE", help="resource tag, repeatable")
    parser.add_argument("--base-job-name", default="smvision")
    parser.add_argument(
        "--debugger-hook",
        action="store_true",
        help="keep SageMaker Debugger's hook config (script-mode users whose script creates an smdebug hook)",
    )
    parser.add_argument("--no-wait", action="store_true", help="start the job and return")


def _ami_option(parser: argparse.ArgumentParser, kind: str) -> None:
    amis = hosting.INFERENCE_AMIS if kind == "inference" else hosting.TRANSFORM_AMIS
    default = hosting.DEFAULT_INFERENCE_AMI if kind == "inference" else hosting.DEFAULT_TRANSFORM_AMI
    parser.add_argument(
        "--ami-version",
        metavar="AMI",
        help=f"GPU host image ({', '.join(amis)}); default on GPU instances {default} "
        "(SageMaker's own default has driver 470, too old for CUDA 12); none on CPU",
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smvision-aws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="launch a training job (single, multi-instance, spot)")
    _train_options(p)
    p.add_argument("--job-name", help="exact job name (default: BASE-JOB-NAME-timestamp)")

    p = sub.add_parser("tune", help="hyperparameter tuning on val_macro_f1 (Bayesian, early stopping)")
    _train_options(p)
    p.add_argument("--max-jobs", type=int, default=20)
    p.add_argument("--max-parallel-jobs", type=int, default=2)
    p.add_argument("--no-early-stopping", action="store_true")
    p.add_argument("--best", metavar="TUNING_JOB", help="only print the best trial of an existing tuning job")
    p.add_argument("--seed", type=int, default=0, help="--local: seed of the one sampled trial")

    p = sub.add_parser("deploy", help="endpoint (real-time + autoscaling, serverless or multi-model)")
    _common(p)
    _image_role(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--training-job", help="deploy this Completed training job's model.tar.gz")
    source.add_argument("--model-data", help="s3://.../model.tar.gz (file:///.../model.tar.gz with --local)")
    source.add_argument("--model-data-prefix", help="--multi-model: s3://bucket/prefix/ holding *.tar.gz models")
    source.add_argument("--model-package", metavar="ARN", help="an Approved model package version (see `register`)")
    p.add_argument("--endpoint-name", required=True)
    p.add_argument("--model-name", help="default: the endpoint name")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--instance-count", type=int, default=1, help="initial count (raised to --min-capacity)")
    p.add_argument("--autoscale", action="store_true", help="register target-tracking autoscaling")
    p.add_argument("--min-capacity", type=int, default=2)
    p.add_argument("--max-capacity", type=int, default=4)
    p.add_argument(
        "--target-invocations", type=float, default=10.0, help="target of SageMakerVariantInvocationsPerInstance (per instance per minute)"
    )
    p.add_argument("--scale-in-cooldown", type=int, default=30, help="seconds")
    p.add_argument("--scale-out-cooldown", type=int, default=30, help="seconds")
    p.add_argument("--serverless", action="store_true", help="serverless endpoint instead of instances")
    p.add_argument("--serverless-memory", type=int, default=4096, help="MB: 1024..6144 in steps of 1024")
    p.add_argument("--serverless-max-concurrency", type=int, default=5)
    p.add_argument("--multi-model", action="store_true", help="multi-model endpoint over --model-data-prefix")
    _ami_option(p, "inference")
    p.add_argument(
        "--async",
        dest="async_inference",
        action="store_true",
        help="asynchronous endpoint: requests name an S3 input, answers land under --output (bodies up to 1 GB)",
    )
    p.add_argument("--output", help="--async: s3://bucket/prefix/ for the answers")
    p.add_argument("--failure-output", help="--async: s3://bucket/prefix/ for failed requests' errors")
    p.add_argument("--success-topic", metavar="SNS_ARN", help="--async: SNS topic told of each answer")
    p.add_argument("--error-topic", metavar="SNS_ARN", help="--async: SNS topic told of each failure")
    p.add_argument("--max-concurrent-invocations", type=int, help="--async: requests one instance works on at once")
    p.add_argument(
        "--target-backlog",
        type=float,
        default=5.0,
        help="--async --autoscale: queued requests per instance to aim for (ApproximateBacklogSizePerInstance); "
        "--min-capacity 0 scales to zero when idle",
    )
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="serving environment, repeatable")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--smoke-image", type=Path, help="send this JPEG/PNG once the endpoint is up; print the answer")
    p.add_argument("--serving-port", type=int, help="--local: host port of the endpoint (default 8080)")
    p.add_argument("--hold", action="store_true", help="--local: keep the endpoint up until Ctrl-C (local endpoints end with this process)")

    p = sub.add_parser("transform", help="batch transform over an S3 prefix (or file:// dir with --local)")
    _common(p)
    _image_role(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--training-job")
    source.add_argument("--model-data")
    p.add_argument("--input", required=True, help="s3://bucket/prefix/ of JPEG/PNG files (file:///dir with --local)")
    p.add_argument("--output", required=True, help="s3://bucket/prefix/ for the .out JSON files")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--content-type", default="image/jpeg", choices=["image/jpeg", "image/png"])
    p.add_argument("--max-concurrent", type=int)
    _ami_option(p, "batch")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-wait", action="store_true")

    p = sub.add_parser(
        "process",
        help="run a command of the image (e.g. train prepare-bins) as a Processing job",
        description="Run COMMAND of the image as a SageMaker Processing job. Inputs are mounted at "
        "/opt/ml/processing/input/NAME, outputs uploaded from /opt/ml/processing/output/NAME, e.g.\n"
        "  process --input bins=s3://b/raw/ --output data=s3://b/data/ -- train prepare-bins "
        "--images /opt/ml/processing/input/bins/images --metadata /opt/ml/processing/input/bins/metadata "
        "--out /opt/ml/processing/output/data",
    )
    _common(p, local=False)
    _image_role(p)
    p.add_argument("--input", action="append", metavar="NAME=S3_URI", help="repeatable; mounted at /opt/ml/processing/input/NAME")
    p.add_argument("--output", action="append", metavar="NAME=S3_URI", help="repeatable; uploaded from /opt/ml/processing/output/NAME")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--volume-size", type=int, default=30, help="GB of EBS per instance")
    p.add_argument("--max-run", type=int, default=24 * 3600, help="seconds at most")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="container environment, repeatable")
    p.add_argument("--job-name", help="default: smvision-process-timestamp")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("container_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="what the container runs")

    p = sub.add_parser("register", help="model registry: a package version from a training job, or a new approval status")
    _common(p, local=False)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--training-job", help="register this Completed job's model.tar.gz and metrics.json")
    target.add_argument("--model-package", metavar="ARN", help="change the approval status of this package version")
    p.add_argument("--model-package-group", help="group of the new version (created if missing)")
    p.add_argument("--approval-status", choices=registry.APPROVAL_STATUSES, default=None, help=f"default {registry.DEFAULT_APPROVAL}")
    p.add_argument("--approval-description")
    p.add_argument("--image", help="serving image (default: the training job's image)")
    p.add_argument("--description")
    p.add_argument("--inference-instance-type", action="append", help="repeatable; default ml.m5.xlarge and ml.g4dn.xlarge")
    p.add_argument("--transform-instance-type", action="append", help="repeatable; default ml.m5.xlarge and ml.g4dn.xlarge")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")

    p = sub.add_parser("pipeline", help="the seed workflow as a SageMaker Pipeline (SDK 3): prepare-bins -> train -> F1 gate -> register")
    p.add_argument("action", choices=["upsert", "start", "definition"], help="definition: print the JSON only (no AWS call)")
    _common(p, local=False)
    _image_role(p)
    p.add_argument("--name", default="smvision-pipeline", help="pipeline name")
    p.add_argument("--raw-data", help="s3:// prefix with images/ and metadata/ of the bins (processing input)")
    p.add_argument("--data-output", help="s3:// prefix for the ImageFolder split (processing output, training input)")
    p.add_argument("--output-path", help="s3:// prefix for model.tar.gz")
    p.add_argument("--model-package-group", default="smvision-models")
    p.add_argument("--processing-instance-type", default="ml.m5.xlarge")
    p.add_argument("--training-instance-type", default="ml.g4dn.xlarge")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--f1-threshold", type=float, default=0.7, help="register only when val_macro_f1 >= this")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="more trainer hyperparameters, repeatable")
    p.add_argument("--parameter", action="append", metavar="NAME=VALUE", help="start: override a pipeline parameter for this execution")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")

    p = sub.add_parser("cleanup", help="delete endpoints, configs, models and autoscaling; idempotent")
    _common(p)
    p.add_argument("--endpoint-name", action="append", default=[], help="repeatable")
    p.add_argument("--by-tag", metavar="KEY[=VALUE]", help="everything (endpoints, configs, models) with this tag")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--image", help="--local: remove leftover local-mode containers of this image")

    p = sub.add_parser("lambda-package", help="zip the Lambda bridge (aws/lambda/handler.py)")
    p.add_argument("--out", type=Path, default=Path("dist/lambda-bridge.zip"))

    p = sub.add_parser("iam-policies", help="write least-privilege policy documents for the two roles")
    p.add_argument("--account-id", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True, help="project prefix in the bucket (data, models, checkpoints)")
    p.add_argument("--repository", default="sagemaker-vision", help="ECR repository name")
    p.add_argument("--endpoint-name", default="smvision-endpoint", help="the one endpoint the Lambda may invoke")
    p.add_argument("--function-name", default="smvision-bridge")
    p.add_argument("--lambda-prefix", help="what the Lambda may read (default PREFIX/inference)")
    p.add_argument("--partition", default="aws")
    p.add_argument("--out", type=Path, default=Path("dist/iam"))
    return parser


# --- commands ------------------------------------------------------------------------


def _session(args, session: ClientSession | None) -> ClientSession:
    """The boto3 session of an AWS command (tests pass one whose clients are stubbed)."""
    return session or make_client_session(args.region)


def _image(args) -> str:
    if not args.image:
        raise UsageError("--image is required: ACCOUNT.dkr.ecr.REGION.amazonaws.com/sagemaker-vision:TAG (or a local tag with --local)")
    return args.image


def _role(args) -> str:
    if args.local:
        return args.role or LOCAL_ROLE
    if not args.role:
        raise UsageError("--role (or $SAGEMAKER_ROLE_ARN) is required: the execution role's ARN")
    return args.role


def _train_spec(args) -> TrainSpec:
    hyperparameters = parse_pairs(args.hp, "hyperparameter")
    output_path = args.output_path
    if args.local and not output_path:
        output_path = (Path.cwd() / "sm-local-output").as_uri()
    if not args.local and not output_path:
        raise UsageError(
            "--output-path s3://bucket/prefix/models/ is required (the execution role may write only under the project prefix)"
        )
    spec = TrainSpec(
        image_uri=_image(args),
        role=_role(args),
        instance_type="local_gpu" if args.local and args.gpu else ("local" if args.local else args.instance_type),
        instance_count=args.instance_count,
        channels=parse_channels(args.channel, args.local),
        hyperparameters=hyperparameters,
        output_path=output_path,
        spot=args.spot,
        max_run_s=args.max_run,
        max_wait_s=args.max_wait,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
        tags=parse_tags(args.tag),
        base_job_name=args.base_job_name,
        volume_size_gb=args.volume_size,
        debugger_hook=args.debugger_hook,
    )
    spec.check(args.local)
    return spec


def cmd_train(args, session=None) -> dict:
    spec = _train_spec(args)
    if not args.no_validate_hyperparameters:
        validate_hyperparameters(spec.hyperparameters)
    if args.local:
        return local_training.train(spec, args.gpu, args.job_name)
    session = _session(args, session)
    name, model_data = start_training_job(build_trainer(spec, session), spec, session, job_name=args.job_name, wait=not args.no_wait)
    return {"training_job": name, "model_data": model_data, "instance_count": spec.instance_count, "spot": spec.spot}


def cmd_tune(args, session=None) -> dict:
    if args.best:
        return tuning.best_job_summary(_session(args, session).sagemaker_client, args.best)
    spec = _train_spec(args)
    tuned = {trainer_field(name) for name in tuning.SEARCH_SPACE}
    clash = sorted(name for name in spec.hyperparameters if trainer_field(name) in tuned)
    if clash:
        raise UsageError(f"{clash} are tuned (or aliases of tuned names); drop them from --hp")
    if not args.no_validate_hyperparameters:
        # The static values together with a point of the space must pass the trainer's parser.
        validate_hyperparameters({**spec.hyperparameters, **tuning.sample(seed=args.seed)})
    if args.local:
        # Local mode has no tuning service: run one trial of the same space through the
        # same trainer, which proves the names, ranges and metric lines work.
        point = tuning.sample(seed=args.seed)
        log.warning("local mode has no tuning service; running one trial with %s", point)
        trial = local_training.train(dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, **point}), args.gpu)
        return {"local_trial": trial["training_job"], "hyperparameters": point, "model_data": trial["model_data"], "hosts": trial["hosts"]}
    session = _session(args, session)
    tuner = tuning.build_tuner(
        build_trainer(spec, session), args.max_jobs, args.max_parallel_jobs, early_stopping=not args.no_early_stopping
    )
    tuner.tune(inputs=dict(spec.channels), wait=False)
    name = tuner.latest_tuning_job.hyper_parameter_tuning_job_name
    if args.no_wait:
        return {"tuning_job": name, "status": "InProgress"}
    # The SDK draws its progress panel on stdout, which carries this tool's JSON answer.
    with contextlib.redirect_stdout(sys.stderr):
        tuner.wait()
    return tuning.best_job_summary(session.sagemaker_client, name)


def _model_data(args, session: ClientSession | None) -> str:
    if args.training_job:
        if args.local:
            raise UsageError(
                "--training-job: local jobs end with their process; pass --model-data file:///.../model.tar.gz (printed by `train --local`)"
            )
        return hosting.model_data_from_training_job(session.sagemaker_client, args.training_job)
    if not args.model_data:
        raise UsageError("give --training-job NAME or --model-data URI")
    if args.local and not args.model_data.startswith("file://"):
        raise UsageError("with --local, --model-data must be file:///.../model.tar.gz")
    return args.model_data


def _async_spec(args) -> hosting.AsyncSpec | None:
    if not args.async_inference:
        given = [flag for flag, value in (("--output", args.output), ("--success-topic", args.success_topic),
                 ("--error-topic", args.error_topic), ("--failure-output", args.failure_output),
                 ("--max-concurrent-invocations", args.max_concurrent_invocations)) if value is not None]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} apply only to --async endpoints")
        return None
    if args.local or args.serverless or args.multi_model:
        raise UsageError("--async needs an instance endpoint on AWS (not --local, --serverless or --multi-model)")
    if not args.output:
        raise UsageError("--async needs --output s3://bucket/prefix/ for the answers")
    # Errors go next to the answers unless told otherwise (SDK 2 picked its default bucket).
    failure_output = args.failure_output or args.output.rstrip("/") + "/failures/"
    spec = hosting.AsyncSpec(args.output, failure_output, args.success_topic, args.error_topic, args.max_concurrent_invocations)
    spec.check()
    return spec


def _content_type(path: Path) -> str:
    return "image/png" if path.suffix.lower() == ".png" else "image/jpeg"


def cmd_deploy(args, session=None) -> dict:
    if args.local and (args.serverless or args.multi_model or args.autoscale or args.model_package):
        raise UsageError("--serverless, --multi-model, --model-package and --autoscale need AWS; local mode hosts one container")
    if args.serverless and args.autoscale:
        raise UsageError("serverless endpoints scale by themselves; drop --autoscale")
    if args.multi_model and not args.model_data_prefix:
        raise UsageError("--multi-model needs --model-data-prefix s3://bucket/prefix/")
    if args.model_data_prefix and not args.multi_model:
        raise UsageError("--model-data-prefix is for --multi-model")
    async_spec = _async_spec(args)
    autoscale = hosting.AutoscalingSpec(
        args.min_capacity, args.max_capacity, args.target_invocations, args.scale_in_cooldown, args.scale_out_cooldown
    )
    if args.autoscale:
        autoscale.check(lowest=0 if async_spec else 1)
    if args.no_wait and (args.autoscale or args.smoke_image) and not args.local:
        raise UsageError("--autoscale and --smoke-image need the endpoint InService; drop --no-wait")
    if args.smoke_image and async_spec:
        raise UsageError("--smoke-image sends a real-time request; an --async endpoint takes S3 inputs (see the Lambda bridge)")
    serverless = hosting.ServerlessSpec(args.serverless_memory, args.serverless_max_concurrency) if args.serverless else None
    if serverless:
        serverless.check()
    env = parse_pairs(args.env, "env")
    if async_spec:
        env.setdefault(hosting.PAYLOAD_ENV, str(hosting.ASYNC_MAX_PAYLOAD_MB))
    if args.local:
        return _deploy_local(args, env)
    instance_type = None if serverless else args.instance_type
    ami_version = hosting.inference_ami(instance_type, args.ami_version)
    session = _session(args, session)
    role = _role(args)
    name = args.model_name or args.endpoint_name
    tags = parse_tags(args.tag)
    if args.multi_model:
        container = hosting.multi_model_container(_image(args), args.model_data_prefix, env)
        model_data = args.model_data_prefix
    elif args.model_package:
        registry.approved_package(session.sagemaker_client, args.model_package)
        container = hosting.package_container(args.model_package, env)
        model_data = args.model_package
    else:
        model_data = _model_data(args, session)
        container = hosting.image_container(_image(args), model_data, env)
    # Async endpoints may start at zero instances only through autoscaling; they are created with one.
    count = max(args.instance_count, args.min_capacity, 1) if args.autoscale else args.instance_count
    endpoint = hosting.EndpointSpec(
        name=args.endpoint_name,
        model_name=name,
        instance_type=instance_type,
        instance_count=count,
        serverless=serverless,
        ami_version=ami_version,
        async_spec=async_spec,
        tags=tags,
    )
    hosting.create_endpoint(session.sagemaker_client, hosting.model_request(name, role, container, tags), endpoint, wait=not args.no_wait)
    result = {
        "endpoint": args.endpoint_name,
        "model": name,
        "model_data": model_data,
        "instance_type": instance_type,
        "instance_count": None if serverless else count,
    }
    if ami_version:
        result["inference_ami_version"] = ami_version
    if async_spec:
        result["async_output"] = async_spec.output_path
    if args.autoscale:
        autoscaling = session.client("application-autoscaling")
        if async_spec:
            result.update(
                hosting.register_backlog_autoscaling(
                    autoscaling, session.client("cloudwatch"), args.endpoint_name, autoscale, args.target_backlog
                )
            )
        else:
            result["autoscaling_policy"] = hosting.register_autoscaling(autoscaling, args.endpoint_name, autoscale)
    if args.smoke_image:
        result["smoke_prediction"] = hosting.predict(
            session.client("sagemaker-runtime"), args.endpoint_name, args.smoke_image.read_bytes(), _content_type(args.smoke_image)
        )
    return result


def _deploy_local(args, env: dict[str, str]) -> dict:
    """One serving container as SageMaker hosting runs it; it lives as long as this
    command (--hold: until Ctrl-C or SIGTERM), then it is removed."""
    if args.ami_version:
        raise UsageError("--ami-version picks an AWS host image; drop it with --local")
    model_data = _model_data(args, None)
    port = args.serving_port or 8080
    result = {"endpoint": args.endpoint_name, "model_data": model_data, "instance_type": "local", "instance_count": 1}
    with local_hosting.serving(_image(args), Path(urlparse(model_data).path), env, port=port) as endpoint:
        result["url"] = endpoint.url
        if args.smoke_image:
            result["smoke_prediction"] = endpoint.predict(args.smoke_image.read_bytes(), _content_type(args.smoke_image))
        if args.hold:
            print(json.dumps(result), flush=True)
            log.warning("serving on %s/invocations; Ctrl-C to remove it", endpoint.url)
            signal.signal(signal.SIGTERM, _interrupt)  # `docker stop`/kill: remove the container too
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    result["deleted"] = True
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_transform(args, session=None) -> dict:
    if args.local:
        return _transform_local(args)
    ami_version = hosting.transform_ami(args.instance_type, args.ami_version)
    session = _session(args, session)
    tags = parse_tags(args.tag)
    model_data = _model_data(args, session)
    name = hosting.timestamped_name("smvision-transform")
    container = hosting.image_container(_image(args), model_data, {})
    session.sagemaker_client.create_model(**hosting.model_request(name, _role(args), container, tags))
    request = hosting.transform_request(
        name,
        args.input,
        args.output,
        args.instance_type,
        args.instance_count,
        args.content_type,
        max_concurrent=args.max_concurrent,
        tags=tags,
        ami_version=args.ami_version,
        job_name=name,
    )
    job = hosting.start_transform_job(session.sagemaker_client, request, wait=not args.no_wait)
    result = {"transform_job": job, "model": name, "output": args.output}
    if ami_version:
        result["transform_ami_version"] = ami_version
    return result


def _transform_local(args) -> dict:
    if not (args.input.startswith("file://") and args.output.startswith("file://")):
        raise UsageError("with --local, --input and --output must be file:/// URIs")
    if args.ami_version:
        raise UsageError("--ami-version picks an AWS host image; drop it with --local")
    if args.instance_count != 1:
        raise UsageError("--local runs one serving container; drop --instance-count")
    model_data = _model_data(args, None)
    output_dir = Path(urlparse(args.output).path)
    outputs = local_hosting.batch_transform(
        _image(args),
        Path(urlparse(model_data).path),
        Path(urlparse(args.input).path),
        output_dir,
        args.content_type,
        max_concurrent=args.max_concurrent,
    )
    return {"transform_job": "local", "output": args.output, "files": [str(path.relative_to(output_dir)) for path in outputs]}


def cmd_cleanup(args, session=None) -> dict:
    if args.local:
        if not args.image:
            raise UsageError("cleanup --local needs --image: only that image's local containers are removed")
        leftovers = local_mode.leftover_containers(args.image)
        local_mode.remove_containers([name for _, name in leftovers])
        return {"removed_containers": [name for _, name in leftovers]}
    if not args.endpoint_name and not args.by_tag:
        raise UsageError("give --endpoint-name NAME (repeatable) or --by-tag KEY[=VALUE]")
    session = _session(args, session)
    clients = cleanup_mod.CleanupClients(session.sagemaker_client, session.client("application-autoscaling"), session.client("cloudwatch"))
    report = []
    for endpoint in args.endpoint_name:
        report += cleanup_mod.cleanup_endpoint(clients, endpoint, delete_models=not args.keep_models)
    if args.by_tag:
        key, sep, value = args.by_tag.partition("=")
        report += cleanup_mod.cleanup_by_tag(clients, session.client("resourcegroupstaggingapi"), key, value if sep else None)
    return {"cleanup": [{"kind": k, "name": n, "result": r} for k, n, r in report]}


def cmd_process(args, session=None) -> dict:
    command = args.container_command[1:] if args.container_command[:1] == ["--"] else args.container_command
    if not args.role:
        raise UsageError("--role (or $SAGEMAKER_ROLE_ARN) is required: the execution role's ARN")
    spec = processing.ProcessingSpec(
        image_uri=_image(args),
        role=args.role,
        command=command,
        inputs=processing.parse_inputs(args.input),
        outputs=processing.parse_outputs(args.output),
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size,
        max_runtime_s=args.max_run,
        environment=parse_pairs(args.env, "env"),
        tags=parse_tags(args.tag),
    )
    request = processing.processing_request(spec, args.job_name or hosting.timestamped_name("smvision-process"))
    return processing.start(_session(args, session).sagemaker_client, request, wait=not args.no_wait)


def cmd_register(args, session=None) -> dict:
    session = _session(args, session)
    if args.model_package:
        if not args.approval_status:
            raise UsageError("--model-package ARN needs --approval-status Approved|Rejected|PendingManualApproval")
        return registry.set_approval(session.sagemaker_client, args.model_package, args.approval_status, args.approval_description)
    if not args.model_package_group:
        raise UsageError("--training-job needs --model-package-group NAME")
    spec = registry.PackageSpec(
        group=args.model_package_group,
        approval_status=args.approval_status or registry.DEFAULT_APPROVAL,
        description=args.description,
        image_uri=args.image,
        tags=parse_tags(args.tag),
        **({"inference_instance_types": args.inference_instance_type} if args.inference_instance_type else {}),
        **({"transform_instance_types": args.transform_instance_type} if args.transform_instance_type else {}),
    )
    return registry.register(session.sagemaker_client, session.client("s3"), args.training_job, spec)


def cmd_pipeline(args, sagemaker_client=None) -> dict:
    from smvision_aws import pipeline

    if args.action == "start":
        client = sagemaker_client or pipeline.boto_client(args.region)
        return pipeline.start(client, args.name, parse_pairs(args.parameter, "parameter"))
    spec = pipeline.PipelineSpec(
        name=args.name,
        image_uri=_image(args),
        role=args.role or "",
        raw_data_uri=args.raw_data,
        data_output_uri=args.data_output,
        output_path=args.output_path,
        model_package_group=args.model_package_group,
        processing_instance_type=args.processing_instance_type,
        training_instance_type=args.training_instance_type,
        epochs=args.epochs,
        f1_threshold=args.f1_threshold,
        hyperparameters=parse_pairs(args.hp, "hyperparameter"),
        tags=parse_tags(args.tag),
    )
    definition = pipeline.definition(spec)
    if args.action == "definition":
        return {"pipeline": args.name, "definition": json.loads(definition)}
    if not args.role:
        raise UsageError("--role (or $SAGEMAKER_ROLE_ARN) is required: the role the pipeline's steps run as")
    client = sagemaker_client or pipeline.boto_client(args.region)
    return pipeline.upsert(client, spec, definition)


def cmd_lambda_package(args) -> dict:
    path = lambda_package.build_zip(args.out)
    return {"zip": str(path), "handler": "handler.lambda_handler", "runtime": "python3.12"}


def cmd_iam_policies(args) -> dict:
    names = iam.PolicyNames(
        args.account_id,
        args.region,
        args.bucket,
        args.prefix,
        args.repository,
        args.endpoint_name,
        args.function_name,
        args.lambda_prefix,
        args.partition,
    )
    for name, document in iam.render(names).items():
        found = iam.problems(document)
        if found:
            raise UsageError(f"{name}: {found}")
    return {"written": [str(p) for p in iam.write(names, args.out)]}


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "deploy": cmd_deploy,
    "transform": cmd_transform,
    "process": cmd_process,
    "register": cmd_register,
    "pipeline": cmd_pipeline,
    "cleanup": cmd_cleanup,
    "lambda-package": cmd_lambda_package,
    "iam-policies": cmd_iam_policies,
}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        result = COMMANDS[args.command](args)
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
