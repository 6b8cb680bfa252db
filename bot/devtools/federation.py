"""Two Synapses that federate on loopback, for the crew's tests and demos.

Each server is named ``127.0.0.1:<port>``: a server name that is an IP literal with
a port is contacted directly on that port, with no well-known or SRV lookup, and
over TLS (Synapse's outbound federation always is). So each server has:

* a plain client listener on its own port (:attr:`EmbeddedHomeserver.url`);
* a TLS federation listener on another port, with a self-signed certificate made
  at start-up (``cryptography``, a dependency of Synapse);
* a :class:`~bot.devtools.loopback.TcpProxy` on the port of its name, forwarding to
  that listener: pausing the proxies is a partition, and a server that is stopped
  looks to the other like one that is down (connection refused).

Certificates are not verified, no notary key server is asked, loopback is allowed as
a federation destination, federation rate limits are lifted and a destination that
failed is retried after a second instead of minutes (``federation:
destination_*_retry_interval``), so tests of outages take seconds.

After an outage Synapse sends a returning server the latest event of each room
it missed ("catch-up") only when it next has something to send there, when the
returning server contacts it, or from a loop that runs once a minute;
:meth:`FederatedPair.reconnect` makes each server contact the other at once.

``python -m bot.devtools.federation [WORKDIR]`` runs a pair until Ctrl-C; the
tests use the ``federated_pair`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import yaml

from bot.devtools.homeserver import CONFIG_FILE, EmbeddedHomeserver, HomeserverError, RateLimits
from bot.devtools.loopback import TcpProxy, free_loopback_port

CERT_FILE = "federation.crt"
KEY_FILE = "federation.key"

# Retrying a server that failed, in two layers, each shortened from minutes to about
# a second so that an outage in a test ends within a second or two of its end:
# * a request in flight (e.g. a transaction) is retried by Synapse's HTTP client up to
#   10 times, 4^n seconds apart, up to max_long_retry_delay (default 60 s);
# * a destination whose request failed for good is not tried again for
#   destination_min_retry_interval (default 10 minutes, doubling, up to a week).
_RETRY = {
    "max_long_retry_delay": 1000,
    "max_short_retry_delay": 1000,
    "destination_min_retry_interval": 500,
    "destination_retry_multiplier": 1.5,
    "destination_max_retry_interval": 2000,
}

# rc_federation: how much one remote server may ask at once. Lifted, as the client
# limits are for tests (a crew test creates rooms and joins in bursts).
_FEDERATION_LIMITS = {
    "window_size": 1000,
    "sleep_limit": 1_000_000,
    "sleep_delay": 0,
    "reject_limit": 1_000_000,
    "concurrent": 1000,
}


def write_self_signed_certificate(cert_path: Path, key_path: Path) -> None:
    """A certificate for ``127.0.0.1`` (subjectAltName IP), valid for a week."""
    # Imported here: only starting a federated pair needs it (it comes with Synapse).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def federation_config(cert_path: Path, key_path: Path) -> dict[str, Any]:
    """What a loopback Synapse needs on top of the embedded one's config to federate."""
    return {
        "tls_certificate_path": str(cert_path),
        "tls_private_key_path": str(key_path),
        "federation_verify_certificates": False,
        # What Synapse's own demo sets beside it (the non-federation HTTP client).
        "use_insecure_ssl_client_just_for_testing_do_not_use": True,
        "federation_domain_whitelist": None,  # the embedded default is "nobody"
        "trusted_key_servers": [],  # keys are fetched from the other server itself
        # By default outbound requests to private and loopback addresses are refused
        # (federation and everything else); 0.0.0.0 and :: stay blocked regardless.
        "ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.1"],
        "rc_federation": dict(_FEDERATION_LIMITS),
        "federation": dict(_RETRY),
    }


def _ports(config_path: Path) -> tuple[int, int]:
    """The name's port and the federation listener's port of a server that ran in this
    directory before (its database belongs to that name), else two free ones."""
    if config_path.exists():
        config = yaml.safe_load(config_path.read_text())
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError, AttributeError):
            name_port = int(str(config["server_name"]).rsplit(":", 1)[1])
            return name_port, int(config["listeners"][1]["port"])
    return free_loopback_port(), free_loopback_port()


def federation_listener(port: int) -> dict[str, Any]:
    return {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": True,
        "x_forwarded": False,
        # "federation" also serves /_matrix/key, where the other server gets our keys.
        "resources": [{"names": ["federation"], "compress": False}],
    }


