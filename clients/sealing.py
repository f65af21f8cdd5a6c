"""The node's end of the channel: it reads a request only once it verified against its pin
(:mod:`fedmodel.crypto.pin`), and answers signed, sealed when the run seals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from flwr.app import RecordDict

from fedmodel.crypto.pin import ServerPin
from fedmodel.crypto.seal import (
    SealError,
    SignedRequest,
    load_server_public,
    open_request,
    seal_update,
    sign_update,
    state_dict_from_bytes,
)
from server import wire


@dataclass(frozen=True)
class ServerChannel:
    """One request from the pinned server: verified before it is read, answered signed.

    :meth:`open` checks the request's signature against the pin before a byte of its config is
    parsed, and, when the request names the server's exchange key (sealed runs), that the key is
    the pinned one. :meth:`reply` signs the update with the node's ledger key, and seals it to
    that key when the run seals.
    """

    pin: ServerPin
    request: SignedRequest
    server_public: X25519PublicKey | None

    @classmethod
    def open(cls, pin: ServerPin, content: RecordDict) -> ServerChannel:
        record = content.config_records.get(wire.SIGNED_REQUEST)
        blob = record.get(wire.BLOB) if record is not None else None
        if not isinstance(blob, bytes):
            raise SealError("malformed", "the message carries no signed request")
        request = open_request(blob, pin.verify_key)
        raw = request.config.get(wire.SERVER_EXCHANGE_KEY)
        server_public = None
        if raw is not None:
            try:
                key = bytes.fromhex(str(raw))
            except ValueError:
                raise SealError("malformed", "server exchange key is not hex") from None
            server_public = load_server_public(key, pin.exchange_fingerprint)
        return cls(pin, request, server_public)

    def global_state(self) -> dict[str, torch.Tensor]:
        return state_dict_from_bytes(self.request.payload)

    def reply(self, payload: bytes, node_name: str, signer: Ed25519PrivateKey) -> bytes:
        """The envelope for ``payload`` (:func:`server.wire.update_payload`): sealed to the
        pinned server when the request carried its exchange key, else signed in the clear."""
        common = {"signer": signer, "run_id": self.request.run_id, "round": self.request.round}
        if self.server_public is None:
            return sign_update(payload, node_id=node_name, **common)
        return seal_update(payload, server_public=self.server_public, node_id=node_name, **common)
