"""The trainer: `train` on PATH runs train.cli:main. Nothing here runs at import."""
