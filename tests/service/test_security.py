"""Authentication: tokens, TLS and mutual TLS on the orchestrator; the rules for binding.

Certificates are generated at test time with the openssl command-line tool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import service

from tiersim._errors import ConfigError
from tiersim._security import ClientSecurity, ServerSecurity, is_loopback, load_token
from tiersim.orchestrator.agent_client import PolicyAgentClient
from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import orchestrator_pb2_grpc as opb_grpc

TOKEN = "s3cret-token-for-tests"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


async def _list_runs(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    try:
        await opb_grpc.OrchestratorStub(channel).ListRuns(opb.ListRunsRequest(), metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_token_required_wrong_refused_right_accepted_and_attempts_logged() -> None:
    security = ServerSecurity(token=TOKEN)
    with structlog.testing.capture_logs() as logs:
        async with service(security) as s:
            # No token: UNAUTHENTICATED (the harness channel sends none).
            assert await _list_runs(s.channel) == grpc.StatusCode.UNAUTHENTICATED
            # Wrong token, and a token that is not a bearer token.
            wrong = (("authorization", "Bearer nope"),)
            assert await _list_runs(s.channel, wrong) == grpc.StatusCode.UNAUTHENTICATED
            basic = (("authorization", f"Basic {TOKEN}"),)
            assert await _list_runs(s.channel, basic) == grpc.StatusCode.UNAUTHENTICATED
            # Unknown methods are refused the same way: no probing without the token.
            nope: Any = s.channel.unary_unary("/tiersim.v1.Orchestrator/Nope")
            call = nope(b"")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Health checks stay open for probes.
            health: Any = health_pb2_grpc.HealthStub(s.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # The right token, per call and through a client that adds it to every call.
            right = (("authorization", f"Bearer {TOKEN}"),)
            assert await _list_runs(s.channel, right) == grpc.StatusCode.OK
            async with ClientSecurity(token=TOKEN).channel(s.address) as channel:
                assert await _list_runs(channel) == grpc.StatusCode.OK
                # Streams too: an agent with the token registers, one without is refused.
                async with PolicyAgentClient(
                    s.address, decisions=["promotion"], security=ClientSecurity(token=TOKEN)
                ) as agent:
                    assert agent.registered is not None
            intruder = PolicyAgentClient(s.address, decisions=["promotion"])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await intruder.connect()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await intruder.close()
    refused = [e for e in logs if e["event"] == "unauthenticated call refused"]
    reasons = [e["reason"] for e in refused]
    assert "no token" in reasons and "wrong token" in reasons
    assert "authorization is not a bearer token" in reasons
    assert all(e["peer"].startswith("ipv") and e["method"].startswith("/") for e in refused)
    assert TOKEN not in repr(logs)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1, and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=tiersim test CA",
        cwd=d,
    )
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=tiersim agent")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=d,
        )
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            *extra,
            cwd=d,
        )
    return d


@needs_openssl
@pytest.mark.asyncio
async def test_tls_with_a_generated_certificate(pki: Path) -> None:
    security = ServerSecurity.from_files(
        tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")
    )
    assert security.describe() == "TLS"
    client = ClientSecurity.from_files(tls_ca=str(pki / "ca.pem"))
    async with service(security, client) as s:
        assert await _list_runs(s.channel) == grpc.StatusCode.OK
        # A plain-text client cannot talk to it.
        async with grpc.aio.insecure_channel(s.address) as plain:
            assert await _list_runs(plain) == grpc.StatusCode.UNAVAILABLE
        # Nor one that does not trust the CA.
        async with ClientSecurity(tls=True).channel(s.address) as untrusting:
            assert await _list_runs(untrusting) == grpc.StatusCode.UNAVAILABLE
        agent = PolicyAgentClient(s.address, decisions=["promotion"], security=client)
        async with agent:
            assert agent.registered is not None


@needs_openssl
@pytest.mark.asyncio
async def test_mutual_tls_and_token_together(pki: Path) -> None:
    security = ServerSecurity.from_files(
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    security = ServerSecurity(
        token=TOKEN,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        tls_client_ca=security.tls_client_ca,
    )
    assert security.describe() == "token + mutual TLS"
    with_cert = ClientSecurity.from_files(
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
    )
    async with service(
        security,
        ClientSecurity(
            token=TOKEN,
            tls=True,
            tls_ca=with_cert.tls_ca,
            tls_cert=with_cert.tls_cert,
            tls_key=with_cert.tls_key,
        ),
    ) as s:
        assert await _list_runs(s.channel) == grpc.StatusCode.OK
        # A certificate but no token.
        async with with_cert.channel(s.address) as no_token:
            assert await _list_runs(no_token) == grpc.StatusCode.UNAUTHENTICATED
        # The token but no client certificate: the handshake fails.
        no_cert = ClientSecurity(token=TOKEN, tls=True, tls_ca=with_cert.tls_ca)
        async with no_cert.channel(s.address) as channel:
            assert await _list_runs(channel) == grpc.StatusCode.UNAVAILABLE


def test_binding_beyond_loopback_needs_authentication() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.53"):
        assert is_loopback(host), host
        ServerSecurity().check_bind(host)
    for host in ("0.0.0.0", "::", "", "192.0.2.1"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match="without authentication"):
            ServerSecurity().check_bind(host)
        ServerSecurity(token=TOKEN).check_bind(host)
        ServerSecurity(tls_cert=b"x", tls_key=b"y").check_bind(host)


def test_cli_refuses_to_serve_the_network_without_authentication(tmp_path: Path) -> None:
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiersim",
            "orchestrator",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in run.stderr


def test_tokens_come_from_files_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    assert load_token(token_file=str(f)) == TOKEN
    monkeypatch.setenv("TIERSIM_TEST_TOKEN", TOKEN)
    assert load_token(token_env="TIERSIM_TEST_TOKEN") == TOKEN
    assert load_token() is None
    cases = [
        ({"token_file": str(tmp_path / "absent")}, "cannot read token file"),
        ({"token_env": "TIERSIM_TEST_UNSET"}, "is not set"),
        ({"token_file": str(f), "token_env": "TIERSIM_TEST_TOKEN"}, "not both"),
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases.append(({"token_file": str(empty)}, "empty token"))
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_token(**kwargs)
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        ServerSecurity.from_files(tls_cert=str(f))
    with pytest.raises(ConfigError, match="needs a server certificate"):
        ServerSecurity.from_files(tls_client_ca=str(f))


# ---------------------------------------------------------------- memory nodes

NODE_SCENARIO = """
[scenario]
name = "remote-node"
description = "a host whose CXL node runs as a server"
question = "test"
seed = 2
duration = "50ms"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "1MiB"

