"""CPU inference engines for the built-in classifier: export, int8 quantization and a
torch-free runtime.

preprocess.py    the evaluation preprocessing in numpy + PIL, equal to
                 vision.presets.eval_transform to within one 8-bit level (no torch)
calibration.py   the calibration sample: real preprocessed images (uint8 crops) that travel
                 in the artifact, for int8 calibration and the accuracy guard (no torch)
onnx_runtime.py  an ONNX Runtime session: numpy batch in, probabilities out (no torch)
quantize.py      fp32 model.onnx -> int8 by ONNX Runtime static quantization, QDQ,
                 per-channel, calibrated on the calibration sample, the first two
                 weighted layers and the classifier kept fp32 (no torch)
accuracy.py      int8 against fp32 on labelled validation images: the trainer keeps
                 int8 only if it loses at most INT8_MAX_DROP_POINTS (no torch)
export.py        a torch classifier -> model.onnx with a dynamic batch axis, checked
                 against torch (needs torch)

torch's own int8, measured for comparison and not served, is benchmarks/engines/torch_int8.py.

The modules marked "no torch" import neither torch nor torchvision, so a serving image
without torch can hold them. Nothing runs at import.
"""
