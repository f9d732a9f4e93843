"""examples/policies/WALKTHROUGH.md, executed: every grpcurl call in it, against a live server.

grpcurl is not installed where the tests run, so this test does what grpcurl
does: it resolves each method and message through the server's reflection
service alone (no generated stubs), turns the walkthrough's JSON into
protobuf with the same JSON mapping, makes the call, and checks the
answers against the example outputs printed in the walkthrough (the fields
they show must be there; values differ from run to run). The agent played
by hand on the Connect stream sends exactly the walkthrough's messages,
with the request id and page numbers of the run at hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_harness import service

from tiersim._security import ClientSecurity, ServerSecurity

WALKTHROUGH = Path(__file__).resolve().parents[2] / "examples" / "policies" / "WALKTHROUGH.md"
DOC_ADDRESS = "127.0.0.1:50060"
TOKEN = "walkthrough-token"
STREAM_BODIES = {"registered", "attached", "request", "rejected", "detached"}

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


class Reflected:
    """Methods and messages known only through the server's reflection service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool()
        self._files: set[str] = set()

    async def _ask(self, request: reflection_pb2.ServerReflectionRequest) -> Any:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(self.channel)  # type: ignore[arg-type]
        call = stub.ServerReflectionInfo()
        await call.write(request)
        await call.done_writing()
        reply = await call.read()
        assert not reply.HasField("error_response"), reply.error_response
        return reply

    async def services(self) -> set[str]:
        reply = await self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return {s.name for s in reply.list_services_response.service}

    async def method(self, name: str) -> Any:
        """The method descriptor of `pkg.Service/Method`, loading its files by reflection."""
        service_name, method_name = name.split("/")
        if service_name not in {s.full_name for f in self._files for s in self._services(f)}:
            reply = await self._ask(
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=service_name)
            )
            protos = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reply.file_descriptor_response.file_descriptor_proto
            ]
            pending = [p for p in protos if p.name not in self._files]
            while pending:  # dependencies first, in whatever order they came
                progress = False
                for p in list(pending):
                    if all(d in self._files for d in p.dependency):
                        self.pool.Add(p)
                        self._files.add(p.name)
                        pending.remove(p)
                        progress = True
                assert progress, f"unresolvable imports: {[p.name for p in pending]}"
        return self.pool.FindServiceByName(service_name).methods_by_name[method_name]

    def _services(self, file_name: str) -> list[Any]:
        return list(self.pool.FindFileByName(file_name).services_by_name.values())

    def message(self, descriptor: Any) -> Any:
        return message_factory.GetMessageClass(descriptor)


def _camel(code: grpc.StatusCode) -> str:
    return "".join(part.capitalize() for part in code.name.split("_"))


