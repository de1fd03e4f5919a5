"""`edge-agent fleet update|rollback|config set`: one command to many gateways, canaries
first. The gateways are found from their retained `.../status` (device id glob or pool);
the canaries (the first N by device id) go first, and the rest only once every canary
succeeded; any failure stops the rollout with the gateway and the failed step."""

from __future__ import annotations

import argparse
import fnmatch
import json
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from agent.mqtt.connection import BrokerAddress

GONE = ("offline", "lost")  # a retained status of a gateway that is not there to command
DISCOVERY_TIMEOUT_S = 10.0


class RolloutError(Exception):
    """The rollout cannot start: no broker, no gateway, a bad argument."""


@dataclass
class Target:
    device_id: str
    status: dict[str, Any]
    desired: dict[str, Any] = field(default_factory=dict)
    reported_version: object = None


@dataclass(frozen=True)
class Outcome:
    device_id: str
    ok: bool
    error: str | None
    result: dict[str, Any]


class FleetClient:
    """An MQTT 5 operator session: retained statuses and config documents, commands with
    a reply topic per gateway (`replies/USER/RUN/DEVICE`, inside the operator's ACL)."""

    def __init__(self, url: str, prefix: str) -> None:
        address = BrokerAddress.parse(url)
        self.prefix = prefix
        self.run = uuid.uuid4().hex[:8]
        self.replies = f"replies/{address.username or 'fleet-operator'}/{self.run}"
        self.inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edge-agent-fleet-{self.run}",
            protocol=MQTTv5,
        )
        if address.username is not None:
            self.client.username_pw_set(address.username, address.password)
        if address.tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        try:
            self.client.connect(address.host, address.port)
        except OSError as exc:
            raise RolloutError(f"no broker at {url}: {exc}") from None
        self.client.loop_start()

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        gateways = f"{self.prefix}/+"
        client.subscribe(
            [
                (f"{gateways}/status", 1),
                (f"{gateways}/config/desired", 1),
                (f"{gateways}/config/reported", 1),
                (f"{self.replies}/#", 1),
            ]
        )

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(payload, dict):
            self.inbox.put((message.topic, payload))

    def discover(self) -> dict[str, Target]:
        """Every gateway with a retained status. The retained messages come right after
        the subscription; a fence published after it comes back after all of them."""
        if not self._subscribed.wait(DISCOVERY_TIMEOUT_S):
            raise RolloutError("the broker did not accept the subscription")
        fence = f"{self.replies}/fence"
        self.client.publish(fence, b"{}", qos=1)
        found: dict[str, Target] = {}
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while True:
            topic, payload = self.next(deadline - time.monotonic())
            if topic == fence:
                return found
            if not topic.startswith(self.prefix + "/"):
                continue
            device_id, kind = topic.removeprefix(self.prefix + "/").split("/", 1)
            target = found.setdefault(device_id, Target(device_id, {}))
            if kind == "status":
                target.status = payload
            elif kind == "config/desired":
                target.desired = payload
            elif kind == "config/reported":
                target.reported_version = payload.get("version")

    def next(self, timeout_s: float) -> tuple[str, dict[str, Any]]:
        try:
            return self.inbox.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            raise TimeoutError from None

    def command(self, device_id: str, name: str, body: dict[str, Any]) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = f"{self.replies}/{device_id}"
        properties.CorrelationData = f"{self.run}-{device_id}".encode()
        topic = f"{self.prefix}/{device_id}/cmd/{name}"
        self.client.publish(topic, json.dumps(body), qos=1, properties=properties).wait_for_publish(
            10
        )

    def desire(self, device_id: str, document: dict[str, Any]) -> None:
        topic = f"{self.prefix}/{device_id}/config/desired"
        self.client.publish(topic, json.dumps(document), qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def select(found: dict[str, Target], gateways: str | None, pool: str | None) -> list[Target]:
    """The live gateways that match, by device id; those offline are named and skipped."""
    chosen = []
    for device_id, target in sorted(found.items()):
        if not target.status:
            continue
        if pool is not None and target.status.get("pool") != pool:
            continue
        if gateways is not None and not fnmatch.fnmatchcase(device_id, gateways):
            continue
        state = target.status.get("state")
        if state in GONE:
            print(f"edge-agent: skipped {device_id}: {state}", file=sys.stderr)
            continue
        chosen.append(target)
    if not chosen:
        wanted = f"pool {pool}" if pool is not None else f"gateways {gateways or '*'}"
        raise RolloutError(f"no gateway online matches {wanted}")
    return chosen


# What one gateway is sent, and how an incoming message ends its part (None: not yet).
Start = Callable[[FleetClient, Target], None]
Judge = Callable[[FleetClient, Target, str, dict[str, Any]], Outcome | None]


def rollout(
    client: FleetClient,
    targets: list[Target],
    canary: int,
    start: Start,
    judge: Judge,
    timeout_s: float,
) -> list[Outcome]:
    """Canaries first, then the rest; stops after the first stage with a failure."""
    stages = [targets[:canary], targets[canary:]] if canary > 0 else [targets]
    outcomes: list[Outcome] = []
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[step]}"),
    )
    with Progress(*columns, console=console) as bars:
        for stage in (s for s in stages if s):
            tasks = {
                t.device_id: bars.add_task(t.device_id, total=None, step="sent") for t in stage
            }
            for target in stage:
                start(client, target)
            done = _wait(client, stage, judge, bars, tasks, timeout_s)
            outcomes += done
            if not all(o.ok for o in done):
                break
    return outcomes


