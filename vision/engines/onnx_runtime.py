"""An ONNX Runtime session for an exported classifier: float32 NCHW batch in, class
probabilities out. No torch.

Threads: ONNX Runtime's default pool is one thread per *physical* core of the host, which
inside a container with a CPU quota oversubscribes; serving passes the count it wants.
Spinning (idle pool threads busy-wait for the next op) lowers latency when the process
has its cores to itself and wastes them when several workers share cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def session_options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
    """threads: intra-op threads (0: ONNX Runtime's default, one per physical core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # a classifier is one chain of ops: nothing runs in parallel across them
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # warnings about hardware-specific optimized graphs are for files we never save
    return options


class OnnxClassifier:
    """One model file (fp32 or int8 QDQ) in one session; `probabilities` is thread-safe
    (ONNX Runtime's Run is)."""

    def __init__(self, path: Path, threads: int = 0, spinning: bool = True):
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), session_options(threads, spinning), providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # e.g. ['batch', 3, 224, 224]
        self.num_classes = outputs[0].shape[-1]
        self.threads = threads

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.float32 or batch.ndim != 4:
            raise ValueError(f"expected a float32 NCHW batch, got {batch.dtype} {batch.shape}")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch).astype(np.float32))
