"""Cross-signing of the bot's device (bot.matrix.crosssign).

Three layers: pure tests of canonical JSON and Ed25519 signing (against the spec's
vectors and, independently, Synapse's own canonicaljson/signedjson); the protocol
against a small fake homeserver that insists on interactive auth (Synapse does not, on
a first upload: MSC3967); and the real bot on the embedded Synapse, checked from
another user's key query with signatures verified here, by pycryptodome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bot_harness import BotEnv, bot_env, iso_z, seconds_ahead
from Crypto.Signature import eddsa
from hypothesis import given, settings
from hypothesis import strategies as st
from matrix_helpers import ClientPool, collect_messages, content_of, sync_until
from nio import AsyncClient

from bot.config import Config, parse_config
from bot.devtools.homeserver import EmbeddedHomeserver, free_loopback_port
from bot.matrix import crosssign
from bot.matrix.crosssign import (
    CROSS_SIGNING_FILE,
    CrossSigningFileError,
    CrossSigningKeys,
    Outcome,
    SigningKey,
    b64decode,
    b64encode,
    canonical_json,
    cross_signing_public_key,
    ensure_cross_signing,
    load_keys,
    save_keys,
    sign_json,
    signing_bytes,
    verify_signature,
)
from bot.matrix.session import CREDENTIALS_FILE, client_config, open_session

# -- an independent verifier: the spec's canonical JSON and pycryptodome --------------------


def _spec_canonical(obj: Any) -> bytes:
    # The spec's reference encoder (appendices, "Canonical JSON"), written out here so
    # that the live checks do not trust the code under test.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text + "=" * (-len(text) % 4))


def verifies(obj: dict[str, Any], signer: str, key_id: str, public: str) -> bool:
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        signature = _unb64(obj["signatures"][signer][key_id])
        eddsa.new(eddsa.import_public_key(_unb64(public)), "rfc8032").verify(
            _spec_canonical(stripped), signature
        )
    except (KeyError, ValueError):
        return False
    return True


def only_key(obj: dict[str, Any]) -> str:
    ((key_id, public),) = obj["keys"].items()
    assert key_id == f"ed25519:{public}", obj
    return str(public)


# -- canonical JSON --------------------------------------------------------------------------

SPEC_CANONICAL = [
    ({}, "{}"),
    ({"one": 1, "two": "Two"}, '{"one":1,"two":"Two"}'),
    ({"b": "2", "a": "1"}, '{"a":"1","b":"2"}'),
    (
        {
            "auth": {
                "success": True,
                "mxid": "@john.doe:example.com",
                "profile": {
                    "display_name": "John Doe",
                    "three_pids": [
                        {"medium": "email", "address": "john.doe@example.org"},
                        {"medium": "msisdn", "address": "123456789"},
                    ],
                },
            }
        },
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ({"a": "日本語"}, '{"a":"日本語"}'),
    ({"本": 2, "日": 1}, '{"日":1,"本":2}'),
    ({"a": "\u65e5"}, '{"a":"日"}'),
    ({"a": None}, '{"a":null}'),
]


@pytest.mark.parametrize(("value", "expected"), SPEC_CANONICAL)
def test_canonical_json_spec_examples(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_canonical_json_escapes_are_the_shortest() -> None:
    # The spec's grammar: short escapes for \b \f \n \r \t, lowercase \u00XX for other
    # control characters, everything else (including U+2028 and DEL) as is.
    value = {"s": '\b\f\n\r\t\x00\x0b\x1f"\\/\u2028\x7f😀'}
    assert canonical_json(value) == (
        '{"s":"\\b\\f\\n\\r\\t\\u0000\\u000b\\u001f\\"\\\\/\u2028\x7f😀"}'.encode()
    )


def test_canonical_json_sorts_by_code_point() -> None:
    # An astral character sorts after U+FFFF by code point (UTF-16 order would differ).
    assert canonical_json({"\U0001f600": 1, "\uff61": 2, "a": 3, "B": 4}) == (
        '{"B":4,"a":3,"\uff61":2,"\U0001f600":1}'.encode()
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"a": 1.5},
        {"a": 1.0},
        {"a": float("nan")},
        {"a": 2**53},
        {"a": -(2**53)},
        {1: "non-string key"},
        {"a": b"bytes"},
        {"a": "\ud800"},  # a lone surrogate has no UTF-8 encoding
    ],
)
def test_canonical_json_refuses_what_the_spec_forbids(bad: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(bad)


def test_canonical_json_integer_bounds() -> None:
    assert canonical_json([2**53 - 1, -(2**53) + 1, 0, -0]) == (
        b"[9007199254740991,-9007199254740991,0,0]"
    )


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_canonical_json_agrees_with_synapse(value: Any) -> None:
    canonicaljson = pytest.importorskip("canonicaljson")
    try:
        ours = canonical_json(value)
    except ValueError:
        # Only a lone surrogate may be refused; canonicaljson refuses it too.
        with pytest.raises(ValueError):
            canonicaljson.encode_canonical_json(value)
        return
    assert ours == canonicaljson.encode_canonical_json(value)


# -- signing ---------------------------------------------------------------------------------

# The spec's signing examples (appendices, "Signing JSON"): seed, public key, signatures.
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_PUBLIC = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
SPEC_SIG_EMPTY = (
    "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
)
SPEC_SIG_ONE_TWO = (
    "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
)


def test_spec_signing_vectors() -> None:
    key = SigningKey(b64decode(SPEC_SEED))
    assert key.public == SPEC_PUBLIC
    assert key.sign(canonical_json({})) == SPEC_SIG_EMPTY
    signed = sign_json({"one": 1, "two": "Two"}, "domain", key)
    assert signed == {
        "one": 1,
        "two": "Two",
        "signatures": {"domain": {f"ed25519:{SPEC_PUBLIC}": SPEC_SIG_ONE_TWO}},
    }


def test_signature_ignores_signatures_and_unsigned_and_keeps_them() -> None:
    key = SigningKey.generate()
    obj: dict[str, Any] = {
        "one": 1,
        "unsigned": {"age": 5},
        "signatures": {"@u:x": {"ed25519:DEV": "other"}, "elsewhere": {"k": "v"}},
    }
    signed = sign_json(obj, "@u:x", key)
    assert signed["unsigned"] == {"age": 5}
    assert signed["signatures"]["@u:x"]["ed25519:DEV"] == "other"
    assert signed["signatures"]["elsewhere"] == {"k": "v"}
    assert "ed25519:DEV" in obj["signatures"]["@u:x"] and len(obj["signatures"]["@u:x"]) == 1
    assert signing_bytes(signed) == b'{"one":1}'
    assert verify_signature(signed, "@u:x", key.public)
    assert verifies(signed, "@u:x", key.key_id, key.public)
    # Changing what is covered breaks it; changing what is not does not.
    assert not verify_signature({**signed, "one": 2}, "@u:x", key.public)
    assert verify_signature({**signed, "unsigned": {"age": 6}}, "@u:x", key.public)
    assert not verify_signature(signed, "@v:x", key.public)
    assert not verify_signature(signed, "@u:x", SigningKey.generate().public)


def test_signatures_agree_with_signedjson() -> None:
    signedjson_key = pytest.importorskip("signedjson.key")
    signedjson_sign = pytest.importorskip("signedjson.sign")
    key = SigningKey.generate()
    obj = sign_json({"user_id": "@u:x", "keys": {key.key_id: key.public}}, "@u:x", key)
    verify_key = signedjson_key.decode_verify_key_bytes(key.key_id, b64decode(key.public))
    signedjson_sign.verify_signed_json(obj, "@u:x", verify_key)  # raises if invalid


def test_base64_is_unpadded_and_decodes_either_way() -> None:
    # The spec's examples (appendices, "Unpadded Base64").
    assert [b64encode(b"foobar"[:n]) for n in range(7)] == [
        "",
        "Zg",
        "Zm8",
        "Zm9v",
        "Zm9vYg",
        "Zm9vYmE",
        "Zm9vYmFy",
    ]
    assert b64decode("Zm9vYg") == b64decode("Zm9vYg==") == b"foob"
    with pytest.raises(ValueError):
        b64decode("not base64!")


def test_key_set_upload_body() -> None:
    keys = CrossSigningKeys.generate("@bot:x")
    body = keys.upload_body()
    master = body["master_key"]
    assert master["usage"] == ["master"] and master["user_id"] == "@bot:x"
    assert cross_signing_public_key(master) == keys.master.public
    for name, usage, key in (
        ("self_signing_key", "self_signing", keys.self_signing),
        ("user_signing_key", "user_signing", keys.user_signing),
    ):
        assert body[name]["usage"] == [usage]
        assert cross_signing_public_key(body[name]) == key.public
        assert verifies(body[name], "@bot:x", keys.master.key_id, keys.master.public)
    assert keys.upload_body() == body  # deterministic: a re-upload is the same keys
    assert len({keys.master.public, keys.self_signing.public, keys.user_signing.public}) == 3


def test_cross_signing_public_key_rejects_odd_shapes() -> None:
    assert cross_signing_public_key(None) is None
    assert cross_signing_public_key({"keys": {}}) is None
    assert cross_signing_public_key({"keys": {"ed25519:A": "B"}}) is None
    assert cross_signing_public_key({"keys": {"ed25519:A": "A", "ed25519:B": "B"}}) is None
    assert cross_signing_public_key({"keys": {"ed25519:A": "A"}}) == "A"


def test_key_file_round_trip_mode_and_no_secret_in_repr(tmp_path: Path) -> None:
    path = tmp_path / "data" / CROSS_SIGNING_FILE
    keys = CrossSigningKeys.generate("@bot:x")
    save_keys(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_keys(path, "@bot:x")
    assert loaded is not None and loaded.upload_body() == keys.upload_body()
    for text in (repr(keys), repr(keys.master), str(keys)):
        assert keys.master.seed_b64 not in text and keys.self_signing.seed_b64 not in text
    assert load_keys(tmp_path / "missing.json", "@bot:x") is None
    with pytest.raises(CrossSigningFileError, match=r"separate storage\.path"):
        load_keys(path, "@other:x")
    data = json.loads(path.read_text())
    data["keys"]["master"]["public"] = keys.self_signing.public
    path.write_text(json.dumps(data))
    with pytest.raises(CrossSigningFileError, match="damaged") as err:
        load_keys(path, "@bot:x")
    assert keys.master.seed_b64 not in str(err.value)


# -- the protocol, against a fake homeserver that always asks for interactive auth ----------


@dataclass
class FakeHomeserver:
    """Just enough of the key API: keys/upload, keys/query, device_signing/upload
    (401 + session without auth, like a server without MSC3967) and signatures/upload."""

    user_id: str = "@bot:fake"
    password: str = "correct horse"
    flows: list[dict[str, Any]] = field(default_factory=lambda: [{"stages": ["m.login.password"]}])
    fail_next: list[int] = field(default_factory=list)  # statuses to answer first
    tamper_device: bool = False
    device_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    cross_signing: dict[str, dict[str, Any]] = field(default_factory=dict)
    auth_seen: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_matrix/client/v3/keys/upload", self.keys_upload)
        app.router.add_post("/_matrix/client/v3/keys/query", self.keys_query)
        app.router.add_post("/_matrix/client/v3/keys/device_signing/upload", self.xs_upload)
        app.router.add_post("/_matrix/client/v3/keys/signatures/upload", self.sig_upload)
        return app

    def _failing(self, request: web.Request) -> web.Response | None:
        self.requests.append(request.path)
        if self.fail_next:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=self.fail_next.pop(0))
        return None

    async def keys_upload(self, request: web.Request) -> web.Response:
        if (r := self._failing(request)) is not None:
            return r
        body = await request.json()
        if "device_keys" in body:
            dk = body["device_keys"]
            self.device_keys[dk["device_id"]] = dk
        return web.json_response(
            {"one_time_key_counts": {"curve25519": 0, "signed_curve25519": 50}}
        )

    async def keys_query(self, request: web.Request) -> web.Response:
        if (r := self._failing(request)) is not None:
            return r
        devices = json.loads(json.dumps(self.device_keys))
        if self.tamper_device:
            for dk in devices.values():
                dk["keys"] = {k: SigningKey.generate().public for k in dk["keys"]}
        reply: dict[str, Any] = {"device_keys": {self.user_id: devices}, "failures": {}}
        for usage in ("master", "self_signing", "user_signing"):
            if usage in self.cross_signing:
                reply[f"{usage}_keys"] = {self.user_id: self.cross_signing[usage]}
        return web.json_response(reply)

    async def xs_upload(self, request: web.Request) -> web.Response:
        if (r := self._failing(request)) is not None:
            return r
        body = await request.json()
        auth = body.pop("auth", None)
        challenge = {"flows": self.flows, "params": {}, "session": "SESSION-1"}
        if auth is None:
            return web.json_response(challenge, status=401)
        self.auth_seen.append(auth)
        if auth.get("password") != self.password or auth.get("session") != "SESSION-1":
            return web.json_response(
                {**challenge, "errcode": "M_FORBIDDEN", "error": "Invalid password"}, status=401
            )
        master = only_key(body["master_key"])
        for name in ("self_signing", "user_signing"):
            assert verifies(body[f"{name}_key"], self.user_id, f"ed25519:{master}", master)
        for name in ("master", "self_signing", "user_signing"):
            self.cross_signing[name] = body[f"{name}_key"]
        return web.json_response({})

    async def sig_upload(self, request: web.Request) -> web.Response:
        if (r := self._failing(request)) is not None:
            return r
        body = await request.json()
        ssk = only_key(self.cross_signing["self_signing"])
        failures: dict[str, Any] = {}
        for device_id, signed in body[self.user_id].items():
            if verifies(signed, self.user_id, f"ed25519:{ssk}", ssk):
                sigs = self.device_keys[device_id].setdefault("signatures", {})
                sigs.setdefault(self.user_id, {}).update(signed["signatures"][self.user_id])
            else:
                failures.setdefault(self.user_id, {})[device_id] = {
                    "errcode": "M_INVALID_SIGNATURE"
                }
        return web.json_response({"failures": failures})


@asynccontextmanager
async def fake_bot(
    tmp_path: Path, fake: FakeHomeserver, *, password: str | None
) -> AsyncIterator[tuple[AsyncClient, Config]]:
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    matrix: dict[str, Any] = {"homeserver": url, "user_id": fake.user_id, "device_id": "BOTDEV"}
    if password is not None:
        matrix["password"] = password
    else:
        matrix["access_token"] = "token-for-the-fake"
    config = parse_config(
        {
            "matrix": matrix,
            "storage": {"path": "data"},
            "control": {"rooms": ["!control"]},
            "scenarios": {"dir": "scenarios"},
        },
        base_dir=tmp_path,
        environ={},
    )
    store = config.storage.path / "nio-store"
    store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(
        url, fake.user_id, device_id="BOTDEV", store_path=str(store), config=client_config()
    )
    client.restore_login(fake.user_id, "BOTDEV", "token-for-the-fake")
    try:
        yield client, config
    finally:
        await client.close()
        await server.close()


def _assert_nothing_secret_logged(caplog: pytest.LogCaptureFixture, config: Config) -> None:
    text = caplog.text
    keys = load_keys(config.storage.path / CROSS_SIGNING_FILE, config.matrix.user_id)
    secrets_ = ["token-for-the-fake", "correct horse"]
    if keys is not None:
        for key in (keys.master, keys.self_signing, keys.user_signing):
            secrets_ += [key.seed_b64, key.public]
    for secret in secrets_:
        assert secret not in text


async def test_interactive_auth_with_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeHomeserver()
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.CREATED
        assert fake.auth_seen == [
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": fake.user_id},
                "password": fake.password,
                "session": "SESSION-1",
            }
        ]
        keys = load_keys(config.storage.path / CROSS_SIGNING_FILE, fake.user_id)
        assert keys is not None
        assert only_key(fake.cross_signing["master"]) == keys.master.public
        device = fake.device_keys["BOTDEV"]
        assert verifies(device, fake.user_id, keys.self_signing.key_id, keys.self_signing.public)
        # Again: nothing uploaded, nothing signed.
        before = list(fake.requests)
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.IN_PLACE
        assert fake.requests[len(before) :] == ["/_matrix/client/v3/keys/query"]
        _assert_nothing_secret_logged(caplog, config)


async def test_without_a_password_the_keys_wait_on_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeHomeserver()
    async with fake_bot(tmp_path, fake, password=None) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.NEEDS_PASSWORD
        assert "needed once" in caplog.text and "matrix.password" in caplog.text
        assert fake.cross_signing == {} and fake.auth_seen == []
        stored = load_keys(config.storage.path / CROSS_SIGNING_FILE, fake.user_id)
        assert stored is not None  # kept, so the next start uploads these, not new ones
        _assert_nothing_secret_logged(caplog, config)
    # The next start has the password: the stored keys go up.
    with_password = FakeHomeserver(device_keys=fake.device_keys)
    async with fake_bot(tmp_path, with_password, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.UPLOADED
        assert only_key(with_password.cross_signing["master"]) == stored.master.public


async def test_a_refused_password_and_unsupported_auth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeHomeserver()
    async with fake_bot(tmp_path / "a", fake, password="hunter2-wrong") as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.AUTH_FAILED
        assert "refused the bot's password (M_FORBIDDEN)" in caplog.text
        assert "hunter2" not in caplog.text
    fake = FakeHomeserver(flows=[{"stages": ["m.oauth"]}])
    async with fake_bot(tmp_path / "b", fake, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.AUTH_FAILED
        assert "asks for m.oauth" in caplog.text
        assert fake.auth_seen == []


async def test_transient_errors_are_retried(tmp_path: Path) -> None:
    fake = FakeHomeserver(fail_next=[502, 429])
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.CREATED


async def test_a_server_that_is_gone_does_not_stop_the_bot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeHomeserver(fail_next=[503] * 10)
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        outcome = await ensure_cross_signing(client, config, reset=False, total_timeout=1.0)
        assert outcome == Outcome.FAILED
        assert "tries again at the next start" in caplog.text


async def test_an_unreachable_server_does_not_stop_the_bot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeHomeserver()
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        client.homeserver = f"http://127.0.0.1:{free_loopback_port()}"
        outcome = await ensure_cross_signing(client, config, reset=False, total_timeout=2.0)
        assert outcome == Outcome.FAILED
        assert "keys/upload: ClientConnectorError" in caplog.text


async def test_an_unwritable_storage_dir_is_a_failure_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeHomeserver()
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        (config.storage.path / CROSS_SIGNING_FILE).mkdir()  # os.replace onto a directory fails
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.FAILED
        assert "cannot " in caplog.text
        assert fake.cross_signing == {}  # nothing uploaded that is not on disk


async def test_never_signs_device_keys_that_are_not_its_own(tmp_path: Path) -> None:
    fake = FakeHomeserver(tamper_device=True)
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.FAILED
        assert "/_matrix/client/v3/keys/signatures/upload" not in fake.requests


async def test_rejected_signature_is_a_failure(tmp_path: Path) -> None:
    fake = FakeHomeserver()

    async def reject(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"failures": {fake.user_id: {"BOTDEV": {"errcode": "M_INVALID_SIGNATURE"}}}}
        )

    fake.sig_upload = reject  # type: ignore[method-assign]
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.FAILED


async def test_other_keys_on_the_server_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeHomeserver()
    theirs = CrossSigningKeys.generate(fake.user_id).upload_body()
    fake.cross_signing = {
        "master": theirs["master_key"],
        "self_signing": theirs["self_signing_key"],
    }
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        outcome = await ensure_cross_signing(client, config, reset=False)
        assert outcome == Outcome.SERVER_HAS_OTHER_KEYS
        assert "Not replacing them" in caplog.text
        assert fake.cross_signing["master"] == theirs["master_key"]
        assert not (config.storage.path / CROSS_SIGNING_FILE).exists()
        assert "/_matrix/client/v3/keys/device_signing/upload" not in fake.requests
        assert "/_matrix/client/v3/keys/signatures/upload" not in fake.requests
        # Asked for on purpose, they are replaced (with the password).
        assert await ensure_cross_signing(client, config, reset=True) == Outcome.RESET
        ours = load_keys(config.storage.path / CROSS_SIGNING_FILE, fake.user_id)
        assert ours is not None
        assert only_key(fake.cross_signing["master"]) == ours.master.public


async def test_reset_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHomeserver()
    other = CrossSigningKeys.generate(fake.user_id).upload_body()
    fake.cross_signing = {"master": other["master_key"], "self_signing": other["self_signing_key"]}
    async with fake_bot(tmp_path, fake, password=fake.password) as (client, config):
        monkeypatch.setenv(crosssign.ENV_RESET, "0")
        assert await ensure_cross_signing(client, config) == Outcome.SERVER_HAS_OTHER_KEYS
        monkeypatch.setenv(crosssign.ENV_RESET, "1")
        assert await ensure_cross_signing(client, config) == Outcome.RESET


# -- the real bot on Synapse -----------------------------------------------------------------


async def keys_query(hs: EmbeddedHomeserver, token: str, user_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            hs.url + "/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def admin_devices(hs: EmbeddedHomeserver, user_id: str, *, delete: bool = False) -> list[str]:
    """Every device of ``user_id`` (with keys or not), from the admin API; with
    ``delete``, they are deleted first (shared-secret registration leaves one)."""
    token = await hs.admin_token()
    url = f"{hs.url}/_synapse/admin/v2/users/{quote(user_id, safe='')}/devices"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        if delete:
            async with http.get(url) as resp:
                ids = [d["device_id"] for d in (await resp.json())["devices"]]
            async with http.post(
                url.replace("/devices", "/delete_devices"), json={"devices": ids}
            ) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return sorted(d["device_id"] for d in (await resp.json())["devices"])


@dataclass
class Seen:
    """What another user sees of the bot's keys, every signature checked."""

    master: dict[str, Any]
    self_signing: dict[str, Any]
    devices: dict[str, dict[str, Any]]


