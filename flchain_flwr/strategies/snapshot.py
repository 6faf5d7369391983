"""A wrapped Flower strategy's state, saved so that a round can be undone.

:class:`~flchain_flwr.pov.PoVStrategy` hands a round's approved replies to
the wrapped strategy before the block is signed; when the block's leader then
does not sign and the round is decided again, the wrapped strategy must
aggregate from the state it had before (FedAvgM's momentum, FedAdam's
moments), or its server optimiser would step twice for one round.

Callable attributes (an ``evaluate_fn``, a metrics aggregation function, a
bound method of the user's own evaluator) are kept as they are, not copied:
a deep copy of a bound method copies the object it is bound to (a whole
dataset or model, every round), and after a restore the strategy would call
a copy instead of the user's object. Their state is not rolled back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """A deep copy of an object's attributes (``None``, with ``problem``
    saying why, where they could not be copied)."""

    attributes: dict[str, Any] | None
    problem: str = ""

    @classmethod
    def of(cls, obj: object) -> Snapshot:
        """``obj``'s attributes as they are now."""
        try:
            return cls(copy.deepcopy(vars(obj), _shared_callables(vars(obj))))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # a lock, a handle, no __dict__: whatever deepcopy refuses
            return cls(None, f"{type(obj).__name__} cannot be copied ({exc})")

    def restore(self, obj: object) -> None:
        """Put ``obj``'s attributes back as they were (in place: whoever
        holds ``obj`` sees them; the snapshot stays usable again)."""
        assert self.attributes is not None
        attributes = vars(obj)
        attributes.clear()
        attributes.update(
            copy.deepcopy(self.attributes, _shared_callables(self.attributes))
        )


def _shared_callables(attributes: dict[str, Any]) -> dict[int, Any]:
    """A deepcopy memo that leaves ``attributes``' callables uncopied."""
    return {id(value): value for value in attributes.values() if callable(value)}
