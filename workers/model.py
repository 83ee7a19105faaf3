"""A small image classifier built in code (no downloads), one per worker process."""

from __future__ import annotations

from typing import Any

_model: Any = None


def build() -> Any:
    """A tiny, deterministic convolutional net over 3x32x32 images, 10 classes."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    model.eval()
    return model


def get() -> Any:
    """This process's model; built by ``worker_process_init`` in prefork children."""
    global _model
    if _model is None:
        _model = build()
    return _model


def load_in_child(**_: Any) -> None:
    # Built after fork, never in the parent: a model (and CUDA) must not be shared across fork.
    get()
