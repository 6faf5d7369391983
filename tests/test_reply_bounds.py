"""What a train or evaluate reply may carry, and what becomes of one that
carries more: refused with a bounded, recorded reason, never stored unbounded
in the ledger, never a crash. Real components: the virtual grid, FedBuff and
the ledger."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)

from flchain_flwr.arrays import to_arrayrecord
from flchain_flwr.compression.sparse import VALUE_TYPES, encode
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.payload import decode_payload, payload_chunks
from flchain_flwr.mods.dgccompress import DGCState, compress
from flchain_flwr.mods.dgcconfig import DGCConfig
from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY
from flchain_flwr.strategies import Constant, FedBuff
from flchain_flwr.strategies.replybounds import MAX_RECORDS_BYTES, honest_stored_bytes
from flchain_flwr.strategies.updates import (
    UpdateRejected,
    counted_metrics,
    parse_update,
)

from .crafted import Shape, crafted_grid, honest_reply
from .toy import initial_arrays

LONG = 1_000_000
"""Characters a faulty client puts where nothing else bounds them."""


def _with_extra_record(record: ArrayRecord) -> Shape:
    def shape(msg: Message, pid: int) -> Message:
        reply = honest_reply(msg, pid)
        reply.content["junk"] = record
        return reply

    return shape


def _reference() -> dict[str, np.ndarray]:
    return {"w": np.zeros(3, np.float32)}


def _reply(arrays: dict[str, Array], **records: object) -> RecordDict:
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 1})}
    )
    for name, record in records.items():
        content[name] = record  # type: ignore[assignment]
    return content


# ------------------------------------------------------------ train replies
def test_an_ignored_extra_arrayrecord_with_an_odd_dtype_does_not_crash_the_ledger(
    tmp_path: Path,
) -> None:
    """A dtype string the digest tolerates (lone surrogate) in a second
    ArrayRecord must not reach the payload header, which it cannot encode."""
    junk = ArrayRecord(
        {"j": Array(dtype="f\ud800", shape=(1,), stype="numpy.ndarray", data=b"x")}
    )
    grid = crafted_grid({0: _with_extra_record(junk)})
    strategy = FedBuff(
        buffer_size=2, staleness_fn=Constant(), ledger=tmp_path / "l.db", seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=2, timeout=60.0)
    assert len(result.versions) == 2
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().ok


def test_an_oversized_ignored_record_is_not_stored_in_the_ledger_unbounded(
    tmp_path: Path,
) -> None:
    """A reply whose model is 28 bytes may not carry 8 MB of other arrays
    into the ledger: it is refused with a reason."""
    junk = ArrayRecord({"j": Array(np.zeros(2_000_000, dtype=np.float32))})
    grid = crafted_grid({0: _with_extra_record(junk)})
    strategy = FedBuff(
        buffer_size=2, staleness_fn=Constant(), ledger=tmp_path / "l.db", seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=3, timeout=60.0)
    junk_node = grid.node_ids[0]
    accepted = sum(v.node_ids.count(junk_node) for v in result.versions)
    rejected = [r for r in result.rejected if r.node_id == junk_node]
    stored = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    # either the reply is refused with a reason, or the ledger stays small
    assert rejected or stored < 4_000_000, (accepted, stored)


def test_a_rejection_reason_stays_bounded_whatever_the_array_names() -> None:
    reference = {"w": np.zeros(3, np.float32)}
    arrays = {"w": Array(np.zeros(3, np.float32))}
    for i in range(200):
        arrays[f"{i:04d}" + "x" * 5_000] = Array(np.zeros(1, np.float32))
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 1})}
    )
    with pytest.raises(UpdateRejected) as info:
        parse_update(content, reference)
    assert len(info.value.reason) < 4_096, len(info.value.reason)
    assert "unexpected arrays: 200 names" in info.value.reason


def test_a_second_arrayrecord_is_refused_even_beside_the_named_one() -> None:
    junk = ArrayRecord({"j": Array(np.zeros(1, np.float32))})
    content = _reply({"w": Array(np.zeros(3, np.float32))}, junk=junk)
    with pytest.raises(UpdateRejected, match="2 ArrayRecords"):
        parse_update(content, _reference())


def test_non_array_records_beyond_the_budget_are_refused() -> None:
    """ConfigRecords are not read by the server but are stored with the reply:
    together with the metrics they must fit in ``MAX_RECORDS_BYTES``."""
    blob = ConfigRecord({"blob": b"\0" * MAX_RECORDS_BYTES})
    content = _reply({"w": Array(np.zeros(3, np.float32))}, extra=blob)
    with pytest.raises(UpdateRejected, match="MAX_RECORDS_BYTES"):
        parse_update(content, _reference())
    small = ConfigRecord({"note": "fine"})
    content = _reply({"w": Array(np.zeros(3, np.float32))}, extra=small)
    assert parse_update(content, _reference()).num_examples == 1.0


def test_a_dense_array_with_trailing_bytes_is_refused() -> None:
    """``np.load`` ignores bytes after the array; the digest and the ledger
    would keep them."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, np.float32), allow_pickle=False)
    padded = Array(
        dtype="float32",
        shape=(3,),
        stype="numpy.ndarray",
        data=buffer.getvalue() + b"\0" * 1_000,
    )
    with pytest.raises(UpdateRejected, match="trailing"):
        parse_update(_reply({"w": padded}), _reference())


