"""A user's inference.py of the kind SageMaker tutorials ship (dog breeds, ResNet):
eager fp32, Pillow + torchvision transforms, JSON out. The benchmark serves it on AWS's
stacks with the same weights our server serves."""

import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms

TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


def model_fn(model_dir):
    with open(os.path.join(model_dir, "model_spec.json")) as f:
        spec = json.load(f)
    model = getattr(torchvision.models, spec["arch"])(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, len(spec["classes"]))
    state = torch.load(os.path.join(model_dir, spec.get("weights_file", "model.pt")), map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def input_fn(request_body, content_type):
    if content_type in ("image/jpeg", "image/png"):
        return TRANSFORM(Image.open(io.BytesIO(request_body)).convert("RGB")).unsqueeze(0)
    raise ValueError(f"unsupported content type {content_type}")


def predict_fn(data, model):
    with torch.no_grad():
        return model(data)


def output_fn(prediction, accept):
    probabilities = torch.softmax(prediction, dim=1)[0]
    return json.dumps({"predicted_index": int(probabilities.argmax()), "probabilities": probabilities.tolist()})
