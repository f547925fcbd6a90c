"""Least-privilege IAM policy documents, filled from the templates in policies/.

Three roles, each reading what it consumes and writing only what it produces:
- training (training and tuning jobs): pull one ECR repository, read the project
  prefix, write only <prefix>/models/ and <prefix>/checkpoints/, its logs and metrics;
- hosting (endpoints, batch transform, async): the same image; reads only
  <prefix>/models/ (model artifacts, multi-model archives under models/ too),
  <prefix>/transform/ (batch input) and <prefix>/inference/ (async request bodies, the
  Lambda bridge's prefix), never training data or checkpoints; writes only
  <prefix>/transform/, <prefix>/async/ and <prefix>/capture/ (the image's own capture
  for monitoring), never models or checkpoints: a compromised
  endpoint can neither read the training set nor plant a checkpoint that the next
  training job would resume from;
- the Lambda bridge: invoke one endpoint, read one S3 prefix, its own logs.
Both SageMaker roles share one trust policy (sagemaker.amazonaws.com).

problems() is the least-privilege checker the tests and `iam-policies` run over every
document. For permission statements it flags wildcard actions (`*` and `?`),
NotAction/NotResource, `Resource: "*"` beyond the actions that have no resource-level
permissions, and resources that span buckets, whole buckets, regions, accounts or
every resource of a type. For trust statements (those with a Principal) it requires
exactly one service principal (no `"*"`, no AWS account, no `Federated`, no second
service, no wildcard in the name), `sts:AssumeRole` only, and an
`aws:SourceAccount` condition pinned to one account with StringEquals (the
confused-deputy guard); `NotPrincipal` in an Allow statement is flagged outright (it
trusts everyone but the principals it names).
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
WILDCARDS = ("*", "?")
ACCOUNT = re.compile(r"\d{12}")

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


def _has_wildcard(text: object) -> bool:
    return isinstance(text, str) and any(char in text for char in WILDCARDS)


def _trust_problems(where: str, statement: dict, actions: list) -> list[str]:
    """A trust statement: one service principal, sts:AssumeRole, SourceAccount pinned."""
    found = []
    if actions != ["sts:AssumeRole"]:
        found.append(f"{where}: trust statement allows {actions}")
    principal = statement["Principal"]
    services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
    if not isinstance(principal, dict) or set(principal) != {"Service"}:
        kinds = sorted(principal) if isinstance(principal, dict) else [principal]
        found.append(f"{where}: trust principal must be a single service, not {kinds}")
    elif len(services) != 1:
        found.append(f"{where}: trust principal must be a single service, not {len(services)} services {services}")
    for name in services:
        if not isinstance(name, str) or _has_wildcard(name) or not name.endswith(".amazonaws.com"):
            found.append(f"{where}: trust principal {name!r} is not one named AWS service")
    for kind, value in principal.items() if isinstance(principal, dict) else ():
        if any(value_ == "*" or _has_wildcard(value_) for value_ in _as_list(value)) and kind != "Service":
            found.append(f"{where}: trust principal {kind} {value!r} is a wildcard")
    pinned = statement.get("Condition", {}).get("StringEquals", {}).get("aws:SourceAccount")
    if isinstance(pinned, list) and len(pinned) == 1:
        pinned = pinned[0]
    if not (isinstance(pinned, str) and ACCOUNT.fullmatch(pinned)):
        found.append(f"{where}: trust statement must pin aws:SourceAccount to one account with StringEquals (confused deputy)")
    return found


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
        if "NotPrincipal" in statement:
            found.append(f"{where}: NotPrincipal in an Allow statement trusts every principal but the ones it names")
        actions = _as_list(statement.get("Action", []))
        for action in actions:
            if _has_wildcard(action):
                found.append(f"{where}: wildcard action {action!r}")
        if "Principal" in statement:  # trust policy
            found += _trust_problems(where, statement, actions)
            continue
        if "NotPrincipal" in statement:
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
        if _has_wildcard(bucket):
            return [f"{arn!r} matches many buckets; name the bucket"]
        if key.startswith(WILDCARDS):
            return [f"{arn!r} spans a whole bucket; name a prefix"]
        return []
    if _has_wildcard(region) or _has_wildcard(account):
        return [f"{arn!r} spans regions or accounts"]
    # resource-type/name or resource-type:name; a name that is (or starts with) a
    # wildcard, at any path level for IAM (role/*, role/service-role/*), names them all.
    kind, name = re.split(r"[/:]", rest, maxsplit=1) if re.search(r"[/:]", rest) else (rest, "")
    segments = [name] if service == "logs" else re.split(r"[/:]", name)
    if not name or any(segment.startswith(("*", "?")) for segment in segments):
        return [f"{arn!r} spans every {service} {kind}"]
    return []


def iam_match(pattern: str, value: str) -> bool:
    """IAM's wildcard matching: `*` any run of characters ('/' included), `?` one
    character, everything else literal (unlike fnmatch, `[` is not special)."""
    regex = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def allows(document: dict, action: str, resource_arn: str) -> bool:
    """Whether an Allow statement grants `action` on resource_arn (wildcards honoured;
    conditions are not evaluated, so this is what the statement could grant)."""
    for statement in document.get("Statement", []):
        actions = _as_list(statement.get("Action", []))
        if statement.get("Effect") != "Allow" or not any(iam_match(pattern, action) for pattern in actions):
            continue
        if any(iam_match(pattern, resource_arn) for pattern in _as_list(statement.get("Resource", []))):
            return True
    return False


def can_write(document: dict, object_arn: str) -> bool:
    """Whether an Allow statement grants s3:PutObject on object_arn."""
    return allows(document, "s3:PutObject", object_arn)


def can_read(document: dict, object_arn: str) -> bool:
    """Whether an Allow statement grants s3:GetObject on object_arn."""
    return allows(document, "s3:GetObject", object_arn)
