"""The IAM checker's trust rules and the hosting role's read scope (issue 22): every
trust-policy shape a reviewer would refuse is flagged, the generated trust policies
pass, and the hosting role reads model artifacts, transform input and async requests
but neither training data nor checkpoints."""

from __future__ import annotations

import json

import pytest
from smvision_aws import iam

NAMES = iam.PolicyNames(account_id="123456789012", region="eu-west-1", bucket="smv-bucket", prefix="shapes")
SAGEMAKER = {"Service": "sagemaker.amazonaws.com"}
PINNED = {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def trust(**statement) -> dict:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", **statement}]}


def test_the_generated_trust_policies_pass():
    documents = iam.render(NAMES)
    for name in ("execution-role-trust.json", "lambda-role-trust.json"):
        assert iam.problems(documents[name]) == [], name
    assert iam.problems(trust(Principal=SAGEMAKER, Condition=PINNED)) == []
    assert iam.problems(trust(Principal={"Service": ["sagemaker.amazonaws.com"]}, Condition=PINNED)) == []


@pytest.mark.parametrize(
    "statement, problem",
    [
        ({"Principal": {"Federated": "*"}, "Condition": PINNED}, "Federated"),
        ({"Principal": {"Federated": "arn:aws:iam::123456789012:saml-provider/x"}, "Condition": PINNED}, "single service"),
        ({"Principal": "*", "Condition": PINNED}, "single service"),
        ({"Principal": {"AWS": "*"}, "Condition": PINNED}, "single service"),
        ({"Principal": {"AWS": "arn:aws:iam::210987654321:root"}, "Condition": PINNED}, "single service"),
        ({"Principal": {"Service": ["sagemaker.amazonaws.com", "lambda.amazonaws.com"]}, "Condition": PINNED}, "2 services"),
        ({"Principal": {"Service": "sagemaker.amazonaws.com", "AWS": "arn:aws:iam::1:root"}, "Condition": PINNED}, "single service"),
        ({"Principal": {"Service": "*"}, "Condition": PINNED}, "not one named AWS service"),
        ({"Principal": {"Service": "sagemaker.amazonaws.co?"}, "Condition": PINNED}, "not one named AWS service"),
        ({"Principal": SAGEMAKER}, "aws:SourceAccount"),
        ({"Principal": SAGEMAKER, "Condition": {"StringLike": {"aws:SourceAccount": "123456789012"}}}, "aws:SourceAccount"),
        ({"Principal": SAGEMAKER, "Condition": {"StringEquals": {"aws:SourceAccount": "*"}}}, "aws:SourceAccount"),
        ({"Principal": SAGEMAKER, "Condition": {"StringEquals": {"aws:SourceAccount": ["1", "2"]}}}, "aws:SourceAccount"),
        ({"NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"}}, "NotPrincipal"),
        ({"Principal": SAGEMAKER, "Condition": PINNED, "Action": "sts:AssumeRol?"}, "wildcard action"),
        ({"Principal": SAGEMAKER, "Condition": PINNED, "Action": ["sts:AssumeRole", "sts:TagSession"]}, "trust statement allows"),
    ],
)
def test_the_checker_knows_the_trust_rules(statement, problem):
    found = iam.problems(trust(**statement))
    assert any(problem in line for line in found), found


@pytest.mark.parametrize(
    "statement, problem",
    [
        ({"Effect": "Allow", "Action": "s3:GetObjec?", "Resource": "arn:aws:s3:::b/p/*"}, "wildcard action"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/?*"}, "whole bucket"),
        ({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:eu-west-?:1:endpoint/e"}, "regions"),
        ({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:r:12345678901?:endpoint/e"}, "accounts"),
        ({"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:r:1:endpoint/?x"}, "every sagemaker"),
    ],
)
def test_question_mark_is_a_wildcard_too(statement, problem):
    found = iam.problems({"Version": "2012-10-17", "Statement": [statement]})
    assert any(problem in line for line in found), found


def test_deny_statements_are_not_judged_as_grants():
    deny = {"Effect": "Deny", "NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "*", "Resource": "*"}
    assert iam.problems({"Version": "2012-10-17", "Statement": [deny]}) == []


OBJECT = "arn:aws:s3:::smv-bucket/shapes/{}"


@pytest.mark.parametrize(
    "key, readable",
    [
        ("models/shapes-single-1/output/model.tar.gz", True),
        ("models/mme/shapes-single-1.tar.gz", True),
        ("transform/input/cat.jpg", True),
        ("inference/bin-7.jpg", True),
        ("data/train/cat/1.jpg", False),
        ("checkpoints/shapes-single-1/checkpoint.pt", False),
        ("bins/metadata/7.json", False),
        ("async/out/7.json", False),
        ("modelsX/y", False),
    ],
)
def test_hosting_reads_only_what_hosting_needs(key, readable):
    hosting = iam.render(NAMES)["hosting-role-policy.json"]
    assert iam.can_read(hosting, OBJECT.format(key)) is readable


def test_training_still_reads_the_whole_project():
    training = iam.render(NAMES)["training-role-policy.json"]
    for key in ("data/train/cat/1.jpg", "checkpoints/job/checkpoint.pt", "models/job/output/model.tar.gz"):
        assert iam.can_read(training, OBJECT.format(key))
    assert not iam.can_read(training, "arn:aws:s3:::smv-bucket/other/x")


def test_hosting_lists_only_what_it_reads():
    listing = next(s for s in iam.render(NAMES)["hosting-role-policy.json"]["Statement"] if s["Action"] == "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["shapes/models/*", "shapes/transform/*", "shapes/inference/*"]}}


@pytest.mark.parametrize(
    "pattern, value, expected",
    [
        ("arn:aws:s3:::b/p/*", "arn:aws:s3:::b/p/a/b/c", True),
        ("arn:aws:s3:::b/p/?", "arn:aws:s3:::b/p/x", True),
        ("arn:aws:s3:::b/p/?", "arn:aws:s3:::b/p/xy", False),
        ("arn:aws:s3:::b/[ab]", "arn:aws:s3:::b/a", False),  # brackets are literal in IAM, not a class
        ("arn:aws:s3:::b/[ab]", "arn:aws:s3:::b/[ab]", True),
        ("s3:Get*", "s3:GetObject", True),
    ],
)
def test_iam_wildcards_match_as_iam_matches(pattern, value, expected):
    assert iam.iam_match(pattern, value) is expected


def test_the_documents_still_parse_as_iam_policies():
    """moto's IAM grammar check on the hosting role after its read scope changed."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("iam", region_name="us-east-1")
        client.create_policy(PolicyName="hosting", PolicyDocument=json.dumps(iam.render(NAMES)["hosting-role-policy.json"]))