async def seen_by(hs: EmbeddedHomeserver, viewer: AsyncClient, bot: str) -> Seen:
    body = await keys_query(hs, viewer.access_token, bot)
    assert body["failures"] == {}
    master = body["master_keys"][bot]
    ssk = body["self_signing_keys"][bot]
    assert bot not in body.get("user_signing_keys", {})  # only ever shown to its owner
    assert master["usage"] == ["master"] and master["user_id"] == bot
    assert ssk["usage"] == ["self_signing"] and ssk["user_id"] == bot
    master_pub, ssk_pub = only_key(master), only_key(ssk)
    # The self-signing key is signed by the master key...
    assert verifies(ssk, bot, f"ed25519:{master_pub}", master_pub)
    devices = body["device_keys"][bot]
    for device_id, device in devices.items():
        # ...and each device by the self-signing key (and by itself).
        assert verifies(device, bot, f"ed25519:{ssk_pub}", ssk_pub), device_id
        device_pub = device["keys"][f"ed25519:{device_id}"]
        assert verifies(device, bot, f"ed25519:{device_id}", device_pub)
    # A signature that does not verify is caught (the check is not vacuous).
    forged = json.loads(json.dumps(next(iter(devices.values()))))
    forged["keys"] = dict(forged["keys"], extra="x")
    assert not verifies(forged, bot, f"ed25519:{ssk_pub}", ssk_pub)
    return Seen(master, ssk, devices)


