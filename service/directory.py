"""Which model each stream is bound to, and each model's stepper.

The directory binds new streams (checking model and channels), routes a round's readings to
their models and slots, releases streams, and snapshots, restores and adopts the streams of
every model at once. It knows nothing of queues or rounds: that is the engine's part.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import cast

import numpy as np

from service import likelihood
from service.alerts import Alert
from service.errors import CapacityError, InvalidReadingError, ModelMismatchError, StreamwatchError
from service.model import ModelCard
from service.registry import ModelRegistry
from service.results import Outcome, Reading
from service.settings import Settings
from service.state import ArenaLayout, StateArena
from service.stepper import Stepper
from service.stream_batch import StateCopy, StreamBatch

Routed = tuple[list[int], list[int]]  # a model's share of a round: rows, and their slots


def arena_layout(card: ModelCard, settings: Settings) -> ArenaLayout:
    """The per-stream arrays a model's streams need under these settings."""
    return ArenaLayout(
        state_names=card.state_names,
        num_layers=card.num_layers,
        hidden_size=card.hidden_size,
        channels=card.n_channels,
        scores=tuple(
            (name, *spec) for name, spec in likelihood.fields(
                likelihood.LikelihoodParams.of(settings.scoring), card.n_channels
            ).items()
        ),
    )


