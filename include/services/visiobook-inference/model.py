"""A tiny, deterministic text classifier: bag-of-words features, linear layer, softmax.

Pure Python so it runs on a base image without pip. When ``torch`` is importable
the same weights run as torch tensors, on CUDA when a GPU is visible (unless
INFERENCE_DEVICE=cpu); the results are identical up to float rounding.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

TOKEN = re.compile(r"[a-z]+")


class ModelError(Exception):
    """The model file is missing or malformed."""


def _torch() -> Any:
    try:
        import torch  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import problem means "no torch"
        return None
    return torch


def pick_device(preference: str | None = None) -> str:
    """cuda when torch sees a GPU and the preference allows it, else cpu."""
    wanted = (preference or os.environ.get("INFERENCE_DEVICE", "auto")).lower()
    if wanted == "cpu":
        return "cpu"
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return "cuda"
    if wanted == "cuda":
        raise ModelError("INFERENCE_DEVICE=cuda but no CUDA device is available")
    return "cpu"


class Model:
    def __init__(self, spec: dict[str, Any], *, device: str = "cpu") -> None:
        try:
            self.name = str(spec["name"])
            self.version = str(spec["version"])
            self.labels = [str(label) for label in spec["labels"]]
            self.vocabulary = [str(word) for word in spec["vocabulary"]]
            self.weights = [[float(w) for w in row] for row in spec["weights"]]
            self.bias = [float(b) for b in spec["bias"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"malformed model spec: {err!r}") from err
        if len(self.weights) != len(self.labels) or len(self.bias) != len(self.labels):
            raise ModelError("weights and bias need one row per label")
        if any(len(row) != len(self.vocabulary) for row in self.weights):
            raise ModelError("every weight row needs one column per vocabulary word")
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.device = device
        self.backend = "python"
        self._tensors: tuple[Any, Any] | None = None
        torch = _torch() if device == "cuda" or os.environ.get("INFERENCE_BACKEND") == "torch" else None
        if torch is not None:
            self._tensors = (
                torch.tensor(self.weights, device=device),
                torch.tensor(self.bias, device=device),
            )
            self.backend = "torch"

    @classmethod
    def load(cls, path: Path, *, device: str | None = None) -> Model:
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load model {path}: {err}") from err
        return cls(spec, device=device or pick_device())

    def features(self, text: str) -> list[float]:
        vec = [0.0] * len(self.vocabulary)
        for token in TOKEN.findall(text.lower()):
            i = self.index.get(token)
            if i is None and token.endswith("s"):
                i = self.index.get(token[:-1])
            if i is not None:
                vec[i] += 1.0
        return vec

    def _probabilities(self, x: list[float]) -> list[float]:
        if self._tensors is not None:
            torch = _torch()
            weights, bias = self._tensors
            logits = weights @ torch.tensor(x, device=self.device) + bias
            return [float(p) for p in torch.softmax(logits, dim=0).cpu().tolist()]
        logits = [sum(w * f for w, f in zip(row, x)) + b for row, b in zip(self.weights, self.bias)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        return [e / total for e in exps]

    def predict(self, text: str) -> dict[str, Any]:
        x = self.features(text)
        probs = self._probabilities(x)
        best = max(range(len(probs)), key=lambda i: (probs[i], -i))
        return {
            "label": self.labels[best],
            "confidence": round(probs[best], 6),
            "scores": {label: round(p, 6) for label, p in zip(self.labels, probs)},
            "known_tokens": int(sum(x)),
        }
