"""The serving stack: `serve` runs an ASGI server (default) or AWS's MMS stack.

cli.py       `serve` entry point: settings from flags and the SageMaker environment
app.py       the Starlette app factory: routes, status mapping, thread pools, access log, MME API
model.py     loading /opt/ml/model (dir or model.tar.gz) into a Classifier
codec.py     request bodies -> input tensors, predictions -> JSON
fetch.py     guarded fetching of {"url": ...} inputs (no private addresses)
hooks.py     the user's inference.py (model_fn/input_fn/predict_fn/output_fn/transform_fn)
runner.py    dynamic micro-batching of concurrent requests (GPU default)
mms.py       the opt-in multi-model-server backend (same model, same hooks)
metrics.py   Prometheus metrics for GET /metrics (per request, per stage, read from the model host)
access_log.py  the outermost middleware: request ids, the access log, the request metrics
"""
