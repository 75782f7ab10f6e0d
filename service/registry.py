"""The models the server holds, and which model a new stream is bound to."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from service.errors import ModelLoadError, UnknownModelError
from service.model import CARD_FILE, Forecaster
from service.settings import ModelSettings

log = logging.getLogger(__name__)


class ModelRegistry:
    """Every model under the models directory, one ONNX Runtime session each."""

    def __init__(self, models: dict[str, Forecaster], settings: ModelSettings) -> None:
        if settings.default not in models:
            raise ModelLoadError(
                f"default model {settings.default!r} is not among the loaded {sorted(models)}"
            )
        self.models = models
        self._settings = settings

    @classmethod
    def load(cls, settings: ModelSettings) -> ModelRegistry:
        root = Path(settings.dir)
        if not root.is_dir():
            raise ModelLoadError(f"models directory {root} does not exist")
        models = {}
        for card in sorted(root.glob(f"*/{CARD_FILE}")):
            models[card.parent.name] = Forecaster.load(
                card.parent, intra_op_threads=settings.intra_op_threads, spin=settings.spin
            )
            log.info("loaded model %s from %s", card.parent.name, card.parent)
        return cls(models, settings)

    @property
    def default(self) -> str:
        return self._settings.default

    def get(self, name: str) -> Forecaster:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(
                f"no model {name!r}; loaded: {', '.join(sorted(self.models))}"
            ) from None

    def model_for(self, stream_id: str, requested: str | None) -> str:
        """The model a new stream is bound to: the request's, else a route's, else the default."""
        if requested is not None:
            self.get(requested)
            return requested
        for route in self._settings.routes:
            if fnmatch.fnmatchcase(stream_id, route.pattern):
                return route.model
        return self._settings.default
