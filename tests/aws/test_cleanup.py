"""cleanup: by name and by tag (what `monitor` made, scaling targets, the async
scale-from-zero alarm, models, endpoints, endpoint configs), tolerant of resources that
are already gone."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from smvision_aws import cleanup, cli
from smvision_aws.commands.endpoints import cmd_cleanup
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, NOW

TARGET = {
    "ServiceNamespace": "sagemaker",
    "ResourceId": "endpoint/shapes-prod/variant/AllTraffic",
    "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
}


ALARM = "shapes-prod-backlog-without-capacity"


@pytest.fixture
def clients(session, sm_stub, stubber):
    """The clean-up's clients, the tagging client, and the Stubbers of all five services."""
    aas_stub, tag_stub, cw_stub = stubber("application-autoscaling"), stubber("resourcegroupstaggingapi"), stubber("cloudwatch")
    handles = cleanup.CleanupClients(session.sagemaker_client, aas_stub.client, cw_stub.client, stubber("scheduler").client)
    return handles, tag_stub.client, sm_stub, aas_stub, tag_stub, cw_stub


@pytest.fixture
def no_monitoring(sm_stub, stubber):
    """no_monitoring(endpoint): queue the look for what `monitor` made, finding nothing
    (first, before anything else of the endpoint is touched)."""
    scheduler, cloudwatch = stubber("scheduler"), stubber("cloudwatch")

    def expect(endpoint="shapes-prod"):
        sm_stub.add_response("list_monitoring_schedules", {"MonitoringScheduleSummaries": []}, {"EndpointName": endpoint})
        scheduler.add_response("list_schedules", {"Schedules": []}, {"NamePrefix": f"{endpoint}-monitor"})
        cloudwatch.add_response("describe_alarms", {"MetricAlarms": []}, {"AlarmNamePrefix": f"{endpoint}-monitor"})

    return expect


def no_alarm(cw_stub, endpoint="shapes-prod"):
    cw_stub.add_response("describe_alarms", {"MetricAlarms": []}, {"AlarmNames": [f"{endpoint}-backlog-without-capacity"]})


def endpoint_description(name="shapes-prod", config="shapes-prod-config"):
    return {
        "EndpointName": name,
        "EndpointArn": f"{ARN}:endpoint/{name}",
        "EndpointConfigName": config,
        "EndpointStatus": "InService",
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        "ProductionVariants": [{"VariantName": "AllTraffic"}],
    }


def config_description(config="shapes-prod-config", model="shapes-prod-model"):
    return {
        "EndpointConfigName": config,
        "EndpointConfigArn": f"{ARN}:endpoint-config/{config}",
        "CreationTime": NOW,
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": 2}
        ],
    }


def missing(stub, operation, params, code="ValidationException", message=None):
    stub.add_client_error(
        operation,
        service_error_code=code,
        http_status_code=400,
        service_message=message or f"Could not find {operation}",
        expected_params=params,
    )


def expect_full_teardown(sm_stub, aas_stub, cw_stub):
    """The calls that delete shapes-prod completely, in order: describe, deregister
    autoscaling, look for the backlog alarm (none: a real-time endpoint), then model,
    endpoint and endpoint config."""
    sm_stub.add_response("describe_endpoint", endpoint_description(), {"EndpointName": "shapes-prod"})
    sm_stub.add_response("describe_endpoint_config", config_description(), {"EndpointConfigName": "shapes-prod-config"})
    aas_stub.add_response("deregister_scalable_target", {}, TARGET)
    no_alarm(cw_stub)
    sm_stub.add_response("delete_model", {}, {"ModelName": "shapes-prod-model"})
    sm_stub.add_response("delete_endpoint", {}, {"EndpointName": "shapes-prod"})
    sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "shapes-prod-config"})


def test_full_cleanup_by_name(clients, session, no_monitoring):
    _, _, sm_stub, aas_stub, _, cw_stub = clients
    no_monitoring()
    expect_full_teardown(sm_stub, aas_stub, cw_stub)
    args = cli.get_args_parser().parse_args(["cleanup", "--endpoint-name", "shapes-prod"])
    result = cmd_cleanup(args, session=session)
    assert result["cleanup"] == [
        {"kind": "scalable-target", "name": "endpoint/shapes-prod/variant/AllTraffic", "result": "deleted"},
        {"kind": "alarm", "name": ALARM, "result": "already gone"},
        {"kind": "model", "name": "shapes-prod-model", "result": "deleted"},
        {"kind": "endpoint", "name": "shapes-prod", "result": "deleted"},
        {"kind": "endpoint-config", "name": "shapes-prod-config", "result": "deleted"},
    ]