def _wait(
    client: FleetClient,
    stage: list[Target],
    judge: Judge,
    bars: Progress,
    tasks: dict[str, TaskID],
    timeout_s: float,
) -> list[Outcome]:
    pending = {t.device_id: t for t in stage}
    done: list[Outcome] = []
    deadline = time.monotonic() + timeout_s
    while pending:
        try:
            topic, payload = client.next(deadline - time.monotonic())
        except TimeoutError:
            error = f"timeout: no answer within {timeout_s:.0f} s"
            done += [Outcome(d, False, error, {}) for d in sorted(pending)]
            break
        device_id = topic.removeprefix(client.replies + "/")
        if payload.get("type") == "progress" and device_id in pending:
            bars.update(
                tasks[device_id],
                completed=payload.get("bytes") or 0,
                total=payload.get("total"),
                step=payload.get("step", ""),
            )
            continue
        for target in list(pending.values()):
            outcome = judge(client, target, topic, payload)
            if outcome is not None:
                del pending[target.device_id]
                done.append(outcome)
                step = "ok" if outcome.ok else f"failed: {outcome.error}"
                bars.update(tasks[target.device_id], step=step)
    return done


def _reply_judge(
    client: FleetClient, target: Target, topic: str, payload: dict[str, Any]
) -> Outcome | None:
    if topic != f"{client.replies}/{target.device_id}":
        return None
    if payload.get("type") == "rejected":
        error = f"rejected: {payload.get('code')}: {payload.get('message')}"
        return Outcome(target.device_id, False, error, {})
    if payload.get("type") == "final":
        return Outcome(
            target.device_id,
            bool(payload.get("ok")),
            payload.get("error"),
            payload.get("result") or {},
        )
    return None


def source(spec: str) -> dict[str, Any]:
    """`--source`: an artifact base URL, `hf:REPO[@REVISION]`, or a folder on the gateway."""
    if spec.startswith(("http://", "https://")):
        return {"url": spec}
    if spec.startswith("hf:"):
        repo, _, revision = spec.removeprefix("hf:").partition("@")
        return {"hf_repo": repo, **({"revision": revision} if revision else {})}
    return {"path": spec}


def sha256_file(path: Path) -> dict[str, str]:
    """A JSON object `{FILE: HEX}`, or sha256sum's own output (`HEX  FILE` lines)."""
    text = path.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        return {str(k): str(v) for k, v in document.items()}
    hashes = {}
    for line in text.splitlines():
        if line.strip():
            digest, _, name = line.strip().partition(" ")
            hashes[name.strip().lstrip("*")] = digest
    return hashes


def setting(pair: str) -> tuple[str, Any]:
    """`KEY=VALUE`; VALUE is JSON where it parses (numbers, lists), a string otherwise."""
    key, equals, value = pair.partition("=")
    if not equals or not key:
        raise RolloutError(f"not KEY=VALUE: {pair}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _plan(args: argparse.Namespace) -> tuple[Start, Judge]:
    """What each gateway is sent, for `update`, `rollback` or `config set`."""
    if args.fleet_command == "config":
        wanted = dict(setting(pair) for pair in args.settings)
        versions: dict[str, int] = {}

        def start_config(client: FleetClient, target: Target) -> None:
            known = [
                v
                for v in (target.desired.get("version"), target.reported_version)
                if isinstance(v, int)
            ]
            versions[target.device_id] = max(known, default=0) + 1
            document = {**target.desired, **wanted, "version": versions[target.device_id]}
            client.desire(target.device_id, document)

        def judge_config(
            client: FleetClient, target: Target, topic: str, payload: dict[str, Any]
        ) -> Outcome | None:
            mine = f"{client.prefix}/{target.device_id}/config/reported"
            if topic != mine or payload.get("version") != versions.get(target.device_id):
                return None
            applied = payload.get("status") == "applied"
            error = None if applied else f"config: {payload.get('error')}"
            return Outcome(target.device_id, applied, error, payload.get("in_force") or {})

        return start_config, judge_config
    if args.fleet_command == "rollback":
        return (lambda client, target: client.command(target.device_id, "rollback", {})), (
            _reply_judge
        )
    body: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "source": source(args.source),
        "activate": True,
    }
    if args.sha256_file is not None:
        body["sha256"] = sha256_file(args.sha256_file)
    if args.manifest_url is not None:
        body["manifest_url"] = args.manifest_url
    return (lambda client, target: client.command(target.device_id, "update_model", body)), (
        _reply_judge
    )


def rollout_command(args: argparse.Namespace) -> int:
    """Run `fleet update|rollback|config set`; 0 when every gateway succeeded."""
    try:
        start, judge = _plan(args)
        client = FleetClient(args.broker, args.prefix)
    except (RolloutError, OSError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    try:
        targets = select(client.discover(), args.gateways, args.pool)
        outcomes = rollout(client, targets, args.canary, start, judge, args.timeout_s)
    except (RolloutError, TimeoutError) as exc:
        print(f"edge-agent: {str(exc) or 'the broker did not answer'}", file=sys.stderr)
        return 1
    finally:
        client.close()
    for outcome in outcomes:
        shown = {k: outcome.result.get(k) for k in ("model", "version") if k in outcome.result}
        state = "ok" if outcome.ok else "failed"
        error = {"error": outcome.error} if outcome.error else {}
        print(json.dumps({"gateway": outcome.device_id, "state": state, **shown, **error}))
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = failed[0]
        left = ", ".join(t.device_id for t in targets[len(outcomes) :])
        tail = f"; not commanded: {left}" if left else ""
        print(
            f"edge-agent: rollout stopped: {first.device_id} failed: {first.error}{tail}",
            file=sys.stderr,
        )
        return 1
    return 0
