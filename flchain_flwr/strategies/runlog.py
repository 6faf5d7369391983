"""What a FedBuff run logs, in the manner of Flower's strategies.

Once, at the first version: what ``num_rounds`` means for this K and node
count. Each version: its line (trigger, updates, staleness, the rejections and
failures since the last version, traffic per node) and its aggregated metrics.
At the end: the sparse downlink's tally and the closing summary, set against
what FedAvg would have aggregated in as many rounds.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import MetricRecord
from flwr.supercore import log

from .downlink import DownlinkSync
from .personalised import log_personal
from .result import AsyncResult, VersionRecord, mean_staleness
from .traffic import human_bytes


def log_rounds(num_versions: int, buffer_size: int, nodes: int) -> None:
    """Say what ``num_versions`` versions of ``buffer_size`` updates are worth
    in FedAvg rounds with ``nodes`` training at once."""
    log(
        INFO,
        "num_rounds=%d counts global versions of K=%d updates each; with %d "
        "nodes training at once, one FedAvg round's worth of updates takes "
        "%.1f versions, so the run makes about %.1f FedAvg rounds' worth.",
        num_versions,
        buffer_size,
        nodes,
        nodes / buffer_size,
        num_versions * buffer_size / max(nodes, 1),
    )


def log_version(
    record: VersionRecord,
    num_versions: int,
    rejected: int,
    failed: int,
    metrics: MetricRecord | None,
) -> None:
    """Log a new version; ``rejected`` and ``failed`` count since the last."""
    log(
        INFO,
        "[VERSION %d/%d] t=%.2fs trigger=%s updates=%d staleness=%s "
        "rejected=%d failed=%d down=%s/node up=%s/node",
        record.version,
        num_versions,
        record.time,
        record.trigger,
        record.num_updates,
        record.staleness_histogram,
        rejected,
        failed,
        human_bytes(record.bytes_down / max(record.messages_down, 1)),
        human_bytes(record.bytes_up / max(record.replies_up, 1)),
    )
    if metrics is not None:
        log(INFO, "\t├──> Aggregated MetricRecord: %s", metrics)


def log_downlink(downlink: DownlinkSync) -> None:
    """Log how many train messages went as deltas and how many in full."""
    sent = sum(stats.sent for stats in downlink.by_distance.values())
    log(
        INFO,
        "Downlink: %d train messages as deltas, %d as full models%s",
        sent,
        downlink.full_sent,
        f"; {downlink.initial_refused} deltas on the initial model failed"
        if downlink.initial_refused
        else "",
    )


# pylint: disable=too-many-arguments
def log_finished(
    result: AsyncResult,
    *,
    strategy_name: str,
    num_versions: int,
    nodes: int,
    clock_time: float,
    wall_time: float,
    in_flight: int,
) -> None:
    """The closing summary: the personalised report, what the run did, and
    what ``num_versions`` FedAvg rounds on ``nodes`` nodes would have done."""
    log_personal(result)
    updates = sum(v.num_updates for v in result.versions)
    log(
        INFO,
        "%s finished: %d versions, %d updates aggregated (mean staleness %.2f) "
        "in %.2fs on the grid's clock, %.2fs wall; %d rejected, %d failed, "
        "%d left in flight",
        strategy_name,
        len(result.versions),
        updates,
        mean_staleness(result),
        clock_time,
        wall_time,
        len(result.rejected),
        len(result.failures),
        in_flight,
    )
    log(
        INFO,
        "\t└──> %d FedAvg rounds on %d nodes would have aggregated %d updates; "
        "this run aggregated %d (%.2f rounds' worth)",
        num_versions,
        nodes,
        num_versions * nodes,
        updates,
        updates / max(nodes, 1),
    )