def test_half_deleted_endpoint(clients, no_monitoring):
    """The endpoint is gone, its config (named like it, the SDK default) and model are not,
    and the scalable target was deregistered already."""
    handles, _, sm_stub, aas_stub, _, cw_stub = clients
    no_monitoring()
    missing(sm_stub, "describe_endpoint", {"EndpointName": "shapes-prod"}, message='Could not find endpoint "shapes-prod".')
    sm_stub.add_response("describe_endpoint_config", config_description("shapes-prod"), {"EndpointConfigName": "shapes-prod"})
    missing(aas_stub, "deregister_scalable_target", TARGET, code="ObjectNotFoundException", message="No scalable target")
    no_alarm(cw_stub)
    sm_stub.add_response("delete_model", {}, {"ModelName": "shapes-prod-model"})
    missing(sm_stub, "delete_endpoint", {"EndpointName": "shapes-prod"}, message='Could not find endpoint "shapes-prod".')
    sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "shapes-prod"})
    report = cleanup.cleanup_endpoint(handles, "shapes-prod")
    assert [(kind, result) for kind, _, result in report] == [
        ("scalable-target", "already gone"),
        ("alarm", "already gone"),
        ("model", "deleted"),
        ("endpoint", "already gone"),
        ("endpoint-config", "deleted"),
    ]


def test_everything_already_gone_is_not_an_error(clients, no_monitoring):
    handles, _, sm_stub, _, _, cw_stub = clients
    for _ in range(2):  # and running it again changes nothing
        no_monitoring("gone")
        missing(sm_stub, "describe_endpoint", {"EndpointName": "gone"}, message='Could not find endpoint "gone".')
        missing(
            sm_stub, "describe_endpoint_config", {"EndpointConfigName": "gone"}, message='Could not find endpoint configuration "gone".'
        )
        no_alarm(cw_stub, "gone")
        missing(sm_stub, "delete_endpoint", {"EndpointName": "gone"}, message='Could not find endpoint "gone".')
        missing(sm_stub, "delete_endpoint_config", {"EndpointConfigName": "gone"}, message='Could not find endpoint configuration "gone".')
        assert cleanup.cleanup_endpoint(handles, "gone") == [
            ("alarm", "gone-backlog-without-capacity", "already gone"),
            ("endpoint", "gone", "already gone"),
            ("endpoint-config", "gone", "already gone"),
        ]


def test_real_errors_are_not_swallowed(clients, no_monitoring):
    handles, _, sm_stub, aas_stub, _, cw_stub = clients
    no_monitoring()
    sm_stub.add_response("describe_endpoint", endpoint_description(), {"EndpointName": "shapes-prod"})
    sm_stub.add_response("describe_endpoint_config", config_description(), {"EndpointConfigName": "shapes-prod-config"})
    aas_stub.add_response("deregister_scalable_target", {}, TARGET)
    no_alarm(cw_stub)
    sm_stub.add_response("delete_model", {}, {"ModelName": "shapes-prod-model"})
    sm_stub.add_client_error(
        "delete_endpoint",
        service_error_code="AccessDeniedException",
        http_status_code=403,
        service_message="not authorized",
        expected_params={"EndpointName": "shapes-prod"},
    )
    with pytest.raises(ClientError, match="AccessDenied"):
        cleanup.cleanup_endpoint(handles, "shapes-prod")


def test_a_validation_error_that_is_not_about_absence_is_raised(clients, no_monitoring):
    handles, _, sm_stub, _, _, _ = clients
    no_monitoring("Bad_Name")
    sm_stub.add_client_error(
        "describe_endpoint",
        service_error_code="ValidationException",
        http_status_code=400,
        service_message="1 validation error detected: Value at 'endpointName' failed",
        expected_params={"EndpointName": "Bad_Name"},
    )
    with pytest.raises(ClientError):
        cleanup.cleanup_endpoint(handles, "Bad_Name")


def test_cleanup_by_tag_follows_pages_and_removes_tagged_leftovers(clients, session, no_monitoring):
    _, _, sm_stub, aas_stub, tag_stub, cw_stub = clients
    request = {
        "TagFilters": [{"Key": "project", "Values": ["shapes"]}],
        "ResourceTypeFilters": ["sagemaker:endpoint", "sagemaker:endpoint-config", "sagemaker:model"],
    }
    tag_stub.add_response(
        "get_resources",
        {
            "PaginationToken": "page2",
            "ResourceTagMappingList": [
                {"ResourceARN": f"{ARN}:endpoint/shapes-prod"},
                {"ResourceARN": f"{ARN}:endpoint-config/shapes-prod-config"},
            ],
        },
        request,
    )
    tag_stub.add_response(
        "get_resources",
        {
            "PaginationToken": "",
            "ResourceTagMappingList": [
                {"ResourceARN": f"{ARN}:model/shapes-prod-model"},
                {"ResourceARN": f"{ARN}:model/orphan-model"},
                {"ResourceARN": f"{ARN}:endpoint-config/orphan-config"},
            ],
        },
        {**request, "PaginationToken": "page2"},
    )
    no_monitoring()
    expect_full_teardown(sm_stub, aas_stub, cw_stub)
    sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "orphan-config"})
    sm_stub.add_response("delete_model", {}, {"ModelName": "orphan-model"})
    args = cli.get_args_parser().parse_args(["cleanup", "--by-tag", "project=shapes"])
    result = cmd_cleanup(args, session=session)
    names = [(item["kind"], item["name"]) for item in result["cleanup"]]
    assert names[-2:] == [("endpoint-config", "orphan-config"), ("model", "orphan-model")]
    assert len(names) == 7


