"""Authentication and transport security for every tiersim gRPC server and client.

Two mechanisms, usable together:

* a shared **token**, sent by clients as call metadata
  (`authorization: Bearer <token>`) and checked by a server interceptor. A
  call without it, or with a wrong one, is answered UNAUTHENTICATED and the
  attempt is logged with the peer's address. Tokens are read from a file or
  an environment variable, never from the command line, where `ps` would
  show them to every user of the machine;
* **TLS**, with a certificate and key on the server; **mutual TLS** when the
  server also names a CA that client certificates must chain to.

A server may listen on loopback with neither (one machine, one user, the
default). Binding beyond loopback without a token or TLS is refused: the
services let a caller run simulations, read files named in scenarios, and
take placement decisions, which is too much to give to a network.

gRPC health checking stays open without a token, so that orchestration
systems (Kubernetes probes, Compose health checks) can probe a server
without holding its secret; it reveals nothing but "serving".
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ._errors import ConfigError
from ._logging import get_logger

AUTH_METADATA_KEY = "authorization"
_BEARER = "bearer "
# Methods reachable without a token (prefix match on the full method name).
OPEN_METHODS: tuple[str, ...] = ("/grpc.health.v1.Health/",)
# Refused attempts logged per window before the log summarises.
_LOG_BURST = 20
_LOG_WINDOW_S = 10.0

_log = get_logger("tiersim.security")


# ---------------------------------------------------------------- reading secrets


def _read_file(path: str | os.PathLike[str], what: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {str(path)!r}: {exc.strerror or exc}", key=key
        ) from None


def load_token(
    token_file: str | os.PathLike[str] | None = None,
    token_env: str | None = None,
    *,
    key_prefix: str = "",
) -> str | None:
    """The token from a file (first line, whitespace stripped) or an environment variable.

    Both unset: no token. An empty token is refused: it would make every
    caller that sends an empty header look authenticated.
    """
    if token_file and token_env:
        raise ConfigError(
            "give the token by file or by environment variable, not both",
            key=f"{key_prefix}token_file",
        )
    if token_file:
        raw = _read_file(token_file, "token file", f"{key_prefix}token_file")
        try:
            lines = raw.decode("utf-8").strip().splitlines()
        except UnicodeDecodeError:
            raise ConfigError(
                f"token file {str(token_file)!r} is not UTF-8 text", key=f"{key_prefix}token_file"
            ) from None
        token = lines[0].strip() if lines else ""
        where, key = f"token file {str(token_file)!r}", f"{key_prefix}token_file"
    elif token_env:
        if token_env not in os.environ:
            raise ConfigError(
                f"environment variable {token_env} is not set", key=f"{key_prefix}token_env"
            )
        token = os.environ[token_env].strip()
        where, key = f"environment variable {token_env}", f"{key_prefix}token_env"
    else:
        return None
    if not token:
        raise ConfigError(f"{where} holds an empty token", key=key)
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"{where}: a token must be printable and without spaces", key=key)
    return token


# ---------------------------------------------------------------- addresses


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address.

    An empty host, `0.0.0.0` or `::` listen on every interface: not loopback.
    A name is resolved; one that does not resolve is not trusted as loopback.
    """
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addrs
    )


def split_host(address: str) -> str:
    """The host part of `host:port` or `[v6]:port`."""
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, _ = address.rpartition(":")
    return host if sep else address


# ---------------------------------------------------------------- server side