@pytest.mark.parametrize(
    ("dtype", "shape"), [("f\ud800", (3,)), ("float64", (3,)), ("float32", (1, 3))]
)
def test_a_dense_array_must_declare_what_its_data_holds(
    dtype: str, shape: tuple[int, ...]
) -> None:
    """The declared dtype and shape are stored in the payload's header: they
    must be numpy's own for the data (a lone surrogate is not storable)."""
    data = Array(np.zeros(3, np.float32)).data
    forged = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    with pytest.raises(UpdateRejected, match="declares"):
        parse_update(_reply({"w": forged}), _reference())


def test_every_accepted_reply_has_a_payload_that_reads_back() -> None:
    content = _reply(
        {"w": Array(np.ones(3, np.float32))}, extra=ConfigRecord({"x": "\ud800"})
    )
    parse_update(content, _reference())
    node_id, back = decode_payload(b"".join(payload_chunks(7, content)))
    assert node_id == 7 and list(back) == list(content)


def test_a_payload_of_an_unstorable_dtype_names_the_array() -> None:
    odd = Array(dtype="f\ud800", shape=(1,), stype="numpy.ndarray", data=b"x")
    content = RecordDict({"arrays": ArrayRecord({"w": odd})})
    with pytest.raises(ValueError, match=r"array .w.*dtype"):
        b"".join(payload_chunks(1, content))


