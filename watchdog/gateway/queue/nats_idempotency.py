"""The NATS backend's idempotency keys: ``KV P_idempotency`` maps ``sha256(function, key)``
to the call holding it, claimed with ``kv.create`` before the call is stored."""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors

from .base import CallRequest, QueueError, QueueUnavailable
from .clock import Clock
from .nats_link import NatsLink, reason
from .nats_record import claim_holder, claim_value, idempotency_key
from .nats_store import RecordStore

log = logging.getLogger("watchdog.gateway.queue")

_CAS_TRIES = 8
_ORPHAN_GRACE = 5.0
"""How long an idempotency key's claim is honoured while its call's record is not there."""

Claim = tuple[str, int]
"""A key claimed: the bucket's key and the claim's revision."""


class IdempotencyKeys:
    def __init__(self, link: NatsLink, records: RecordStore, clock: Clock) -> None:
        self.link = link
        self.records = records
        self.clock = clock

    async def claim(self, request: CallRequest) -> tuple[str | None, Claim | None]:
        """Claim the request's idempotency key for its call id. Returns the id of the call
        that holds it already (and None), or None and the claim."""
        assert request.idempotency_key is not None
        bucket = self.link.parts().idempotency
        key = idempotency_key(request.function, request.idempotency_key)
        for _ in range(_CAS_TRIES):
            try:
                revision = await bucket.create(key, claim_value(request.call_id, self.clock.now()))
                return None, (key, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await bucket.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue
            holder, claimed_at = claim_holder(entry.value)
            if holder and await self.records.load(holder) is not None:
                return holder, None
            if holder and self.clock.now() - claimed_at < _ORPHAN_GRACE:
                # Its record may be being written right now, or its write was lost (NATS
                # went away): neither accepted nor refused yet. Not a 202 for a call that
                # may never exist: ask the client to come back once the grace is over.
                raise QueueUnavailable(
                    f"the call {holder} holding this idempotency key is not stored yet",
                    call_id=holder,
                )
            # The holder's record was purged (or never written): the key is free again.
            try:
                revision = await bucket.update(
                    key, claim_value(request.call_id, self.clock.now()), last=entry.revision
                )
                return None, (key, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise QueueError("idempotency key kept changing; try again")

    async def release(self, claim: Claim) -> None:
        key, revision = claim
        bucket = self.link.parts().idempotency
        try:
            await bucket.delete(key, last=revision)
        except (nats.js.errors.Error, nats.errors.Error) as exc:
            log.debug("releasing idempotency key %s: %s", key, reason(exc))

    async def find(self, function: str, key: str) -> str | None:
        """The call holding ``key`` for ``function``, if its record exists."""
        bucket = self.link.parts().idempotency
        try:
            entry = await bucket.get(idempotency_key(function, key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        holder = claim_holder(entry.value)[0]
        if holder and await self.records.load(holder) is not None:
            return holder
        return None

    async def forget(self, function: str, key: str, call_id: str) -> None:
        """Free ``key`` if ``call_id`` still holds it (its record is being purged)."""
        bucket = self.link.parts().idempotency
        name = idempotency_key(function, key)
        try:
            entry = await bucket.get(name)
            holder = claim_holder(entry.value)[0]
            if holder == call_id and entry.revision is not None:
                await bucket.delete(name, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            pass
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # claimed again meanwhile
