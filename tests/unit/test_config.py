import pytest

from container import ConfigError
from train.config import TrainConfig, get_args_parser, resolve_config


def test_defaults_are_the_dataclass_defaults():
    assert resolve_config({}, []) == TrainConfig()


def test_both_spellings_and_tuner_aliases():
    config = resolve_config({"batch_size": "16", "learning_rate": "0.02", "weight-decay": "0.001", "patience": "3"}, [])
    assert (config.batch_size, config.lr, config.weight_decay, config.early_stopping_patience) == (16, 0.02, 0.001, 3)
    assert resolve_config({"batch-size": "8"}, []).batch_size == 8


def test_flags_override_hyperparameters():
    config = resolve_config({"epochs": "3", "lr": "0.1"}, ["--epochs", "7"])
    assert (config.epochs, config.lr) == (7, 0.1)


@pytest.mark.parametrize(
    "text, expected", [("False", False), ("false", False), ("0", False), ("no", False), ("TRUE", True), ("1", True), ("Yes", True)]
)
def test_booleans_from_tuners(text, expected):
    assert resolve_config({"freeze-backbone": text}, []).freeze_backbone is expected


def test_bare_boolean_flag_means_true():
    assert resolve_config({}, ["--freeze-backbone"]).freeze_backbone is True


def test_sagemaker_switches_are_accepted():
    config = resolve_config(
        {
            "sagemaker_torch_distributed_enabled": "true",
            "sagemaker_distributed_dataparallel_enabled": "false",
            "sagemaker_region": '"us-east-1"',
        },
        [],
    )
    assert config == TrainConfig()


@pytest.mark.parametrize(
    "hyperparameters, message",
    [
        ({"epoch": "3"}, "unknown hyperparameter or flag '--epoch'.*valid names: .*epochs"),
        ({"optimizer": "adam"}, "optimizer.*invalid choice: 'adam'.*adamw.*sgd"),
        ({"scheduler": "linear"}, "scheduler.*cosine.*step.*none"),
        ({"amp": "fp8"}, "amp.*bf16"),
        ({"batch_size": "many"}, "batch.size.*invalid int value"),
        ({"batch_size": "0"}, "batch_size=0: must be > 0"),
        ({"lr": "-0.1"}, "lr=-0.1"),
        ({"freeze_backbone": "perhaps"}, "freeze.backbone.*true/false"),
        ({"augment": "sometimes"}, "augment.*true/false"),
        ({"label_smoothing": "1.5"}, "label_smoothing"),
        ({"warmup_epochs": "5", "epochs": "5"}, "warmup_epochs"),
        ({"objective": "accuracy"}, "objective.*val_macro_f1"),
    ],
)
def test_bad_values_fail_naming_the_field(hyperparameters, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(hyperparameters, [])


def test_every_field_has_a_flag_with_help():
    help_text = get_args_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text


def test_data_format_settings_become_format_options():
    config = resolve_config({"data-format": "groundtruth", "label_attribute": "species", "attribute_names": "source-ref, species"}, [])
    options = config.format_options()
    assert (options.data_format, options.label_attribute, options.attribute_names) == ("groundtruth", "species", ("source-ref", "species"))
    assert resolve_config({}, []).format_options().attribute_names == ()
    with pytest.raises(ConfigError, match="invalid choice: 'coco'"):
        resolve_config({"data_format": "coco"}, [])
    with pytest.raises(ConfigError, match="invalid choice: 'one-hot'"):
        resolve_config({"label_format": "one-hot"}, [])
    with pytest.raises(ConfigError, match="attribute_names=' , ': name the channel's AttributeNames"):
        resolve_config({"attribute_names": " , "}, [])


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("True", "true"), ("0", "false"), ("no", "false")])
def test_multi_label_is_auto_or_a_boolean(text, expected):
    assert resolve_config({"multi_label": text}, []).multi_label == expected


def test_multi_label_refuses_other_words():
    with pytest.raises(ConfigError, match="multi_label|multi-label"):
        resolve_config({"multi_label": "perhaps"}, [])


def test_image_size_and_num_classes_are_optional_but_positive():
    config = resolve_config({}, [])
    assert config.image_size is None and config.num_classes is None and config.check_data is True
    assert resolve_config({"image_size": "64", "num_classes": "12"}, []).num_classes == 12
    for name in ("image_size", "num_classes"):
        with pytest.raises(ConfigError, match=f"{name}=0: must be > 0"):
            resolve_config({name: "0"}, [])


def test_int8_max_drop_is_accuracy_points_between_0_and_100():
    assert resolve_config({}, []).int8_max_drop == 0.5
    assert resolve_config({"int8_max_drop": "2"}, []).int8_max_drop == 2.0
    for text in ("-1", "101", "nan"):
        with pytest.raises(ConfigError, match=r"int8_max_drop=.*: must be in \[0, 100\]"):
            resolve_config({"int8_max_drop": text}, [])
