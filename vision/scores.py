"""A classifier's logits -> the probabilities it serves, in numpy, for every engine.

This is the one place the model spec's answer rules apply to logits, whichever engine
made them (torch in any precision, ONNX Runtime fp32 or int8): the softmax temperature
fitted at training (train.calibration; 1.0 leaves the logits as they are) and, for a
multi-label model, an independent sigmoid per class (its thresholds decide the labels
when the answer is written). No torch.
"""

from __future__ import annotations

import numpy as np

from vision.artifact import UNCALIBRATED_TEMPERATURE


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (the max subtracted first, so large logits cannot overflow)."""
    logits = np.asarray(logits, dtype=np.float32)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * logits) + np.float32(1.0))  # no overflow warning for large |x|


def probabilities(logits: np.ndarray, temperature: float = UNCALIBRATED_TEMPERATURE, multi_label: bool = False) -> np.ndarray:
    """What a model with this spec serves for `logits` (N x classes): sigmoid per class
    (multi-label) or softmax, of logits / temperature."""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature != UNCALIBRATED_TEMPERATURE:
        logits = logits / np.float32(temperature)
    return sigmoid(logits) if multi_label else softmax(logits)
