"""Round trips to every node, one message at a time per node, sent on reply.

Each node gets its next message as soon as the ServerApp sees its reply (polled
every 50 ms), as a strategy that dispatches on reply would. The round trip is
the ServerApp's wall time from push to pulled reply: Flower's floor for one
message (SuperNode poll, ClientApp process start, transport).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _send(grid: Grid, node_id: int, index: int) -> str:
    content = RecordDict({"config": ConfigRecord({"index": index})})
    message = Message(content, node_id, MessageType.TRAIN, ttl=600.0)
    pushed = [str(i) for i in grid.push_messages([message]) if i]
    if not pushed:
        raise RuntimeError(f"push to node {node_id} was refused")
    return pushed[0]


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``round-trips`` round trips per node; their seconds to ``results-path``."""
    cfg = context.run_config
    wanted, min_nodes = int(cfg["round-trips"]), int(cfg["min-nodes"])
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        time.sleep(0.5)
    done = dict.fromkeys(nodes, 0)
    sent_at: dict[str, tuple[int, float]] = {}
    for node_id in nodes:
        sent_at[_send(grid, node_id, 0)] = (node_id, time.monotonic())
    round_trips: list[float] = []
    while sent_at:
        for reply in grid.pull_messages(list(sent_at)):
            node_id, started = sent_at.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                raise RuntimeError(f"node {node_id}: {reply.error.reason}")
            round_trips.append(time.monotonic() - started)
            done[node_id] += 1
            if done[node_id] < wanted:
                sent_at[_send(grid, node_id, done[node_id])] = (
                    node_id,
                    time.monotonic(),
                )
        time.sleep(0.05)
    print("round trips:", " ".join(f"{t:.2f}" for t in round_trips))
    if cfg["results-path"]:
        path = Path(str(cfg["results-path"]))
        path.write_text(json.dumps({"round_trips": round_trips}))
