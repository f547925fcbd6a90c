"""The trainer's configuration: one frozen dataclass, and the parser built from it.

Every field is a flag (`--batch-size` or `--batch_size`) and a hyperparameters.json
key of the same name, so EC2 users and SageMaker jobs configure the trainer the same
way. hyperparameters.json comes first and command-line flags override it. Unknown
names and bad values raise ConfigError naming the field and what is allowed, which
the entry point writes to /opt/ml/output/failure.
"""

import argparse
import dataclasses
import types
from dataclasses import dataclass, field
from typing import Union, get_args, get_origin, get_type_hints

from container import ConfigError, hyperparameters_to_argv
from container import parse_bool as strict_bool
from train.formats.base import DATA_FORMATS, LABEL_FORMATS, FormatOptions
from vision.guard import INT8_MAX_DROP_POINTS


def _opt(default, help: str, choices=None, aliases=(), parse=None):
    return field(default=default, metadata={"help": help, "choices": choices, "aliases": aliases, "parse": parse})


MULTI_LABEL_CHOICES = ("auto", "true", "false")


def parse_tristate(text: str) -> str:
    """auto, or a strict boolean spelled any way the project accepts ("True", "0", ...)."""
    if text.strip().lower() == "auto":
        return "auto"
    return "true" if parse_bool(text) else "false"


