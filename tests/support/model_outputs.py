"""A saved model's outputs for some images, computed in the image apart from the server:
what a served answer must equal. The model is rebuilt from model_spec.json and model.pt
with the shared core (vision.models); the pixels go through the spec's transform
(vision.presets.eval_transform_for) or, with transform="timm", through timm's own
`create_transform(**resolve_data_config(model=...))`, an independent path to the
preprocessing a timm model was made for."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.containers import Containers, wait_exit

SCRIPT = """
import json, sys, torch
from pathlib import Path
from PIL import Image
from vision import presets
from vision.artifact import ModelSpec
from vision.models import build_model
activation, how = sys.argv[1:3]
spec = ModelSpec.load(Path("/opt/ml/model"))
model = build_model(spec.arch, spec.num_classes).eval()
model.load_state_dict(torch.load("/opt/ml/model/" + spec.weights_file, weights_only=True))
if how == "timm":
    import timm.data
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
else:
    transform = presets.eval_transform_for(spec)
rgb = [Image.open(path).convert("RGB") for path in sorted(Path("/in").iterdir())]
with torch.inference_mode():
    logits = model(torch.stack([transform(image) for image in rgb]))
# Served probabilities are calibrated: softmax(logits / T) with the spec's temperature.
outputs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits / spec.temperature, 1)
print("OUTPUTS " + json.dumps(outputs.tolist()))
"""


def outputs_in_image(
    handle: Containers, image: str, model_dir: Path, pngs: list[bytes], scratch: Path, activation: str = "softmax", transform: str = "spec"
) -> list[list[float]]:
    """Per image (in order), the model's probabilities: softmax (at the spec's temperature), or sigmoid per class."""
    inputs = scratch / "model-inputs"
    inputs.mkdir()
    for number, png in enumerate(pngs):
        (inputs / f"{number:03d}.png").write_bytes(png)
    volumes = {str(model_dir): {"bind": "/opt/ml/model", "mode": "ro"}, str(inputs): {"bind": "/in", "mode": "ro"}}
    code, logs = wait_exit(handle.run(image, ["python", "-c", SCRIPT, activation, transform], volumes=volumes), timeout=300)
    assert code == 0, logs
    return json.loads(next(line for line in logs.splitlines() if line.startswith("OUTPUTS "))[len("OUTPUTS ") :])
