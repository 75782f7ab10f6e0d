"""A model on disk (card + ONNX single step) and the ONNX Runtime session that steps it.

>>> model = Forecaster.load(Path("models/default"))
>>> state = model.initial_state(batch=2)
>>> loc, scale, state = model.step(np.zeros((2, 1), np.float32), state)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.errors import ModelLoadError

CARD_FILE = "card.json"
ONNX_FILE = "model.onnx"
SCHEMA_VERSION = 1

Cell = Literal["gru", "lstm", "rnn"]
State = tuple[np.ndarray, ...]  # each (num_layers, batch, hidden)


@dataclass(frozen=True)
class Normalization:
    """The card's normalization, baked into the graph; `per_stream` asks the server to
    standardize each stream online first (see `service.normalization`)."""

    mean: list[float]
    std: list[float]
    per_stream: bool = True


@dataclass(frozen=True)
class Calibration:
    """|standardized error| -> ln P(|E| >= |z|), measured on held-out normal data.

    `abs_z` increases strictly and `log_tail` decreases; the scorer interpolates between
    points and extends the last segment beyond the table (an exponential tail).
    """

    abs_z: list[float]
    log_tail: list[float]


@dataclass(frozen=True)
class ModelCard:
    """Everything the server needs to know about a model, stored as `card.json`."""

    name: str
    version: str
    created: str
    cell: Cell
    hidden_size: int
    num_layers: int
    channels: list[str]
    normalization: Normalization
    calibration: Calibration
    threshold: float
    opset: int
    sha256: str
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def state_names(self) -> tuple[str, ...]:
        """ONNX input names of the recurrent state; outputs carry an `_out` suffix."""
        return ("h", "c") if self.cell == "lstm" else ("h",)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelCard:
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelLoadError(f"card schema_version {version!r}, expected {SCHEMA_VERSION}")
        try:
            fields = dict(raw)
            fields["normalization"] = Normalization(**raw["normalization"])
            fields["calibration"] = Calibration(**raw["calibration"])
            card = cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"card is malformed: {exc}") from exc
        card._validate()
        return card

    def _validate(self) -> None:
        n = self.n_channels
        if n == 0 or len(self.normalization.mean) != n or len(self.normalization.std) != n:
            raise ModelLoadError("card channels and normalization disagree in length")
        z, tail = np.asarray(self.calibration.abs_z), np.asarray(self.calibration.log_tail)
        if len(z) < 2 or len(z) != len(tail) or np.any(np.diff(z) <= 0):
            raise ModelLoadError("card calibration table must be >= 2 increasing points")
        if not 0.0 < self.threshold < 1.0:
            raise ModelLoadError(f"card threshold {self.threshold} is not in (0, 1)")

    def save(self, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        (model_dir / CARD_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard:
        path = model_dir / CARD_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(raw)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Forecaster:
    """One model's ONNX Runtime session: `step(x, state) -> (loc, scale, new_state)`."""

    def __init__(self, card: ModelCard, session: ort.InferenceSession) -> None:
        self.card = card
        self._session = session
        self._outputs = ["loc", "scale", *(f"{name}_out" for name in card.state_names)]

    @classmethod
    def load(cls, model_dir: Path, *, intra_op_threads: int = 1, spin: bool = False) -> Forecaster:
        """Load `card.json` + `model.onnx`, refusing an ONNX file whose sha256 is not the card's."""
        card = ModelCard.load(model_dir)
        onnx_path = model_dir / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"{onnx_path} is missing")
        actual = sha256_of(onnx_path)
        if actual != card.sha256:
            raise ModelLoadError(
                f"{onnx_path} has sha256 {actual}, but its card says {card.sha256}: refusing it"
            )
        return cls(card, session_of(onnx_path, intra_op_threads=intra_op_threads, spin=spin))

    def initial_state(self, batch: int) -> State:
        shape = (self.card.num_layers, batch, self.card.hidden_size)
        return tuple(np.zeros(shape, np.float32) for _ in self.card.state_names)

    def step(self, x: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, State]:
        """Advance a batch one step. x: (batch, channels) float32; state as `initial_state`."""
        feeds = {"x": x, **dict(zip(self.card.state_names, state, strict=True))}
        loc, scale, *new_state = self._session.run(self._outputs, feeds)
        return loc, scale, tuple(new_state)


def session_of(
    onnx_path: Path, *, intra_op_threads: int = 1, spin: bool = False
) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU, with the threads and spinning the server runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Spinning burns a core between calls; worth it only under a steady stream of batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
