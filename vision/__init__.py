"""The shared vision core: what the trainer (train/) and the server (serve/) both use.

models.py     the model factory: any torchvision classifier by name, head resized
presets.py    the training and evaluation transforms
images.py     untrusted image bytes -> upright 8-bit RGB, with size caps before decoding
orientation.py  the EXIF Orientation tag applied (images.py stands images upright with it)
precision.py  which reduced precision a device runs natively, and the accuracy guard
devices.py    device choice, and the message when GPUs are present but unusable
artifact.py   the model artifact: what train writes to /opt/ml/model and serve reads

train/ and serve/ import this package; serve/ imports nothing from train/. A change
here changes training and serving alike. Nothing runs at import.
"""
