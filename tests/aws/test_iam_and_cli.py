"""IAM policy documents (least privilege, valid for IAM), the Lambda zip, and the CLI
plumbing (exit codes, no torch on the host)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from smvision_aws import cli, iam, lambda_package

from tests.support.aws import REPO

NAMES = iam.PolicyNames(
    account_id="123456789012",
    region="eu-west-1",
    bucket="smv-bucket",
    prefix="shapes",
    repository="sagemaker-vision",
    endpoint="Shapes-Prod",
    function="smv-bridge",
)


def statements(document):
    return {s.get("Sid", i): s for i, s in enumerate(document["Statement"])}


def test_rendered_documents_are_least_privilege():
    documents = iam.render(NAMES)
    assert set(documents) == set(iam.TEMPLATES)
    for name, document in documents.items():
        assert iam.problems(document) == [], name
        assert "${" not in json.dumps(document), name


def test_lambda_role_invokes_only_the_named_endpoint_and_reads_only_its_prefix():
    lam = statements(iam.render(NAMES)["lambda-role-policy.json"])
    # real-time and (ASYNC_INFERENCE=true) async invocations of that one endpoint
    assert lam["InvokeOnlyTheNamedEndpoint"]["Action"] == ["sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync"]
    # Endpoint ARNs are lower case whatever the name's case.
    assert lam["InvokeOnlyTheNamedEndpoint"]["Resource"] == "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/shapes-prod"
    assert lam["ReadOnlyTheNamedPrefix"] == {
        "Sid": "ReadOnlyTheNamedPrefix",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::smv-bucket/shapes/inference/*",
    }
    actions = {a for s in lam.values() for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {
        "sagemaker:InvokeEndpoint",
        "sagemaker:InvokeEndpointAsync",
        "s3:GetObject",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }


@pytest.mark.parametrize("role", ["training-role-policy.json", "hosting-role-policy.json"])
def test_sagemaker_role_scope(role):
    ex = statements(iam.render(NAMES)[role])
    star = [s for s in ex.values() if s["Resource"] == "*"]
    assert sorted(s["Action"] for s in star) == ["cloudwatch:PutMetricData", "ecr:GetAuthorizationToken"]
    assert ex["PullTheImage"]["Resource"] == "arn:aws:ecr:eu-west-1:123456789012:repository/sagemaker-vision"
    listing = ex.get("ListOnlyTheProjectPrefix") or ex["ListOnlyWhatHostingReads"]  # hosting lists only what it reads
    prefixes = ["shapes", "shapes/*"] if role.startswith("training") else ["shapes/models/*", "shapes/transform/*", "shapes/inference/*"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": prefixes}}
    trust = iam.render(NAMES)["execution-role-trust.json"]["Statement"][0]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}


def test_training_and_hosting_write_scopes_are_separate():
    """Hosting (endpoints, batch transform) must not write models or checkpoints: a
    compromised endpoint could plant a checkpoint the next training job resumes from."""
    documents = iam.render(NAMES)
    training, hosting = documents["training-role-policy.json"], documents["hosting-role-policy.json"]
    key = "arn:aws:s3:::smv-bucket/shapes/{}/job-1/file"
    assert iam.can_write(training, key.format("checkpoints")) and iam.can_write(training, key.format("models"))
    assert not iam.can_write(hosting, key.format("checkpoints")) and not iam.can_write(hosting, key.format("models"))
    assert iam.can_write(hosting, key.format("transform")) and not iam.can_write(training, key.format("transform"))
    assert iam.can_write(hosting, key.format("capture")) and not iam.can_write(training, key.format("capture"))  # serve/capture.py
    for document in (training, hosting):
        assert not iam.can_write(document, "arn:aws:s3:::smv-bucket/shapes/data/train/cat.jpg")
        assert not iam.can_write(document, "arn:aws:s3:::smv-bucket/other/x")


@pytest.mark.parametrize(
    "statement, problem",
    [
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, "wildcard action"),
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/p/*"}, "wildcard action"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, "on Resource '*'"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}, "whole bucket"),
        ({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:*:1:endpoint/e"}, "regions"),
        ({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:r:1:*"}, "every sagemaker"),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b/p/*"}, "NotAction"),
        (
            {"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:r:123456789012:endpoint/*"},
            "every sagemaker endpoint",
        ),
        ({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::123456789012:role/*"}, "every iam role"),
        ({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::123456789012:role/service-role/*"}, "every iam role"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::smv-*/shapes/*"}, "many buckets"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::smv-bucke?/shapes/*"}, "many buckets"),
        ({"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": "arn:aws:logs:r:123456789012:log-group:*"}, "every logs"),
    ],
)
def test_the_checker_catches_over_broad_statements(statement, problem):
    found = iam.problems({"Version": "2012-10-17", "Statement": [statement]})
    assert any(problem in f for f in found), found


@pytest.mark.parametrize(
    "field, value", [("account_id", "12345"), ("bucket", "Bad_Bucket"), ("prefix", "a/../*"), ("endpoint", "ep*"), ("region", "moon-1")]
)
def test_bad_names_are_rejected(field, value):
    import dataclasses

    with pytest.raises(ValueError, match="not a valid value"):
        iam.render(dataclasses.replace(NAMES, **{field: value}))


def test_iam_accepts_the_documents():
    """moto's IAM parses and validates policy grammar (and rejects malformed documents)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("iam", region_name="us-east-1")
        documents = iam.render(NAMES)
        client.create_role(RoleName="smv-exec", AssumeRolePolicyDocument=json.dumps(documents["execution-role-trust.json"]))
        client.create_role(RoleName="smv-lambda", AssumeRolePolicyDocument=json.dumps(documents["lambda-role-trust.json"]))
        for name in ("training-role-policy.json", "hosting-role-policy.json", "lambda-role-policy.json"):
            client.create_policy(PolicyName=name.replace(".json", ""), PolicyDocument=json.dumps(documents[name]))
        with pytest.raises(client.exceptions.MalformedPolicyDocumentException):
            client.create_policy(
                PolicyName="broken",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}),
            )


