"""`monitor`: drift, data-quality and volume checks of a deployed model's captured traffic.

cli.py       the entry point (`monitor`, `monitor baseline`)
run.py       one monitoring run, top to bottom
captures.py  Data Capture JSONL -> the window's captured items
window.py    decode, measure and embed every captured image
checks.py    the checks against the baseline, and the drift over time
stats.py     the statistics (MMD, chi-square, Kolmogorov-Smirnov, Mann-Whitney)
outputs.py   statistics.json, constraint_violations.json, CloudWatch records, the exit message
report.py    report.md and its plots
tracking.py  MLflow
model.py     the model from a directory, a model.tar.gz or S3
baseline.py  `monitor baseline`

The contract and the settings live in container/monitoring.py; the baseline, the
features and the OOD score in vision/ (shared with train and serve). Nothing runs at
import.
"""
