"""train and tune: their flags and commands. A training job through SDK 3's
ModelTrainer (training.py), a tuning job through its tuner (tuning.py), or with
--local the same trainer in local containers (local_training.py)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from pathlib import Path

from smvision_aws import local_training, tuning
from smvision_aws.commands.common import add_image_and_role, add_region, client_session, require_image, require_role
from smvision_aws.training import TrainSpec, build_trainer, parse_channels, start_training_job, trainer_field, validate_hyperparameters
from smvision_aws.usage import UsageError, parse_pairs, parse_tags

log = logging.getLogger("smvision_aws")


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="launch a training job (single, multi-instance, spot)")
    _train_options(p)
    p.add_argument("--job-name", help="exact job name (default: BASE-JOB-NAME-timestamp)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("tune", help="hyperparameter tuning on val_macro_f1 (Bayesian, early stopping)")
    _train_options(p)
    p.add_argument("--max-jobs", type=int, default=20)
    p.add_argument("--max-parallel-jobs", type=int, default=2)
    p.add_argument("--no-early-stopping", action="store_true")
    p.add_argument("--best", metavar="TUNING_JOB", help="only print the best trial of an existing tuning job")
    p.add_argument("--seed", type=int, default=0, help="--local: seed of the one sampled trial")
    p.set_defaults(run=cmd_tune)


def _train_options(parser: argparse.ArgumentParser) -> None:
    add_region(parser)
    add_image_and_role(parser)
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
        image_uri=require_image(args),
        role=require_role(args),
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
    session = client_session(args, session)
    name, model_data = start_training_job(build_trainer(spec, session), spec, session, job_name=args.job_name, wait=not args.no_wait)
    return {"training_job": name, "model_data": model_data, "instance_count": spec.instance_count, "spot": spec.spot}


def cmd_tune(args, session=None) -> dict:
    if args.best:
        return tuning.best_job_summary(client_session(args, session).sagemaker_client, args.best)
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
    session = client_session(args, session)
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
