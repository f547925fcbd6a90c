"""deploy, transform, cleanup and lambda-package: their flags and commands. Endpoints
and batch transform are plain SageMaker requests (hosting.py, autoscaling.py); with
--local one serving container on this machine's docker (local_hosting.py)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

from smvision_aws import autoscaling, cleanup, hosting, lambda_package, local_hosting, local_mode, registry
from smvision_aws.commands.common import add_image_and_role, add_region, client_session, require_image, require_role
from smvision_aws.sessions import ClientSession
from smvision_aws.usage import UsageError, parse_pairs, parse_tags

log = logging.getLogger("smvision_aws")


def add_parsers(sub) -> None:
    _add_deploy(sub)

    p = sub.add_parser("transform", help="batch transform over an S3 prefix (or file:// dir with --local)")
    add_region(p)
    add_image_and_role(p)
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
    p.set_defaults(run=cmd_transform)

    p = sub.add_parser("cleanup", help="delete endpoints, configs, models and autoscaling; idempotent")
    add_region(p)
    p.add_argument("--endpoint-name", action="append", default=[], help="repeatable")
    p.add_argument("--by-tag", metavar="KEY[=VALUE]", help="everything (endpoints, configs, models) with this tag")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--image", help="--local: remove leftover local-mode containers of this image")
    p.set_defaults(run=cmd_cleanup)

    p = sub.add_parser("lambda-package", help="zip the Lambda bridge (aws/lambda/handler.py)")
    p.add_argument("--out", type=Path, default=Path("dist/lambda-bridge.zip"))
    p.set_defaults(run=cmd_lambda_package)


def _add_deploy(sub) -> None:
    p = sub.add_parser("deploy", help="endpoint (real-time + autoscaling, serverless or multi-model)")
    add_region(p)
    add_image_and_role(p)
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
    p.add_argument("--capture", type=int, metavar="PCT", help="capture PCT%% of requests for `monitor` (docs/monitoring.md): Data Capture "
                   "on instance endpoints, the image's own capture on serverless and multi-model ones (per model)")  # fmt: skip
    p.add_argument("--capture-uri", metavar="S3_URI", help="--capture: s3://bucket/prefix for the captures (the role writes there)")
    _ami_option(p, "inference")
    _async_options(p)
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="serving environment, repeatable")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--smoke-image", type=Path, help="send this JPEG/PNG once the endpoint is up; print the answer")
    p.add_argument("--serving-port", type=int, help="--local: host port of the endpoint (default 8080)")
    p.add_argument("--hold", action="store_true", help="--local: keep the endpoint up until Ctrl-C (local endpoints end with this process)")
    p.set_defaults(run=cmd_deploy)


def _async_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--async",
        dest="async_inference",
        action="store_true",
        help="asynchronous endpoint: requests name an S3 input, answers land under --output (bodies up to 1 GB)",
    )
    parser.add_argument("--output", help="--async: s3://bucket/prefix/ for the answers")
    parser.add_argument("--failure-output", help="--async: s3://bucket/prefix/ for failed requests' errors")
    parser.add_argument("--success-topic", metavar="SNS_ARN", help="--async: SNS topic told of each answer")
    parser.add_argument("--error-topic", metavar="SNS_ARN", help="--async: SNS topic told of each failure")
    parser.add_argument("--max-concurrent-invocations", type=int, help="--async: requests one instance works on at once")
    parser.add_argument(
        "--target-backlog",
        type=float,
        default=5.0,
        help="--async --autoscale: queued requests per instance to aim for (ApproximateBacklogSizePerInstance); "
        "--min-capacity 0 scales to zero when idle",
    )


def _ami_option(parser: argparse.ArgumentParser, kind: str) -> None:
    amis = hosting.INFERENCE_AMIS if kind == "inference" else hosting.TRANSFORM_AMIS
    default = hosting.DEFAULT_INFERENCE_AMI if kind == "inference" else hosting.DEFAULT_TRANSFORM_AMI
    parser.add_argument(
        "--ami-version",
        metavar="AMI",
        help=f"GPU host image ({', '.join(amis)}); default on GPU instances {default} "
        "(SageMaker's own default has driver 470, too old for CUDA 12); none on CPU",
    )


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


def _content_type(path: Path) -> str:
    return "image/png" if path.suffix.lower() == ".png" else "image/jpeg"


# --- deploy ---------------------------------------------------------------------------


def cmd_deploy(args, session=None) -> dict:
    async_spec, autoscale, serverless = _deploy_specs(args)
    env = parse_pairs(args.env, "env")
    capture = _capture_spec(args)
    server_capture = capture if capture and (serverless or args.multi_model) else None  # where SageMaker has no Data Capture
    env.update(server_capture.server_env(args.endpoint_name) if server_capture else {})
    if async_spec:
        env.setdefault(hosting.PAYLOAD_ENV, str(hosting.ASYNC_MAX_PAYLOAD_MB))
    if args.local:
        return _deploy_local(args, env)
    instance_type = None if serverless else args.instance_type
    ami_version = hosting.inference_ami(instance_type, args.ami_version)
    session = client_session(args, session)
    role = require_role(args)
    name = args.model_name or args.endpoint_name
    tags = parse_tags(args.tag)
    container, model_data = _serving_container(args, session, env)
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
        data_capture=None if server_capture else capture,
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
    if capture:
        result["capture"] = {"percent": capture.percent, "uri": capture.destination, "by": "image" if server_capture else "data-capture"}
    if args.autoscale:
        result.update(_register_autoscaling(args, session, autoscale, backlog=async_spec is not None))
    if args.smoke_image:
        result["smoke_prediction"] = hosting.predict(
            session.client("sagemaker-runtime"), args.endpoint_name, args.smoke_image.read_bytes(), _content_type(args.smoke_image)
        )
    return result


def _deploy_specs(args) -> tuple[hosting.AsyncSpec | None, autoscaling.AutoscalingSpec, hosting.ServerlessSpec | None]:
    """Checks the flags together (nothing is called before they pass); the async,
    autoscaling and serverless settings they give."""
    if args.local and (args.serverless or args.multi_model or args.autoscale or args.model_package):
        raise UsageError("--serverless, --multi-model, --model-package and --autoscale need AWS; local mode hosts one container")
    if args.serverless and args.autoscale:
        raise UsageError("serverless endpoints scale by themselves; drop --autoscale")
    if args.multi_model and not args.model_data_prefix:
        raise UsageError("--multi-model needs --model-data-prefix s3://bucket/prefix/")
    if args.model_data_prefix and not args.multi_model:
        raise UsageError("--model-data-prefix is for --multi-model")
    async_spec = _async_spec(args)
    autoscale = autoscaling.AutoscalingSpec(
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
    return async_spec, autoscale, serverless


def _capture_spec(args) -> hosting.CaptureSpec | None:
    if args.capture is None:
        if args.capture_uri:
            raise UsageError("--capture-uri goes with --capture PCT")
        return None
    if args.local:
        raise UsageError("--capture needs AWS; locally, run the image with SM_VISION_CAPTURE_DIR (docs/monitoring.md)")
    if not args.capture_uri:
        raise UsageError("--capture needs --capture-uri s3://bucket/prefix for the captures")
    spec = hosting.CaptureSpec(args.capture, args.capture_uri.rstrip("/"))
    spec.check()
    return spec


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


def _serving_container(args, session: ClientSession, env: dict[str, str]) -> tuple[dict, str]:
    """The model's container and where its model comes from (prefix, package or model.tar.gz)."""
    if args.multi_model:
        return hosting.multi_model_container(require_image(args), args.model_data_prefix, env), args.model_data_prefix
    if args.model_package:
        registry.approved_package(session.sagemaker_client, args.model_package)
        return hosting.package_container(args.model_package, env), args.model_package
    model_data = _model_data(args, session)
    return hosting.image_container(require_image(args), model_data, env), model_data