@dataclass(frozen=True)
class TrainConfig:
    # --- model ---
    arch: str = _opt(
        "resnet18",
        "torchvision classification architecture (resnet50, efficientnet_b0, convnext_tiny, vit_b_16, ...), or any timm model "
        "as timm/<name> (timm/convnext_tiny, timm/efficientnetv2_rw_s, timm/deit_small_patch16_224, ...)",
    )
    pretrained_weights: str | None = _opt(
        None,
        "weights file to start from: a torchvision state dict, or a timm .safetensors/.pth file (default: the weights file in "
        "the 'pretrained' channel, else train from scratch)",
    )
    freeze_backbone: bool = _opt(False, "train only the classifier head")
    image_size: int | None = _opt(None, "crop size in pixels for training and serving (default: the model's: 224, or timm's input size)")
    channels_last: bool = _opt(False, "use channels-last memory format (faster convs under bf16/fp16 autocast, on GPUs and CPUs)")
    # --- optimisation ---
    epochs: int = _opt(10, "number of epochs")
    batch_size: int = _opt(32, "images per step per process")
    lr: float = _opt(1e-3, "peak learning rate", aliases=("learning-rate",))
    weight_decay: float = _opt(1e-4, "weight decay (decoupled for adamw)")
    optimizer: str = _opt("adamw", "optimizer", choices=("adamw", "sgd"))
    momentum: float = _opt(0.9, "momentum for sgd")
    scheduler: str = _opt("cosine", "learning-rate schedule after warm-up", choices=("cosine", "step", "none"))
    warmup_epochs: int = _opt(0, "epochs of linear warm-up from lr/10")
    step_size: int = _opt(10, "step scheduler: epochs between decays")
    gamma: float = _opt(0.1, "step scheduler: decay factor")
    label_smoothing: float = _opt(0.0, "label smoothing for cross-entropy, in [0, 1)")
    augment: bool = _opt(
        True,
        "random-resized crop and horizontal flip of the training images (false: train on the evaluation resize and centre crop, "
        "e.g. when position or orientation carries the label)",
    )
    class_weighted_loss: bool = _opt(False, "weight the loss by inverse class frequency (imbalanced data)")
    early_stopping_patience: int = _opt(
        0, "stop after this many epochs without improvement of the objective (0: never)", aliases=("patience",)
    )
    objective: str = _opt(
        "val_macro_f1",
        "metric that picks the best epoch (val_map: multi-label only)",
        choices=("val_macro_f1", "val_acc", "val_loss", "val_map"),
    )
    calibrate: bool = _opt(
        True,
        "after training, fit temperature scaling on the validation split so the served probabilities are calibrated "
        "(false: serve the network's own softmax; ECE is reported either way; multi-label models are not calibrated)",
    )
    amp: str = _opt(
        "auto",
        "mixed precision: auto = bf16 (or fp16) on GPUs, bf16 on CPUs with AVX-512 BF16 or AMX, else off",
        choices=("auto", "bf16", "fp16", "off"),
    )
    seed: int = _opt(42, "random seed")
    # --- data (docs/training.md#data-formats) ---
    data_format: str = _opt("auto", "how the splits are stored (auto: from the input mode, content type and files)", choices=DATA_FORMATS)
    label_format: str | None = _opt(
        None,
        "RecordIO and .lst labels: class ids or a 0/1 vector (default: the channel content type's label-format, else class-id)",
        choices=LABEL_FORMATS,
    )
    label_attribute: str | None = _opt(None, "Ground Truth manifests: the label attribute (default: found from its -metadata)")
    attribute_names: str | None = _opt(
        None,
        "Pipe-mode augmented manifests: the channel's AttributeNames, comma-separated (default: source-ref,<label-attribute or class>)",
    )
    label_separator: str | None = _opt(None, "plain CSV/JSON-lines manifests: split a label cell into several labels (e.g. ' ')")
    num_classes: int | None = _opt(None, "class count for class-id labels (the built-in algorithm's; default: the largest id + 1)")
    multi_label: str = _opt(
        "auto",
        "several labels per image (sigmoid per class); auto: when the data has images with several or no labels, or label-format=multi-hot",
        choices=MULTI_LABEL_CHOICES,
        parse=parse_tristate,
    )
    sampler: str = _opt(
        "random", "training order: random, or balanced (classes drawn equally often; File mode)", choices=("random", "balanced")
    )
    check_data: bool = _opt(True, "check the data before training (unreadable, tiny, duplicate and leaked images, fingerprint)")
    num_workers: int = _opt(-1, "DataLoader workers per process (-1: from the CPU count)")
    val_fraction: float = _opt(0.1, "share of images held out for validation when the data has no validation split")
    max_bad_fraction: float = _opt(0.05, "fail when more than this share of images cannot be read or decoded")
    train_dir: str | None = _opt(None, "training data in any format (default: from the SageMaker channels)")
    valid_dir: str | None = _opt(None, "validation data (default: from the channels)")
    test_dir: str | None = _opt(None, "test data (default: from the channels)")
    # --- run ---
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    log_interval: int = _opt(20, "steps between progress lines")
    checkpoint_every_steps: int = _opt(0, "also checkpoint every N steps (0: at epoch ends only)")
    keep_checkpoints: int = _opt(2, "checkpoints kept in the checkpoint directory")
    resume: bool = _opt(True, "resume from the newest valid checkpoint when one exists")
    # --- distributed ---
    nproc_per_node: int = _opt(0, "processes on this host (0: one per GPU, else 1)", aliases=("nproc",))
    nnodes: int = _opt(0, "hosts taking part (0: from resourceconfig.json or NNODES, else 1)")
    node_rank: int = _opt(-1, "this host's rank (-1: from resourceconfig.json or NODE_RANK, else 0)")
    master_addr: str | None = _opt(None, "address of rank 0's host (default: first host, or MASTER_ADDR)")
    master_port: int = _opt(29500, "rendezvous port on the master host")
    dist_timeout_s: int = _opt(300, "seconds before a dead or hung peer fails the job")
    max_restarts: int = _opt(0, "restart the workers this many times after a failure; they resume from the last checkpoint")
    # --- outputs (default: the /opt/ml contract) ---
    model_dir: str | None = _opt(None, "where the model is written (default /opt/ml/model)")
    output_data_dir: str | None = _opt(None, "metrics and plots (default /opt/ml/output/data)")
    checkpoint_dir: str | None = _opt(None, "checkpoints (default /opt/ml/checkpoints)")
    export_onnx: bool = _opt(
        True,
        "also write model.onnx, its int8 variant and a 64-image calibration sample, for the CPU engines and the torch-free "
        "serving image (docs/serving.md); a failed export is logged and leaves them out",
    )
    int8_max_drop: float = _opt(
        INT8_MAX_DROP_POINTS,
        "accuracy points the int8 model may lose against fp32 on the validation split; one that loses more is left out of the "
        "model and serving runs fp32 (docs/serving.md)",
    )
    monitoring_baseline: int = _opt(
        2000, "validation images (at most) the model's monitoring baseline is computed from, into model/monitoring/ (0: no baseline)"
    )
    # --- tracking (docs/observability.md) ---
    mlflow_experiment: str | None = _opt(
        None, "MLflow experiment of this job's run when MLFLOW_TRACKING_URI is set (default: MLFLOW_EXPERIMENT_NAME, else sagemaker-vision)"
    )
    tensorboard_dir: str | None = _opt(
        None, "TensorBoard event files (default: the job's TensorBoardOutputConfig path, or /opt/ml/output/tensorboard when it exists)"
    )

    def __post_init__(self):
        _validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format_options(self) -> FormatOptions:
        """How train.formats reads the data."""
        names = tuple(name.strip() for name in (self.attribute_names or "").split(",") if name.strip())
        return FormatOptions(self.data_format, self.label_format, self.label_attribute, names, self.label_separator)


# SageMaker/distribution switches users set on their estimators. They are accepted
# so such jobs run; DDP is used whenever there is more than one process anyway.
IGNORED_HYPERPARAMETERS = ("sagemaker_distributed_dataparallel_enabled", "sagemaker_torch_distributed_enabled")


