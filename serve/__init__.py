"""The serving stack: `serve` runs an ASGI server (default) or AWS's MMS stack.

Settings: container.ServeConfig is the one settings object. It is resolved once per
process against the machine (serve.machine.probe -> ServeConfig.resolve) and every
module below reads that resolved config; none keeps defaults of its own.

cli.py         `serve` entry point: the config, its worker processes, uvicorn
machine.py     what the machine gives a process (device, CPUs, memory), and torch's threads
app.py         create_app(config, machine): hosting + routes + middleware (+ /metrics)
hosting.py     the model(s) of an endpoint: SingleModel and MultiModel; HostedModel.invoke, the
               one request path (decode -> forward -> encode, a chunk at a time) of
               /invocations, batch transform and the MMS backend
pools.py       the bounded pools the models share: decode threads and workers, inference threads, capture
routes.py      SageMaker's HTTP routes and the MME API
middleware.py  the middleware list: request ids/access log/metrics, then the error replies
errors.py      typed request errors and `reply`, the one mapping of an error to its answer
access_log.py  the outermost middleware: request ids, the access log, the request metrics
metrics.py     Prometheus metrics for GET /metrics (per request, per stage, read from the model host)
handler.py     decode -> predict -> encode: the user's hooks or our defaults
hooks.py       finding and importing the user's inference.py; hook calling rules
model.py       loading /opt/ml/model (dir or model.tar.gz): our Classifier or TorchScript
archive.py     model names and the checked model.tar.gz extraction
codec.py       image requests -> input tensors, probabilities -> our JSON answer
payloads.py    tensor requests and answers (JSON, CSV, NPY, NPZ, JSON Lines), as AWS's toolkit
arrays.py      the one loader of array bodies (.npy, .npz, CSV, JSON), costs checked before they are paid
decode_pool.py worker processes for the decodes a thread cannot bound, killed at a request's deadline
deadline.py    a request's one deadline, which its work checks between items
fetch.py       guarded fetching of {"url": ...} inputs (no private addresses), over urlguard.py
urlguard.py    the URL guard itself, standard library only (the Lambda bridge ships it too)
runner.py      admission, the deadline/hang-up watch, and dynamic micro-batching
connections.py what uvicorn lacks: the header timeout, refusing ambiguous framing (CL + TE)
mms.py         the opt-in multi-model-server backend (same HostedModel.invoke)
"""
