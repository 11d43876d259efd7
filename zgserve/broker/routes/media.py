"""The charged media routes (embeddings, images, audio): priced before forwarding, billed whole.

The same money path as chat (:mod:`zgserve.broker.routes.proxy`): authenticated, read within
bounds (uploads up to ``server.maxUploadBytes``), parsed once (:mod:`zgserve.common.media`),
priced by the model's rule (:mod:`zgserve.broker.media`) and reserved before anything is
forwarded, the client's bytes sent to the service unchanged (it signs them), the answer read
whole, metered and recorded durably before its first byte leaves; it carries ``ZG-Res-Key``
and the fee charged (``X-0G-Fee``, neuron). A failed call, or an answer that cannot be
metered, is not charged and not relayed (502). A client that leaves after the record is
billed: the answer was produced for it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from zgserve.broker.catalog import CatalogModel
from zgserve.broker.db.models import FeeRecord, utcnow
from zgserve.broker.media import Bill, MediaPlan, ParsedMedia, audio, check_model, embeddings, images
from zgserve.broker.routes.relay import RES_KEY, adding_headers, pool_headers
from zgserve.broker.routes.table import Resolved
from zgserve.common import multipart
from zgserve.common.media import MediaKind

if TYPE_CHECKING:
    from zgserve.broker.billing import Reservation
    from zgserve.broker.routes.proxy import ProxyApp
    from zgserve.broker.shared_admission import SharedReservation


FEE_HEADER = b"x-0g-fee"  # the official broker's name for the fee charged, in neuron
_EXPOSE = (b"access-control-expose-headers", b"ZG-Res-Key, X-0G-Fee")
_UPLOADS: frozenset[MediaKind] = frozenset({"image_edits", "transcriptions"})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class MediaProxy:
    """Serves the media rows of the route table for ``app`` (its auth, reservations, pool)."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        settings = app.core.settings
        self._max_upload = settings.server.max_upload_bytes
        self._max_images = settings.billing.max_choices
        self._bytes_per_token = settings.billing.input_bytes_per_token

    async def parse(self, kind: MediaKind, body: bytes, content_type: bytes | None) -> ParsedMedia:
        if kind == "embeddings":
            return embeddings.parse(body)
        if kind in ("images", "image_edits"):
            return images.parse(body, content_type, edit=kind == "image_edits", max_images=self._max_images)
        if kind == "transcriptions":
            return await audio.parse_transcription(body, content_type)
        return audio.parse_speech(body)

    def plan(self, parsed: ParsedMedia, model: CatalogModel) -> MediaPlan:
        if isinstance(parsed, embeddings.ParsedEmbeddings):
            return embeddings.plan(parsed, model.pricing, self._bytes_per_token)
        if isinstance(parsed, images.ParsedImages):
            return images.plan(parsed, model)
        if isinstance(parsed, audio.ParsedTranscription):
            return audio.plan_transcription(parsed, model)
        assert isinstance(parsed, audio.ParsedSpeech)
        return audio.plan_speech(parsed, model)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, resolved: Resolved) -> None:
        """One media request, from authentication to the recorded answer."""
        app, core = self.app, self.app.core
        kind, target = resolved.route.media, resolved.target
        assert kind is not None
        auth = await core.auth.authenticate(
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        )
        user = auth.token.user
        limits = core.limits
        # Admitted before the body is read: an upload may be megabytes, and a user's concurrency
        # slots then bound the memory their uploads can hold at once.
        admission = await limits.admit(user) if limits is not None else None
        tokens = 0
        try:
            if admission is not None and admission.headers:
                send = adding_headers(send, admission.headers)
            body = await app._read_body(scope, receive, limit=self._max_upload if kind in _UPLOADS else None)
            content_type = _header(scope, b"content-type")
            parsed = await self.parse(kind, body, content_type)
            model = core.catalog.resolve(parsed.model_name)
            check_model(kind, model)
            plan = self.plan(parsed, model)
            if limits is not None and isinstance(parsed, images.ParsedImages):
                counted = await limits.take_images(user, parsed.request.n)
                if counted:
                    send = adding_headers(send, counted)
            forward_type = "application/json"
            if kind in _UPLOADS:
                # The service reads the same boundary from the same bytes (it signs the bytes as sent).
                boundary = multipart.boundary_of(content_type).decode("ascii")
                forward_type = f'multipart/form-data; boundary="{boundary}"'
            core.writer.ensure_available()
            free = limits is not None and limits.whitelisted(user)
            reservation = None if free else await app._reserve(auth, plan.reserve)
            try:
                upstream = await app._post(model, 0, target, body, content_type=forward_type)
                try:
                    if upstream.status != 200:
                        core.metrics.upstream_errors.labels(f"status_{upstream.status}").inc()
                        await app._relay_error(send, upstream)
                        return
                    data = await app._read_all(upstream)
                    bill = await plan.bill(data, upstream.content_type)
                    response_id = upstream.headers.get("zg-res-key")
                    name = str(parsed.model_name) if model.is_wildcard else model.id
                    fee = await self._record(user, resolved.rest, name, bill, reservation, response_id)
                    tokens = bill.input_units if kind == "embeddings" else 0
                    out = pool_headers(upstream)
                    out.append((b"content-length", str(len(data)).encode()))
                    if fee is not None:
                        out.append((FEE_HEADER, str(fee).encode()))
                    if response_id:
                        out += [(RES_KEY, response_id.encode("latin-1", "replace")), _EXPOSE]
                    await send({"type": "http.response.start", "status": 200, "headers": out})
                    await send({"type": "http.response.body", "body": data})
                finally:
                    if upstream.at_eof:
                        upstream.release()
                    else:
                        upstream.close()
            finally:
                if reservation is not None:
                    reservation.release()  # no-op once charged
        finally:
            if admission is not None:
                await app._end_admission(admission, user, tokens)

    async def _record(
        self,
        user: str,
        endpoint: str,
        model: str,
        bill: Bill,
        reservation: Reservation | SharedReservation | None,
        response_id: str | None,
    ) -> int | None:
        """The fee charged (None: whitelisted, never charged), recorded durably first."""
        if reservation is None:
            self.app.core.metrics.charged.labels("whitelisted").inc()
            return None
        record = FeeRecord(
            request_id=uuid.uuid4().hex,
            user=user,
            model=model[:256],
            endpoint=endpoint,
            stream=False,
            input_tokens=bill.input_units,
            output_tokens=bill.output_units,
            input_price=bill.input_price,
            output_price=bill.output_price,
            fee=bill.fee,
            response_id=response_id[:128] if response_id else None,
            status=bill.status,
            created_at=utcnow(),
        )
        return await self.app._commit(record, reservation)
