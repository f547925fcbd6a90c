"""Delete an endpoint and what it was made of, by name or by tag; safe to repeat.

Order: what `monitor` made for it (Model Monitor schedules must go before the endpoint
can; EventBridge schedules; alarms), autoscaling registration (its scaling policies go
with it), the scale-from-zero alarm of an async endpoint, then models, endpoint and
endpoint config. The endpoint
config is described first, because it is the only record of which models the endpoint
served. Deleting a model under a live endpoint is allowed on AWS. Anything already
gone is reported and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from smvision_aws.autoscaling import SCALABLE_DIMENSION, backlog_alarm_name, resource_id
from smvision_aws.monitoring import monitor_name


@dataclass(frozen=True)
class CleanupClients:
    sagemaker: object
    autoscaling: object
    cloudwatch: object
    scheduler: object


_MISSING_MESSAGES = ("could not find", "does not exist", "not found")


def is_missing(err: ClientError) -> bool:
    error = err.response.get("Error", {})
    code = error.get("Code", "")
    if code in ("ResourceNotFound", "ResourceNotFoundException", "ObjectNotFoundException", "NoSuchEntity"):
        return True
    # SageMaker reports a missing endpoint/config/model as ValidationException.
    return code == "ValidationException" and any(m in error.get("Message", "").lower() for m in _MISSING_MESSAGES)


def _attempt(report: list, kind: str, name: str, call, **params) -> None:
    try:
        call(**params)
        report.append((kind, name, "deleted"))
    except ClientError as err:
        if not is_missing(err):
            raise
        report.append((kind, name, "already gone"))


def delete_backlog_alarm(report: list, cloudwatch_client, endpoint_name: str) -> None:
    """The HasBacklogWithoutCapacity alarm `deploy --async --autoscale --min-capacity 0`
    creates. DeleteAlarms skips names that do not exist without saying so, so
    DescribeAlarms tells whether there is one. It is looked for on every endpoint, since
    the endpoint config that says "async" may be gone already."""
    name = backlog_alarm_name(endpoint_name)
    if not cloudwatch_client.describe_alarms(AlarmNames=[name]).get("MetricAlarms"):
        report.append(("alarm", name, "already gone"))
        return
    _attempt(report, "alarm", name, cloudwatch_client.delete_alarms, AlarmNames=[name])


def delete_monitoring(report: list, clients: CleanupClients, endpoint: str) -> None:
    """What `monitor` made for an endpoint (smvision_aws.monitoring): its Model Monitor
    schedules, its EventBridge schedules and its alarms, found by the endpoint and the
    names monitor gives them ({endpoint}-monitor[-{variant}]). A caller without
    EventBridge Scheduler permissions gets that in the report, not an error."""
    listed = clients.sagemaker.list_monitoring_schedules(EndpointName=endpoint).get("MonitoringScheduleSummaries", [])
    for name in (item["MonitoringScheduleName"] for item in listed):
        _attempt(report, "monitoring-schedule", name, clients.sagemaker.delete_monitoring_schedule, MonitoringScheduleName=name)
    prefix = monitor_name(endpoint)

    def ours(name: str) -> bool:
        return name == prefix or name.startswith(prefix + "-")

    try:
        schedules = [item["Name"] for item in clients.scheduler.list_schedules(NamePrefix=prefix).get("Schedules", [])]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("AccessDeniedException", "AccessDenied"):
            raise
        report.append(("schedule", prefix, "not checked: no scheduler:ListSchedules permission"))
        schedules = []
    for name in filter(ours, schedules):
        _attempt(report, "schedule", name, clients.scheduler.delete_schedule, Name=name)
    alarms = clients.cloudwatch.describe_alarms(AlarmNamePrefix=prefix).get("MetricAlarms", [])
    names = [alarm["AlarmName"] for alarm in alarms if ours(alarm["AlarmName"])]
    if names:
        _attempt(report, "alarm", ", ".join(names), clients.cloudwatch.delete_alarms, AlarmNames=names)


def cleanup_endpoint(clients: CleanupClients, endpoint_name: str, delete_models: bool = True) -> list[tuple[str, str, str]]:
    """Returns (kind, name, 'deleted' | 'already gone') for everything touched."""
    sagemaker_client = clients.sagemaker
    report: list[tuple[str, str, str]] = []
    delete_monitoring(report, clients, endpoint_name)
    config_name = None
    variants: list[str] = []
    models: list[str] = []
    try:
        endpoint = sagemaker_client.describe_endpoint(EndpointName=endpoint_name)
        config_name = endpoint["EndpointConfigName"]
        variants = [v["VariantName"] for v in endpoint.get("ProductionVariants", [])]
    except ClientError as err:
        if not is_missing(err):
            raise
        # A half-deleted endpoint leaves a config of the same name (the SDK's default).
        config_name = endpoint_name
    try:
        config = sagemaker_client.describe_endpoint_config(EndpointConfigName=config_name)
        for variant in config.get("ProductionVariants", []):
            models.append(variant["ModelName"])
            if variant["VariantName"] not in variants:
                variants.append(variant["VariantName"])
    except ClientError as err:
        if not is_missing(err):
            raise

    for variant in variants:
        _attempt(
            report,
            "scalable-target",
            resource_id(endpoint_name, variant),
            clients.autoscaling.deregister_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=resource_id(endpoint_name, variant),
            ScalableDimension=SCALABLE_DIMENSION,
        )
    delete_backlog_alarm(report, clients.cloudwatch, endpoint_name)
    if delete_models:
        for model in dict.fromkeys(models):
            _attempt(report, "model", model, sagemaker_client.delete_model, ModelName=model)
    _attempt(report, "endpoint", endpoint_name, sagemaker_client.delete_endpoint, EndpointName=endpoint_name)
    _attempt(report, "endpoint-config", config_name, sagemaker_client.delete_endpoint_config, EndpointConfigName=config_name)
    return report


def names_by_tag(tagging_client, key: str, value: str | None) -> dict[str, list[str]]:
    """SageMaker endpoints, endpoint configs and models carrying the tag, by kind."""
    found: dict[str, list[str]] = {"endpoint": [], "endpoint-config": [], "model": []}
    tag_filter = {"Key": key, **({"Values": [value]} if value is not None else {})}
    token = ""
    while True:
        params = dict(TagFilters=[tag_filter], ResourceTypeFilters=["sagemaker:endpoint", "sagemaker:endpoint-config", "sagemaker:model"])
        if token:
            params["PaginationToken"] = token
        page = tagging_client.get_resources(**params)
        for item in page.get("ResourceTagMappingList", []):
            # arn:aws:sagemaker:REGION:ACCOUNT:endpoint-config/NAME
            kind, _, name = item["ResourceARN"].split(":", 5)[5].partition("/")
            if kind in found:
                found[kind].append(name)
        token = page.get("PaginationToken") or ""
        if not token:
            return found


def cleanup_by_tag(clients: CleanupClients, tagging_client, key: str, value: str | None):
    """Endpoints first (with their configs and models), then tagged leftovers.

    ARNs carry names in lower case while the APIs want them as created; SageMaker
    treats names case-insensitively, so the lower-case names work.
    """
    sagemaker_client = clients.sagemaker
    found = names_by_tag(tagging_client, key, value)
    report = []
    for endpoint in found["endpoint"]:
        report += cleanup_endpoint(clients, endpoint)
    done = {(kind, name.lower()) for kind, name, _ in report}
    for name in found["endpoint-config"]:
        if ("endpoint-config", name.lower()) not in done:
            _attempt(report, "endpoint-config", name, sagemaker_client.delete_endpoint_config, EndpointConfigName=name)
    for name in found["model"]:
        if ("model", name.lower()) not in done:
            _attempt(report, "model", name, sagemaker_client.delete_model, ModelName=name)
    return report
