"""Every output ends somewhere: how publish failures are sorted, and what is published in
place of an output that can never be, so each input still ends in exactly one outcome — an
answer, a terminal error, or a dead letter with a reason.

*Permanent* failures are rescued at once, because retrying cannot help: an event that does
not encode, one over the broker's message size, a topic name Kafka refuses, and the Kafka
errors of the same kind (``PERMANENT``). Everything else is *transient* (the broker away or
slow, a topic without a leader) and the emitter retries it; see pipeline/agents/flow.py for
the bound. A rescue replaces one output and never touches its neighbours:

    text that is not valid Unicode    -> the same event with U+FFFD in its place
    a Batch of several requests       -> its two halves, each published on its own
    a RoutedRequest (or a Batch of 1) -> a terminal error Response + Usage for the request
    a Response                        -> a short error Response on the default responses topic
    anything else, or what a rescue   -> a DeadLetter holding the event as JSON (cut to fit)
      put in place and still fails
    a BatchJob                        -> not replaced: Unpublishable goes back to the caller
                                         (the Batch API offload then dispatches live)

A DeadLetter that still cannot be published is logged and dropped (``lost``): that means a
broken dead-letter topic, an operator's problem no retry fixes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from typing import Callable

from aiokafka.errors import (InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError,
                             TopicAuthorizationFailedError, UnsupportedForMessageFormatError)

from pipeline import errors
import pipeline.outputs.outcomes as outcomes
from pipeline.clock import now_ms
from pipeline.events.codec import Codec
from pipeline.events.models import (ERROR, Batch, BatchJob, DeadLetter, ErrorInfo, Response,
                                    RoutedRequest, Usage)
from pipeline.events.text import scrub
from pipeline.kafka.topics import invalid_topic_name
from pipeline.outputs.out import Out
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.delivery")

# Bytes a record needs beside its key and value (record batch header, headers, varints).
RECORD_OVERHEAD = 512
# A dead letter's raw value is cut so that the record fits with this much room to spare.
DEAD_LETTER_ROOM = 16 * 1024
MAX_RESCUES = 3           # an output replaced more often than this is given up (logged)

PERMANENT = (InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError,
             TopicAuthorizationFailedError, UnsupportedForMessageFormatError,
             UnicodeError, ValueError, TypeError, OverflowError)

TOO_LARGE, BAD_TOPIC, UNENCODABLE = "too_large", "invalid_topic", "unencodable"
GAVE_UP = "publish_timeout"


class Unpublishable(Exception):
    """An output that can never be published as it is. ``code`` says why: ``too_large``,
    ``invalid_topic``, ``unencodable`` or ``publish_timeout``."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, (Unpublishable, *PERMANENT))


def classify(exc: BaseException) -> Unpublishable:
    """A permanent failure as an Unpublishable with its code."""
    if isinstance(exc, Unpublishable):
        return exc
    if isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError)):
        return Unpublishable(TOO_LARGE, f"the broker refused the record as too large ({exc})")
    if isinstance(exc, (InvalidTopicError, TopicAuthorizationFailedError)):
        return Unpublishable(BAD_TOPIC, f"the broker refused the topic ({exc!r})")
    return Unpublishable(UNENCODABLE, f"the event does not encode ({type(exc).__name__}: {exc})")


def check_record(topic: str, key: bytes | None, value: bytes, max_message_bytes: int) -> None:
    """Raise Unpublishable for a record the broker would refuse, before sending it."""
    why = invalid_topic_name(topic)
    if why:
        raise Unpublishable(BAD_TOPIC, why)
    size = len(value) + len(key or b"") + RECORD_OVERHEAD
    if size > max_message_bytes:
        raise Unpublishable(TOO_LARGE, f"the record would be {size:,} bytes; the broker takes at "
                            f"most {max_message_bytes:,}")