[[nodes]]
name = "cxl0"
kind = "cxl"
host = "h0"
capacity = "8MiB"
address = "{address}"
{security}

[tunables]
demotion_enabled = true

[[cgroups]]
name = "app"

[[workloads]]
name = "app"
host = "h0"
cgroup = "app"
footprint = "2MiB"
[workloads.pattern]
kind = "uniform"
write_ratio = 0.2
think = "10us"
"""


def _node_server(security: ServerSecurity) -> Any:
    from tiersim.nodes import NodeServer, ServerOptions, node_config

    return NodeServer(node_config("cxl", "8MiB", name="cxl0"), ServerOptions(), security=security)


@pytest.mark.asyncio
async def test_a_node_with_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tiersim import NodeError
    from tiersim.nodes import GrpcNodeClient
    from tiersim.orchestrator.engine import run
    from tiersim.orchestrator.scenario import loads_scenario

    server = _node_server(ServerSecurity(token=TOKEN))
    await server.start()
    try:
        with pytest.raises(NodeError) as info:
            await GrpcNodeClient.connect(server.address, timeout=5)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        async with await GrpcNodeClient.connect(
            server.address, timeout=5, security=ClientSecurity(token=TOKEN)
        ) as client:
            assert client.info.name == "cxl0"
            assert (await client.stats()).stored_pages == 0
            # The batch streams carry the token too.
            result = await client.store([(0, b"\x01" * 4096)])
            assert result.codes == [0]
        # A scenario names where the token is, never the token.
        monkeypatch.setenv("TIERSIM_NODE_TOKEN", TOKEN)
        text = NODE_SCENARIO.format(
            address=server.address, security='token_env = "TIERSIM_NODE_TOKEN"'
        )
        doc = await run(loads_scenario(text).variants[0])
        # The node was described, reset and asked for its stats over the authenticated channel.
        assert doc["completed"] and doc["nodes"]["cxl0"]["device"]["kind"] == "cxl"
        assert doc["nodes"]["cxl0"]["used_pages"] > 0
        (tmp_path / "tok").write_text(TOKEN + "\n")
        text = NODE_SCENARIO.format(
            address=server.address, security=f'token_file = "{tmp_path / "tok"}"'
        )
        assert (await run(loads_scenario(text).variants[0]))["completed"]
        # Without it: the run cannot start, and says why.
        text = NODE_SCENARIO.format(address=server.address, security="")
        with pytest.raises(ConfigError, match="UNAUTHENTICATED") as err:
            await run(loads_scenario(text).variants[0])
        assert err.value.key == "nodes.cxl0.address"
    finally:
        await server.stop(0.5)


@needs_openssl
@pytest.mark.asyncio
async def test_a_node_with_mutual_tls(pki: Path) -> None:
    from tiersim import NodeError
    from tiersim.nodes import GrpcNodeClient
    from tiersim.orchestrator.engine import run
    from tiersim.orchestrator.scenario import loads_scenario

    server = _node_server(
        ServerSecurity.from_files(
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tls_client_ca=str(pki / "ca.pem"),
        )
    )
    await server.start()
    try:
        with pytest.raises(NodeError):
            await GrpcNodeClient.connect(server.address, timeout=2)
        client_sec = ClientSecurity.from_files(
            tls_ca=str(pki / "ca.pem"),
            tls_cert=str(pki / "client.pem"),
            tls_key=str(pki / "client.key"),
        )
        async with await GrpcNodeClient.connect(server.address, timeout=5, security=client_sec):
            pass
        security = "\n".join(
            [
                f'tls_ca = "{pki / "ca.pem"}"',
                f'tls_cert = "{pki / "client.pem"}"',
                f'tls_key = "{pki / "client.key"}"',
            ]
        )
        text = NODE_SCENARIO.format(address=server.address, security=security)
        assert (await run(loads_scenario(text).variants[0]))["completed"]
    finally:
        await server.stop(0.5)


def test_node_security_keys_are_validated() -> None:
    from tiersim.orchestrator.scenario import loads_scenario

    embedded = NODE_SCENARIO.replace('address = "{address}"\n{security}', 'token_env = "X"')
    with pytest.raises(ConfigError, match="applies to a node at an address") as info:
        loads_scenario(embedded)
    assert info.value.key == "nodes.cxl0.token_env"
    both = NODE_SCENARIO.format(address="127.0.0.1:1", security='token_env = "X"\ntoken_file = "f"')
    with pytest.raises(ConfigError, match="not both"):
        loads_scenario(both)
    node = (
        loads_scenario(
            NODE_SCENARIO.format(
                address="127.0.0.1:1", security='tls = true\ntls_server_name = "n"'
            )
        )
        .variants[0]
        .nodes[1]
    )
    assert (node.tls, node.tls_server_name, node.token_env) == (True, "n", None)


def test_node_cli_refuses_the_network_without_authentication() -> None:
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiersim",
            "node",
            "--kind",
            "dram",
            "--advertised",
            "1MiB",
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in run.stderr
