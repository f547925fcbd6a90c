"""Host-side AWS tooling for sagemaker-vision: launch training, tuning, endpoints,
batch transform, cleanup, the Lambda bridge's zip and IAM policies.

Never goes into the image. The importable name is `smvision_aws` (not `aws`) so it can
never shadow or be shadowed by another distribution's top-level `aws` module; the
folder aws/ holds it next to the Lambda handler (aws/lambda/), which is deployed alone.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