def _shape(expected: Any, actual: Any, where: str = "$") -> None:
    """Every field the example shows exists in the actual answer, with the same kind of value."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: no field {key!r} (has {sorted(actual)})"
            _shape(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        for i, item in enumerate(expected):
            errors = []
            for candidate in actual:
                try:
                    _shape(item, candidate, f"{where}[{i}]")
                    break
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                raise AssertionError(f"{where}[{i}]: nothing matches {item!r}: {errors[:2]}")
    else:
        assert type(expected) is type(actual) or (
            isinstance(expected, (int, float)) and isinstance(actual, (int, float))
        ), f"{where}: {expected!r} vs {actual!r}"


def _jq(value: Any, program: str) -> Any:
    """The few jq programs the walkthrough uses: paths like .a.b[0].c."""
    for name, index in re.findall(r"\.([A-Za-z_]\w*)(?:\[(\d+)\])?", program):
        value = value[name]
        if index:
            value = value[int(index)]
    return value


def _commands(body: str) -> list[str]:
    return [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip()]


class Player:
    """Runs the walkthrough's commands against a live server."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.token = token
        self.vars: dict[str, str] = {}
        self.last: Any = None
        self.error: grpc.aio.AioRpcError | None = None
        self.agent: Any = None
        self.agent_types: tuple[Any, Any] | None = None
        self.agent_seen: list[dict[str, Any]] = []
        self.request: dict[str, Any] | None = None
        self.policy: dict[str, Any] | None = None
        # Decision requests that came on the stream, and replies sent to them.
        self.requests_seen = 0
        self.replies_sent = 0

    async def run(self, command: str, channel: grpc.aio.Channel, refl: Reflected) -> None:
        capture = None
        m = re.fullmatch(r"(\w+)=\$\((.*)\)", command)
        if m:
            capture, command = m.group(1), m.group(2)
        for name, value in self.vars.items():
            command = command.replace(f"${name}", value)
        command = command.replace("$(cat token.txt)", TOKEN)
        pipeline = [p.strip() for p in command.split(" | ")]
        argv = shlex.split(pipeline[0])
        if argv[0] == "mkfifo" or argv[:2] == ["tiersim", "orchestrator"]:
            return
        if argv[0] == "exec":
            if argv[1:] == ["3>&-"]:
                # A reader leaves with the next request on the screen ("the third
                # request was out when the stream closed"), not before it came.
                while self.requests_seen <= self.replies_sent:
                    await self.agent_expect("request")
                await self.agent.done_writing()
            return
        if argv[0] == "echo":
            await self._agent_send(json.loads(argv[1]), refl)
            return
        assert argv[0] == "grpcurl", command
        args = argv[1:]
        metadata: list[tuple[str, str]] = []
        data: str | None = None
        while args[0].startswith("-"):
            flag = args.pop(0)
            if flag == "-d":
                data = args.pop(0)
            elif flag == "-H":
                key, _, value = args.pop(0).partition(": ")
                metadata.append((key.lower(), value))
            else:
                assert flag == "-plaintext", flag
        address, target = args[0], args[1]
        assert address == DOC_ADDRESS
        if target == "list":
            self.last = await refl.services()
            return
        method = await refl.method(target)
        req_cls = refl.message(method.input_type)
        resp_cls = refl.message(method.output_type)
        path = f"/{target}"
        if method.client_streaming:  # Connect, fed by the echo lines
            assert data == "@" and args[2:] == ["<", "agent.in", "&"]
            self.agent = channel.stream_stream(
                path,
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )(metadata=metadata or None)
            self.agent_types = (req_cls, resp_cls)
            return
        request = json_format.Parse(data or "{}", req_cls())
        self.error = None
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )(request, metadata=metadata or None)
            events: list[dict[str, Any]] = []
            try:
                if target.endswith("/Subscribe"):
                    # A subscription lasts as long as the run: take what is there, then leave.
                    for _ in range(2):
                        events.append(json.loads(json_format.MessageToJson(await call.read())))  # type: ignore[arg-type]
                    call.cancel()
                else:
                    async for ev in call:
                        events.append(json.loads(json_format.MessageToJson(ev)))
            except grpc.aio.AioRpcError as err:
                self.error = err
            self.last = events
            return
        try:
            reply = await channel.unary_unary(
                path,
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )(request, metadata=metadata or None)
        except grpc.aio.AioRpcError as err:
            self.error, self.last = err, None
            return
        result: Any = json.loads(json_format.MessageToJson(reply))
        for stage in pipeline[1:]:
            jq_argv = shlex.split(stage)
            assert jq_argv[0] == "jq", stage
            result = _jq(result, jq_argv[-1])
            if isinstance(result, str) and "-r" in jq_argv and result.startswith("{"):
                result = json.loads(result)
        if isinstance(result, dict) and result.get("name") == "agent":
            self.policy = result
        if capture:
            # The shell keeps the jq'd value; the walkthrough shows the reply it came from.
            self.vars[capture] = result
            result = json.loads(json_format.MessageToJson(reply))
        self.last = result

    async def _agent_send(self, message: dict[str, Any], refl: Reflected) -> None:
        assert self.agent is not None and self.agent_types is not None
        reply = message.get("reply")
        if reply is not None:
            # The walkthrough quotes the ids of its own run; answer those of this one.
            if self.request is None:  # "the next request follows at once"
                self.request = (await self.agent_expect("request"))["request"]
            asked = {int(p["page"]) for p in self.request.get("pages", [])}
            reply["request_id"] = int(self.request["requestId"])
            for verdict in reply.get("verdicts", []):
                if verdict["page"] in (5617, 5820):  # the documented pages
                    verdict["page"] = min(asked)
        await self.agent.write(json_format.ParseDict(message, self.agent_types[0]()))
        self.request = None
        self.replies_sent += reply is not None

    async def agent_expect(self, body: str) -> dict[str, Any]:
        """The next message of the given kind on the Connect stream."""
        while True:
            for i, seen in enumerate(self.agent_seen):
                if body in seen:
                    self.agent_seen.pop(i)
                    return seen
            msg = await asyncio.wait_for(self.agent.read(), 30)
            assert msg is not grpc.aio.EOF, f"stream ended waiting for {body}"
            seen = json.loads(json_format.MessageToJson(msg))
            self.requests_seen += "request" in seen
            if "request" in seen and body != "request":
                continue  # requests the walkthrough does not answer: left to the deadline
            self.agent_seen.append(seen)

    async def check(self, lang: str, body: str) -> None:
        if lang == "json":
            expected = json.loads(body)
            key = next(iter(expected))
            if key in STREAM_BODIES:
                got = await self.agent_expect(key)
                if key == "request":
                    self.request = got["request"]
                _shape(expected, got)
            elif isinstance(self.last, list) and self.last and isinstance(self.last[0], dict):
                body_key = next(
                    k for k in expected if k not in ("sequence", "timeNs", "runId", "variant")
                )
                matching = [ev for ev in self.last if body_key in ev]
                assert matching, f"no {body_key} event among {len(self.last)}"
                _shape(expected, matching[-1])
            else:
                assert self.error is None, self.error
                _shape(expected, self.last)
        elif body.startswith("ERROR:"):
            assert self.error is not None, f"expected an error, got {self.last!r}"
            code = re.search(r"Code: (\w+)", body)
            assert code and _camel(self.error.code()) == code.group(1)
            shown = re.search(r"Message: (.*)", body)
            assert shown
            prefix = shown.group(1).split("...")[0]
            prefix = re.sub(r"run-\w+-\d+", "RUN", prefix)
            assert re.sub(r"run-\w+-\d+", "RUN", self.error.details() or "").startswith(prefix)
        elif isinstance(self.last, set):
            assert set(body.split()) <= self.last