@dataclass(frozen=True)
class ServerSecurity:
    """How a server authenticates callers: a token, TLS, mutual TLS, or nothing (loopback)."""

    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    # CA bundle that client certificates must chain to: mutual TLS.
    tls_client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls,
        *,
        token_file: str | None = None,
        token_env: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        key_prefix: str = "",
    ) -> ServerSecurity:
        """Read the token and PEM files named by CLI flags or configuration keys."""
        token = load_token(token_file, token_env, key_prefix=key_prefix)
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError(
                "TLS needs both a certificate and its key",
                key=f"{key_prefix}{'tls_key' if tls_cert else 'tls_cert'}",
            )
        if tls_client_ca and not tls_cert:
            raise ConfigError(
                "mutual TLS (a client CA) needs a server certificate and key",
                key=f"{key_prefix}tls_cert",
            )
        cert = (
            _read_file(tls_cert, "TLS certificate", f"{key_prefix}tls_cert") if tls_cert else None
        )
        key = _read_file(tls_key, "TLS key", f"{key_prefix}tls_key") if tls_key else None
        ca = (
            _read_file(tls_client_ca, "client CA", f"{key_prefix}tls_client_ca")
            if tls_client_ca
            else None
        )
        return cls(token=token, tls_cert=cert, tls_key=key, tls_client_ca=ca)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    def describe(self) -> str:
        parts = []
        if self.token:
            parts.append("token")
        if self.mutual_tls:
            parts.append("mutual TLS")
        elif self.tls:
            parts.append("TLS")
        return " + ".join(parts) or "none (loopback only)"

    def check_bind(self, host: str) -> None:
        """Refuse to listen beyond loopback without a token or TLS."""
        if self.token or self.tls or is_loopback(host):
            return
        raise ConfigError(
            f"refusing to listen on {host or 'every interface'} without authentication: "
            "beyond loopback a token (--token-file/--token-env) or TLS (--tls-cert/--tls-key) "
            "is required",
            key="host",
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenAuthInterceptor(self.token)] if self.token else []

    def credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        assert self.tls_cert is not None and self.tls_key is not None
        return grpc.ssl_server_credentials(
            [(self.tls_key, self.tls_cert)],
            root_certificates=self.tls_client_ca,
            require_client_auth=self.tls_client_ca is not None,
        )

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` with TLS when configured; the port bound (0 on failure)."""
        self.check_bind(split_host(address))
        creds = self.credentials()
        if creds is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, creds)

    async def listen(self, server: grpc.aio.Server, address: str) -> int:
        """`add_port`, or a ConfigError naming `address` once `server` is stopped."""
        try:
            port = self.add_port(server, address)
        except RuntimeError as exc:
            await server.stop(None)
            raise ConfigError(f"cannot listen on {address}: {exc}", key="port") from None
        if port == 0:
            await server.stop(None)
            raise ConfigError(f"cannot listen on {address}", key="port")
        return port


def format_address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _token_problem(metadata: Sequence[tuple[str, str | bytes]] | None, token: bytes) -> str | None:
    """None when the metadata carries the token; else what is wrong, for the log."""
    values = [v for k, v in (metadata or ()) if k == AUTH_METADATA_KEY]
    if not values:
        return "no token"
    if len(values) > 1:
        return "several authorization headers"
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text[: len(_BEARER)].lower() != _BEARER:
        return "authorization is not a bearer token"
    given = text[len(_BEARER) :].strip().encode("utf-8", "replace")
    # Constant time, so the comparison does not leak how much of a guess was right.
    if not hmac.compare_digest(given, token):
        return "wrong token"
    return None


class _RateLimitedLog:
    """Log refused attempts, but not thousands a second from one misbehaving client."""

    def __init__(self) -> None:
        self._window_start = 0.0
        self._logged = 0
        self._suppressed = 0

    def refused(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._window_start > _LOG_WINDOW_S:
            if self._suppressed:
                _log.warning(
                    "unauthenticated calls not logged",
                    count=self._suppressed,
                    window_s=_LOG_WINDOW_S,
                )
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < _LOG_BURST:
            self._logged += 1
            _log.warning("unauthenticated call refused", **fields)
        else:
            self._suppressed += 1


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Answer UNAUTHENTICATED to calls without the server's token, and log them.

    The refusal does not depend on the method: an unknown method is refused
    the same way, so a caller without the token cannot probe which services
    exist. Health checks are open (see OPEN_METHODS).
    """

    def __init__(self, token: str, open_methods: Sequence[str] = OPEN_METHODS) -> None:
        self._token = token.encode("utf-8")
        self._open = tuple(open_methods)
        self._log = _RateLimitedLog()
        self.refused = 0

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(self._open):
            return await continuation(handler_call_details)
        problem = _token_problem(handler_call_details.invocation_metadata, self._token)
        if problem is None:
            return await continuation(handler_call_details)
        return self._deny(method, problem)

    def _deny(self, method: str, problem: str) -> grpc.RpcMethodHandler[Any, Any]:
        # A streaming-request handler never waits for a request message, so the
        # refusal is immediate whatever the method's real shape; on the wire a
        # unary call is a stream of one message, so every client accepts it.
        async def refuse(
            request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            self.refused += 1
            self._log.refused(peer=context.peer(), method=method, reason=problem)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{problem}: a valid token is required"
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


# ---------------------------------------------------------------- client side


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server: a token to send, TLS settings, a client certificate."""

    token: str | None = None
    tls: bool = False
    # CA bundle to verify the server against; None: the system's roots.
    tls_ca: bytes | None = None
    # Client certificate and key, for mutual TLS.
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    # Expected name in the server's certificate, when the address is not it.
    tls_server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        *,
        token_file: str | None = None,
        token_env: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        key_prefix: str = "",
    ) -> ClientSecurity:
        token = load_token(token_file, token_env, key_prefix=key_prefix)
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError(
                "a client certificate needs its key (and the key its certificate)",
                key=f"{key_prefix}{'tls_key' if tls_cert else 'tls_cert'}",
            )
        use_tls = tls or bool(tls_ca or tls_cert or tls_server_name)
        return cls(
            token=token,
            tls=use_tls,
            tls_ca=_read_file(tls_ca, "CA bundle", f"{key_prefix}tls_ca") if tls_ca else None,
            tls_cert=_read_file(tls_cert, "client certificate", f"{key_prefix}tls_cert")
            if tls_cert
            else None,
            tls_key=_read_file(tls_key, "client key", f"{key_prefix}tls_key") if tls_key else None,
            tls_server_name=tls_server_name or None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token, for clients that pass metadata per call."""
        return ((AUTH_METADATA_KEY, f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address`: TLS and/or the token on every call, as configured."""
        opts = list(options)
        interceptors = token_interceptors(self.token) if self.token else None
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca, private_key=self.tls_key, certificate_chain=self.tls_cert
        )
        return grpc.aio.secure_channel(address, creds, options=opts, interceptors=interceptors)


INSECURE = ClientSecurity()


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
    metadata.add(AUTH_METADATA_KEY, f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request_iterator)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the token to every call of a channel, whatever its shape.

    Call credentials would do the same but gRPC only sends them over TLS; a
    token over plain TCP is a legitimate set-up (a private network, or
    loopback between containers), so metadata is added here instead. One
    object per call shape: a channel files each interceptor under the first
    shape it implements only.
    """
    return [
        _TokenUnaryUnary(token),
        _TokenUnaryStream(token),
        _TokenStreamUnary(token),
        _TokenStreamStream(token),
    ]


# ---------------------------------------------------------------- CLI flags


def add_server_flags(group: Any) -> None:
    """--token-file/--token-env and --tls-cert/--tls-key/--tls-client-ca on an argparse group."""
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help="require this token (first line of FILE) from every caller",
    )
    group.add_argument(
        "--token-env", metavar="VAR", help="require the token held in environment variable VAR"
    )
    group.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    group.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require client certificates issued by this CA",
    )


def server_security_from_args(args: Any) -> ServerSecurity:
    return ServerSecurity.from_files(
        token_file=getattr(args, "token_file", None),
        token_env=getattr(args, "token_env", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_client_ca=getattr(args, "tls_client_ca", None),
    )
