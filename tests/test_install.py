"""Installs that users run: the wheel in a fresh venv (what docker/Dockerfile and
scripts/install-gateway.sh do), and that install started the way systemd/edge-agent.service
starts it: the env file read as EnvironmentFile= reads it, the unit's Environment= and
ExecStart=, the empty mqtt-password credential the installer creates, an unprivileged user
and the unit's working directory."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.models.catalog import load_catalog
from agent.mqtt.connection import BrokerAddress
from tests.conftest import READY_TIMEOUT_S, REPO, TINY, Daemon
from tests.mqtt_support import MOSQUITTO, Broker, Device

NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def runs_as_nobody(python: str) -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("setpriv") is not None
        and subprocess.run([*AS_NOBODY, python, "-c", ""], capture_output=True).returncode == 0
    )


def interpreter() -> str:
    """This Python, or where an unprivileged user cannot run it (a pyenv build under /root)
    the system's python3 of the same version: what a gateway installs with."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    ours = getattr(sys, "_base_executable", sys.executable)
    for candidate in (ours, f"/usr/bin/python{version}"):
        if Path(candidate).is_file() and runs_as_nobody(candidate):
            return candidate
    return ours


@pytest.fixture(scope="module")
def prefix() -> Iterator[Path]:
    """The wheel built from what docker/Dockerfile's build stage copies, installed with
    --no-deps into a fresh venv at PREFIX/.venv, as in /opt/edge-agent.

    The dependencies come from this test's venv through a .pth line. Such a line only adds
    a directory to sys.path (that directory's own .pth files do not run), so the editable
    install of this checkout stays out: `agent` can only come from the wheel."""
    base = Path(tempfile.mkdtemp(prefix="edge-agent-install-"))
    base.chmod(0o755)  # pytest's tmp dirs are 0700: the unprivileged user must reach these
    try:
        source = base / "src"
        source.mkdir()
        build_stage = (REPO / "docker" / "Dockerfile").read_text().split("\nFROM ")[1]
        assert " AS build\n" in build_stage
        for line in re.findall(r"^COPY (?!--from)(.+)$", build_stage, re.M):
            *names, destination = line.split()
            for name in names:
                target = source / destination
                if destination.endswith("/"):
                    target /= Path(name).name
                if (REPO / name).is_dir():
                    shutil.copytree(REPO / name, target,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                else:
                    shutil.copy(REPO / name, target)
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
             "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(source)])  # fmt: skip
        venv = base / "opt" / ".venv"
        run([interpreter(), "-m", "venv", "--without-pip", str(venv)])
        wheel = next((base / "dist").glob("edge_agent-*.whl"))
        run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--quiet", "--no-deps", "--no-index", str(wheel)])  # fmt: skip
        purelib = run([venv / "bin" / "python", "-c",
                       "import sysconfig; print(sysconfig.get_path('purelib'))"])  # fmt: skip
        deps = Path(purelib.stdout.strip()) / "zz-edge-agent-test-dependencies.pth"
        deps.write_text(sysconfig.get_path("purelib") + "\n")
        yield base / "opt"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def serve(argv: list[str], *, env: dict[str, str], cwd: Path) -> Daemon:
    """Start a daemon whose logs are JSON on stderr; wait for its one "ready" line."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    logs: list[dict] = []
    ready = threading.Event()
    url: list[str] = []

    def read_logs() -> None:
        for line in process.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"line": line.rstrip()}  # exit-2 messages are plain text
            logs.append(event)
            if event.get("event") == "ready":
                url.append(event["url"])
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read_logs, daemon=True).start()
    if not ready.wait(READY_TIMEOUT_S) or not url:
        process.kill()
        raise AssertionError(f"no ready line (exit {process.wait()}): {logs}")
    return Daemon(process, url[0], logs)


# ---- the wheel ------------------------------------------------------------------------------


def test_the_wheel_lists_its_catalog_and_serves_its_bundled_model(
    prefix: Path, tmp_path: Path
) -> None:
    bin_dir = prefix / ".venv" / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    imported = run([bin_dir / "python", "-c", "import agent; print(agent.__file__)"],
                   cwd=tmp_path, env=env)  # fmt: skip
    assert Path(imported.stdout.strip()).is_relative_to(prefix)  # the wheel's copy, not ours

    listed = run([bin_dir / "edge-agent", "models", "list"], cwd=tmp_path, env=env)
    for name in load_catalog():
        assert name in listed.stdout, listed.stdout

    daemon = serve([str(bin_dir / "edge-agent"), "serve", "--http-port", "0", "--provider",
                    "cpu", "--log-format", "json"], env=env, cwd=tmp_path)  # fmt: skip
    try:
        reply = httpx.post(f"{daemon.url}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hello, gateway!"}],
            "max_tokens": 8, "temperature": 0})  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] > 0
    finally:
        stopped = daemon.stop()
    assert stopped == 0


# ---- the systemd unit -----------------------------------------------------------------------


def environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: blank lines and `#`/`;`
    comments skipped, the line trimmed, single or double quotes around the value removed (in
    double quotes a backslash escapes the next character)."""
    values = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z_]\w*", key.strip()), f"line {number}: {raw}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r"\\(.)", r"\1", value)
        values[key.strip()] = value
    return values


def unit_service_section() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = None
    for line in (REPO / "systemd" / "edge-agent.service").read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.skipif(shutil.which(MOSQUITTO) is None or shutil.which("mosquitto_passwd") is None,
                    reason="needs mosquitto and mosquitto_passwd")  # fmt: skip
