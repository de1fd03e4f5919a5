"""Fuzzing: schemathesis drives every route of the daemon's own OpenAPI document with
generated valid and invalid requests; hypothesis throws malformed MQTT traffic at a real
broker. The daemon must never answer 5xx, must answer only the statuses and bodies its
document declares, must answer every request-shaped MQTT message exactly once, and must stay
up. CI runs a few hundred cases; scripts/fuzz.py runs more."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from starlette.responses import JSONResponse

from agent.api.guard import GENERATING, OPEN_PATHS
from tests.conftest import Daemon, start_daemon
from tests.mqtt_support import Broker, Device, exactly_once

EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_EXAMPLES", "15"))  # per operation


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Daemon]:
    # A short context keeps each generated completion quick.
    instance = start_daemon("--max-context", "256", "--max-queue", "64")
    yield instance
    assert instance.process.poll() is None, "the daemon died under fuzzing"
    instance.stop()


def test_no_route_answers_5xx_or_off_schema(fuzzed: Daemon) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every route is in the document

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def fuzz(case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=60)

        fuzz()


def test_a_top_k_past_the_vocabulary_samples_from_all_of_it(fuzzed: Daemon) -> None:
    """Found by the fuzz test: onnxruntime-genai refuses a top_k over the vocabulary (a 500),
    where any such top_k means no cut at all."""
    body = {"prompt": "a", "max_tokens": 2, "temperature": 0.5, "top_k": 33390}
    reply = httpx.post(f"{fuzzed.url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance,
          status_code_conformance]  # fmt: skip
ERROR_BODIES = {"openai": "#/components/schemas/ErrorResponse",
                "ollama": "#/components/schemas/ErrorReply"}  # fmt: skip


def test_the_document_types_every_answer_and_every_refusal(fuzzed: Daemon) -> None:
    """What makes the conformance check above mean something: every 200 has a schema for
    each media type, and every refusal the daemon can send is declared with the error body
    of the route's API (FastAPI's 422, which the daemon never sends, is gone)."""
    document = httpx.get(f"{fuzzed.url}/openapi.json", timeout=10).json()
    assert "422" not in json.dumps(document) and "ValidationError" not in json.dumps(document)
    for path, operations in document["paths"].items():
        style = "ollama" if path.startswith("/api/") else "openai"
        for method, operation in operations.items():
            where, responses = f"{method.upper()} {path}", operation["responses"]
            assert responses["200"]["content"], where
            for media_type, content in responses["200"]["content"].items():
                assert content.get("schema"), f"{where}: no schema for {media_type}"
            if json_answer := responses["200"]["content"].get("application/json"):
                assert "$ref" in json_answer["schema"], f"{where}: a free-form 200"
            refusals = {"413"} | ({"401"} if path not in OPEN_PATHS else set())
            if path in GENERATING and method == "post":
                refusals |= {"400", "404", "429", "500", "503"}
            if "requestBody" in operation:
                refusals.add("400")
            assert refusals <= set(responses), f"{where}: {sorted(refusals - set(responses))}"
            for status in set(responses) - {"200"}:
                schema = responses[status]["content"]["application/json"]["schema"]
                if path not in ("/health", "/ready") or status != "503":
                    assert schema == {"$ref": ERROR_BODIES[style]}, f"{where} {status}"


# ---- MQTT ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny", "nope", ""]) | st.integers(),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot"]),
                                   "content": st.text(max_size=40) | st.integers()}),
            max_size=3,
        ) | JSON_VALUES,
        "max_tokens": st.integers(min_value=-5, max_value=40) | st.text(max_size=3),
        "temperature": st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=3),
        "stream": st.booleans(),
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
        "response_format": JSON_VALUES,
        "tools": JSON_VALUES,
    },
)  # fmt: skip
PAYLOADS = (
    REQUESTS.map(lambda body: json.dumps(body).encode())
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=64)
)


@pytest.fixture(scope="module")
def mqtt_gateway(tmp_path_factory) -> Iterator[tuple[Broker, Daemon, Device]]:
    broker = Broker(tmp_path_factory.mktemp("broker")).start()
    daemon = start_daemon("--mqtt-url", broker.url, "--device-id", "gw-fuzz",
                          "--max-context", "256", "--max-queue", "64")  # fmt: skip
    yield broker, daemon, Device(broker)
    assert daemon.process.poll() is None, "the daemon died under MQTT fuzzing"
    daemon.stop()
    broker.stop()


@given(payload=PAYLOADS)
@settings(max_examples=EXAMPLES * 8, deadline=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_every_mqtt_request_gets_exactly_one_answer(mqtt_gateway, payload: bytes) -> None:
    _, _, device = mqtt_gateway
    correlation = device.request("gw-fuzz", payload)
    replies = device.settled_replies("gw-fuzz", correlation, timeout_s=30)
    exactly_once(replies)
    if replies[-1]["type"] == "rejected":
        assert replies[-1]["code"] and replies[-1]["message"]


@given(topic=st.sampled_from(["edge-agent/v1/gw-fuzz/infer/cancel",
                              "edge-agent/v1/gw-fuzz/infer/unknown",
                              "edge-agent/v1/gw-fuzz/infer/req/extra"]),
       payload=st.binary(max_size=64))  # fmt: skip
@settings(max_examples=EXAMPLES * 2, deadline=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_stray_topics_and_cancels_do_no_harm(mqtt_gateway, topic: str, payload: bytes) -> None:
    _, daemon, device = mqtt_gateway
    device.client.publish(topic, payload, qos=1).wait_for_publish(10)
    assert httpx.get(f"{daemon.url}/health", timeout=10).status_code == 200


# ---- the exactly-once check can fail ------------------------------------------------------


def test_exactly_once_fails_on_a_duplicate_final_or_a_final_after_rejected() -> None:
    accepted, final = {"type": "accepted"}, {"type": "final", "text": "ok"}
    rejected = {"type": "rejected", "code": "invalid_request", "message": "no"}
    exactly_once([accepted, {"type": "chunk", "seq": 0}, final])
    exactly_once([rejected])
    for replies in ([accepted, final, final], [rejected, final], [accepted, final, rejected],
                    [accepted, final, {"type": "chunk", "seq": 1}], [accepted]):  # fmt: skip
        with pytest.raises(AssertionError, match="not exactly one answer"):
            exactly_once(replies)


def test_a_duplicate_final_published_after_the_first_is_seen(tmp_path: Path) -> None:
    """A stand-in gateway on a real broker answers a request, and publishes that final once
    more only when the device's sentinel arrives, just before answering the sentinel: the
    latest a duplicate can come and still be caught. The device's settled replies hold it."""
    broker = Broker(tmp_path).start()
    answered: list[tuple[str, bytes]] = []

    def answer(client: paho.Client, userdata, message) -> None:
        topic = message.properties.ResponseTopic
        correlation = message.properties.CorrelationData

        def reply(body: dict, corr: bytes) -> None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = corr
            client.publish(topic, json.dumps(body), qos=1, properties=properties)

        if answered:  # the sentinel: the first request's final again, then the sentinel's answer
            reply({"type": "final", "text": "again"}, answered[0][1])
            reply({"type": "rejected", "code": "invalid_request", "message": "x"}, correlation)
        else:
            answered.append((topic, correlation))
            reply({"type": "accepted"}, correlation)
            reply({"type": "final", "text": "once"}, correlation)

    gateway = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                          protocol=paho.MQTTv5)  # fmt: skip
    subscribed = threading.Event()
    gateway.on_message = answer
    gateway.on_subscribe = lambda *args: subscribed.set()
    gateway.connect("127.0.0.1", broker.port)
    gateway.subscribe("edge-agent/v1/gw-dup/infer/req", qos=1)
    gateway.loop_start()
    device = Device(broker)
    try:
        assert subscribed.wait(10)
        correlation = device.request("gw-dup", {"model": "tiny", "messages": []})
        replies = device.settled_replies("gw-dup", correlation, timeout_s=10)
        assert [r["type"] for r in replies] == ["accepted", "final", "final"]
        with pytest.raises(AssertionError, match="not exactly one answer"):
            exactly_once(replies)
    finally:
        device.close()
        gateway.loop_stop()
        gateway.disconnect()
        broker.stop()


