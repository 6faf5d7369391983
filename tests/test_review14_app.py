"""Review of issue #14 through the digits app: a bad client-mod key of the
straggler work (personal-alpha) is not refused by the ServerApp."""

from __future__ import annotations

import logging

import pytest

from flchain_flwr.sim import app_run_config, run_federation, tiered

pytest.importorskip("torch")


@pytest.mark.xfail(
    strict=True,
    reason="server_app.main never reads personal-alpha (only FEDBUFF_ONLY "
    "names it): a value outside [0, 1] starts the run, every node's "
    "personal_mod raises on every message, and the run ends after its timeout "
    "('no usable reply for 3600s', 1440 node failures) instead of one "
    "ValueError naming the key",
)
def test_the_app_refuses_a_bad_personal_alpha_before_the_run() -> None:
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)
    config = app_run_config(
        "apps/flchain_cnn", {"num-server-rounds": 2, "personal-alpha": 1.5}
    )
    with pytest.raises(ValueError, match="personal-alpha"):
        run_federation(server_app, client_app, devices=tiered(4), run_config=config)