class StreamDirectory:
    """Every bound stream's model, and each model's `Stepper` (which owns its arena)."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.steppers = {
            name: Stepper.warmed(name, model, _new_arena(model.card, settings), settings)
            for name, model in registry.models.items()
        }
        self._channels = {name: model.card.n_channels for name, model in registry.models.items()}

    def __contains__(self, stream_id: str) -> bool:
        return self.model_of(stream_id) is not None

    def model_of(self, stream_id: str) -> str | None:
        """The model a stream is bound to: the one whose arena holds it (a model or a few,
        so asking each is cheaper than a second map from every stream to its model)."""
        for name, stepper in self.steppers.items():
            if stream_id in stepper.arena:
                return name
        return None

    def sorted_ids(self) -> list[str]:
        return sorted(
            itertools.chain.from_iterable(s.arena.stream_ids() for s in self.steppers.values())
        )

    def only_model(self, channels: int) -> str | None:
        """The model, when there is only one and it takes readings of `channels` channels."""
        if len(self.steppers) != 1:
            return None
        name = next(iter(self.steppers))
        return name if self._channels[name] == channels else None

    def remembers(self, stream_ids: list[str]) -> bool:
        """Whether one model's arena remembers this list (`StateArena.remembers`): its streams
        are distinct."""
        return any(stepper.arena.remembers(stream_ids) for stepper in self.steppers.values())

    def slots_of(self, name: str, stream_ids: list[str]) -> np.ndarray | None:
        """The slots of streams bound to model `name`, (batch,) int64; None if any is not."""
        try:
            return self.steppers[name].arena.slots_of(stream_ids)
        except KeyError:
            return None

    def route(
        self,
        readings: Sequence[Reading],
        outcomes: list[Outcome | None],
        unbound: list[StreamwatchError],
    ) -> dict[str, Routed]:
        """Each reading's model and slot, binding new streams: model -> (rows, slots).

        A reading that cannot be bound gets its error in `outcomes` and in `unbound`.
        """
        by_model: dict[str, Routed] = {}
        steppers, channels = self.steppers, self._channels
        # With one model, its arena's slot map tells both whether a stream is bound and where:
        # one lookup per reading instead of two (on 100k streams each is a cache miss).
        only = next(iter(steppers)) if len(steppers) == 1 else None
        only_slot = steppers[only].arena.slot_lookup() if only is not None else None
        if only is not None and only_slot is not None:  # the common round: nothing to bind
            slots = list(map(only_slot, [r.stream_id for r in readings]))
            if (
                None not in slots
                and [r.model for r in readings].count(None) == len(readings)
                and {len(r.values) for r in readings} == {channels[only]}
            ):
                return {only: (list(range(len(readings))), cast(list[int], slots))}
        for i, reading in enumerate(readings):
            stream_id = reading.stream_id
            name: str | None
            if only_slot is not None:
                name, slot = only, only_slot(stream_id)
            else:
                name = self.model_of(stream_id)
                slot = None if name is None else steppers[name].arena.slot_of(stream_id)
            if (
                name is None
                or slot is None
                or reading.model is not None
                or len(reading.values) != channels[name]
            ):
                try:
                    name = self.bind(reading)
                except StreamwatchError as error:
                    outcomes[i] = error
                    unbound.append(error)
                    continue
                slot = steppers[name].arena.slot_of(stream_id)
                assert slot is not None
            routed = by_model.get(name)
            if routed is None:
                by_model[name] = routed = ([], [])
            routed[0].append(i)
            routed[1].append(slot)
        return by_model

    def bind(self, reading: Reading) -> str:
        """The model this reading's stream is bound to, binding a new stream if valid."""
        bound = self.model_of(reading.stream_id)
        if bound is not None:
            if reading.model is not None and reading.model != bound:
                raise ModelMismatchError(
                    f"stream {reading.stream_id!r} is bound to model {bound!r}, "
                    f"not {reading.model!r}; delete the stream to rebind it"
                )
            name = bound
        else:
            name = self.registry.model_for(reading.stream_id, reading.model)
        channels = self._channels[name]
        if len(reading.values) != channels:
            raise InvalidReadingError(
                f"model {name!r} takes {channels} channel(s), the reading has {len(reading.values)}"
            )
        if bound is None:
            self.steppers[name].bind(reading.stream_id)
        return name

    def release(self, stream_id: str) -> list[tuple[str, Alert]]:
        """Drop a bound stream; the events of closing its open alert, if it had one."""
        name = self.model_of(stream_id)
        if name is None:
            raise KeyError(stream_id)
        return self.steppers[name].release(stream_id)

    def snapshot(self) -> list[StateCopy]:
        """Copies of every model's streams, all of one instant."""
        return [stepper.copy() for stepper in self.steppers.values()]

    def restore(self, batches: Sequence[StreamBatch]) -> None:
        """Replace the streams of each batch's model with the batch's.

        ValueError if a stream is in two batches or a batch does not fit its model's arena
        (then nothing changed); CapacityError if one holds more than state.max_streams.
        """
        owners: dict[str, str] = {}
        for batch in batches:
            for stream_id in batch.stream_ids:
                if owners.setdefault(stream_id, batch.model) != batch.model:
                    raise ValueError(f"stream {stream_id!r} is in two models' state")
        for batch in batches:
            self.steppers[batch.model].restore(batch)

    def adopt(self, batches: Sequence[StreamBatch], absent: Sequence[str] = ()) -> None:
        """Take stored state for some streams, binding each to its batch's model; those
        in `absent` and in no batch have no stored state any more and are dropped here."""
        stored: set[str] = set()
        for batch in batches:
            stepper, keep = self.steppers[batch.model], []
            for j, stream_id in enumerate(batch.stream_ids):
                stored.add(stream_id)
                bound = self.model_of(stream_id)
                if bound != batch.model:
                    if bound is not None:
                        self.steppers[bound].release(stream_id)
                    try:
                        stepper.bind(stream_id)
                    except CapacityError:
                        continue  # its reading will be refused the same way
                keep.append(j)
            stepper.adopt(batch if len(keep) == len(batch.stream_ids) else batch.subset(keep))
        for stream_id in absent:
            if stream_id not in stored and (bound := self.model_of(stream_id)):
                self.steppers[bound].release(stream_id)

    def open_alert_ids(self) -> set[str]:
        return set().union(*(stepper.held_alert_ids() for stepper in self.steppers.values()))


def _new_arena(card: ModelCard, settings: Settings) -> StateArena:
    layout = arena_layout(card, settings)
    return StateArena(layout, settings.state.initial_capacity, settings.state.max_streams)
