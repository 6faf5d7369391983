"""Each simulated node's device profile, and which nodes are online when.

Nodes share device profiles (the presets hand out a few profile objects for a
whole population), so availability is kept per distinct profile. Membership is
constant between two boundaries (a start or end of an online window), so
:class:`Membership` recomputes it only when the clock has crossed one, and then
only for the profiles whose windows begin or end in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress

import numpy as np

from .devices import DeviceProfile


def share_profiles(
    devices: Sequence[DeviceProfile],
) -> tuple[list[DeviceProfile], np.ndarray]:
    """Each distinct profile object once, and per node the index of its profile."""
    profiles: list[DeviceProfile] = []
    slot_of: dict[int, int] = {}
    slots: list[int] = []
    for device in devices:
        slot = slot_of.get(id(device))
        if slot is None:
            slot = slot_of[id(device)] = len(profiles)
            profiles.append(device)
        slots.append(slot)
    return profiles, np.array(slots, dtype=np.int32)


def window_boundaries(
    profiles: Sequence[DeviceProfile],
) -> tuple[np.ndarray, np.ndarray]:
    """Every window start and end of every profile, sorted by time.

    Returns the times and, for each, the index of the profile it belongs to.
    """
    times: list[float] = []
    owners: list[int] = []
    for slot, profile in enumerate(profiles):
        for window in profile.online or ():
            times.extend(window)
            owners.extend((slot, slot))
    order = np.argsort(np.array(times, dtype=np.float64), kind="stable")
    return (
        np.array(times, dtype=np.float64)[order],
        np.array(owners, dtype=np.int32)[order],
    )


def online_tuple(
    node_ids: Sequence[int], profile_of: np.ndarray, profile_online: np.ndarray
) -> tuple[int, ...]:
    """The nodes whose profile is online, in ``node_ids`` order."""
    if profile_online.all():
        return tuple(node_ids)
    mask = profile_online[profile_of].tolist()
    return tuple(compress(node_ids, mask))


class Membership:
    """Each node's device profile, the nodes online at a time, and when that changes.

    Parameters
    ----------
    node_ids : Sequence[int]
        Every node's id, sorted.
    devices : Sequence[DeviceProfile]
        One profile per node, in ``node_ids`` order; each distinct profile
        object is kept once (see :func:`share_profiles`).
    """

    def __init__(
        self, node_ids: Sequence[int], devices: Sequence[DeviceProfile]
    ) -> None:
        self._node_ids = node_ids
        self._profiles, self._profile_of = share_profiles(devices)
        self._bound_times, self._bound_slots = window_boundaries(self._profiles)
        self._profile_online: np.ndarray | None = None  # per profile, at _epoch
        self._epoch = 0  # boundaries at or before the time _online_ids is for
        self._online_ids: tuple[int, ...] = ()

    def profile_at(self, index: int) -> DeviceProfile:
        """The profile of the node at ``index`` in ``node_ids``."""
        return self._profiles[int(self._profile_of[index])]

    def online_ids(self, now: float) -> tuple[int, ...]:
        """Ids of the nodes online at ``now``; the same tuple while unchanged.

        O(log B) in the B boundaries; after a crossing, only the profiles whose
        windows begin or end in between are re-evaluated, and the tuple is
        rebuilt (one O(N) pass in C) only if one of them changed.
        """
        epoch = self.boundaries_until(now)
        if self._profile_online is None:  # first call: every profile
            self._profile_online = np.fromiter(
                (p.is_online(now) for p in self._profiles),
                dtype=bool,
                count=len(self._profiles),
            )
            self._online_ids = online_tuple(
                self._node_ids, self._profile_of, self._profile_online
            )
        elif epoch != self._epoch:  # only profiles with a boundary in between
            low, high = sorted((self._epoch, epoch))
            changed = False
            for slot in np.unique(self._bound_slots[low:high]).tolist():
                online = self._profiles[slot].is_online(now)
                if online != self._profile_online[slot]:
                    self._profile_online[slot] = online
                    changed = True
            if changed:
                self._online_ids = online_tuple(
                    self._node_ids, self._profile_of, self._profile_online
                )
        self._epoch = epoch
        return self._online_ids

    def boundaries_until(self, t: float) -> int:
        """How many window boundaries lie at or before ``t`` (O(log B))."""
        if not self._bound_times.size:
            return 0
        return int(np.searchsorted(self._bound_times, t, side="right"))

    def next_change(self, now: float) -> float:
        """The first window boundary after ``now`` (inf if none)."""
        i = self.boundaries_until(now)
        return float(self._bound_times[i]) if i < len(self._bound_times) else math.inf
