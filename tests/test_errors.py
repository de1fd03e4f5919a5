"""Every error code has its HTTP status and body in the API layer, and its `rejected` reply
over MQTT: a code added to the enum without a mapping fails here, not at run time."""

from __future__ import annotations

from agent.api.errors import HTTP_STATUS
from agent.engine.types import EngineError, ErrorCode
from agent.protocol.mqtt import Rejected, ReplyRoute


def test_every_error_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())


def test_every_error_code_becomes_an_mqtt_rejected_reply() -> None:
    route = ReplyRoute("devices/a/replies", None, "7")
    for code in ErrorCode:
        reply = Rejected.of(route, EngineError(code, "why", retry_after_s=2)).wire()
        assert reply == {"type": "rejected", "code": code.value, "message": "why",
                         "retry_after_s": 2, "id": "7"}  # fmt: skip
