"""process, register, pipeline, monitor and iam-policies: their flags and commands. A
command of the image as a Processing job (processing.py), the model registry
(registry.py), the seed workflow as a SageMaker Pipeline (pipeline.py), the image's
`monitor` on a schedule with its alarm (monitoring.py) and the roles' policy documents
(iam.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smvision_aws import cleanup, hosting, iam, monitoring, processing, registry
from smvision_aws.commands.common import add_image_and_role, add_region, client_session, require_image, require_role
from smvision_aws.usage import UsageError, parse_pairs, parse_tags


def add_parsers(sub) -> None:
    _add_process(sub)

    p = sub.add_parser("register", help="model registry: a package version from a training job, or a new approval status")
    add_region(p, local=False)
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
    p.set_defaults(run=cmd_register)

    _add_pipeline(sub)
    _add_monitor(sub)

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
    p.set_defaults(run=cmd_iam_policies)


def _add_process(sub) -> None:
    p = sub.add_parser(
        "process",
        help="run a command of the image (e.g. train prepare-bins) as a Processing job",
        description="Run COMMAND of the image as a SageMaker Processing job. Inputs are mounted at "
        "/opt/ml/processing/input/NAME, outputs uploaded from /opt/ml/processing/output/NAME, e.g.\n"
        "  process --input bins=s3://b/raw/ --output data=s3://b/data/ -- train prepare-bins "
        "--images /opt/ml/processing/input/bins/images --metadata /opt/ml/processing/input/bins/metadata "
        "--out /opt/ml/processing/output/data",
    )
    add_region(p, local=False)
    add_image_and_role(p)
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
    p.set_defaults(run=cmd_process)


def _add_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="the seed workflow as a SageMaker Pipeline (SDK 3): prepare-bins -> train -> F1 gate -> register")
    p.add_argument("action", choices=["upsert", "start", "definition"], help="definition: print the JSON only (no AWS call)")
    add_region(p, local=False)
    add_image_and_role(p)
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
    p.set_defaults(run=cmd_pipeline)


def _add_monitor(sub) -> None:
    p = sub.add_parser(
        "monitor",
        help="run the image's `monitor` on an endpoint's captures every hour, with a CloudWatch alarm on violations",
        description="schedule: a Model Monitor schedule (--via model-monitor, accounts that have Model Monitor) or an "
        "EventBridge Scheduler schedule starting a Processing job (--via processing, every account), and an alarm on "
        "violation_count. delete: remove them (cleanup does too). docs/monitoring.md",
    )
    p.add_argument("action", choices=["schedule", "delete"])
    add_region(p, local=False)
    add_image_and_role(p)
    p.add_argument("--endpoint-name", required=True)
    p.add_argument("--variant", default=hosting.DEFAULT_VARIANT, help="the capture folder: the variant, or a multi-model endpoint's model")
    p.add_argument("--via", choices=monitoring.VIA, default="processing", help="default processing (works in every account)")
    p.add_argument("--model-data", help="s3://.../model.tar.gz of the model the endpoint serves (with its monitoring baseline)")
    p.add_argument("--training-job", help="instead of --model-data: this Completed job's model.tar.gz")
    p.add_argument("--capture-uri", help="--via processing: the endpoint's capture destination (deploy --capture-uri)")
    p.add_argument("--scheduler-role", metavar="ARN", help="--via processing: the role EventBridge Scheduler assumes to start the job")
    p.add_argument("--output", help="s3://bucket/prefix for each run's statistics, violations and report")
    p.add_argument(
        "--baseline-uri", help="--via model-monitor: s3:// prefix holding the model's monitoring/constraints.json and statistics.json"
    )
    p.add_argument("--schedule-expression", help="default: hourly (Model Monitor at :00, the Processing job at :10)")
    p.add_argument("--alarm-topic", metavar="SNS_ARN", help="notify this SNS topic when the alarm fires")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--volume-size", type=int, default=30, help="GB of EBS")
    p.add_argument("--max-run", type=int, default=3600, help="seconds at most (60..3600)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="the monitor's settings, e.g. SM_VISION_MONITOR_ALPHA=0.01")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.set_defaults(run=cmd_monitor)


def cmd_monitor(args, session=None) -> dict:
    session = client_session(args, session)
    if args.action == "delete":
        clients = cleanup.CleanupClients(session.sagemaker_client, None, session.client("cloudwatch"), session.client("scheduler"))
        report: list = []
        cleanup.delete_monitoring(report, clients, args.endpoint_name)
        return {"cleanup": [{"kind": k, "name": n, "result": r} for k, n, r in report]}
    if args.training_job:
        model_data = hosting.model_data_from_training_job(session.sagemaker_client, args.training_job)
    elif args.model_data:
        model_data = args.model_data
    else:
        raise UsageError("give --model-data s3://.../model.tar.gz or --training-job NAME: the model the endpoint serves")
    spec = monitoring.MonitorSpec(
        endpoint=args.endpoint_name,
        image_uri=require_image(args),
        role=require_role(args),
        model_data=model_data,
        output_uri=(args.output or "").rstrip("/"),
        via=args.via,
        variant=args.variant,
        capture_uri=args.capture_uri.rstrip("/") if args.capture_uri else None,
        scheduler_role=args.scheduler_role,
        baseline_uri=args.baseline_uri.rstrip("/") if args.baseline_uri else None,
        schedule_expression=args.schedule_expression,
        instance_type=args.instance_type,
        volume_size_gb=args.volume_size,
        max_runtime_s=args.max_run,
        alarm_topic=args.alarm_topic,
        environment=parse_pairs(args.env, "env"),
        tags=parse_tags(args.tag),
    )
    spec.check()
    return monitoring.schedule(session, spec)


def cmd_process(args, session=None) -> dict:
    command = args.container_command[1:] if args.container_command[:1] == ["--"] else args.container_command
    spec = processing.ProcessingSpec(
        role=require_role(args),
        image_uri=require_image(args),
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
    return processing.start(client_session(args, session).sagemaker_client, request, wait=not args.no_wait)


def cmd_register(args, session=None) -> dict:
    session = client_session(args, session)
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
        image_uri=require_image(args),
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
