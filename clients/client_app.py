"""The Flower ClientApp (Message API): a page, as in Flower's examples; the work is in
``train_round`` (training) and ``evaluate_round`` (federated evaluation), which verify the
signed request first and answer signed, sealed when the run asks for it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.evaluate_round import run_evaluate_round
from clients.train_round import describe_failure, run_train_round

# Deployment processes are not under Ray, which otherwise caps OMP threads; many clients on few
# cores must not oversubscribe them.
torch.set_num_threads(1)

log = logging.getLogger(__name__)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _answer(msg, context, run_train_round)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, run_evaluate_round)


def _answer(
    msg: Message, context: Context, handle: Callable[[RecordDict, Context], RecordDict]
) -> Message:
    try:
        content = handle(msg.content, context)
    except Exception as err:  # the node must answer, never hang the round
        log.exception("round failed")  # the detail stays in the site's own log
        code, reason = describe_failure(err)
        return Message(Error(code=code, reason=reason), reply_to=msg)
    return Message(content, reply_to=msg)
