"""The Flower ClientApp (Message API): a page, as in Flower's examples; the work is in
``train_round``, which also seals the reply when the run asks for sealed updates."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from clients.train_round import describe_failure, run_train_round

# Deployment processes are not under Ray, which otherwise caps OMP threads; many clients on few
# cores must not oversubscribe them.
torch.set_num_threads(1)

log = logging.getLogger(__name__)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        content = run_train_round(msg.content, context)
    except Exception as err:  # the node must answer, never hang the round
        log.exception("training failed")  # the detail stays in the site's own log
        code, reason = describe_failure(err)
        return Message(Error(code=code, reason=reason), reply_to=msg)
    return Message(content, reply_to=msg)