def one_room_scenario(sid: str, room: str, start: datetime, text: str) -> dict[str, Any]:
    return {
        "version": 1,
        "id": sid,
        "title": sid,
        "start": iso_z(start),
        "cities": [
            {
                "id": "gamma",
                "name": "Gammaburg",
                "timezone": "Europe/Berlin",
                "rooms": [room],
                "places": {"hall": {"name": "Town Hall", "geo": "52.52,13.405"}},
            }
        ],
        "stages": [{"id": "go", "at": "0s", "text": text}],
    }


async def release_and_read(
    env: BotEnv, reader: AsyncClient, room: str, sid: str, text: str
) -> None:
    """Arm a one-stage scenario to ``room`` and wait until ``reader`` has decrypted it."""
    env.write_scenario(one_room_scenario(sid, room, seconds_ahead(4), text))
    reply = await env.command(f"!arm {sid}")
    assert f"Armed {sid}" in reply, reply
    msgs = await collect_messages(
        reader,
        room,
        until=lambda ms: any(content_of(m).get("body") == text for m in ms),
        timeout=40,
    )
    ours = [m for m in msgs if content_of(m).get("body") == text]
    assert [m.sender for m in ours] == [env.bot_user.user_id]


async def crosssign_outcome(caplog: pytest.LogCaptureFixture, timeout: float = 30) -> list[str]:
    """The cross-signing log messages since the last ``caplog.clear()``, once the bot's
    start has logged its outcome (every outcome names the device, or says it failed)."""
    deadline = time.monotonic() + timeout
    while True:
        said = [r.getMessage() for r in caplog.records if r.name == crosssign.__name__]
        if any("(device " in m or "not set up" in m or "skipped" in m for m in said):
            return said
        if time.monotonic() > deadline:
            raise TimeoutError(f"no cross-signing outcome within {timeout:g} s: {said}")
        await asyncio.sleep(0.05)


