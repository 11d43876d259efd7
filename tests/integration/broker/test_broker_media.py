"""Embeddings, images and audio through broker and service: priced, reserved, signed, recorded.

Real backends where one runs here (llama.cpp embeddings, espeak-ng speech); stand-ins for
image generation and transcription, named so in the test names.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import soundfile  # type: ignore[import-untyped]
from multidict import CIMultiDict

from tests.fakes.media_backend import png
from tests.integration.broker.conftest import FundedUser, RunningBroker, StartBroker, make_token
from tests.integration.broker.media_stack import (
    EMBED_PRICE,
    IMAGE_PRICE,
    STT_PRICE,
    TTS_PRICE,
    MediaStack,
    media_stack,
)
from tests.media_bodies import multipart, wav
from zgserve.broker.db import repo
from zgserve.chain import ChainClient
from zgserve.client import media
from zgserve.client.user import UserClient
from zgserve.common.money import OG
from zgserve.common.signing import recover_address, signed_text
from zgserve.devnet.network import Devnet

BOUNDARY = "----clientBoundary7MA4YWxkTrZu0gW"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MediaStack]:
    async with media_stack(tmp_path_factory.mktemp("media")) as running:
        yield running


def raw_form(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> bytes:
    """A multipart body exactly as a client writes it (its own boundary, its own layout)."""
    return multipart(fields, dict(files), BOUNDARY)


class Client:
    def __init__(self, session: aiohttp.ClientSession, broker: RunningBroker, auth: str) -> None:
        self.s, self.broker, self.auth = session, broker, auth

    async def post(
        self, path: str, body: bytes | dict[str, Any], content_type: str | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        kind = content_type or (
            "application/json" if isinstance(body, dict) else f"multipart/form-data; boundary={BOUNDARY}"
        )
        headers = {"Authorization": self.auth, "Content-Type": kind}
        async with self.s.post(self.broker.url + "/v1/proxy" + path, data=data, headers=headers) as r:
            return r.status, CIMultiDict(r.headers), await r.read()

    async def records(self, user: str) -> list[Any]:
        async with self.broker.core.db.connect() as conn:
            return list((await repo.list_requests(conn, user=user, order="asc")).items)

    async def check_signature(self, request: bytes, response: bytes, response_id: str, model: str) -> None:
        # The SDK names the model: a catalog model may have its own service, which holds the signature.
        url = f"{self.broker.url}/v1/proxy/signature/{response_id}?model={model}"
        async with self.s.get(url) as r:
            assert r.status == 200, await r.text()
            record = await r.json()
        assert record["text"] == signed_text(request, response)
        assert (
            recover_address(record["text"], record["signature"]).lower() == record["signing_address"].lower()
        )
        # The attestation report of that model's service binds the same signer.
        async with self.s.get(f"{self.broker.url}/v1/proxy/attestation/report?model={model}") as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["signing_address"].lower() == record["signing_address"].lower()


@pytest.fixture
async def client(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser
) -> AsyncIterator[tuple[Client, str]]:
    async with start_broker(models=stack.models()) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        yield Client(s, broker, make_token(user.private_key, broker.provider.address)), user.address


async def test_embeddings_from_llama_cpp_are_billed_by_prompt_tokens_and_signed(
    client: tuple[Client, str],
) -> None:
    c, user = client
    body = {"model": "embed", "input": ["hello world", "the quick brown fox jumps over the lazy dog"]}
    raw = json.dumps(body).encode()
    status, headers, data = await c.post("/embeddings", raw, "application/json")
    assert status == 200, data
    answer = json.loads(data)
    assert len(answer["data"]) == 2
    assert len(answer["data"][0]["embedding"]) == 576
    prompt = answer["usage"]["prompt_tokens"]
    assert prompt > 8  # past the first tier: 3/2 of the price per token, rounded down per token
    fee = prompt * (EMBED_PRICE * 3 // 2)
    assert int(headers["X-0G-Fee"]) == fee
    [record] = await c.records(user)
    assert (record.fee, record.input_tokens, record.endpoint, record.model) == (
        fee,
        prompt,
        "/embeddings",
        "embed",
    )
    assert record.fee <= record.input_tokens * record.input_price
    await c.check_signature(raw, data, headers["ZG-Res-Key"], "embed")


async def test_transcription_stand_in_is_billed_from_the_measured_duration(
    client: tuple[Client, str], stack: MediaStack
) -> None:
    c, user = client
    audio = wav(24_500)  # 1.53125 s at 16 kHz
    raw = raw_form({"model": "ears", "language": "en"}, {"file": ("a.wav", audio, "audio/wav")})
    status, headers, data = await c.post("/audio/transcriptions", raw)
    assert status == 200, data
    assert json.loads(data) == {"text": f"stand-in transcript of {len(audio)} bytes"}
    fee = 2 * STT_PRICE  # 1.53 s: billed as 2 whole seconds (nearest, as the SDK counts)
    assert int(headers["X-0G-Fee"]) == fee
    [record] = await c.records(user)
    assert (record.fee, record.input_tokens, record.input_price) == (fee, 2, STT_PRICE)
    await c.check_signature(raw, data, headers["ZG-Res-Key"], "ears")
    # The backend got a canonical upload: our boundary, known fields only, the same audio.
    path, kind, sent = stack.backend.requests[-1]
    assert path == "/v1/audio/transcriptions"
    assert "boundary=zg" in kind
    assert audio in sent
    assert BOUNDARY not in kind


@pytest.mark.parametrize(
    ("fields", "files", "code"),
    [
        ({"model": "ears"}, {"file": ("a.wav", b"RIFF not really audio", "audio/wav")}, "invalid_audio"),
        ({"model": "ears"}, {}, "invalid_parameter"),
        (
            {"model": "ears", "duration": "1"},
            {"file": ("a.wav", wav(100), "audio/wav")},
            "unsupported_parameter",
        ),
        ({"model": "voice"}, {"file": ("a.wav", wav(100), "audio/wav")}, "unsupported_model"),
    ],
)
async def test_bad_uploads_are_refused_before_anything_is_forwarded(
    client: tuple[Client, str], stack: MediaStack, fields: dict[str, str], files: Any, code: str
) -> None:
    c, user = client
    before = len(stack.backend.requests)
    status, _, data = await c.post("/audio/transcriptions", raw_form(fields, files))
    assert (status, json.loads(data)["error"]["code"]) == (400, code)
    assert len(stack.backend.requests) == before
    assert await c.records(user) == []


async def test_malformed_multipart_is_a_400(client: tuple[Client, str]) -> None:
    c, user = client
    good = raw_form({"model": "ears"}, {"file": ("a.wav", wav(100), "audio/wav")})
    for body, kind in [
        (good[:-20], None),  # cut before the closing boundary
        (good, "multipart/form-data"),  # no boundary
        (good, "application/json"),
        (good.replace(b"form-data; name", b"attachment; name", 1), None),
        (b"x" * 100, None),
    ]:
        status, _, data = await c.post("/audio/transcriptions", body, kind)
        assert status == 400, data
        assert json.loads(data)["error"]["code"] in ("invalid_multipart", "invalid_json"), data
    assert await c.records(user) == []


async def test_speech_from_espeak_is_billed_per_second_of_the_audio_returned(
    client: tuple[Client, str],
) -> None:
    c, user = client
    body = {"model": "voice", "input": "Zero gravity compute, billed by the second.", "voice": "en"}
    raw = json.dumps(body).encode()
    status, headers, data = await c.post("/audio/speech", raw, "application/json")
    assert status == 200, data
    assert headers["Content-Type"].startswith("audio/wav")
    info = soundfile.info(io.BytesIO(data))
    assert 1 < info.frames / info.samplerate < 10
    fee = info.frames * TTS_PRICE // info.samplerate
    assert int(headers["X-0G-Fee"]) == fee
    [record] = await c.records(user)
    assert (record.fee, record.output_tokens) == (fee, math.ceil(info.frames / info.samplerate))
    reserved = min(30, math.ceil(2 + len(body["input"]) / 4)) * TTS_PRICE
    assert fee <= reserved
    await c.check_signature(raw, data, headers["ZG-Res-Key"], "voice")


async def test_speech_that_is_not_audio_is_a_502_and_unbilled(client: tuple[Client, str]) -> None:
    c, user = client
    status, headers, data = await c.post(
        "/audio/speech", {"model": "voice", "input": "hi", "voice": "broken"}
    )
    assert status == 502, data
    assert "X-0G-Fee" not in headers
    assert await c.records(user) == []


async def test_images_stand_in_are_billed_per_image_returned_with_the_size_multiplier(
    client: tuple[Client, str],
) -> None:
    c, user = client
    raw = json.dumps({"model": "painter", "prompt": "a red fox", "n": 3, "size": "64x64"}).encode()
    status, headers, data = await c.post("/images/generations", raw, "application/json")
    assert status == 200, data
    images = json.loads(data)["data"]
    assert len(images) == 3
    assert base64.b64decode(images[0]["b64_json"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert int(headers["X-0G-Fee"]) == math.ceil(3 * 1.5) * IMAGE_PRICE
    await c.check_signature(raw, data, headers["ZG-Res-Key"], "painter")
    # Fewer images returned than asked: billed for those returned.
    status, headers, data = await c.post(
        "/images/generations", {"model": "painter", "prompt": "fewer foxes", "n": 3, "size": "64x64"}
    )
    assert status == 200
    assert len(json.loads(data)["data"]) == 2
    assert int(headers["X-0G-Fee"]) == 3 * IMAGE_PRICE
    fees = [r.fee for r in await c.records(user)]
    assert fees == [5 * IMAGE_PRICE, 3 * IMAGE_PRICE]
    # A failed call costs nothing; n above the cap is refused before anything runs.
    status, _, _ = await c.post("/images/generations", {"model": "painter", "prompt": "status:503"})
    assert status == 502  # the backend failed: the service says so, nothing is charged
    status, _, data = await c.post("/images/generations", {"model": "painter", "prompt": "x", "n": 99})
    assert (status, json.loads(data)["error"]["param"]) == (400, "n")
    assert len(await c.records(user)) == 2


async def test_image_edits_stand_in_take_a_multipart_upload(client: tuple[Client, str]) -> None:
    c, user = client
    raw = raw_form(
        {"model": "editor", "prompt": "add a hat", "n": "2"}, {"image": ("in.png", png(8, 8), "image/png")}
    )
    status, headers, data = await c.post("/images/edits", raw)
    assert status == 200, data
    assert len(json.loads(data)["data"]) == 2
    assert int(headers["X-0G-Fee"]) == 2 * IMAGE_PRICE
    await c.check_signature(raw, data, headers["ZG-Res-Key"], "editor")
    [record] = await c.records(user)
    assert (record.fee, record.output_tokens, record.endpoint) == (2 * IMAGE_PRICE, 2, "/images/edits")


async def test_a_model_is_served_only_on_the_routes_of_its_type(client: tuple[Client, str]) -> None:
    c, user = client
    chat = {"model": "painter", "messages": [{"role": "user", "content": "hi"}]}
    for path, body in [
        ("/chat/completions", chat),
        ("/embeddings", {"model": "voice", "input": "hi"}),
        ("/audio/speech", {"model": "embed", "input": "hi"}),
        ("/images/generations", {"model": "chat", "prompt": "hi"}),
    ]:
        status, _, data = await c.post(path, body)
        assert (status, json.loads(data)["error"]["code"]) == (400, "unsupported_model"), (path, data)
    assert await c.records(user) == []


async def test_models_list_the_media_prices(client: tuple[Client, str]) -> None:
    c, _ = client
    async with c.s.get(c.broker.url + "/v1/models") as r:
        models = {m["id"]: m for m in (await r.json())["data"]}
    painter, ears, voice = models["painter"], models["ears"], models["voice"]
    assert painter["type"] == "text-to-image"
    assert painter["pricing"]["image"] == str(IMAGE_PRICE)
    assert painter["pricing"]["image_size_multipliers"] == {"1024x1024": "4", "64x64": "1.5"}
    assert "n" in painter["supported_parameters"]
    assert ears["pricing"]["audio_second"] == str(STT_PRICE)
    assert (voice["pricing"]["audio_second"], voice["pricing"]["max_audio_seconds"]) == (str(TTS_PRICE), 30)
    assert models["embed"]["pricing"]["tiered_pricing"][1]["input_multiplier_denominator"] == 2


async def test_python_client_helpers_verify_each_answer(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser, chain: ChainClient
) -> None:
    # The provider's default service is the media one: its signer is the one registered on-chain.
    async with start_broker(models=stack.models(), targetUrl=stack.media_service) as broker:
        provider = broker.provider.address
        user = await funded_user(provider)
        async with UserClient(chain, user.private_key) as client:
            answers = [
                await media.embed(client, provider, ["one", "two"], model="embed"),
                await media.image(client, provider, "a fox", model="painter", n=2, size="64x64"),
                await media.transcribe(client, provider, wav(16_000), model="ears", language="en"),
                await media.speak(client, provider, "Verified speech.", model="voice"),
            ]
            for answer in answers:
                assert answer.verified, (answer.route, answer.verification.failed)
                assert answer.fee is not None
                assert answer.fee > 0
            assert media.images_of(answers[1]) == [png(8, 8, 0), png(8, 8, 1)]
            assert answers[2].json()["text"].startswith("stand-in transcript")
            assert answers[3].body[:4] == b"RIFF"
            assert answers[2].fee == STT_PRICE
            with pytest.raises(media.MediaRequestFailed) as failed:
                await media.transcribe(client, provider, b"not audio", model="ears")
            assert failed.value.http_status == 400


async def test_speech_longer_than_its_reservation_is_charged_the_reservation(
    client: tuple[Client, str],
) -> None:
    c, user = client
    text = "This sentence lasts longer than the one second this model reserves."
    status, headers, data = await c.post("/audio/speech", {"model": "terse-voice", "input": text})
    assert status == 200, data
    info = soundfile.info(io.BytesIO(data))
    assert info.frames / info.samplerate > 2
    assert int(headers["X-0G-Fee"]) == TTS_PRICE  # 1 s reserved: never charged above it
    [record] = await c.records(user)
    assert record.fee == TTS_PRICE


async def test_a_single_image_model_provider_registers_its_service_type_and_serves_images(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    overrides = {
        "model": "flux",
        "inputPrice": 0,
        "outputPrice": IMAGE_PRICE,
        "targetUrl": stack.media_service,
        "registration": {"serviceType": "text-to-image"},
    }
    async with start_broker(**overrides) as broker, aiohttp.ClientSession() as s:
        service = await broker.core.inference.get_service(broker.provider.address)
        assert (service.service_type, service.model, service.output_price) == (
            "text-to-image",
            "flux",
            IMAGE_PRICE,
        )
        async with s.get(broker.url + "/v1/models") as r:
            [listed] = (await r.json())["data"]
        assert (listed["type"], listed["pricing"]["image"]) == ("text-to-image", str(IMAGE_PRICE))
        user = await funded_user(broker.provider.address)
        c = Client(s, broker, make_token(user.private_key, broker.provider.address))
        status, headers, data = await c.post(
            "/images/generations", {"prompt": "a fox", "n": 2}
        )  # no model: the one
        assert status == 200, data
        assert int(headers["X-0G-Fee"]) == 2 * IMAGE_PRICE
        status, _, data = await c.post("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert (status, json.loads(data)["error"]["code"]) == (400, "unsupported_model")


@pytest.mark.node
async def test_the_official_sdk_computes_the_same_fees_and_verifies_the_answers(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser, devnet: Devnet, tmp_path: Path
) -> None:
    from tests.integration.broker.test_broker_sdk import run_node

    media = {"targetUrl": stack.media_service}
    image_provider = {"model": "flux", "inputPrice": IMAGE_PRICE, "outputPrice": IMAGE_PRICE, **media}
    stt_provider = {"model": "whisper", "inputPrice": STT_PRICE, "outputPrice": 0, **media}
    embed_provider = {
        "model": "embed",
        "inputPrice": EMBED_PRICE,
        "outputPrice": 0,
        "targetUrl": stack.embedding_service,
    }
    cases: list[dict[str, str]] = []
    fees: list[int] = []
    user = await devnet.new_account()
    async with (
        start_broker(**image_provider, registration={"serviceType": "text-to-image"}) as images_broker,
        start_broker(**stt_provider, registration={"serviceType": "speech-to-text"}) as stt_broker,
        start_broker(**embed_provider) as embed_broker,  # a chatbot service: the SDK reads usage
        aiohttp.ClientSession() as s,
    ):  # fmt: skip
        for broker in (images_broker, stt_broker, embed_broker):
            funded = await funded_user(broker.provider.address)
            c = Client(s, broker, make_token(funded.private_key, broker.provider.address))
            if broker is images_broker:
                request = json.dumps({"model": "flux", "prompt": "two foxes", "n": 2}).encode()
                status, headers, data = await c.post("/images/generations", request, "application/json")
                content = request.decode()  # the SDK counts n in the request (times the input price)
            elif broker is stt_broker:
                status, headers, data = await c.post(
                    "/audio/transcriptions",
                    raw_form({"model": "whisper"}, {"file": ("a.wav", wav(24_500), "audio/wav")}),
                )
                content = json.dumps({"type": "duration", "seconds": 24_500 / 16_000})  # OpenAI's usage
            else:
                status, headers, data = await c.post("/embeddings", {"model": "embed", "input": ["a", "b c"]})
                content = json.dumps(json.loads(data)["usage"])
            assert status == 200, data
            fees.append(int(headers["X-0G-Fee"]))
            cases.append(
                {"provider": broker.provider.address, "chatID": headers["ZG-Res-Key"], "content": content}
            )
        dep = devnet.deployment
        env = {
            "RPC_URL": dep.rpc_url,
            "LEDGER": dep.contracts.ledger,
            "INFERENCE": dep.contracts.inference,
            "USER_KEY": user.private_key,
            "CASES": json.dumps(cases),
        }
        result = await run_node(Path(__file__).parent / "sdk" / "media_fees.mjs", env)
    assert [int(r["fee"]) for r in result] == fees  # type: ignore[index]
    assert fees[:2] == [2 * IMAGE_PRICE, 2 * STT_PRICE]
    assert fees[2] > 0
    assert fees[2] % EMBED_PRICE == 0
    assert all(r["valid"] is True for r in result)  # type: ignore[index]


async def test_a_whitelisted_address_gets_media_answers_unbilled(
    stack: MediaStack, start_broker: StartBroker, devnet: Devnet
) -> None:
    monitor = await devnet.new_account()
    limits = {
        "maxGlobalConcurrent": 0,
        "maxPerUserConcurrent": 0,
        "perUserRPM": 0,
        "whitelist": [monitor.address],
    }
    async with start_broker(models=stack.models(), limits=limits) as broker, aiohttp.ClientSession() as s:
        ledger = devnet.chain.ledger(devnet.chain.wallet(monitor.private_key))
        await ledger.add_ledger(3 * OG)
        await ledger.transfer_fund(broker.provider.address, OG)
        c = Client(s, broker, make_token(monitor.private_key, broker.provider.address))
        status, headers, data = await c.post(
            "/images/generations", {"model": "painter", "prompt": "x", "n": 2}
        )
        assert status == 200, data
        assert "X-0G-Fee" not in headers
        assert await c.records(monitor.address) == []


async def test_an_upload_under_way_holds_the_users_slot(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    """Uploads are admitted before their bodies are read: a user's concurrency slots bound how
    many megabytes of theirs the broker holds at once, and a stalled upload cannot take more."""
    limits = {"maxGlobalConcurrent": 0, "maxPerUserConcurrent": 1, "perUserRPM": 0}
    async with start_broker(models=stack.models(), limits=limits) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        auth = make_token(user.private_key, broker.provider.address)
        host, port = broker.url.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/proxy/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 4000000\r\n\r\n"
        )
        writer.write(head.encode() + f"--{BOUNDARY}\r\n".encode())  # ... and then nothing more
        await writer.drain()
        try:
            c = Client(s, broker, auth)
            # Wait until the stalled upload holds the slot: a request whose body is no audio is
            # refused with 429 then (admission comes first), with 400 before; neither is billed.
            for _ in range(100):
                probe, _, _ = await c.post("/audio/transcriptions", b"not a form")
                if probe == 429:
                    break
                assert probe == 400
                await asyncio.sleep(0.1)
            body = raw_form({"model": "ears"}, {"file": ("a.wav", wav(16_000), "audio/wav")})
            status, headers, data = await c.post("/audio/transcriptions", body)
            assert status == 429, data
            assert json.loads(data)["error"]["code"] == "rate_limited"
            assert headers["Retry-After"] == "1"
        finally:
            writer.close()
        # The stalled upload's slot comes back when its client goes: the next one is served.
        for _ in range(50):
            status, _, data = await c.post("/audio/transcriptions", body)
            if status != 429:
                break
            await asyncio.sleep(0.1)
        assert status == 200, data
        assert len(await c.records(user.address)) == 1


async def test_images_per_minute_stand_in(
    stack: MediaStack, start_broker: StartBroker, funded_user: FundedUser
) -> None:
    limits = {
        "maxGlobalConcurrent": 0,
        "maxPerUserConcurrent": 0,
        "perUserRPM": 0,
        "perUserImagesPerMinute": 3,
    }
    async with start_broker(models=stack.models(), limits=limits) as broker, aiohttp.ClientSession() as s:
        user = await funded_user(broker.provider.address)
        c = Client(s, broker, make_token(user.private_key, broker.provider.address))
        async with s.get(broker.url + "/v1/models") as r:
            listed = (await r.json())["data"]
        assert all(m["rate_limits"]["images_per_minute"] == 3 for m in listed)
        status, headers, data = await c.post(
            "/images/generations", {"model": "painter", "prompt": "x", "n": 2}
        )
        assert status == 200, data
        assert headers["x-ratelimit-remaining-images"] == "1"
        status, headers, data = await c.post(
            "/images/generations", {"model": "painter", "prompt": "y", "n": 2}
        )
        assert status == 429, data
        assert json.loads(data)["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        assert len(await c.records(user.address)) == 1  # the refused one reached no backend, no bill