async def test_the_walkthrough_works_as_written() -> None:
    text = WALKTHROUGH.read_text()
    sections = re.split(r"\n## ", text)
    blocks_before_auth: list[tuple[str, str]] = []
    auth_blocks: list[tuple[str, str]] = []
    for section in sections:
        target = auth_blocks if section.startswith("6.") else blocks_before_auth
        target.extend(re.findall(r"```(\w+)\n(.*?)```", section, re.S))
    assert len(blocks_before_auth) > 20

    async with service() as s:
        player = Player(s.address)
        refl = Reflected(s.channel)
        for lang, body in blocks_before_auth:
            if lang == "sh":
                for command in _commands(body):
                    if "GetResults" in command:
                        # "Once the run has finished": wait for it as WatchRun would.
                        await player.run(
                            'grpcurl -plaintext -d "{\\"run_id\\": \\"$RUN\\"}" '
                            f"{DOC_ADDRESS} tiersim.v1.Orchestrator/WatchRun",
                            s.channel,
                            refl,
                        )
                    await player.run(command, s.channel, refl)
            else:
                await player.check(lang, body)
        # The run played by hand counted what the walkthrough says it did.
        policy = player.policy
        assert policy is not None and policy["agent"] == "by-hand"
        assert (policy["decisions"], policy["overridden"], policy["fallback_invalid"]) == (1, 1, 1)
        assert policy["requests"] == 3 and policy["fallback_disconnect"] > 100

    async with service(ServerSecurity(token=TOKEN)) as s:
        player = Player(s.address, TOKEN)
        # grpcurl -H sends the header on its reflection requests too.
        async with ClientSecurity(token=TOKEN).channel(s.address) as authed:
            refl = Reflected(authed)
            commands = [c for lang, body in auth_blocks if lang == "sh" for c in _commands(body)]
            grpcurls = [c for c in commands if c.startswith("grpcurl")]
            assert grpcurls
            for command in grpcurls:
                await player.run(command, s.channel, refl)
                assert player.error is None, player.error
                # Without the header: refused.
                bare = re.sub(r'-H "[^"]*" ', "", command)
                assert bare != command
                await player.run(bare, s.channel, refl)
                assert player.error is not None
                assert player.error.code() == grpc.StatusCode.UNAUTHENTICATED
