"""The gRPC server the orchestrator's services run in: security, health, reflection.

Both the orchestrator service (`tiersim orchestrator serve`) and the
stand-alone policy listener of a `tiersim run` use it, so both refuse to
listen beyond loopback without a token or TLS, answer health checks and
support reflection (grpcurl needs no .proto files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from tiersim._security import ServerSecurity, split_host

# Requests are small (decisions, scenario text); a bound keeps a client from
# making the server buffer a huge message.
MAX_MESSAGE_BYTES = 4 << 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def start_server(
    address: str,
    security: ServerSecurity,
    handlers: Sequence[grpc.GenericRpcHandler],
    service_names: Sequence[str],
) -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
    """Bind `address`, register `handlers`, health and reflection, start; (server, health, port)."""
    security.check_bind(split_host(address))
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    server = grpc.aio.server(options=options, interceptors=security.interceptors())
    server.add_generic_rpc_handlers(tuple(handlers))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (*service_names, health_name, reflection.SERVICE_NAME), server
    )
    port = await security.listen(server, address)
    await server.start()
    await health.set("", SERVING)
    for name in service_names:
        await health.set(name, SERVING)
    return server, health, port