# ------------------------------------------- what an accepted reply stores
def test_the_update_arrayrecords_name_counts_toward_the_reply_bound() -> None:
    """The one ArrayRecord's name is the client's choice, of any length, and
    is written into the payload header the ledger stores and each member is
    sent: it counts toward MAX_RECORDS_BYTES like every other record name
    (a megabyte name was once accepted, counted nowhere)."""
    reference = {"w": np.zeros(3, np.float32)}
    content = RecordDict(
        {
            "a" * LONG: to_arrayrecord({"w": np.ones(3, np.float32)}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    try:
        parse_update(content, reference)
    except UpdateRejected:
        return  # bounded: the reply was refused with a reason
    stored = sum(len(chunk) for chunk in payload_chunks(1, content))
    model_bytes = sum(
        len(a.data) for r in content.array_records.values() for a in r.values()
    )
    assert stored - model_bytes <= MAX_RECORDS_BYTES + 4_096, stored


# ------------------------------------- the stored growth the docs promise
def _stored_beyond_model(content: RecordDict, reference: dict[str, np.ndarray]) -> int:
    """Bytes of the payload the ledger stores beyond the model's honest stored
    size (its tensors as an honest dense reply stores them)."""
    parse_update(content, reference)  # accepted
    stored = sum(len(chunk) for chunk in payload_chunks(1, content))
    return stored - honest_stored_bytes(reference)


@pytest.mark.parametrize("nuls", [40_000, 44_000, 260_000])
def test_an_accepted_reply_stores_at_most_its_model_plus_the_records_bound(
    nuls: int,
) -> None:
    """docs/fedbuff.md: "a client holding no key can make the ledger and each
    vote request grow by its model's honest stored size plus at most 256 KiB
    per update".
    The payload header is canonical JSON, where a NUL is written ``\\u0000``
    (6 bytes): the bound counts the bytes stored, not the characters sent, so
    40,000 NULs (240 kB) pass and 44,000 (264 kB) or 260,000 (1.5 MB) do not."""
    reference = {"w": np.zeros(3, np.float32)}
    content = RecordDict(
        {
            "arrays": to_arrayrecord({"w": np.ones(3, np.float32)}),
            "metrics": MetricRecord({"num-examples": 10}),
            "c": ConfigRecord({"s": "\x00" * nuls}),
        }
    )
    if nuls * 6 > MAX_RECORDS_BYTES:
        with pytest.raises(UpdateRejected, match="MAX_RECORDS_BYTES"):
            parse_update(content, reference)
    else:
        assert _stored_beyond_model(content, reference) <= MAX_RECORDS_BYTES


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_sparse_reply_stores_at_most_its_models_size(dtype: str) -> None:
    """A sparse array (version 1, 4-byte indices, float32 values) of every
    entry of a 100,000-element tensor is well formed but twice the model's
    size (four times for float16): it is refused, naming the array."""
    n = 100_000
    reference = {"w": np.zeros(n, dtype)}
    sparse = encode(
        np.arange(n),
        np.full(n, 0.001, np.float32),
        shape=(n,),
        dtype=dtype,
        value_dtype="float32",
        version=1,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": sparse}),
            "metrics": MetricRecord({"num-examples": 10}),
            UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA}),
        }
    )
    with pytest.raises(UpdateRejected, match=r"sparse array 'w'.*dense tensor"):
        parse_update(content, reference)


@pytest.mark.parametrize("value_dtype", VALUE_TYPES)
@pytest.mark.parametrize("density", [0.003, 0.1, 0.5, 1.0])
def test_the_dgc_mods_replies_fit_the_bounds(value_dtype: str, density: float) -> None:
    """What the DGC mod sends, at any density and value type, is accepted and
    stores at most the model's size plus the records bound: it sends a tensor
    sparse only when that is smaller than dense."""
    rng = np.random.default_rng(0)
    delta = {
        "w": rng.normal(size=(100, 1_000)).astype(np.float32),
        "b": rng.normal(size=10).astype(np.float32),
    }
    cfg = DGCConfig.plain_topk(density, value_dtype=value_dtype)
    compressed, _ = compress(delta, DGCState(), cfg)
    content = RecordDict(
        {
            "arrays": ArrayRecord(compressed.arrays),
            "metrics": MetricRecord({"num-examples": 10}),
            UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA}),
        }
    )
    reference = {k: np.zeros_like(v) for k, v in delta.items()}
    assert _stored_beyond_model(content, reference) <= MAX_RECORDS_BYTES