def _register_autoscaling(args, session: ClientSession, spec: autoscaling.AutoscalingSpec, backlog: bool) -> dict:
    """Async endpoints scale on their backlog, real-time ones on invocations per instance."""
    client = session.client("application-autoscaling")
    if backlog:
        return autoscaling.register_backlog_autoscaling(client, session.client("cloudwatch"), args.endpoint_name, spec, args.target_backlog)
    return {"autoscaling_policy": autoscaling.register_autoscaling(client, args.endpoint_name, spec)}


def _deploy_local(args, env: dict[str, str]) -> dict:
    """One serving container as SageMaker hosting runs it; it lives as long as this
    command (--hold: until Ctrl-C or SIGTERM), then it is removed."""
    if args.ami_version:
        raise UsageError("--ami-version picks an AWS host image; drop it with --local")
    model_data = _model_data(args, None)
    port = args.serving_port or 8080
    result = {"endpoint": args.endpoint_name, "model_data": model_data, "instance_type": "local", "instance_count": 1}
    with local_hosting.serving(require_image(args), Path(urlparse(model_data).path), env, port=port) as endpoint:
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


# --- transform, cleanup, lambda-package -----------------------------------------------


def cmd_transform(args, session=None) -> dict:
    if args.local:
        return _transform_local(args)
    ami_version = hosting.transform_ami(args.instance_type, args.ami_version)
    session = client_session(args, session)
    tags = parse_tags(args.tag)
    model_data = _model_data(args, session)
    name = hosting.timestamped_name("smvision-transform")
    container = hosting.image_container(require_image(args), model_data, {})
    session.sagemaker_client.create_model(**hosting.model_request(name, require_role(args), container, tags))
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
        require_image(args),
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
    session = client_session(args, session)
    clients = cleanup.CleanupClients(
        session.sagemaker_client, session.client("application-autoscaling"), session.client("cloudwatch"), session.client("scheduler")
    )
    report = []
    for endpoint in args.endpoint_name:
        report += cleanup.cleanup_endpoint(clients, endpoint, delete_models=not args.keep_models)
    if args.by_tag:
        key, sep, value = args.by_tag.partition("=")
        report += cleanup.cleanup_by_tag(clients, session.client("resourcegroupstaggingapi"), key, value if sep else None)
    return {"cleanup": [{"kind": k, "name": n, "result": r} for k, n, r in report]}


def cmd_lambda_package(args) -> dict:
    path = lambda_package.build_zip(args.out)
    return {"zip": str(path), "handler": "handler.lambda_handler", "runtime": "python3.12"}
