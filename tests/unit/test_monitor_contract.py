"""Model Monitor's container contract and the monitor's settings (container.monitoring):
strict parsing, errors that name the variable, and the order flags > env > constraints."""

from datetime import datetime, timezone

import pytest

from container import ConfigError
from container.monitoring import MonitoringJob, MonitorSettings
from monitor.checks import STATISTICAL_TESTS, check_permutations

# Model Monitor's documented example ("Container Contract Inputs"), spaces in the times included.
MODEL_MONITOR_ENV = {
    "dataset_format": '{"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput","endpointOutput"]}}',
    "dataset_source": "/opt/ml/processing/endpointdata",
    "end_time": "2019-12-01T16: 20: 00Z",
    "output_path": "/opt/ml/processing/resultdata",
    "publish_cloudwatch_metrics": "Disabled",
    "sagemaker_endpoint_name": "endpoint-name",
    "sagemaker_monitoring_schedule_name": "schedule-name",
    "start_time": "2019-12-01T15: 20: 00Z",
}


def test_model_monitor_environment_parses():
    job = MonitoringJob.from_env(MODEL_MONITOR_ENV)
    assert job.start_time == datetime(2019, 12, 1, 15, 20, tzinfo=timezone.utc)
    assert job.end_time == datetime(2019, 12, 1, 16, 20, tzinfo=timezone.utc)
    assert job.capture_indexes == ("endpointInput", "endpointOutput") and job.captures_outputs
    assert job.publish_cloudwatch_metrics is False
    assert (job.endpoint_name, job.schedule_name) == ("endpoint-name", "schedule-name")
    assert job.dataset_source == "/opt/ml/processing/endpointdata" and job.output_path == "/opt/ml/processing/resultdata"
    assert MonitoringJob.from_env({**MODEL_MONITOR_ENV, "publish_cloudwatch_metrics": "Enabled"}).publish_cloudwatch_metrics


def test_flags_win_over_the_environment_and_times_without_a_zone_are_utc():
    job = MonitoringJob.from_env(MODEL_MONITOR_ENV, {"dataset_source": "/captures", "start_time": "2019-12-01T15:00:00"})
    assert job.dataset_source == "/captures"
    assert job.start_time == datetime(2019, 12, 1, 15, tzinfo=timezone.utc)
    offset = MonitoringJob.from_env(MODEL_MONITOR_ENV, {"start_time": "2019-12-01T17:00:00+02:00"})
    assert offset.start_time == datetime(2019, 12, 1, 15, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("publish_cloudwatch_metrics", "Enabld", "publish_cloudwatch_metrics='Enabld': expected Enabled or Disabled"),
        ("start_time", "yesterday", "start_time='yesterday': expected an ISO 8601 time"),
        ("end_time", "2019-12-01T15:00:00Z", "is not before end_time"),
        ("dataset_format", '{"csv": {"header": true}}', "dataset_format: only endpoint Data Capture"),
        ("dataset_format", '{"sagemakerCaptureJson": {"captureIndexNames": ["endpointOutput"]}}', "lacks endpointInput"),
        ("dataset_format", "{not json", "dataset_format='{not json': not JSON"),
        ("dataset_source", "", "dataset_source is not set"),
        ("output_path", " ", "output_path is not set"),
    ],
)
def test_bad_contract_values_fail_naming_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        MonitoringJob.from_env({**MODEL_MONITOR_ENV, name: value})


def test_settings_defaults_and_their_precedence():
    assert MonitorSettings().model == "/opt/ml/processing/model"
    defaults = MonitorSettings.from_env({})
    assert (defaults.alpha, defaults.permutations, defaults.min_images) == (0.05, 1000, 30)
    from_file = MonitorSettings.from_env({}, None, {"alpha": 0.01, "min_images": 50, "model": "/ignored"})
    assert (from_file.alpha, from_file.min_images, from_file.model) == (0.01, 50, "/opt/ml/processing/model")  # thresholds only
    env_wins = MonitorSettings.from_env({"SM_VISION_MONITOR_ALPHA": "0.02"}, None, {"alpha": 0.01})
    assert env_wins.alpha == 0.02
    flag_wins = MonitorSettings.from_env({"SM_VISION_MONITOR_ALPHA": "0.02"}, {"alpha": "0.03"}, {"alpha": 0.01})
    assert flag_wins.alpha == 0.03
    assert MonitorSettings.from_env({"SM_VISION_MONITOR_MODEL": "s3://b/k/model.tar.gz"}).model == "s3://b/k/model.tar.gz"


@pytest.mark.parametrize(
    ("environ", "constraints", "message"),
    [
        ({"SM_VISION_MONITOR_ALPHA": "0.7"}, None, "SM_VISION_MONITOR_ALPHA=0.7: must be <= 0.5"),
        ({"SM_VISION_MONITOR_MIN_IMAGES": "lots"}, None, "SM_VISION_MONITOR_MIN_IMAGES='lots': expected a whole number"),
        ({"SM_VISION_MONITOR_REPORT_IMAGES": "sometimes"}, None, "SM_VISION_MONITOR_REPORT_IMAGES='sometimes'"),
        ({}, {"min_effect": "big"}, "constraints.json sagemaker_vision.min_effect='big': expected a number"),
    ],
)
def test_bad_settings_fail_naming_where_they_came_from(environ, constraints, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        MonitorSettings.from_env(environ, None, constraints)


def test_the_mmd_test_must_be_able_to_reach_its_level():
    check_permutations(MonitorSettings())  # 1/1001 <= 0.05/10
    with pytest.raises(ConfigError, match=f"alpha/{STATISTICAL_TESTS}"):
        check_permutations(MonitorSettings(alpha=0.01, permutations=500))  # 1/501 > 0.001


def test_hours_make_the_window_the_whole_hours_before_the_end():
    job = MonitoringJob.from_env(
        {"dataset_source": "/c", "output_path": "/o", "end_time": "2026-12-01T16:05:00Z", "SM_VISION_MONITOR_HOURS": "2"}
    )
    assert (job.start_time, job.end_time) == (
        datetime(2026, 12, 1, 14, tzinfo=timezone.utc),
        datetime(2026, 12, 1, 16, tzinfo=timezone.utc),
    )
    now = datetime(2026, 12, 1, 9, 59, 59, tzinfo=timezone.utc)  # no end: the hours before now
    job = MonitoringJob.from_env({"dataset_source": "/c", "output_path": "/o"}, {"hours": "1"}, now=now)
    assert (job.start_time, job.end_time) == (datetime(2026, 12, 1, 8, tzinfo=timezone.utc), datetime(2026, 12, 1, 9, tzinfo=timezone.utc))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hours": "1", "start_time": "2026-12-01T15:00:00Z"}, "give start_time (--start) or SM_VISION_MONITOR_HOURS (--hours), not both"),
        ({"hours": "0"}, "SM_VISION_MONITOR_HOURS=0: must be >= 1"),
        ({"dataset_source": "s3://bucket/capture/ep/AllTraffic"}, "an S3 source needs a window"),
    ],
)
def test_bad_windows_fail_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MonitoringJob.from_env({"dataset_source": "/c", "output_path": "/o"}, overrides)
