"""The ingest HTTP API: validates events and publishes them to Kafka.

An event batch is all-or-nothing at validation time: one bad event refuses the whole
request and nothing is published. `202` is only answered once Kafka acknowledged every
event (acks=all), so an accepted event is durable. A retry after a 503 may publish some
events twice; that is harmless because the stager deduplicates on event_id.

The pages behind the links in emails (unsubscribe, preferences, confirmation) live in
the `pages` package, the open pixel and click redirect in `tracking.py`; both publish through
this module's one publish path.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.clock import Clock
from lifecycle.core.segments import filter_json_schema
from lifecycle.events import MAX_BATCH_EVENTS, BatchInvalid, Event, derived_event_id, parse_batch
from lifecycle.kafka import RenewingProducer, ensure_topics, make_producer, publish_events, stop_quietly
from lifecycle.privacy import publish_tombstones
from lifecycle.seal import Seal
from lifecycle.segment_files import segment_names
from lifecycle.settings import Settings, parse_shopify_secrets
from lifecycle.templates import Templates
from lifecycle.tokens import SigningKeys
from services.ingest import metrics
from services.ingest.admin import JourneyStore, admin_router
from services.ingest.answers import ADMIN_KEY_RESPONSES, WRITE_KEY_RESPONSES, ErrorBody
from services.ingest.bodies import decode_json, read_body
from services.ingest.campaigns_api import CampaignStore, campaigns_router
from services.ingest.pages import CustomerReader, PublishFailed, pages_router
from services.ingest.privacy_api import PrivacyStore, privacy_router, shopify_privacy_topics
from services.ingest.segment_routes import KeyCheck, segment_router
from services.ingest.segments_api import SegmentPreviewer, segments_router
from services.ingest.shopify_routes import OrderReader, TopicHandler, shopify_router
from services.ingest.tracking import MessageReader, tracking_router

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
PUBLISH_TIMEOUT_SECONDS: Final = 10.0
READY_TIMEOUT_SECONDS: Final = 2.0
RETRY_AFTER_SECONDS: Final = 5
# Kafka may still be starting when we do (docker compose, the local stack): wait a bit.
STARTUP_ATTEMPTS: Final = 30
STARTUP_RETRY_SECONDS: float = 2.0  # not Final: tests shorten it
STARTUP_ATTEMPT_TIMEOUT_SECONDS: Final = 30.0


# --- response models (documentation of the answers in the OpenAPI document) ---


class Accepted(BaseModel):
    accepted: int


class EventErrorItem(BaseModel):
    index: int | None
    field: str
    message: str


class InvalidEvents(BaseModel):
    detail: str
    errors: list[EventErrorItem]


# --- API keys ---


class ApiKeys:
    """The accepted keys of one scope, held only as SHA-256 digests."""

    def __init__(self, spec: str, setting: str = "LIFECYCLE_API_KEYS") -> None:
        self._digests: list[bytes] = []
        for position, raw in enumerate(spec.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower().startswith("sha256:"):
                hexdigest = entry[len("sha256:") :]
                try:
                    digest = bytes.fromhex(hexdigest)
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ValueError(f"{setting} entry {position} is not sha256:<64 hex digits>")
                self._digests.append(digest)
            else:
                self._digests.append(hashlib.sha256(entry.encode("utf-8")).digest())
        if not self._digests:
            log.warning("%s is empty: every request needing such a key will be refused", setting)

    def check(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        # Compare against every key without stopping early: timing reveals nothing.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


@dataclass(frozen=True)
class ScopedKeys:
    """Write keys (LIFECYCLE_API_KEYS) may only send events; admin keys (LIFECYCLE_ADMIN_KEYS) read and administer.

    A key listed in both settings has both scopes.
    """

    write: ApiKeys
    admin: ApiKeys

    @classmethod
    def from_settings(cls, settings: Settings) -> ScopedKeys:
        return cls(ApiKeys(settings.api_keys, "LIFECYCLE_API_KEYS"),
                   ApiKeys(settings.admin_keys, "LIFECYCLE_ADMIN_KEYS"))


# Two schemes in the OpenAPI document, so a reader (and a fuzzer) sees which key a route wants.
_write_bearer = HTTPBearer(scheme_name="WriteKey", auto_error=False,
                           description="A write key from LIFECYCLE_API_KEYS: it may only send events")
_admin_bearer = HTTPBearer(scheme_name="AdminKey", auto_error=False,
                           description="An admin key from LIFECYCLE_ADMIN_KEYS: customer reads and admin routes")


def _unauthenticated() -> HTTPException:
    return HTTPException(
        401,
        "missing or invalid API key; send the header Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _wrong_scope(detail: str) -> HTTPException:
    return HTTPException(403, detail, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


def _scoped_keys(request: Request) -> ScopedKeys:
    keys = getattr(request.app.state, "api_keys", None)
    if not isinstance(keys, ScopedKeys):
        raise RuntimeError("the app has no API keys: build it with create_app")
    return keys


async def require_write_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_write_bearer)]
) -> None:
    """Dependency of POST /v1/events: a write key, else 401 (no or unknown key) or 403 (an admin key)."""
    keys = _scoped_keys(request)
    presented = credentials.credentials.strip() if credentials is not None else ""
    if presented and keys.write.check(presented):
        return
    if presented and keys.admin.check(presented):
        raise _wrong_scope("this is an admin key; events are sent with a write key (LIFECYCLE_API_KEYS)")
    raise _unauthenticated()


async def require_admin_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]
) -> None:
    """Dependency of every admin route (customer reads, /v1/admin/*): an admin key, else 401 or 403.

    Use it as `dependencies=[Depends(require_admin_key)]` with `responses={**ADMIN_KEY_RESPONSES, ...}`.
    """
    keys = _scoped_keys(request)
    presented = credentials.credentials.strip() if credentials is not None else ""
    if presented and keys.admin.check(presented):
        return
    if presented and keys.write.check(presented):
        raise _wrong_scope(
            "this key may only send events; customer reads need an admin key (LIFECYCLE_ADMIN_KEYS)"
        )
    raise _unauthenticated()




# --- metrics middleware ---


class _MetricsMiddleware:
    """Counts and times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app dies before answering, that is what the client sees

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, capture)
        finally:
            # The router stores the matched route in the scope; its template is bounded.
            route = getattr(scope.get("route"), "path", None) or metrics.UNMATCHED_ROUTE
            metrics.REQUESTS.labels(route=route, status=str(status)).inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started)


# --- helpers ---


@dataclass
class _Runtime:
    producer: RenewingProducer | None = None


@dataclass(frozen=True)
class Fence:
    """An acknowledged opt-out the stager has not applied yet (category "*": every marketing email)."""

    customer_id: str
    event_id: str
    category: str


FenceWriter = Callable[[list[Fence]], Awaitable[None]]


def fences_of(events: Sequence[Event]) -> list[Fence]:
    return [Fence(e.customer_id, e.event_id, category) for e in events for category in e.opt_outs()]


def _with_derived_ids(payload: object) -> object:
    """Every event sent without an `event_id` gets one derived from its content (a retry keeps it)."""
    items = payload.get("events") if isinstance(payload, dict) and "events" in payload else [payload]
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and item.get("event_id") is None:
                item["event_id"] = derived_event_id({k: v for k, v in item.items() if k != "event_id"})
    return payload


# --- the app ---


def create_app(
    settings: Settings,
    clock: Clock,
    producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    customer_reader: CustomerReader | None = None,
    *,
    manage_topics: bool | None = None,
    message_reader: MessageReader | None = None,
    fence_writer: FenceWriter | None = None,
    journey_store: JourneyStore | None = None,
    segment_previewer: SegmentPreviewer | None = None,
    campaign_store: CampaignStore | None = None,
    privacy_store: PrivacyStore | None = None,
    order_reader: OrderReader | None = None,
    shopify_topics: Mapping[str, TopicHandler] | None = None,
    new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the ingest API.

    `producer_factory` defaults to `make_producer(settings)`; it is called inside the
    lifespan (aiokafka needs the running loop). `manage_topics` (default: only when the
    real producer is used) runs `ensure_topics` at start-up. `customer_reader` serves
    `GET /v1/customers/{id}` and picks the language of the link pages; `message_reader`
    finds an email's stored links for the click redirect. `new_event_id` names the events
    the API makes (those sent without an id, link actions, opens and clicks); `monotonic` is
    the clock of the rate limits of the links in emails. `fence_writer` records acknowledged
    opt-outs in PostgreSQL before the API answers; `journey_store` serves the admin journey routes,
    `segment_previewer` the segment preview, `campaign_store` the campaigns and `privacy_store` the
    erasure and export of a customer. `order_reader` finds the order a Shopify refund names;
    `shopify_topics` adds handlers to Shopify's webhook topics.
    """
    api_keys = ScopedKeys.from_settings(settings)
    signing_keys = SigningKeys.from_settings(settings)
    runtime = _Runtime()
    factory = producer_factory or (lambda: make_producer(settings))
    create_topics = producer_factory is None if manage_topics is None else manage_topics

    async def start_producer() -> RenewingProducer:
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            producer: RenewingProducer | None = None
            try:
                async with asyncio.timeout(STARTUP_ATTEMPT_TIMEOUT_SECONDS):
                    if create_topics:
                        await ensure_topics(settings)
                    producer = RenewingProducer(factory)
                    await producer.start()
                return producer
            except (KafkaError, OSError, TimeoutError) as exc:
                if producer is not None:
                    await stop_quietly(producer)
                if attempt == STARTUP_ATTEMPTS:
                    log.error(
                        "Kafka at %s is still not reachable after %d attempts: %s",
                        settings.kafka_bootstrap,
                        attempt,
                        exc,
                    )
                    raise RuntimeError(f"Kafka at {settings.kafka_bootstrap} is not reachable") from exc
                log.warning(
                    "Kafka at %s is not reachable yet (attempt %d/%d): %s; retrying in %.1f s",
                    settings.kafka_bootstrap,
                    attempt,
                    STARTUP_ATTEMPTS,
                    str(exc) or type(exc).__name__,
                    STARTUP_RETRY_SECONDS,
                )
                await asyncio.sleep(STARTUP_RETRY_SECONDS)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = await start_producer()
        runtime.producer = producer
        app.state.producer = producer
        log.info("ingest API ready: publishing to %s on %s", settings.events_topic, settings.kafka_bootstrap)
        try:
            yield
        finally:
            runtime.producer = None
            app.state.producer = None
            await producer.stop()  # flushes anything still queued

    app = FastAPI(
        title="lifecycle ingest API",
        version="1",
        description="Send shop events; they drive the lifecycle email journeys.",
        lifespan=lifespan,
        # /v1/admin/journeys/ is no journey: a 404, not a redirect to the list
        redirect_slashes=False,
    )
    app.add_middleware(_MetricsMiddleware)
    app.state.api_keys = api_keys  # read by require_write_key and require_admin_key

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)

    app.add_exception_handler(Exception, internal_error)

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Every route is one method: list the methods of all routes of this path, not the first one's.
        methods: set[str] = set()
        for route in app.router.routes:
            if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
                methods |= route.methods or set()
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                            headers={"Allow": ", ".join(sorted(methods))})

    app.add_exception_handler(405, method_not_allowed)

    seal = Seal.from_settings(settings)  # the stager reads sealed events without checking them again

    async def publish(events: Sequence[Event], *, timeout: float | None = None) -> None:
        """The one way events reach Kafka (API, link pages, tracking); PublishFailed if not acknowledged."""
        producer = runtime.producer
        if producer is None:
            raise PublishFailed("the Kafka producer is not running")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS if timeout is None else timeout):
                await publish_events(producer, settings.events_topic, events, seal)
        except (KafkaError, OSError, TimeoutError) as exc:
            metrics.EVENTS_REFUSED.labels(reason=metrics.REFUSED_UNAVAILABLE).inc(len(events))
            log.warning("publishing %d events failed: %s", len(events), str(exc) or type(exc).__name__)
            raise PublishFailed(str(exc) or type(exc).__name__) from exc
        finally:
            metrics.PRODUCE_DURATION.observe(time.perf_counter() - started)
        fences = fences_of(events)
        if fences and fence_writer is not None:
            # An opt-out is a fence, not only a message: the dispatcher honours it from now on, even
            # before the stager has applied the event. Kafka has it already; a 503 makes the client retry.
            try:
                await fence_writer(fences)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                metrics.EVENTS_REFUSED.labels(reason=metrics.REFUSED_UNAVAILABLE).inc(len(events))
                log.warning("recording %d opt-outs failed: %s", len(fences), str(exc) or type(exc).__name__)
                raise PublishFailed(f"opt-out not recorded: {exc}") from exc
        for kind, count in collections.Counter(event.type.value for event in events).items():
            metrics.EVENTS_ACCEPTED.labels(type=kind).inc(count)

    def unavailable_json() -> JSONResponse:
        return JSONResponse(
            {
                "detail": "events could not be stored right now; retry later "
                "(resending is safe: duplicates are ignored by event_id)"
            },
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    request_body_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/AnyEvent"},
                            {"$ref": "#/components/schemas/EventBatch"},
                        ]
                    }
                }
            },
        }
    }

    @app.post(
        "/v1/events",
        status_code=202,
        dependencies=[Depends(require_write_key)],
        openapi_extra=request_body_doc,
        responses={
            202: {"model": Accepted, "description": "Every event was stored in Kafka"},
            400: {"model": ErrorBody, "description": "The body is not JSON"},
            **WRITE_KEY_RESPONSES,
            413: {"model": ErrorBody, "description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
            422: {"model": InvalidEvents, "description": "Some events are invalid; nothing was stored"},
            503: {"model": ErrorBody, "description": "Kafka is unavailable; retry after Retry-After"},
        },
        summary=f"Send one event or a batch of 1 to {MAX_BATCH_EVENTS}",
    )
    async def post_events(request: Request) -> JSONResponse:
        payload = _with_derived_ids(decode_json(await read_body(request, MAX_BODY_BYTES)))
        try:
            events = parse_batch(payload, await clock.now(), new_event_id)
        except BatchInvalid as exc:
            # Every event of the batch is refused, the valid ones too.
            metrics.EVENTS_REFUSED.labels(reason=metrics.REFUSED_INVALID).inc(max(exc.total, 1))
            return JSONResponse({"detail": f"{exc}; nothing was accepted", "errors": exc.errors}, status_code=422)
        try:
            await publish(events)
        except PublishFailed:
            return unavailable_json()
        return JSONResponse({"accepted": len(events)}, status_code=202)

    # Segment's HTTP Tracking API at its own paths: a shop's Segment library pointed at us
    app.include_router(segment_router(publish, clock.now, KeyCheck(api_keys.write.check, api_keys.admin.check),
                                      PublishFailed))

    async def tombstones(customer_id: str) -> list[str]:
        producer = runtime.producer
        if producer is None:
            raise PublishFailed("the Kafka producer is not running")
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            return await publish_tombstones(producer, [settings.events_topic, settings.triggers_topic], customer_id)

    # Shopify's webhooks, signed with the app's secret; its privacy topics erase and export
    privacy_topics = shopify_privacy_topics(privacy_store, tombstones, monotonic) if privacy_store else {}
    app.include_router(shopify_router(publish, clock.now, parse_shopify_secrets(settings.shopify_secrets),
                                      PublishFailed, order_reader, {**privacy_topics, **(shopify_topics or {})}))

    @app.get(
        "/v1/customers/{customer_id}",
        dependencies=[Depends(require_admin_key)],
        responses={
            200: {"description": "The customer as stored"},
            **ADMIN_KEY_RESPONSES,
            404: {"model": ErrorBody, "description": "No such customer"},
            501: {"model": ErrorBody, "description": "This API was started without a customer store"},
            503: {"model": ErrorBody, "description": "The customer store is unavailable; retry after Retry-After"},
        },
        summary="Read one customer's profile (admin key)",
    )
    async def get_customer(customer_id: str) -> JSONResponse:
        if customer_reader is None:
            return JSONResponse({"detail": "customer lookup is not configured"}, status_code=501)
        try:
            found = await customer_reader(customer_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("customer lookup failed: %s", exc)
            return JSONResponse(
                {"detail": "the customer store is unavailable; retry later"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if found is None:
            return JSONResponse({"detail": "customer not found"}, status_code=404)
        return JSONResponse(jsonable_encoder(found))

    # The pages behind the links in emails, and open/click tracking.
    app.include_router(pages_router(settings, signing_keys, clock, publish, customer_reader,
                                    new_event_id=new_event_id, monotonic=monotonic))
    app.include_router(tracking_router(settings, signing_keys, clock, publish, message_reader,
                                       new_event_id=new_event_id, monotonic=monotonic))
    template_names = Templates(settings.journeys_dir, settings.default_locale).names()
    app.include_router(admin_router(journey_store, [Depends(require_admin_key)], template_names))
    app.include_router(campaigns_router(campaign_store, [Depends(require_admin_key)], template_names,
                                        segment_names(settings.segments_dir)))
    app.include_router(segments_router(segment_previewer, [Depends(require_admin_key)], settings.segments_dir))

    app.include_router(privacy_router(privacy_store, tombstones, [Depends(require_admin_key)]))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: Kafka is reachable", responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        problem = await not_ready_because(runtime.producer)
        if problem is not None:
            return JSONResponse({"status": "unavailable", "detail": problem}, status_code=503)
        return JSONResponse({"status": "ready"})

    # No /metrics here: Prometheus reads it on LIFECYCLE_INGEST_METRICS_PORT (services/ingest/main.py),
    # which is not published with the API.

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        # The events body is read by hand (size limit, all-errors report), so FastAPI
        # cannot see its schema: add every event type's model here.
        event_schemas = Event.json_schema_by_type(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(event_schemas.definitions)
        components["AnyEvent"] = event_schemas.one_of()
        components["EventBatch"] = {
            "type": "object",
            "additionalProperties": False,
            "required": ["events"],
            "properties": {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_EVENTS,
                    "items": {"$ref": "#/components/schemas/AnyEvent"},
                }
            },
        }
        # Segment's libraries send the write key as HTTP Basic's user name (an empty password)
        schemes = schema["components"].setdefault("securitySchemes", {})
        schemes["SegmentWriteKey"] = {"type": "http", "scheme": "basic",
                                      "description": "the write key as the user name, an empty password"}
        # the inline filter of the segment preview is JSON in the query string: say what JSON
        components["SegmentFilter"] = filter_json_schema()
        for parameter in schema["paths"]["/v1/admin/segments/preview"]["get"]["parameters"]:
            if parameter["name"] == "filter":
                parameter.pop("schema", None)
                parameter["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/SegmentFilter"}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def not_ready_because(producer: RenewingProducer | AIOKafkaProducer | None) -> str | None:
    """Why events cannot be published now (None: they can): the readiness of the API."""
    if producer is None:
        return "producer not started"
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await producer.client.fetch_all_metadata()
    except Exception as exc:  # any failure means "not ready"; the probe must answer
        return f"Kafka unreachable: {str(exc) or type(exc).__name__}"
    return None