class FederatedPair:
    """Two Synapses, ``a`` and ``b``, in ``workdir/a`` and ``workdir/b``, federating.

    ``stop_server``/``start_server`` take one down and bring it back with its
    database, name and ports; ``partition``/``heal`` cut and restore federation
    between them while both keep running.
    """

    def __init__(
        self, workdir: Path, *, rate_limits: RateLimits = "relaxed", log_level: str = "WARNING"
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.cert_path = self.workdir / CERT_FILE
        self.key_path = self.workdir / KEY_FILE
        extra = federation_config(self.cert_path, self.key_path)
        self._proxies: dict[str, TcpProxy] = {}
        servers: list[EmbeddedHomeserver] = []
        for label in ("a", "b"):
            name_port, listener_port = _ports(self.workdir / label / CONFIG_FILE)
            servers.append(
                EmbeddedHomeserver(
                    self.workdir / label,
                    server_name=f"127.0.0.1:{name_port}",
                    rate_limits=rate_limits,
                    log_level=log_level,
                    extra_config=extra,
                    extra_listeners=[federation_listener(listener_port)],
                )
            )
            self._proxies[servers[-1].server_name] = TcpProxy(name_port, listener_port)
        self.a, self.b = servers

    @property
    def servers(self) -> tuple[EmbeddedHomeserver, EmbeddedHomeserver]:
        return self.a, self.b

    def proxy(self, hs: EmbeddedHomeserver) -> TcpProxy:
        """The proxy in front of ``hs``'s federation listener: pausing it cuts every
        request *to* ``hs`` (the other way round goes through the other's proxy)."""
        return self._proxies[hs.server_name]

    def other(self, hs: EmbeddedHomeserver) -> EmbeddedHomeserver:
        return self.b if hs is self.a else self.a

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Start both servers (in parallel: two cold starts cost about one)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.cert_path.exists():
            write_self_signed_certificate(self.cert_path, self.key_path)
        for proxy in self._proxies.values():
            await proxy.start()
        try:
            await asyncio.gather(*(hs.start(timeout) for hs in self.servers))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(hs.stop() for hs in self.servers))
        for proxy in self._proxies.values():
            await proxy.close()

    async def stop_server(self, hs: EmbeddedHomeserver) -> None:
        """SIGTERM one server (its proxy stays: the other sees connections refused)."""
        await hs.stop()

    async def kill_server(self, hs: EmbeddedHomeserver) -> None:
        await hs.kill()

    async def start_server(self, hs: EmbeddedHomeserver, *, reconnect: bool = True) -> None:
        """Bring a stopped server back. With ``reconnect`` (the default) the two then
        contact each other, so the other sends what ``hs`` missed at once."""
        await hs.start()
        if reconnect:
            await self.reconnect()

    def partition(self) -> None:
        """Cut federation both ways (each server's federation port resets connections)."""
        for proxy in self._proxies.values():
            proxy.pause()

    async def heal(self, *, reconnect: bool = True) -> None:
        for proxy in self._proxies.values():
            proxy.resume()
        if reconnect:
            await self.reconnect()

    async def restore(self) -> None:
        """Both servers running and federating, whatever a test did to them."""
        stopped = [hs for hs in self.servers if not hs.running]
        partitioned = any(proxy.paused for proxy in self._proxies.values())
        if not stopped and not partitioned:
            return
        for proxy in self._proxies.values():
            proxy.resume()
        await asyncio.gather(*(hs.start() for hs in stopped))
        await self.reconnect()

    async def reconnect(self) -> None:
        """Make each server send the other a request (a profile lookup through the
        client API). A server that hears from a destination it had backed off from
        resets its backoff and sends it what it missed, as any traffic would."""
        for hs in self.servers:
            other = self.other(hs)
            token = await hs.admin_token()
            target = quote(other.user_id("nobody"), safe="")
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.get(
                    f"{hs.url}/_matrix/client/v3/profile/{target}",
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp,
            ):
                # 404: the other server answered that there is no such user: it was
                # reached, which is all this is for. Anything else means it was not.
                if resp.status not in (200, 404):
                    raise HomeserverError(
                        f"{hs.server_name} could not reach {other.server_name} "
                        f"({resp.status}: {await resp.text()})"
                    )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _serve(workdir: Path) -> None:
    async with FederatedPair(workdir) as pair:
        for label, hs in (("a", pair.a), ("b", pair.b)):
            print(f"{label}: {hs.server_name}  client API {hs.url}  log {hs.log_path}", flush=True)
        print("Running; Ctrl-C stops both.", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m bot.devtools.federation [WORKDIR]``: two federating Synapses until
    Ctrl-C (users: ``EmbeddedHomeserver(WORKDIR/a).register`` or Synapse's
    ``register_new_matrix_user -c WORKDIR/a/homeserver.yaml``)."""
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="blossom-federation-"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(workdir))


if __name__ == "__main__":
    main()
