"""The serving stack: `serve` runs an ASGI server (default) or AWS's MMS stack.

cli.py         `serve` entry point: container.ServeConfig resolved into hosting.Settings
app.py         create_app: hosting + routes + middleware (+ /metrics)
hosting.py     the model(s) of an endpoint: SingleModel and MultiModel, one interface
routes.py      SageMaker's HTTP routes, the MME API, the one error mapping
middleware.py  the middleware list (request ids, access log, request metrics); add new ones there
access_log.py  the outermost middleware: request ids, the access log, the request metrics
metrics.py     Prometheus metrics for GET /metrics (per request, per stage, read from the model host)
handler.py     decode -> predict -> encode: the user's hooks or our defaults
hooks.py       finding and importing the user's inference.py; hook calling rules
model.py       loading /opt/ml/model (dir or model.tar.gz): our Classifier or TorchScript
codec.py       image requests -> input tensors, probabilities -> our JSON answer
payloads.py    tensor requests and answers (JSON, CSV, NPY, NPZ, JSON Lines), as AWS's toolkit
fetch.py       guarded fetching of {"url": ...} inputs (no private addresses)
runner.py      admission, and dynamic micro-batching of concurrent requests
mms.py         the opt-in multi-model-server backend (same Handler)
"""