@dataclass
class Rescuer:
    """What to publish instead of an output that failed permanently. Pure: no Kafka."""

    topics: Topics
    codec: Codec
    max_message_bytes: int
    clock: Callable[[], int] = now_ms
    lost: int = 0              # outputs given up (each logged): should stay 0

    def rescue(self, out: Out, failure: Unpublishable, depth: int, *, agent: str,
               origin_topic: str = "", origin_partition: int = -1, origin_offset: int = -1
               ) -> list[Out]:
        """The outputs to publish in place of ``out``. ``depth``: how many rescues ``out``
        itself is the product of."""
        event = out.event
        if isinstance(event, BatchJob):
            raise failure
        if depth >= MAX_RESCUES:
            return self._give_up(out, failure, agent)
        if failure.code == UNENCODABLE and not isinstance(event, DeadLetter):
            cleaned = scrub(event)
            if cleaned != event:
                return [replace(out, event=cleaned)]
        if isinstance(event, Batch) and failure.code != BAD_TOPIC:
            if len(event.items) > 1:
                return [replace(out, event=half) for half in halves(event)]
            return self._request_failed(out, event.items[0], failure)
        if isinstance(event, RoutedRequest) and failure.code != BAD_TOPIC:
            return self._request_failed(out, event, failure)
        if isinstance(event, Response) and not self._is_short(out, event):
            return [self._short_error(out, event, failure)]
        if isinstance(event, DeadLetter):
            return self._shrunk(out, event, failure, agent)
        return [self._dead_letter(out, failure, agent, origin_topic, origin_partition,
                                  origin_offset)]

    # --- the replacements ------------------------------------------------------------

    def _request_failed(self, out: Out, routed: RoutedRequest, failure: Unpublishable) -> list[Out]:
        """The request cannot travel on: end it with an error its caller hears about."""
        r = routed.request
        code = errors.INVALID_REQUEST if failure.code == TOO_LARGE else errors.INTERNAL_ERROR
        log.error("request_unpublishable request_id=%s tenant=%s topic=%s code=%s reason=%s",
                  r.request_id, r.tenant, out.topic, failure.code, failure.reason)
        return outcomes.routed_failed(
            routed, code, f"the request could not be passed on ({failure.code}): {failure.reason}",
            False, at=self.clock(), tried=routed.tried, provider_ms=0,
            routed_model=routed.route.model if not routed.tried else "", topics=self.topics)

    def _is_short(self, out: Out, response: Response) -> bool:
        return (out.topic == self.topics.responses and response.status == ERROR
                and response.content is None and not response.metadata)

    def _short_error(self, out: Out, response: Response, failure: Unpublishable) -> Out:
        """The caller still hears that its request ended, on the default responses topic,
        without the content that could not be published."""
        log.error("response_unpublishable request_id=%s tenant=%s topic=%s code=%s reason=%s",
                  response.request_id, response.tenant, out.topic, failure.code, failure.reason)
        short = Response(
            request_id=response.request_id, tenant=response.tenant, status=ERROR,
            completed_at_ms=response.completed_at_ms, model=response.model,
            deployment=response.deployment, prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens, cost_nanos=response.cost_nanos,
            attempts=response.attempts, latency_ms=max(0, min(response.latency_ms, 2**62)),
            error=ErrorInfo(errors.INTERNAL_ERROR, f"the response could not be delivered to "
                            f"{out.topic[:120]} ({failure.code}): {failure.reason}"))
        return replace(out, topic=self.topics.responses, event=scrub(short), partition=None)

    def _dead_letter(self, out: Out, failure: Unpublishable, agent: str, origin_topic: str,
                     origin_partition: int, origin_offset: int) -> Out:
        event = out.event
        request_id, tenant = ids_of(event)
        log.error("output_dead_lettered agent=%s topic=%s event=%s request_id=%s code=%s "
                  "reason=%s", agent, out.topic, type(event).__name__, request_id, failure.code,
                  failure.reason)
        key = out.key.encode(errors="replace") if isinstance(out.key, str) else out.key
        letter = DeadLetter(
            source_topic=origin_topic or out.topic, source_partition=origin_partition,
            source_offset=origin_offset, reason_code=failure.code,
            reason=f"{type(event).__name__} for {out.topic} not published: {failure.reason}"[:2000],
            agent=agent, at_ms=self.clock(), key=key,
            value=self.codec.encode_json(event, ascii_only=True), request_id=request_id, tenant=tenant)
        return Out(self.topics.dead_letter, key, scrub(letter))

    def _shrunk(self, out: Out, letter: DeadLetter, failure: Unpublishable, agent: str) -> list[Out]:
        """A dead letter too large or not encodable: its raw value cut to fit, its text
        scrubbed. Once that fails too, it is given up."""
        budget = max(0, self.max_message_bytes - DEAD_LETTER_ROOM)
        value, key = letter.value, letter.key
        note = ""
        if value is not None and len(value) > budget:
            note = f"; value cut from {len(value):,} to {budget:,} bytes"
            value = value[:budget]
        if key is not None and len(key) > 1024:
            note += f"; key cut from {len(key):,} to 1,024 bytes"
            key = key[:1024]
        smaller = scrub(letter.replace(value=value, key=key,
                                       reason=(letter.reason + note)[:2000]))
        if smaller == letter or failure.code == BAD_TOPIC:
            return self._give_up(out, failure, agent)
        return [replace(out, event=smaller, key=key)]

    def _give_up(self, out: Out, failure: Unpublishable, agent: str) -> list[Out]:
        self.lost += 1
        request_id, tenant = ids_of(out.event)
        log.critical("output_lost agent=%s topic=%s event=%s request_id=%s tenant=%s code=%s "
                     "reason=%s", agent, out.topic, type(out.event).__name__, request_id, tenant,
                     failure.code, failure.reason)
        return []


def halves(batch: Batch) -> tuple[Batch, Batch]:
    """A Batch split in two, each with its own id derived from the original's."""
    mid = len(batch.items) // 2
    base = uuid.UUID(batch.batch_id)
    return (replace(batch, batch_id=str(uuid.uuid5(base, "first-half")), items=batch.items[:mid]),
            replace(batch, batch_id=str(uuid.uuid5(base, "second-half")), items=batch.items[mid:]))


def ids_of(event: object) -> tuple[str | None, str | None]:
    """The request id and tenant an event concerns, when it concerns one."""
    if isinstance(event, RoutedRequest):
        return event.request.request_id, event.request.tenant
    if isinstance(event, (Response, Usage, DeadLetter)):
        return event.request_id, event.tenant
    return None, None
