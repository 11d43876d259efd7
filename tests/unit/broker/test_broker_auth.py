"""Token decoding and checks against the spec's worked example and tokens made here."""

from __future__ import annotations

import base64
import json

import pytest

from tests.sdk_token_example import PROVIDER, RAW, USER
from tests.sdk_token_example import SIGNATURE as SIG
from zgserve.broker.accounts import AccountCache
from zgserve.broker.auth import (
    Authenticator,
    TokenCache,
    TokenVerifier,
    check_account,
    decode_bearer,
    parse_claims,
    recover_token_signer,
    token_digest_message,
)
from zgserve.broker.errors import (
    AccountNotAcknowledged,
    AccountNotFound,
    BadSignature,
    MalformedToken,
    MissingToken,
    StaleGeneration,
    TokenExpired,
    TokenRevoked,
    TokenTooLarge,
    WrongProvider,
)
from zgserve.chain.types import Account
from zgserve.common.signing import Signer, eip191_digest


def bearer(raw: str, sig: str) -> str:
    return "Bearer app-sk-" + base64.b64encode(f"{raw}|{sig}".encode()).decode()


def make_token(signer: Signer, provider: str = PROVIDER, **claims: object) -> str:
    body = {
        "address": signer.address,
        "provider": provider,
        "timestamp": 1_000,
        "expiresAt": 0,
        "nonce": "n" * 32,
        "generation": 0,
        "tokenId": 255,
    }
    body.update(claims)
    raw = json.dumps(body, separators=(",", ":"))
    return bearer(raw, signer.sign_digest(eip191_digest(token_digest_message(raw))))


def account(**kw: object) -> Account:
    base = dict(
        user=USER,
        provider=PROVIDER,
        nonce=0,
        balance=10**18,
        pending_refund=0,
        refunds=(),
        additional_info="",
        acknowledged=True,
        valid_refunds_length=0,
        generation=0,
        revoked_bitmap=0,
    )
    base.update(kw)
    return Account(**base)  # type: ignore[arg-type]


def test_worked_example_digest_and_recovery() -> None:
    assert (
        token_digest_message(RAW).hex() == "37d474091b1e95f22fb8c90234024fe84fcf371f5c998f9bda19f64c1e40c874"
    )
    digest = eip191_digest(token_digest_message(RAW))
    assert digest.hex() == "c3b4cecfdca2208ea314a92e0ef7639a4b8c806e964cc7113a7f1ede023b9128"
    assert recover_token_signer(RAW, SIG) == USER
    header = bearer(RAW, SIG)
    assert header.startswith("Bearer app-sk-eyJhZGRyZXNzIjoi")
    token = TokenVerifier(PROVIDER.lower()).bearer(header)
    assert token.user == USER.lower()
    assert token.ephemeral
    assert token.expires_at == 1795418435806
    assert token.generation == 0


def test_independent_recovery_with_eth_account() -> None:
    from eth_account import Account as EthAccount
    from eth_account.messages import encode_defunct

    recovered = EthAccount.recover_message(encode_defunct(primitive=token_digest_message(RAW)), signature=SIG)
    assert recovered == USER


@pytest.mark.parametrize(
    "header",
    [
        "Basic abc",
        "Bearer sk-123",
        "Bearer app-sk-!!!notbase64",
        "Bearer app-sk-" + base64.b64encode(b"no separator").decode(),
        "Bearer app-sk-" + base64.b64encode(b"[1,2]|0x00").decode(),
    ],
)
def test_malformed_tokens(header: str) -> None:
    with pytest.raises(MalformedToken) as info:
        TokenVerifier(PROVIDER).bearer(header)
    assert info.value.status == 401


def test_bad_signature_and_wrong_provider() -> None:
    with pytest.raises(BadSignature):
        TokenVerifier(PROVIDER).bearer(bearer(RAW.replace("1795418435806", "1795418435807"), SIG))
    with pytest.raises(BadSignature):
        TokenVerifier(PROVIDER).bearer(bearer(RAW, "0x1234"))
    with pytest.raises(WrongProvider) as info:
        TokenVerifier("0x" + "11" * 20).bearer(bearer(RAW, SIG))
    assert info.value.status == 403


def test_provider_compared_case_insensitively() -> None:
    user = Signer.generate()
    token = TokenVerifier(PROVIDER).bearer(make_token(user, provider=PROVIDER.lower()))
    assert token.provider == PROVIDER.lower()


def test_account_checks_each_have_their_error() -> None:
    token = parse_claims(RAW)
    assert check_account(token, account()) is not None
    with pytest.raises(AccountNotFound) as nf:
        check_account(token, None)
    assert nf.value.status == 402
    with pytest.raises(AccountNotAcknowledged) as na:
        check_account(token, account(acknowledged=False))
    assert na.value.status == 403
    with pytest.raises(StaleGeneration):
        check_account(token, account(generation=1))
    # Ephemeral tokens ignore the bitmap; API keys do not.
    check_account(token, account(revoked_bitmap=(1 << 255) | 0xFF))
    key = parse_claims(RAW.replace('"tokenId":255', '"tokenId":5'))
    check_account(key, account(revoked_bitmap=1 << 4))
    with pytest.raises(TokenRevoked):
        check_account(key, account(revoked_bitmap=1 << 5))


