"""A ClientApp that replies at once with nothing: no torch, no data."""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Reply with empty content."""
    return Message(content=RecordDict(), reply_to=msg)