def test_the_unit_runs_the_installed_daemon_as_an_unprivileged_user(prefix: Path) -> None:
    if not runs_as_nobody(str(prefix / ".venv" / "bin" / "python")):
        pytest.skip("needs root and setpriv, and a Python that the user nobody can run")
    root = Path(tempfile.mkdtemp(dir=prefix.parent))  # reachable by nobody, unlike tmp_path
    root.chmod(0o755)
    (root / "broker").mkdir()
    passwords = root / "broker" / "passwd"
    run(["mosquitto_passwd", "-c", "-b", str(passwords), "gateway", "s3cret word"])
    broker = Broker(root / "broker", anonymous=False,
                    extra_config=f"password_file {passwords}\n").start()  # fmt: skip
    try:
        run_the_unit(prefix, root, broker)
    finally:
        broker.stop()


def run_the_unit(prefix: Path, root: Path, broker: Broker) -> None:
    """Lay out what the installer and systemd make, pull and activate a model, start
    ExecStart= as nobody, wait for READY=1 and the MQTT status `ready`, stop it."""
    etc, state, cache, credentials = (root / name for name in ("etc", "state", "cache", "creds"))
    etc.mkdir()
    for directory in (state, cache, credentials):  # StateDirectory=, ...: the service's own
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    (credentials / "mqtt-password").write_text("")  # the installer's `install /dev/null`
    os.chown(credentials / "mqtt-password", NOBODY.pw_uid, NOBODY.pw_gid)
    # The operator's edits: this broker, with the password in the URL; a free HTTP port.
    text = (REPO / "systemd" / "edge-agent.env.example").read_text()
    url = f"mqtt://gateway:s3cret%20word@127.0.0.1:{broker.port}"
    text, found = re.subn(r"^EDGE_AGENT_MQTT_URL=.*$", f'EDGE_AGENT_MQTT_URL="{url}"', text,
                          flags=re.M)  # fmt: skip
    assert found == 1
    text, found = re.subn(r"^EDGE_AGENT_HTTP_PORT=.*$", "EDGE_AGENT_HTTP_PORT=0", text, flags=re.M)
    assert found == 1
    (etc / "edge-agent.env").write_text(text)

    places = {"/opt/edge-agent": prefix, "/etc/edge-agent": etc, "/var/lib/edge-agent": state,
              "/var/cache/edge-agent": cache, "%d": credentials}  # fmt: skip

    def relocate(value: str) -> str:
        for installed, here in places.items():
            value = value.replace(installed, str(here))
        return value

    unit = unit_service_section()
    notify_path = root / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o777)
    # What systemd gives the service, then Environment=, then EnvironmentFile= (which wins).
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": "/", "USER": "edge-agent",
           "LOGNAME": "edge-agent", "SHELL": "/usr/sbin/nologin", "STATE_DIRECTORY": str(state),
           "CACHE_DIRECTORY": str(cache), "CREDENTIALS_DIRECTORY": str(credentials),
           "NOTIFY_SOCKET": str(notify_path),
           "WATCHDOG_USEC": str(int(unit["WatchdogSec"][0]) * 1_000_000)}  # fmt: skip
    for line in unit["Environment"]:
        env.update(relocate(word).split("=", 1) for word in shlex.split(line))
    (env_file,) = unit["EnvironmentFile"]
    from_file = environment_file(Path(relocate(env_file.removeprefix("-"))).read_text())
    env.update((key, relocate(value)) for key, value in from_file.items())
    (exec_start,) = unit["ExecStart"]
    command = [relocate(word) for word in shlex.split(exec_start)]
    assert command[0] == str(prefix / ".venv" / "bin" / "edge-agent")
    workdir = Path(relocate(unit["WorkingDirectory"][0]))

    # A model pulled and activated into the state directory: the daemon must serve it.
    pulled = run([*AS_NOBODY, command[0], "models", "pull", "qwen2.5-0.5b-instruct", "--from",
                  str(TINY / "cpu-fp32"), "--trust-unverified", "--activate"], env=env,
                 cwd=workdir)  # fmt: skip
    assert "activated qwen2.5-0.5b-instruct" in pulled.stdout

    device = Device(broker, username="gateway", password="s3cret word")
    try:
        daemon = serve([*AS_NOBODY, *command], env=env, cwd=workdir)
        try:
            ready = next(e for e in daemon.logs if e.get("event") == "ready")
            assert ready["model"] == "qwen2.5-0.5b-instruct"
            notify.settimeout(30)  # READY=1 comes once MQTT is subscribed: the login worked
            told: list[str] = []
            while "READY=1" not in told:
                try:
                    told += notify.recv(4096).decode().splitlines()
                except TimeoutError:
                    raise AssertionError(f"no READY=1: {told}, logs {daemon.logs}") from None
            status = device.status(env["EDGE_AGENT_DEVICE_ID"], "ready")
            assert status["model"] == "qwen2.5-0.5b-instruct"
            assert httpx.get(f"{daemon.url}/ready", timeout=5).status_code == 200
        finally:
            stopped = daemon.stop()  # SIGTERM, as systemctl stop sends
        assert stopped == 0
    finally:
        device.close()
        notify.close()


# ---- the MQTT password credential -----------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n", " \t\n"])
def test_an_empty_password_file_leaves_the_password_in_the_url(
    tmp_path: Path, content: str
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(content)
    assert BrokerAddress.parse("mqtt://gw:in%20url@broker:1883", secret).password == "in url"
    assert BrokerAddress.parse("mqtt://gw@broker", secret).password is None


def test_a_password_file_with_a_password_wins_over_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(" from file \n")
    assert BrokerAddress.parse("mqtt://gw:in-url@broker", secret).password == "from file"
    assert BrokerAddress.parse("mqtt://gw@broker", secret).password == "from file"
