"""Resuming from a ledger's head: the settings compared, in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.ledger import Ledger
from flchain_flwr.strategies.resume import check_config, config_changes

from .ledger_helpers import LEADER_KEY


def test_config_changes_names_each_differing_setting_in_order() -> None:
    old = {"b": 2.5, "a": 1, "gone": [1, 2]}
    new = {"a": 1.0, "b": 3, "new": "x"}
    assert config_changes(old, new) == (
        "settings that differ: b: 2.5 in the ledger, 3 now; "
        "gone: [1,2] in the ledger, <unset> now; "
        'new: <unset> in the ledger, "x" now'
    )  # 1 and 1.0 are one setting: a format-2 ledger records the one as the other


def test_config_changes_without_recorded_settings_or_a_difference() -> None:
    assert "cannot be named" in config_changes(None, {"a": 1})
    assert config_changes({"a": 1}, {"a": 1.0}) == (
        "every setting is the same, but the digests differ"
    )


def test_check_config_refuses_or_lets_a_changed_run_go_on(tmp_path: Path) -> None:
    old = {"buffer_size": 2}
    with Ledger(tmp_path / "l.db", chain_id="resume", signing_key=LEADER_KEY) as ledger:
        digest = ledger.config_digest(old)
        ledger.append(
            model={"w": np.zeros(3, np.float32)},
            model_version=0,
            base_version=0,
            config_digest=digest,
            config=old,
        )
        head = ledger.head()
        assert head is not None
        assert not check_config(ledger, head, old, digest, allow_changed=False)
        new = {"buffer_size": 3}
        with pytest.raises(ValueError, match="buffer_size: 2 in the ledger, 3 now"):
            check_config(
                ledger, head, new, ledger.config_digest(new), allow_changed=False
            )
        assert check_config(
            ledger, head, new, ledger.config_digest(new), allow_changed=True
        )
