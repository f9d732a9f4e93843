"""A promotion policy agent: promote a page only on its second NUMA hint fault.

The kernel promotes a slow-tier page on the first hint fault whose latency
is under the hot threshold. One fault is weak evidence: a page touched once
by a scan of cold data looks as hot as a page in the working set, and
promoting it costs a migration now and a demotion later. This agent asks
for a second fault before it promotes (the two-touch filter of the TPP and
MGLRU discussions), so fewer pages bounce between the tiers.

    python promote_twice.py --address 127.0.0.1:50060 [--faults 2] [--once]

The token, if the orchestrator wants one, comes from $TIERSIM_TOKEN. The
agent only asks for promotion decisions; the orchestrator takes every other
decision with its built-in policy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
import grpc.aio

from tiersim.v1 import policy_pb2 as pb


def log(*parts: object) -> None:
    print("promote_twice:", *parts, file=sys.stderr, flush=True)


class TwoFaults:
    """The decision rule, kept apart from the wire so it is easy to read."""

    def __init__(self, faults: int) -> None:
        self.faults = faults
        self.seen: dict[int, int] = {}  # page -> hint faults since its last promotion
        self.promoted = self.held_back = 0

    def decide(self, page: int, kernel_says: bool) -> bool:
        n = self.seen.get(page, 0) + 1
        if not kernel_says:
            # Not hot enough or over the rate limit for the kernel: keep the count, do not promote.
            self.seen[page] = n
            return False
        if n < self.faults:
            self.seen[page] = n
            self.held_back += 1
            return False
        self.seen.pop(page, None)
        self.promoted += 1
        return True


def answer(rule: TwoFaults, req: pb.DecisionRequest) -> pb.AgentMessage:
    out = pb.AgentMessage()
    out.reply.request_id = req.request_id
    for page, default in zip(req.pages, req.defaults, strict=True):
        out.reply.verdicts.add(page=page.page, accept=rule.decide(page.page, default.accept))
    return out


async def run(args: argparse.Namespace) -> int:
    token = os.environ.get("TIERSIM_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.aio.secure_channel(args.address, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.aio.insecure_channel(args.address)
    async with channel:
        connect = channel.stream_stream(
            "/tiersim.v1.PolicyAgent/Connect",
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.OrchestratorMessage.FromString,
        )
        call = connect(metadata=metadata, wait_for_ready=True)
        register = pb.Register(agent=args.name, decisions=[pb.DECISION_KIND_PROMOTION])
        await call.write(pb.AgentMessage(register=register))
        rule = TwoFaults(args.faults)
        while True:
            try:
                msg = await call.read()
            except grpc.aio.AioRpcError as err:
                log("stream ended:", err.code().name, err.details())
                return 1
            if msg is grpc.aio.EOF:
                log("the orchestrator closed the stream")
                return 0
            assert isinstance(msg, pb.OrchestratorMessage)
            kind = msg.WhichOneof("body")
            if kind == "request":
                await call.write(answer(rule, msg.request))
            elif kind == "attached":
                rule = TwoFaults(args.faults)  # page numbers are per run
                log(f"serving run {msg.attached.run_id} ({msg.attached.variant})")
            elif kind == "detached":
                log(
                    f"run {msg.detached.run_id} {msg.detached.reason}: promoted {rule.promoted},"
                    f" held back {rule.held_back}"
                )
                if args.once:
                    await call.done_writing()
                    return 0
            elif kind == "rejected":
                log("reply rejected:", msg.rejected.detail)
            elif kind == "registered":
                log(f"registered as session {msg.registered.session_id}; waiting for a run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50060", help="orchestrator host:port")
    parser.add_argument("--name", default="promote-twice", help="agent name to register")
    parser.add_argument("--faults", type=int, default=2, help="hint faults before a promotion")
    parser.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA")
    parser.add_argument("--once", action="store_true", help="exit after serving one run")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
