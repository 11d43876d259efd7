"""The media billing rules, exact to the neuron: integer arithmetic, rounding stated and tested."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from tests.media_bodies import wav
from zgserve.broker.catalog import CatalogModel, catalog_from_settings
from zgserve.broker.media import UnsupportedModel, audio, check_model, embeddings, images
from zgserve.broker.official_config import translate
from zgserve.broker.settings import load_settings
from zgserve.common.errors import UpstreamError
from zgserve.common.pricing import Pricing, Tier

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def test_transcription_seconds_are_rounded_to_the_nearest_halves_up_at_least_one() -> None:
    frames = (1, 7_999, 8_000, 23_999, 24_000, 40_000)
    assert [audio.Duration(f, 16_000).billable_seconds for f in frames] == [1, 1, 1, 1, 2, 3]
    assert audio.Duration(3 * 44_100 + 22_049, 44_100).billable_seconds == 3
    assert audio.Duration(3 * 44_100 + 22_050, 44_100).billable_seconds == 4  # 3.5 rounds up, as Math.round


async def test_a_transcription_is_charged_what_it_reserved() -> None:
    plan = audio.TranscriptionPlan(audio.Duration(24_000, 16_000), price=7)
    bill = await plan.bill(b"{}", "application/json")
    assert (plan.reserve, bill.fee, bill.input_units, bill.input_price) == (14, 14, 2, 7)


def test_audio_fee_is_frames_times_price_over_rate_rounded_down_once() -> None:
    d = audio.Duration(frames=24_001, samplerate=16_000)
    assert d.fee(1_000) == 1_500  # 1500.0625 rounded down
    assert d.fee(3) == 4  # 4.5001875 -> 4
    assert d.whole_seconds == 2
    assert d.fee(7) <= d.whole_seconds * 7  # the audit's bound holds for every price
    assert audio.Duration(16_000, 16_000).fee(10**18) == 10**18  # exact, no float


async def test_audio_is_measured_from_the_bytes_and_non_audio_is_refused() -> None:
    measured = await audio.measure(wav(22_050 * 3 + 1, 22_050))
    assert measured == audio.Duration(22_050 * 3 + 1, 22_050)
    for bad in (b"", b"RIFF\x00\x00", b"not audio" * 100, wav(0, 8_000)):
        assert await audio.measure(bad) is None


def test_speech_reservation_grows_with_the_text_shrinks_with_speed_and_has_a_ceiling() -> None:
    assert audio.reserve_seconds(0, 1.0, 600) == 2
    assert audio.reserve_seconds(41, 1.0, 600) == 13  # ceil(2 + 10.25)
    assert audio.reserve_seconds(40, 2.0, 600) == 6
    assert audio.reserve_seconds(40, 0.25, 600) == 48
    assert audio.reserve_seconds(4096, 0.25, 600) == 600


async def test_speech_is_charged_what_the_audio_lasts_and_a_non_audio_answer_is_a_502() -> None:
    plan = audio.SpeechPlan(seconds=10, price=1_000)
    bill = await plan.bill(wav(12_345, 8_000), "audio/wav")
    assert (bill.fee, bill.output_units, bill.output_price) == (12_345 * 1_000 // 8_000, 2, 1_000)
    with pytest.raises(UpstreamError):
        await plan.bill(b"garbage", "audio/wav")


def test_image_units_are_ceil_of_count_times_the_exact_multiplier() -> None:
    assert images.image_units(3, Fraction("1.5")) == 5
    assert images.image_units(2, Fraction("1.5")) == 3
    assert images.image_units(1, Fraction("0.1")) == 1
    assert images.image_units(0, Fraction(4)) == 0
    assert images.image_units(10, Fraction("0.1")) == 1  # exact: a float would give 1.0000000000000002 -> 2


async def test_images_are_charged_for_those_returned_never_above_n() -> None:
    plan = images.ImagePlan(n=2, multiplier=Fraction("1.5"), price=100)
    assert plan.reserve == 300
    three = json.dumps({"data": [{"b64_json": "x"}] * 3}).encode()
    assert (await plan.bill(three, "application/json")).fee == 300
    one = json.dumps({"data": [{"b64_json": "x"}, {"other": 1}]}).encode()
    assert (await plan.bill(one, "application/json")).fee == 200
    with pytest.raises(UpstreamError):
        await plan.bill(b'{"error": 1}', "application/json")


def test_size_multipliers_match_case_and_space_insensitively() -> None:
    model = CatalogModel("m", Pricing.flat(0, 10), size_multipliers={"1024x1024": Fraction(4)})
    assert model.size_multiplier(" 1024X1024 ") == 4
    assert model.size_multiplier("256x256") == 1
    assert model.size_multiplier(None) == 1


async def test_embeddings_use_the_tier_of_the_prompt_and_reserve_from_the_body() -> None:
    pricing = Pricing(10, 0, (Tier(4), Tier(0, 3, 2)))
    parsed = embeddings.parse(b'{"input": ["abc", "defgh"]}')
    plan = embeddings.plan(parsed, pricing, bytes_per_token=1)
    assert plan.reserve == pricing.max_fee(len(b'{"input": ["abc", "defgh"]}'), 0)
    bill = await plan.bill(b'{"usage": {"prompt_tokens": 4}}', "application/json")
    assert (bill.fee, bill.input_units, bill.input_price) == (40, 4, 10)
    bill = await plan.bill(b'{"usage": {"prompt_tokens": 5}}', "application/json")
    assert (bill.fee, bill.input_price) == (75, 15)
    estimated = await plan.bill(b'{"data": []}', "application/json")
    assert (estimated.fee, estimated.status) == (20, "estimated")  # 8 characters / 4


def test_a_model_serves_only_the_routes_of_its_type() -> None:
    chat = CatalogModel("c", Pricing.flat(1, 1))
    voice = CatalogModel("v", Pricing.flat(1, 1), service_type="text-to-speech")
    check_model(None, chat)
    check_model("embeddings", chat)
    check_model("speech", voice)
    for route, model in ((None, voice), ("speech", chat), ("images", voice)):
        with pytest.raises(UnsupportedModel):
            check_model(route, model)  # type: ignore[arg-type]


def test_an_official_per_image_model_keeps_its_size_multipliers_and_the_service_type() -> None:
    official = {
        "service": {
            "servingUrl": "https://provider.example.com",
            "targetUrl": "http://images:8000",
            "type": "text-to-image",
            "modelPricing": [
                {
                    "model": "flux-turbo",
                    "inputPrice": "0",
                    "outputPrice": "3000000000000000",
                    "billing": {"mode": "per_image", "resolutionMultipliers": {"1024x1024": 1.5}},
                }
            ],
        },
        "network": {"privateKeys": [KEY]},
    }
    data = translate(official).data
    settings = load_settings(None, **data)
    [model] = catalog_from_settings(settings)
    assert model.service_type == "text-to-image"
    assert model.size_multiplier("1024X1024") == Fraction(3, 2)
    assert model.pricing.output_price == 3 * 10**15


def _riff(*chunks: tuple[bytes, bytes], declared: dict[int, int] | None = None) -> bytes:
    """A RIFF/WAVE file of 16 kHz mono 16-bit PCM from raw chunks; ``declared`` overrides the
    size written for the chunk at that index."""
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16_000).to_bytes(4, "little")
    fmt += (32_000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + fmt
    for i, (cid, data) in enumerate([*chunks]):
        size = (declared or {}).get(i, len(data))
        body += cid + size.to_bytes(4, "little") + data + (b"\x00" if len(data) & 1 else b"")
    return b"RIFF" + len(body).to_bytes(4, "little") + body


async def test_a_wav_cannot_hide_audio_past_its_declared_data() -> None:
    second = b"\x03\x00" * 16_000
    honest = await audio.measure(_riff((b"data", second), (b"LIST", b"INFOISFT\x04\x00\x00\x00zg\x00\x00")))
    assert honest is not None
    assert honest.frames == 16_000
    # The data chunk says one second; a minute of samples follows it.
    assert await audio.measure(_riff((b"data", second + second * 60), declared={0: len(second)})) is None
    # Two data chunks: which one a backend plays is anyone's guess.
    assert await audio.measure(_riff((b"data", second), (b"data", second * 30))) is None
    # A header that claims more than the file holds is measured by what is there.
    short = await audio.measure(_riff((b"data", second), declared={0: len(second) * 60}))
    assert short is not None
    assert short.frames == 16_000


def test_a_size_the_model_does_not_price_is_refused() -> None:
    priced = CatalogModel("m", Pricing.flat(0, 10), size_multipliers={"1024x1024": Fraction(4)})
    parse = lambda size: images.parse(  # noqa: E731
        json.dumps({"prompt": "p", "size": size}).encode(), None, edit=False, max_images=4
    )
    assert images.plan(parse("1024x1024"), priced).reserve == 40
    with pytest.raises(images.UnpricedSize, match="1024x1024"):
        images.plan(parse("99999x99999"), priced)
    # A model that prices no size takes any, at its flat price.
    assert images.plan(parse("99999x99999"), CatalogModel("m", Pricing.flat(0, 10))).reserve == 10