# ---- the conformance check can fail -------------------------------------------------------


def _impostor(document: dict[str, Any], status: int, body: Any) -> Any:
    """An ASGI app that serves the daemon's document and answers every route with `body`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            answer = document if scope["path"] == "/openapi.json" else body
            response = JSONResponse(answer, status_code=200 if answer is document else status)
            await response(scope, receive, send)

    return app


OPENAI_ERROR = {"error": {"message": "no", "type": "invalid_request_error", "param": None,
                          "code": "invalid_request"}}  # fmt: skip
BROKEN = [  # an answer that breaks the document, and what schemathesis then reports
    ("GET", "/v1/models", 200, {"object": "list", "data": [{"id": 7}]}, "violates schema"),
    ("GET", "/v1/agent/status", 200, {"version": "1"}, "violates schema"),
    ("POST", "/api/show", 400, OPENAI_ERROR, "violates schema"),
    ("POST", "/v1/chat/completions", 400, {"error": "no"}, "violates schema"),
    ("POST", "/v1/chat/completions", 429, {"detail": "slow down"}, "violates schema"),
    ("POST", "/api/chat", 422, {"detail": [{"msg": "bad"}]}, "Undocumented status code"),
]


@pytest.fixture(scope="module")
def document(fuzzed: Daemon) -> dict[str, Any]:
    return httpx.get(f"{fuzzed.url}/openapi.json", timeout=10).json()


@pytest.mark.parametrize(("method", "path", "status", "body", "reported"), BROKEN)
def test_the_conformance_check_fails_on_an_answer_off_the_document(
    document: dict[str, Any], method: str, path: str, status: int, body: Any, reported: str
) -> None:
    """The daemon's own document, served by a stand-in that answers wrong: the same checks
    as the fuzz test must raise."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", _impostor(document, status, body))
    operation = schema[path][method]
    case = operation.Case(body={"model": "tiny"}) if method == "POST" else operation.Case()
    with pytest.raises(FailureGroup, match=reported):
        case.call_and_validate(checks=CHECKS)


def test_the_conformance_check_passes_the_answers_the_document_declares(
    document: dict[str, Any],
) -> None:
    """The control: right answers through the same stand-in pass, so the failures above are
    the wrong bodies and statuses, not the stand-in."""
    for path, status, body in [
        ("/v1/models", 200, {"object": "list", "data": []}),
        ("/v1/models", 401, OPENAI_ERROR),
        ("/api/tags", 413, {"error": "too large"}),
    ]:
        schema = schemathesis.openapi.from_asgi("/openapi.json", _impostor(document, status, body))
        schema[path]["GET"].Case().call_and_validate(checks=CHECKS)
