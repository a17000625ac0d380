"""A labelling project's state as immutable values, and the transitions the service allows.

    state = State.new(first_round)
    state = give(state, index, label, time=..., num_classes=C, pool_size=P)   # or raises
    state, undone = undo(state)
    state = finish_round(state, next_round)

Only the current round's proposals can be labelled, each once; only a label of the current
round can be undone, for an earlier round already trained on it. Every refusal is a
`JalError` (bad input: a class or pool index that does not exist) or a `Conflict` (the
request contradicts the state, e.g. a sample another tab labelled first).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

from jal.errors import JalError


class Conflict(JalError):
    """A request the state refuses as it is now: the sample is labelled already, a round is training, ..."""


class Round(NamedTuple):
    """One round: what it proposed, and how its model did (round 0 proposes at random, with no model)."""

    number: int
    proposals: tuple[int, ...]  # pool indices to label, best first
    scores: tuple[float, ...]  # the proposals' scores; empty in round 0
    trained_on: int  # labels the round's model trained on; 0 in round 0
    test_accuracy: float | None  # None without a model or without test labels
    test_nll: float | None
    seconds: float  # training, scoring and choosing
    time: float  # when it finished (Unix time)


class Label(NamedTuple):
    index: int  # pool index
    label: int  # class
    round: int  # the round that proposed the sample
    time: float  # when it was given (Unix time)


@dataclasses.dataclass(frozen=True)
class State:
    labels: tuple[Label, ...]  # in the order given
    rounds: tuple[Round, ...]  # every finished round; the last one's proposals are the ones to label

    @classmethod
    def new(cls, first: Round) -> State:
        return cls((), (first,))

    @property
    def round(self) -> Round:
        return self.rounds[-1]

    @functools.cached_property
    def labelled(self) -> dict[int, int]:
        """Pool index -> class, in the order given."""
        return {label.index: label.label for label in self.labels}

    @property
    def pending(self) -> list[int]:
        """The current proposals still to label, best first."""
        return [i for i in self.round.proposals if i not in self.labelled]


def give(state: State, index: int, label: int, *, time: float, num_classes: int, pool_size: int) -> State:
    """`state` with pool sample `index` labelled `label`, if the service allows it now."""
    if not 0 <= index < pool_size:
        raise JalError(f"sample {index} is not in the pool: pool indices are 0..{pool_size - 1}")
    if not 0 <= label < num_classes:
        raise JalError(f"class {label} does not exist: classes are 0..{num_classes - 1}")
    if index in state.labelled:
        raise Conflict(
            f"sample {index} is labelled already (class {state.labelled[index]}), perhaps in another tab; "
            "undo that label to change it"
        )
    if index not in state.round.proposals:
        raise Conflict(f"sample {index} is not among round {state.round.number}'s proposals; label those")
    return dataclasses.replace(state, labels=(*state.labels, Label(index, label, state.round.number, time)))


def undo(state: State) -> tuple[State, Label]:
    """`state` without its last label, and that label, if it was given in the current round."""
    if not state.labels:
        raise Conflict("there is no label to undo")
    last = state.labels[-1]
    if last.round != state.round.number:
        raise Conflict(
            f"the last label (sample {last.index}) belongs to round {last.round}, whose samples a model has "
            "trained on since; it stays"
        )
    return dataclasses.replace(state, labels=state.labels[:-1]), last


def check_can_train(state: State, pool_size: int) -> None:
    """Raises Conflict unless a new round can start: it needs a label, and an unlabelled sample to propose."""
    if not state.labels:
        raise Conflict("no label yet: label at least one of the proposed samples before a model trains")
    if len(state.labelled) == pool_size:
        raise Conflict(f"every one of the {pool_size} pool samples is labelled; there is nothing left to propose")


def finish_round(state: State, new: Round) -> State:
    """`state` with `new` as its current round; of its proposals, those labelled while it trained are dropped."""
    kept = [(i, s) for i, s in zip(new.proposals, new.scores, strict=True) if i not in state.labelled]
    new = new._replace(proposals=tuple(i for i, _ in kept), scores=tuple(s for _, s in kept))
    return dataclasses.replace(state, rounds=(*state.rounds, new))


def replay(rounds: list[Round], events: list[dict], *, num_classes: int, pool_size: int) -> State:
    """The state a project's rounds and its label events (given and undone, in order) add up to.

    The events go through `give` and `undo` again, each in the round it was given in, so
    files that do not add up raise JalError (and KeyError or TypeError where an event lacks
    a field).
    """
    state, later = State.new(rounds[0]), iter(rounds[1:])
    for event in events:
        if "undo" in event:
            state, undone = undo(state)
            if undone.index != event["undo"]:
                raise JalError(f"undoes sample {event['undo']}, but the last label is sample {undone.index}'s")
            continue
        while state.round.number < event["round"]:
            state = finish_round(state, next(later, None) or _missing(event["round"]))
        if event["round"] != state.round.number:
            raise JalError(f"a label of round {event['round']} given after round {state.round.number} began")
        state = give(state, event["index"], event["label"], time=event["time"], num_classes=num_classes,
                     pool_size=pool_size)  # fmt: skip
    for new in later:
        state = finish_round(state, new)
    return state


def _missing(number: int) -> Round:
    raise JalError(f"a label of round {number}, which never finished")
