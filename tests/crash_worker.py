"""A FedBuff run that records into a ledger; the crash test kills it with SIGKILL.

Usage: python -m tests.crash_worker LEDGER NUM_VERSIONS
Prints ``committed <version>`` after each block is committed.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import FedBuff

from .toy import constant_work, toy_client_app

SIZE = 400_000  # ~1.6 MB of float32 per model: blob writes take a while


def main() -> None:
    FLOWER_LOGGER.setLevel(logging.ERROR)
    path, versions = sys.argv[1], int(sys.argv[2])
    arrays = ArrayRecord(
        {"w": Array(np.zeros(3, np.float32)), "b": Array(np.zeros(SIZE, np.float32))}
    )
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (1.0, 0.7, 0.4)],
        work_fn=constant_work(1.0),
    )

    def report(version: int, _: ArrayRecord) -> None:
        print(f"committed {version}", flush=True)

    FedBuff(buffer_size=2, ledger=path, seed=0).start(
        grid, arrays, num_rounds=versions, evaluate_fn=report
    )
    print("finished", flush=True)


if __name__ == "__main__":
    main()