def _densenet201_layout() -> dict[str, np.ndarray]:
    """torchvision's DenseNet-201 state_dict names and ranks (1,207 tensors,
    ~20M parameters), each tensor shrunk to one element per axis: the per-tensor
    overhead only grows with the real shapes' digits."""
    conv = np.zeros((1, 1, 1, 1), np.float32)
    norm_vec = np.zeros((1,), np.float32)
    counter = np.zeros((), np.int64)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.weight": norm_vec,
            f"{prefix}.bias": norm_vec,
            f"{prefix}.running_mean": norm_vec,
            f"{prefix}.running_var": norm_vec,
            f"{prefix}.num_batches_tracked": counter,
        }

    layout: dict[str, np.ndarray] = {"features.conv0.weight": conv}
    layout.update(norm("features.norm0"))
    for block, layers in enumerate((6, 12, 48, 32), start=1):
        for layer in range(1, layers + 1):
            p = f"features.denseblock{block}.denselayer{layer}"
            layout.update(norm(f"{p}.norm1"))
            layout[f"{p}.conv1.weight"] = conv
            layout.update(norm(f"{p}.norm2"))
            layout[f"{p}.conv2.weight"] = conv
        if block < 4:
            layout.update(norm(f"features.transition{block}.norm"))
            layout[f"features.transition{block}.conv.weight"] = conv
    layout.update(norm("features.norm5"))
    layout["classifier.weight"] = np.zeros((1, 1), np.float32)
    layout["classifier.bias"] = norm_vec
    return layout


def test_an_honest_flower_reply_of_a_densenet201_is_not_refused() -> None:
    """replybounds.MAX_RECORDS_BYTES is a flat 256 KiB for everything beyond
    the tensors' values, but each dense tensor alone costs ~230 bytes there
    (npy's 128-byte header plus its name, dtype, shape, stype and size in the
    payload header). A plain Flower ClientApp reply for torchvision's
    DenseNet-201 (1,207 state_dict tensors) carries nothing but its model and
    ``num-examples``, yet parse_update refuses it."""
    reference = _densenet201_layout()
    assert len(reference) == 1207
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in reference.items()}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    try:
        parse_update(content, reference)
    except UpdateRejected as exc:  # pragma: no cover - the finding
        raise AssertionError(f"honest reply refused: {exc.reason}") from None


def test_an_honest_reply_stores_exactly_its_models_honest_size() -> None:
    """The allowance for the tensors is what an honest dense reply of the
    model stores for them, to the byte: a reply of only the model, its
    ArrayRecord named "", stores that plus its frame and ``num-examples``."""
    reference = _densenet201_layout()
    content = RecordDict(
        {
            "": ArrayRecord({k: Array(v) for k, v in reference.items()}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    bare = RecordDict(
        {"": ArrayRecord(), "metrics": MetricRecord({"num-examples": 10})}
    )
    frame = sum(len(chunk) for chunk in payload_chunks(1, bare))
    # n entries need n - 1 commas; honest_array_bytes counts one each
    assert _stored_beyond_model(content, reference) == frame - 1


def test_extra_metricrecords_are_accepted_but_only_the_counted_one_counts() -> None:
    """A reply may carry MetricRecords beside the one holding ``num-examples``
    (they are stored, so a ledger recorded with them still replays), but
    only that one is aggregated; two records claiming a count are refused."""
    reference = _reference()
    content = _reply(
        {"w": Array(np.ones(3, np.float32))}, more=MetricRecord({"acc": 1.0})
    )
    parsed = parse_update(content, reference)
    assert counted_metrics(content, "num-examples") == {"metrics": content["metrics"]}
    assert "acc" not in parsed.metrics
    twice = _reply(
        {"w": Array(np.ones(3, np.float32))},
        more=MetricRecord({"num-examples": 5}),
    )
    with pytest.raises(UpdateRejected, match="several MetricRecords"):
        parse_update(twice, reference)


# ------------------------------------------------------------ evaluate replies
def test_a_rejected_evaluate_reply_is_recorded_not_only_logged() -> None:
    """A malformed evaluate reply (here a NaN loss) is recorded in the run's
    result with its reason, as a failure of that node's evaluate message."""
    nan_loss = MetricRecord({"num-examples": 10, "loss": float("nan")})
    grid = crafted_grid({}, evaluations={0: nan_loss})
    strategy = FedBuff(buffer_size=2, staleness_fn=Constant(), seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=3, timeout=60.0)
    assert result.evaluate_metrics_clientapp  # evaluations did run
    bad = grid.node_ids[0]
    recorded = [f.reason for f in result.failures if f.node_id == bad] + [
        r.reason for r in result.rejected if r.node_id == bad
    ]
    assert any("not finite" in reason for reason in recorded), recorded