def test_the_async_scale_from_zero_alarm_is_deleted(clients, session, no_monitoring):
    """deploy --async --autoscale --min-capacity 0 made a CloudWatch alarm; deregistering
    the scalable target removes the scaling policies, not the alarm."""
    _, _, sm_stub, aas_stub, _, cw_stub = clients
    no_monitoring()
    sm_stub.add_response("describe_endpoint", endpoint_description(), {"EndpointName": "shapes-prod"})
    sm_stub.add_response("describe_endpoint_config", config_description(), {"EndpointConfigName": "shapes-prod-config"})
    aas_stub.add_response("deregister_scalable_target", {}, TARGET)
    cw_stub.add_response("describe_alarms", {"MetricAlarms": [{"AlarmName": ALARM}]}, {"AlarmNames": [ALARM]})
    cw_stub.add_response("delete_alarms", {}, {"AlarmNames": [ALARM]})
    sm_stub.add_response("delete_model", {}, {"ModelName": "shapes-prod-model"})
    sm_stub.add_response("delete_endpoint", {}, {"EndpointName": "shapes-prod"})
    sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "shapes-prod-config"})
    result = cmd_cleanup(cli.get_args_parser().parse_args(["cleanup", "--endpoint-name", "shapes-prod"]), session=session)
    assert {"kind": "alarm", "name": ALARM, "result": "deleted"} in result["cleanup"]


def test_cleanup_needs_a_target(session):
    with pytest.raises(UsageError, match="--endpoint-name"):
        cmd_cleanup(cli.get_args_parser().parse_args(["cleanup"]), session=session)


def test_what_monitor_made_goes_first(clients, session, stubber):
    """A Model Monitor schedule blocks DeleteEndpoint, so it goes first; then the
    EventBridge schedules and alarms `monitor` named after the endpoint (not another
    endpoint's whose name only starts the same)."""
    _, _, sm_stub, aas_stub, _, cw_stub = clients
    scheduler = stubber("scheduler")
    summary = {"MonitoringScheduleName": "shapes-prod-monitor", "MonitoringScheduleArn": f"{ARN}:monitoring-schedule/shapes-prod-monitor"}
    summary.update(CreationTime=NOW, LastModifiedTime=NOW, MonitoringScheduleStatus="Scheduled")
    sm_stub.add_response("list_monitoring_schedules", {"MonitoringScheduleSummaries": [summary]}, {"EndpointName": "shapes-prod"})
    sm_stub.add_response("delete_monitoring_schedule", {}, {"MonitoringScheduleName": "shapes-prod-monitor"})
    schedules = [{"Name": "shapes-prod-monitor-model-b"}, {"Name": "shapes-prod-monitoring-other"}]
    scheduler.add_response("list_schedules", {"Schedules": schedules}, {"NamePrefix": "shapes-prod-monitor"})
    scheduler.add_response("delete_schedule", {}, {"Name": "shapes-prod-monitor-model-b"})
    alarms = [{"AlarmName": "shapes-prod-monitor"}, {"AlarmName": "shapes-prod-monitor-model-b"}]
    cw_stub.add_response("describe_alarms", {"MetricAlarms": alarms}, {"AlarmNamePrefix": "shapes-prod-monitor"})
    cw_stub.add_response("delete_alarms", {}, {"AlarmNames": ["shapes-prod-monitor", "shapes-prod-monitor-model-b"]})
    expect_full_teardown(sm_stub, aas_stub, cw_stub)
    result = cmd_cleanup(cli.get_args_parser().parse_args(["cleanup", "--endpoint-name", "shapes-prod"]), session=session)
    assert result["cleanup"][:3] == [
        {"kind": "monitoring-schedule", "name": "shapes-prod-monitor", "result": "deleted"},
        {"kind": "schedule", "name": "shapes-prod-monitor-model-b", "result": "deleted"},
        {"kind": "alarm", "name": "shapes-prod-monitor, shapes-prod-monitor-model-b", "result": "deleted"},
    ]


def test_a_caller_without_scheduler_permissions_still_cleans_up(clients, stubber):
    handles, _, sm_stub, aas_stub, _, cw_stub = clients
    sm_stub.add_response("list_monitoring_schedules", {"MonitoringScheduleSummaries": []}, {"EndpointName": "shapes-prod"})
    stubber("scheduler").add_client_error(
        "list_schedules", "AccessDeniedException", "not authorized", 403, expected_params={"NamePrefix": "shapes-prod-monitor"}
    )
    cw_stub.add_response("describe_alarms", {"MetricAlarms": []}, {"AlarmNamePrefix": "shapes-prod-monitor"})
    expect_full_teardown(sm_stub, aas_stub, cw_stub)
    report = cleanup.cleanup_endpoint(handles, "shapes-prod")
    assert report[0] == ("schedule", "shapes-prod-monitor", "not checked: no scheduler:ListSchedules permission")
    assert ("endpoint", "shapes-prod", "deleted") in report
