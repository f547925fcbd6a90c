"""Least-privilege IAM policy documents, filled from the templates in policies/.

Three roles, each writing only what it produces:
- training (training and tuning jobs): pull one ECR repository, read the project
  prefix, write only <prefix>/models/ and <prefix>/checkpoints/, its logs and metrics;
- hosting (endpoints, batch transform): the same image and reads, but writes only
  <prefix>/transform/ and <prefix>/async/, never models or checkpoints: a compromised
  endpoint cannot plant a checkpoint that the next training job would resume from;
- the Lambda bridge: invoke one endpoint, read one S3 prefix, its own logs.
Both SageMaker roles share one trust policy (sagemaker.amazonaws.com).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

POLICY_DIR = Path(__file__).resolve().parent / "policies"
TEMPLATES = {
    "training-role-policy.json": "permissions of the training role (training and tuning jobs)",
    "hosting-role-policy.json": "permissions of the hosting role (endpoints, batch transform)",
    "execution-role-trust.json": "trust policy: SageMaker may assume the training and hosting roles",
    "lambda-role-policy.json": "permissions of the Lambda bridge's role",
    "lambda-role-trust.json": "trust policy: Lambda may assume its role",
}
# Actions that have no resource-level permissions, so "Resource": "*" is the only form.
STAR_RESOURCE_ACTIONS = frozenset({"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"})

_PATTERNS = {
    "AccountId": r"\d{12}",
    "Region": r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d",
    "Partition": r"aws|aws-cn|aws-us-gov",
    "BucketName": r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "Prefix": r"[A-Za-z0-9!_.'()-]+(/[A-Za-z0-9!_.'()-]+)*",
    "LambdaPrefix": r"[A-Za-z0-9!_.'()-]+(/[A-Za-z0-9!_.'()-]+)*",
    "RepositoryName": r"[a-z0-9]+([._/-][a-z0-9]+)*",
    "EndpointName": r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}",
    "FunctionName": r"[A-Za-z0-9_-]{1,64}",
}


@dataclass(frozen=True)
class PolicyNames:
    account_id: str
    region: str
    bucket: str
    prefix: str  # project prefix for data, models, checkpoints (no leading/trailing '/')
    repository: str = "sagemaker-vision"
    endpoint: str = "smvision-endpoint"
    function: str = "smvision-bridge"
    lambda_prefix: str | None = None  # what the Lambda may read; default: <prefix>/inference
    partition: str = "aws"

    def values(self) -> dict[str, str]:
        values = {
            "AccountId": self.account_id,
            "Region": self.region,
            "Partition": self.partition,
            "BucketName": self.bucket,
            "Prefix": self.prefix.strip("/"),
            "LambdaPrefix": (self.lambda_prefix or f"{self.prefix.strip('/')}/inference").strip("/"),
            "RepositoryName": self.repository,
            "EndpointName": self.endpoint,
            "FunctionName": self.function,
        }
        for key, value in values.items():
            if not re.fullmatch(_PATTERNS[key], value):
                raise ValueError(f"{key}={value!r} is not a valid value (pattern {_PATTERNS[key]})")
        # Endpoint ARNs carry the name in lower case, whatever case it was created in.
        values["EndpointNameLower"] = self.endpoint.lower()
        return values


def _fill(node, values: dict[str, str]):
    if isinstance(node, str):
        return Template(node).substitute(values)  # KeyError for an unknown placeholder
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, dict):
        return {key: _fill(item, values) for key, item in node.items()}
    return node


def render(names: PolicyNames) -> dict[str, dict]:
    values = names.values()
    return {name: _fill(json.loads((POLICY_DIR / name).read_text()), values) for name in TEMPLATES}


def write(names: PolicyNames, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in render(names).items():
        path = out_dir / name
        path.write_text(json.dumps(document, indent=2) + "\n")
        written.append(path)
    return written


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def problems(document: dict) -> list[str]:
    """Least-privilege checks: what a reviewer would flag. Empty list: fine."""
    found = []
    if document.get("Version") != "2012-10-17":
        found.append("Version must be 2012-10-17")
    for index, statement in enumerate(document.get("Statement", [])):
        where = statement.get("Sid", f"statement {index}")
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            found.append(f"{where}: NotAction/NotResource grants everything else")
        actions = _as_list(statement.get("Action", []))
        for action in actions:
            if action == "*" or action.endswith(":*") or "*" in action:
                found.append(f"{where}: wildcard action {action!r}")
        if "Principal" in statement:  # trust policy: one service, sts:AssumeRole only
            if actions != ["sts:AssumeRole"]:
                found.append(f"{where}: trust statement allows {actions}")
            if statement["Principal"] == "*" or "AWS" in statement["Principal"]:
                found.append(f"{where}: trust principal must be a single service")
            continue
        resources = _as_list(statement.get("Resource", []))
        if "*" in resources:
            extra = [a for a in actions if a not in STAR_RESOURCE_ACTIONS]
            if extra:
                found.append(f"{where}: {extra} on Resource '*'")
        for resource in resources:
            if resource != "*":
                found += [f"{where}: {p}" for p in _resource_problems(resource)]
        if re.search(r"\$\{", json.dumps(statement)):
            found.append(f"{where}: unfilled placeholder")
    return found


def _resource_problems(arn: str) -> list[str]:
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return [f"{arn!r} is not an ARN"]
    _, _, service, region, account, rest = parts
    if rest in ("*", "") or rest.startswith("*"):
        return [f"{arn!r} spans every {service} resource"]
    if service == "s3":
        bucket, _, key = rest.partition("/")
        if any(char in bucket for char in "*?"):
            return [f"{arn!r} matches many buckets; name the bucket"]
        if key.startswith("*"):
            return [f"{arn!r} spans a whole bucket; name a prefix"]
        return []
    if "*" in region or "*" in account:
        return [f"{arn!r} spans regions or accounts"]
    # resource-type/name or resource-type:name; a name that is (or starts with) a
    # wildcard, at any path level for IAM (role/*, role/service-role/*), names them all.
    kind, name = re.split(r"[/:]", rest, maxsplit=1) if re.search(r"[/:]", rest) else (rest, "")
    segments = [name] if service == "logs" else re.split(r"[/:]", name)
    if not name or any(segment.startswith(("*", "?")) for segment in segments):
        return [f"{arn!r} spans every {service} {kind}"]
    return []


def can_write(document: dict, object_arn: str) -> bool:
    """Whether an Allow statement grants s3:PutObject on object_arn (IAM's * and ?
    wildcards honoured)."""
    import fnmatch

    for statement in document.get("Statement", []):
        actions = _as_list(statement.get("Action", []))
        if statement.get("Effect") != "Allow" or not any(fnmatch.fnmatchcase("s3:PutObject", action) for action in actions):
            continue
        if any(fnmatch.fnmatchcase(object_arn, resource) for resource in _as_list(statement.get("Resource", []))):
            return True
    return False
