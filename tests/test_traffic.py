"""Bytes per global version (issue 15 item 5): result, log line, ledger block."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord

from flchain_flwr.ledger import Ledger
from flchain_flwr.mods import DGCConfig, dgc_mod
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import AsyncResult, FedBuff
from flchain_flwr.strategies.traffic import config_bytes, content_bytes, human_bytes

from .toy import FlowerLogLines, constant_work, initial_arrays, toy_client_app


def _run(mods: list | None, ledger: Path | None = None):  # type: ignore[no-untyped-def]
    grid = VirtualGrid(
        toy_client_app(mods=mods),
        [DeviceProfile(speed=s) for s in (1.0, 0.7, 0.5, 0.3)],
        work_fn=constant_work(1.0),
        seed=3,
    )
    strategy = FedBuff(buffer_size=2, fraction_evaluate=0.0, seed=0, ledger=ledger)
    return simulate(strategy, grid, initial_arrays(), num_rounds=6)


def test_counts_are_the_grids_measured_bytes_of_the_messages() -> None:
    run = _run(None)
    result = run.result
    assert isinstance(result, AsyncResult)
    versions = result.versions
    assert len(versions) == 6
    # every version counts what was sent and received since the one before; a
    # message still in flight at the end belongs to no version. Dense toy
    # messages all have one size, so each count is the grid's own per-message
    # measure times the number of messages.
    grid = run.grid
    replies = sum(s.replies for s in grid.stats.values())
    per_reply = grid.totals()["bytes_up"] / replies
    per_message = grid.totals()["bytes_down"] / grid.totals()["messages"]
    for v in versions:
        assert v.bytes_up == v.replies_up * per_reply
        assert v.bytes_down == v.messages_down * per_message
    assert sum(v.replies_up for v in versions) == sum(v.num_updates for v in versions)
    assert sum(v.messages_down for v in versions) <= grid.totals()["messages"]
    assert per_message == content_bytes(
        FedBuff().train_content(initial_arrays(), ConfigRecord(), 0)
    )


def test_compressed_replies_show_in_bytes_up_and_the_log_line() -> None:
    dense = _run(None).result
    with FlowerLogLines() as log:
        sparse = _run([dgc_mod(DGCConfig(density=0.3, min_sparse_size=1))]).result
    assert isinstance(dense, AsyncResult) and isinstance(sparse, AsyncResult)
    up = sum(v.bytes_up for v in sparse.versions) / sum(
        v.replies_up for v in sparse.versions
    )
    dense_up = sum(v.bytes_up for v in dense.versions) / sum(
        v.replies_up for v in dense.versions
    )
    assert up != dense_up
    lines = [line for line in log.lines if "[VERSION" in line]
    last = sparse.versions[-1]
    assert len(lines) == len(sparse.versions)
    assert f"up={human_bytes(last.bytes_up / last.replies_up)}/node" in lines[-1]


def test_every_block_records_its_versions_traffic(tmp_path: Path) -> None:
    result = _run(None, tmp_path / "l.db").result
    assert isinstance(result, AsyncResult)
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().ok
        blocks = list(ledger.blocks())[1:]
    for block, version in zip(blocks, result.versions, strict=True):
        assert block.body["traffic"] == {
            "messages_down": version.messages_down,
            "bytes_down": version.bytes_down,
            "replies_up": version.replies_up,
            "bytes_up": version.bytes_up,
        }


def test_content_bytes_and_human_bytes() -> None:
    from flwr.app import RecordDict

    content = RecordDict({"arrays": initial_arrays(), "c": ConfigRecord({"k": 1})})
    assert content_bytes(content) == initial_arrays().count_bytes() + len("k") + 8
    assert (human_bytes(6.5e6), human_bytes(18_300), human_bytes(12)) == (
        "6.5MB",
        "18.3kB",
        "12B",
    )


def _empty_list_reply(msg, context, call_next):  # type: ignore[no-untyped-def]
    reply = call_next(msg, context)
    if msg.metadata.message_type == "train" and not reply.has_error():
        reply.content["extra"] = ConfigRecord({"x": []})
    return reply


def test_empty_config_lists_in_replies_and_train_config_are_counted() -> None:
    # Flower's own ConfigRecord.count_bytes raises IndexError on an empty
    # list; one such reply (or operator config) crashed the server's count.
    grid = VirtualGrid(
        toy_client_app(mods=[_empty_list_reply]),
        [DeviceProfile(speed=s) for s in (1.0, 0.7, 0.5, 0.3)],
        work_fn=constant_work(1.0),
        seed=3,
    )
    strategy = FedBuff(buffer_size=2, fraction_evaluate=0.0, seed=0)
    result = simulate(
        strategy,
        grid,
        initial_arrays(),
        num_rounds=3,
        train_config=ConfigRecord({"tags": [], "lr": 0.1}),
    ).result
    assert isinstance(result, AsyncResult)
    assert len(result.versions) == 3 and not result.rejected and not result.failures
    # an empty list costs its key only; the counted bytes match the grid's
    assert config_bytes(ConfigRecord({"x": []})) == 1
    per_reply = grid.totals()["bytes_up"] / sum(s.replies for s in grid.stats.values())
    for v in result.versions:
        assert v.bytes_up == v.replies_up * per_reply


def test_config_bytes_is_flowers_count_where_flower_can_count() -> None:
    record = ConfigRecord(
        {
            "b": True,
            "i": 3,
            "f": 0.5,
            "s": "héllo",
            "y": b"\x00\x01",
            "bs": [True, False],
            "is": [1, 2, 3],
            "ss": ["a", "bcd"],
            "ys": [b"xy"],
        }
    )
    assert config_bytes(record) == record.count_bytes()