def test_iam_policies_command_writes_files(tmp_path, capsys):
    code = cli.main(
        [
            "iam-policies",
            "--account-id",
            "123456789012",
            "--region",
            "eu-west-1",
            "--bucket",
            "smv-bucket",
            "--prefix",
            "shapes",
            "--endpoint-name",
            "shapes-prod",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert sorted(p.split("/")[-1] for p in written) == sorted(iam.TEMPLATES)
    assert json.loads((tmp_path / "lambda-role-policy.json").read_text())["Statement"][0]["Resource"].endswith(":endpoint/shapes-prod")


def test_lambda_zip_is_deployable_and_reproducible(tmp_path):
    first = lambda_package.build_zip(tmp_path / "a.zip")
    second = lambda_package.build_zip(tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["handler.py", "urlguard.py"]
        source = archive.read("handler.py").decode()
        # The server's guard itself, not a copy that could drift.
        assert archive.read("urlguard.py") == (REPO / "serve" / "urlguard.py").read_bytes()
        archive.extractall(tmp_path / "unzipped")
    assert "def lambda_handler(event, context)" in source
    # As Lambda runs it: the zip's root on the path, no checkout, standard library only
    # (boto3 is imported lazily, when a client is first needed).
    probe = "import handler, sys; assert handler.urlguard.__file__.startswith(sys.path[0]); print(sorted(m for m in sys.modules if m in ('serve', 'boto3', 'requests')))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'unzipped')!r}); {probe}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (  # training
            ["train", "--image", "img", "--role", "arn:aws:iam::1:role/r", "--channel", "training=s3://b/p/"]
            + ["--output-path", "s3://b/p/m/", "--hp", "no-such-flag=1"],
            "unknown hyperparameter",
        ),
        (["deploy", "--local", "--image", "img", "--endpoint-name", "e", "--serverless"], "need AWS"),  # endpoints
        (["pipeline", "definition", "--role", "arn:aws:iam::1:role/r"], "--image is required"),  # workflow
    ],
)
def test_usage_errors_of_every_command_group_exit_2(capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_every_command_has_local_where_the_sdk_has_local_mode():
    parser = cli.get_args_parser()
    for command in ("train", "tune", "deploy", "transform", "cleanup"):
        args = parser.parse_args(
            [
                command,
                "--local",
                "--image",
                "x",
                *{
                    "train": [],
                    "tune": [],
                    "deploy": ["--endpoint-name", "e"],
                    "cleanup": [],
                    "transform": ["--model-data", "file:///m.tar.gz", "--input", "file:///i", "--output", "file:///o"],
                }[command],
            ]
        )
        assert args.local is True


def test_no_torch_on_the_host():
    """The host tools import the trainer's metric regexes and config parser, never torch."""
    code = (
        "import sys; sys.path[:0] = [{!r}, {!r}]; import smvision_aws.cli, smvision_aws.sessions as s; "
        "s.metric_definitions(); import smvision_aws.training as t; t.validate_hyperparameters({{'epochs': '1'}}); "
        "assert 'torch' not in sys.modules, 'torch imported'".format(str(REPO / "aws"), str(REPO))
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_aws_entry_point_runs_from_the_repo_root(tmp_path):
    out = subprocess.run(
        [sys.executable, "aws", "lambda-package", "--out", str(tmp_path / "z.zip")], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out)["handler"] == "handler.lambda_handler" and (tmp_path / "z.zip").is_file()