async def test_authenticator_expiry_legacy_and_refresh() -> None:
    user = Signer.generate()
    reads: list[str] = []
    state = {"acknowledged": False}

    async def fetch(address: str) -> Account | None:
        reads.append(address)
        return account(user=user.address, acknowledged=state["acknowledged"])

    cache = AccountCache(fetch, ttl=60, min_refresh=0)
    auth = Authenticator(TokenVerifier(PROVIDER), cache, clock_ms=lambda: 5_000)
    with pytest.raises(MissingToken):
        auth.token({})
    with pytest.raises(TokenExpired):
        auth.token({"authorization": make_token(user, expiresAt=4_999)})
    good = make_token(user, expiresAt=5_000)
    with pytest.raises(AccountNotAcknowledged):
        await auth.authenticate({"authorization": good})
    # The refusal re-read the chain once (refresh on failure); after acknowledging it passes.
    assert len(reads) == 2
    state["acknowledged"] = True
    result = await auth.authenticate({"authorization": good})
    assert result.account.acknowledged
    assert len(reads) == 3
    # Legacy session headers: raw JSON token and its signature.
    raw = json.dumps(
        {"address": user.address, "provider": PROVIDER, "timestamp": 1, "expiresAt": 0, "nonce": "x"}
    )
    sig = user.sign_digest(eip191_digest(token_digest_message(raw)))
    legacy = auth.token({"address": user.address, "session-token": raw, "session-signature": sig})
    assert legacy.legacy
    assert legacy.user == user.address.lower()
    with pytest.raises(MalformedToken):
        auth.token({"address": PROVIDER, "session-token": raw, "session-signature": sig})


def test_decode_bearer_splits_on_last_bar() -> None:
    raw, sig = decode_bearer(bearer('{"nonce":"a|b"}', "0xsig"))
    assert raw == '{"nonce":"a|b"}'
    assert sig == "0xsig"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer app-sk-" + "A" * 100_000,
        "Bearer app-sk-" + base64.b64encode(b"[" * 100_000 + b"]" * 100_000 + b"|0x00").decode(),
        " " * 10_000 + "Bearer app-sk-x",
    ],
)
def test_oversized_bearer_refused_before_decoding(header: str) -> None:
    with pytest.raises(TokenTooLarge) as info:
        TokenVerifier(PROVIDER).bearer(header)
    assert (info.value.status, info.value.code) == (401, "token_too_large")


def test_deep_json_in_a_small_token_is_malformed() -> None:
    with pytest.raises(MalformedToken):
        TokenVerifier(PROVIDER).bearer(bearer("[" * 400 + "]" * 400, "0x00"))


@pytest.mark.parametrize(
    ("address", "session_token", "signature", "error"),
    [
        (USER, "[" * 100_000 + "]" * 100_000, "0x00", TokenTooLarge),
        (USER, "[" * 300 + "]" * 300, "0x00", MalformedToken),
        (USER, RAW, "0x" + "ab" * 1000, TokenTooLarge),
        ("0x" + "1" * 10_000, RAW, SIG, TokenTooLarge),
        (USER, RAW.replace('"tokenId":255', '"tokenId":"²"'), SIG, MalformedToken),
    ],
)
def test_hostile_legacy_headers(address: str, session_token: str, signature: str, error: type) -> None:
    with pytest.raises(error):
        TokenVerifier(PROVIDER).legacy(address, session_token, signature)


async def test_tokens_are_cached_only_after_the_account_check() -> None:
    user, stranger = Signer.generate(), Signer.generate()
    accounts = {user.address.lower(): account(user=user.address)}

    async def fetch(address: str) -> Account | None:
        return accounts.get(address)

    verifier = TokenVerifier(PROVIDER)
    auth = Authenticator(verifier, AccountCache(fetch, ttl=60, min_refresh=0))
    # A wallet with no account: verified, refused, and nothing kept.
    for i in range(20):
        with pytest.raises(AccountNotFound):
            await auth.authenticate({"authorization": make_token(stranger, nonce=f"{i:032d}")})
    assert len(verifier.cache) == 0
    # token() alone (no account check) keeps nothing either.
    good = make_token(user)
    auth.token({"authorization": good})
    assert len(verifier.cache) == 0
    await auth.authenticate({"authorization": good})
    assert len(verifier.cache) == 1
    # A cached token still meets the account checks on every request.
    accounts[user.address.lower()] = account(user=user.address, generation=1)
    auth.accounts.invalidate()
    with pytest.raises(StaleGeneration):
        await auth.authenticate({"authorization": good})


def test_token_cache_is_bounded_by_bytes() -> None:
    token = parse_claims(RAW)
    cache = TokenCache(max_entries=1_000_000, max_bytes=64 * 1024)
    for i in range(10_000):
        cache.put(f"key-{i}-" + "x" * 1000, token)
        assert cache.size_bytes <= 64 * 1024
    assert 0 < len(cache) < 64
    cache.put("y" * 100_000, token)  # larger than the whole cache: not kept
    assert cache.get("y" * 100_000) is None
    assert cache.get(f"key-9999-{'x' * 1000}") is token
    by_count = TokenCache(max_entries=3)
    for i in range(5):
        by_count.put(str(i), token)
    assert [by_count.get(str(i)) for i in range(5)] == [None, None, token, token, token]