def _stored_device(env: BotEnv) -> str:
    return str(json.loads((env.storage_dir / CREDENTIALS_FILE).read_text())["device_id"])


@pytest.mark.homeserver
async def test_bot_device_is_cross_signed_and_survives_a_restart(
    homeserver: EmbeddedHomeserver,
    tmp_path: Path,
    clients: ClientPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.matrix.crosssign")
    async with bot_env(homeserver, tmp_path, clients, "xsign") as env:
        bot = env.bot_user.user_id
        moderator = await clients.participant(
            await homeserver.register(f"xmod-{tmp_path.name[-6:]}")
        )
        room = await env.city_room(moderator, name="encrypted city", encrypted=True)
        env.write_scenario(one_room_scenario("xs-one", room, seconds_ahead(3600), "placeholder"))
        assert await admin_devices(homeserver, bot, delete=True) == []
        await env.start()
        await env.opt_in(moderator, room)

        device_id = _stored_device(env)
        first = await seen_by(homeserver, env.org, bot)
        assert list(first.devices) == [device_id]
        assert await admin_devices(homeserver, bot) == [device_id]
        key_file = env.storage_dir / CROSS_SIGNING_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        stored = load_keys(key_file, bot)
        assert stored is not None
        assert only_key(first.master) == stored.master.public
        assert only_key(first.self_signing) == stored.self_signing.public
        assert "new keys created and uploaded, device signed" in caplog.text
        # The participant's client sees the bot's one device; a message decrypts.
        await release_and_read(env, moderator, room, "xs-before", "before the restart")
        await sync_until(moderator, lambda: bot in moderator.device_store.users)
        assert [d.device_id for d in moderator.device_store.active_user_devices(bot)] == [device_id]

        file_before = key_file.read_bytes()
        caplog.clear()
        await env.stop()
        await env.start()
        # start() returns at once here (the bot is still a member of the control room),
        # while the bot may still be checking its cross-signing: wait for the outcome,
        # so that the checks below see the keys after it, not before.
        said = await crosssign_outcome(caplog)

        second = await seen_by(homeserver, env.org, bot)
        assert _stored_device(env) == device_id
        assert list(second.devices) == [device_id]
        assert await admin_devices(homeserver, bot) == [device_id]
        assert second.master == first.master  # nothing re-uploaded or replaced
        assert second.self_signing == first.self_signing
        assert key_file.read_bytes() == file_before
        assert any("keys in place, device already signed" in m for m in said), said
        assert not any("created" in m or "uploaded" in m for m in said), said

        await release_and_read(env, moderator, room, "xs-after", "after the restart")
        assert [d.device_id for d in moderator.device_store.active_user_devices(bot)] == [device_id]


async def _session_config(hs: EmbeddedHomeserver, tmp: Path, **matrix: Any) -> Config:
    return parse_config(
        {
            "matrix": {"homeserver": hs.url, **matrix},
            "storage": {"path": "data"},
            "control": {"rooms": ["!unused"]},
            "scenarios": {"dir": "scenarios"},
        },
        base_dir=tmp,
        environ={},
    )


@asynccontextmanager
async def session(config: Config) -> AsyncIterator[AsyncClient]:
    client = await open_session(config)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.homeserver
async def test_other_keys_on_synapse_are_kept_and_replaced_only_on_request(
    homeserver: EmbeddedHomeserver,
    new_user: Callable[..., Any],
    tmp_path: Path,
    clients: ClientPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.matrix.crosssign")
    user = await new_user("xkeep")
    viewer = await clients.participant(await new_user("xview"))
    config = await _session_config(
        homeserver, tmp_path, user_id=user.user_id, password=user.password
    )
    key_file = config.storage.path / CROSS_SIGNING_FILE
    async with session(config) as client:
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.CREATED
    original = await seen_by(homeserver, viewer, user.user_id)
    original_file = key_file.read_bytes()

    # Someone else's keys in our file (a file from another backup): refused.
    save_keys(key_file, CrossSigningKeys.generate(user.user_id))
    async with session(config) as client:
        outcome = await ensure_cross_signing(client, config, reset=False)
    assert outcome == Outcome.SERVER_HAS_OTHER_KEYS
    assert "Not replacing them" in caplog.text
    assert (await seen_by(homeserver, viewer, user.user_id)).master == original.master

    # The file lost: refused too, and no new file is written.
    key_file.unlink()
    async with session(config) as client:
        outcome = await ensure_cross_signing(client, config, reset=False)
    assert outcome == Outcome.SERVER_HAS_OTHER_KEYS
    assert not key_file.exists()
    assert (await seen_by(homeserver, viewer, user.user_id)).master == original.master

    # The file restored from backup: all is well again, nothing uploaded.
    key_file.write_bytes(original_file)
    async with session(config) as client:
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.IN_PLACE

    # A deliberate reset with a fresh file: Synapse demands interactive auth for a
    # replacement, the bot gives its password, and the new identity signs the device.
    key_file.unlink()
    async with session(config) as client:
        assert await ensure_cross_signing(client, config, reset=True) == Outcome.RESET
    replaced = await seen_by(homeserver, viewer, user.user_id)
    new = load_keys(key_file, user.user_id)
    assert new is not None and only_key(replaced.master) == new.master.public
    assert replaced.master != original.master


@pytest.mark.homeserver
async def test_access_token_only_bot_on_synapse(
    homeserver: EmbeddedHomeserver,
    new_user: Callable[..., Any],
    tmp_path: Path,
    clients: ClientPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Synapse takes a first upload without interactive auth (MSC3967), so a bot given
    only an access token is cross-signed too; a new device is then signed with the
    stored keys, and a replacement without the password is refused."""
    caplog.set_level(logging.INFO, logger="bot.matrix.crosssign")
    user = await new_user("xtoken")
    viewer = await clients.participant(await new_user("xview"))
    token = await homeserver.login(user, device_id="TOKENDEV")
    config = await _session_config(
        homeserver, tmp_path, user_id=user.user_id, access_token=token, device_id="TOKENDEV"
    )
    async with session(config) as client:
        assert await ensure_cross_signing(client, config, reset=False) == Outcome.CREATED
    seen = await seen_by(homeserver, viewer, user.user_id)
    assert list(seen.devices) == ["TOKENDEV"]

    # A second device of the same account, with the same storage's keys: signed too.
    token2 = await homeserver.login(user, device_id="SECONDDEV")
    os.remove(config.storage.path / CREDENTIALS_FILE)
    config2 = await _session_config(
        homeserver, tmp_path, user_id=user.user_id, access_token=token2, device_id="SECONDDEV"
    )
    async with session(config2) as client:
        assert await ensure_cross_signing(client, config2, reset=False) == Outcome.DEVICE_SIGNED
    seen = await seen_by(homeserver, viewer, user.user_id)
    assert sorted(seen.devices) == ["SECONDDEV", "TOKENDEV"]

    # Replacing keys needs the password, which this configuration does not have.
    (config2.storage.path / CROSS_SIGNING_FILE).unlink()
    async with session(config2) as client:
        assert await ensure_cross_signing(client, config2, reset=True) == Outcome.NEEDS_PASSWORD
    assert "needed once" in caplog.text
    assert (await seen_by(homeserver, viewer, user.user_id)).master == seen.master