def parse_bool(text: str) -> bool:
    """argparse type for boolean flags: the project's one strict parser, its message kept
    (a tuner's "False" is false; "perhaps" fails naming the flag)."""
    try:
        return strict_bool(text, "value")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(name, value, zero_ok=False):
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name}={value}: must be {'>= 0' if zero_ok else '> 0'}")


def _validate(c: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "log_interval", "keep_checkpoints", "step_size", "dist_timeout_s"):
        _positive(name, getattr(c, name))
    for name in ("image_size", "num_classes"):
        if getattr(c, name) is not None:
            _positive(name, getattr(c, name))
    if c.attribute_names is not None and not c.format_options().attribute_names:
        raise ConfigError(f"attribute_names={c.attribute_names!r}: name the channel's AttributeNames, e.g. source-ref,class")
    for name in (
        "warmup_epochs",
        "early_stopping_patience",
        "checkpoint_every_steps",
        "nproc_per_node",
        "nnodes",
        "max_restarts",
        "monitoring_baseline",
    ):
        _positive(name, getattr(c, name), zero_ok=True)
    if not c.lr > 0:
        raise ConfigError(f"lr={c.lr}: must be > 0")
    if c.weight_decay < 0:
        raise ConfigError(f"weight_decay={c.weight_decay}: must be >= 0")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(f"label_smoothing={c.label_smoothing}: must be in [0, 1)")
    if not 0 < c.val_fraction < 1:
        raise ConfigError(f"val_fraction={c.val_fraction}: must be in (0, 1)")
    if not 0 <= c.max_bad_fraction <= 1:
        raise ConfigError(f"max_bad_fraction={c.max_bad_fraction}: must be in [0, 1]")
    if not 0 <= c.int8_max_drop <= 100:
        raise ConfigError(f"int8_max_drop={c.int8_max_drop}: must be in [0, 100] (accuracy points)")
    if c.num_workers < -1:
        raise ConfigError(f"num_workers={c.num_workers}: must be -1 (auto) or >= 0")
    if c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
        raise ConfigError(f"warmup_epochs={c.warmup_epochs}: must be smaller than epochs={c.epochs}")
    if c.device not in ("auto", "cpu", "cuda") and not c.device.startswith("cuda:"):
        raise ConfigError(f"device={c.device!r}: choose auto, cpu, cuda or cuda:N")
    if not 0 < c.master_port < 65536:
        raise ConfigError(f"master_port={c.master_port}: not a TCP port")


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting, so the
    message reaches the failure file."""

    def error(self, message):
        raise ConfigError(message)


def _base_type(tp):
    if get_origin(tp) in (Union, types.UnionType):  # Optional[X] and X | None
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train",
        description="Train an image classifier. Every flag is also a hyperparameters.json key "
        "(SageMaker); flags given here override hyperparameters.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = _base_type(hints[f.name])
        names = [f.name.replace("_", "-")] + list(f.metadata["aliases"])
        options = []
        for name in names:
            for spelling in (name, name.replace("-", "_")):
                if "--" + spelling not in options:
                    options.append("--" + spelling)
        kwargs = dict(dest=f.name, default=f.default, help=f.metadata["help"])
        if f.metadata["parse"]:
            kwargs.update(type=f.metadata["parse"])
        elif kind is bool:
            # `--freeze-backbone` alone means true; a tuner's "False" must mean false.
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs.update(type=kind)
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*options, **kwargs)
    return parser


def resolve_config(hyperparameters: dict[str, str], argv: list[str]) -> TrainConfig:
    """hyperparameters.json first, command-line flags last (they win)."""
    hyperparameters = {k: v for k, v in hyperparameters.items() if k not in IGNORED_HYPERPARAMETERS}
    full_argv = hyperparameters_to_argv(hyperparameters) + list(argv)
    parser = get_args_parser()
    try:
        args, unknown = parser.parse_known_args(full_argv)
    except ConfigError as err:
        raise ConfigError(f"invalid training configuration: {err}") from None
    if unknown:
        names = [a for a in unknown if a.startswith("--")] or unknown
        valid = ", ".join(f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig))
        raise ConfigError(f"unknown hyperparameter or flag {names[0]!r} (see `train --help`); valid names: {valid}")
    return TrainConfig(**vars(args))


def field_name(name: str) -> str | None:
    """The TrainConfig field a hyperparameter name or alias sets ('learning_rate' -> 'lr',
    'batch_size' -> 'batch_size'); None for an unknown name. Spellings as the parser's."""
    spelling = name.replace("_", "-")
    for f in dataclasses.fields(TrainConfig):
        if spelling in {f.name.replace("_", "-"), *(alias.replace("_", "-") for alias in f.metadata["aliases"])}:
            return f.name
    return None
