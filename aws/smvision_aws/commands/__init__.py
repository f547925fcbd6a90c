"""The commands of `smvision-aws`, one module per group; each module owns its
commands' flags (`add_parsers`) and their `cmd_*` functions:

- training: train, tune
- endpoints: deploy, transform, cleanup, lambda-package
- workflow: process, register, pipeline, iam-policies

common.py holds what the groups share (--region/--local, --image/--role, the session).
"""
