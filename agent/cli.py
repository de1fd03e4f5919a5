"""Command line: `edge-agent serve | chat | status | detect | fleet | profiles`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from agent import __version__, log
from agent.cli_models import models_command
from agent.models.info import ModelDirError
from agent.settings import (
    CloudEndpoint,
    SettingsError,
    is_table,
    load_settings,
    setting_fields,
)

EXIT_CONFIG = 2
FLAG_ALIASES = {"intra_op_num_threads": ("--threads",)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    _setting_flags(serve)
    serve.add_argument(
        "--cloud",
        action="append",
        metavar="KIND=URL[#MODEL]",
        help="cloud endpoint, repeatable in priority order: openai=http://h:p/v1, ollama=http://h:p",
    )
    serve.add_argument("--first-token-timeout-s", type=float, help="for --cloud endpoints")

    url = "http://127.0.0.1:8080"
    chat = commands.add_parser("chat", help="one-shot prompt to a running daemon, streamed")
    chat.add_argument("prompt")
    chat.add_argument("--url", default=url)
    chat.add_argument("--model", default=None, help="model or profile (default: the active model)")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)

    detect = commands.add_parser("detect", help="show the hardware and the ranked providers")
    detect.add_argument("--json", action="store_true", help="machine-readable output")
    detect.add_argument("--root", type=Path, default=Path("/"), help="read a recorded tree")
    detect.add_argument("--model", type=Path, help="model directory (default: bundled)")

    fleet = commands.add_parser("fleet", help="watch and command every gateway on a broker")
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True)
    fleet_watch = fleet_commands.add_parser("watch", help="live table of gateways")
    fleet_watch.add_argument("--mqtt-url", required=True)
    fleet_watch.add_argument("--prefix", default="edge-agent/v1")
    fleet_watch.add_argument("--json", action="store_true", help="one JSON line per update")
    fleet_snapshot = fleet_commands.add_parser("snapshot", help="the fleet now, as JSON or PNG")
    fleet_snapshot.add_argument("--mqtt-url", required=True)
    fleet_snapshot.add_argument("--prefix", default="edge-agent/v1")
    fleet_snapshot.add_argument("--png", type=Path, help="also render bar charts to this file")
    fleet_snapshot.add_argument(
        "--wait-s",
        type=float,
        default=130.0,
        help="longest wait for two telemetry documents per gateway (default 130)",
    )

    _rollout_flags(fleet_commands)

    profiles = commands.add_parser("profiles", help="profiles (Modelfiles) in the state dir")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", type=Path, help="TOML settings file")
    where.add_argument("--state-dir", type=Path)
    profile_commands = profiles.add_subparsers(dest="profiles_command", required=True)
    profile_import = profile_commands.add_parser(
        "import", parents=[where], help="create one from a Modelfile"
    )
    profile_import.add_argument("name")
    profile_import.add_argument("-f", "--file", type=Path, required=True, help="the Modelfile")
    profile_commands.add_parser("list", parents=[where], help="every profile and alias")
    profile_show = profile_commands.add_parser(
        "show", parents=[where], help="one profile as a Modelfile"
    )
    profile_show.add_argument("name")
    profile_remove = profile_commands.add_parser(
        "remove", parents=[where], help="delete a stored profile"
    )
    profile_remove.add_argument("name")

    models = commands.add_parser("models", help="catalog, pull, verify, activate, convert")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--config", type=Path, help="TOML settings file")
    store.add_argument("--state-dir", type=Path)
    store.add_argument("--models-dir", type=Path)
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", parents=[store], help="the catalog and what is installed")
    model_pull = model_commands.add_parser("pull", parents=[store], help="download and verify")
    model_pull.add_argument("name")
    model_pull.add_argument("--variant", help="default: the best for this gateway's hardware")
    model_pull.add_argument("--from", dest="source", type=Path, help="a local model folder")
    model_pull.add_argument("--token-file", type=Path, help="Hugging Face token (or $HF_TOKEN)")
    model_pull.add_argument("--activate", action="store_true", help="activate it once pulled")
    model_pull.add_argument("--trust-unverified", action="store_true",
                            help="accept files with no hash to check them against")  # fmt: skip
    for command, text in (("verify", "re-hash every file"), ("activate", "serve it"),
                          ("remove", "delete it")):  # fmt: skip
        sub = model_commands.add_parser(command, parents=[store], help=text)
        sub.add_argument("name")
        if command != "remove":
            sub.add_argument("--version")
    model_convert = model_commands.add_parser(
        "convert", help="build an ONNX model with the onnxruntime-genai builder"
    )
    model_convert.add_argument("source", help="a Hugging Face folder or hub id")
    model_convert.add_argument("--out", type=Path, required=True)
    model_convert.add_argument("--name")
    model_convert.add_argument("--precision", default="int4", choices=["int4", "fp16", "fp32"])
    model_convert.add_argument(
        "--provider", default="cpu", choices=["cpu", "cuda", "dml", "webgpu"]
    )
    model_convert.add_argument("--prune-lm-head", action="store_true")
    model_convert.add_argument(
        "--compact", action="store_true", help="tied embedding as int4 (variant *-compact)"
    )
    model_convert.add_argument(
        "--block-size", type=int, default=32, choices=[16, 32, 64, 128, 256], help="int4 block"
    )
    model_convert.add_argument("--python", default=sys.executable, help="with torch installed")
    model_import = model_commands.add_parser(
        "import", parents=[store], help="a GGUF file or an Ollama model, built into an ONNX model"
    )
    model_import.add_argument("source", help="FILE.gguf or ollama:NAME[:TAG]")
    model_import.add_argument("--name", help="default: the file or Ollama name")
    model_import.add_argument(
        "--precision", action="append", choices=["int4", "fp16", "fp32"], help="repeatable; int4"
    )
    model_import.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "dml", "webgpu"])
    model_import.add_argument("--block-size", type=int, default=32, choices=[16, 32, 64, 128, 256])
    model_import.add_argument("--python", default=sys.executable, help="with the build tools")
    model_import.add_argument("--out", type=Path, help="a model folder instead of models_dir")
    model_import.add_argument("--keep-hf", type=Path, help="keep the dequantized HF folder here")
    model_import.add_argument("--activate", action="store_true", help="activate it once imported")

    status = commands.add_parser("status", help="show a running daemon's status")
    status.add_argument("--url", default=url)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "chat": _chat,
        "detect": _detect,
        "fleet": _fleet,
        "profiles": _profiles,
        "models": models_command,
        "status": _status,
    }
    sys.exit(commands[args.command](args))


def _rollout_flags(fleet_commands: Any) -> None:
    """`fleet update|rollback|config set`: agent/telemetry/rollout.py runs them."""
    to = argparse.ArgumentParser(add_help=False)
    to.add_argument("--broker", "--mqtt-url", dest="broker", required=True, help="mqtt://...")
    to.add_argument("--prefix", default="edge-agent/v1")
    which = to.add_mutually_exclusive_group()
    which.add_argument("--gateways", help="device id glob (default: every gateway online)")
    which.add_argument("--pool", help="the gateways serving this pool")
    to.add_argument("--canary", type=int, default=0, help="first N gateways, then the rest")
    to.add_argument("--timeout-s", type=float, default=1800.0, help="longest wait per stage")
    update = fleet_commands.add_parser("update", parents=[to], help="install a model version")
    update.add_argument("name")
    update.add_argument("--version", required=True)
    update.add_argument("--source", required=True, help="URL, hf:REPO[@REV] or gateway PATH")
    hashes = update.add_mutually_exclusive_group(required=True)
    hashes.add_argument("--sha256-file", type=Path, help="{FILE: HEX} JSON or sha256sum output")
    hashes.add_argument("--manifest-url")
    fleet_commands.add_parser("rollback", parents=[to], help="back to the previous version")
    config = fleet_commands.add_parser("config", help="remote configuration")
    config_set = config.add_subparsers(dest="config_command", required=True).add_parser(
        "set", parents=[to], help="merge settings into config/desired, wait for reported"
    )
    config_set.add_argument("settings", nargs="+", metavar="KEY=VALUE")


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per setting, declared once in agent/settings/sections.py: `--FLAT-NAME`. Values pass
    to the settings as written, so a bad one is refused with the setting's own rule.
    Lists and tables (API keys, profiles, ...) are set in the environment or TOML file."""
    for flat, info in setting_fields().items():
        if is_table(info):
            continue
        names = [f"--{flat.replace('_', '-')}", *FLAG_ALIASES.get(flat, ())]
        if info.annotation is bool:
            parser.add_argument(*names, dest=flat, action=argparse.BooleanOptionalAction,
                                help=info.description)  # fmt: skip
        else:
            parser.add_argument(*names, dest=flat, help=info.description)


def _serve(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name) for name in setting_fields() if hasattr(args, name)}
    try:
        if args.cloud:
            flags["cloud"] = [_cloud_flag(spec, args.first_token_timeout_s) for spec in args.cloud]
        settings = load_settings(args.config, **flags)
    except SettingsError as exc:
        for line in exc.lines:
            print(f"edge-agent: {line}", file=sys.stderr)
        return EXIT_CONFIG
    telemetry = settings.telemetry
    log.configure(telemetry.log_level, telemetry.log_format, telemetry.log_prompts)
    from agent.daemon import run  # imported late: loads onnxruntime-genai

    try:
        return asyncio.run(run(settings))
    except ModelDirError as exc:
        print(f"edge-agent: invalid setting model={settings.model_dir}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def _chat(args: argparse.Namespace) -> int:
    with httpx.Client(base_url=args.url, timeout=None) as client:
        model = args.model or client.get("/v1/agent/status").json()["model"]["name"]
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": args.prompt}],
            "stream": True,
        }
        if args.max_tokens is not None:
            body["max_tokens"] = args.max_tokens
        if args.temperature is not None:
            body["temperature"] = args.temperature
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                print(f"edge-agent: {response.json()['error']['message']}", file=sys.stderr)
                return 1
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                print(choices[0].get("delta", {}).get("content") or "", end="", flush=True)
    print()
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        response = httpx.get(f"{args.url}/v1/agent/status", timeout=5)
    except httpx.HTTPError as exc:
        print(f"edge-agent: no daemon at {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def _detect(args: argparse.Namespace) -> int:
    from agent.engine.detect_report import report

    log.configure("warning")  # on stderr: `--json` keeps stdout to itself
    model = args.model or load_settings().model_dir
    print(report(args.root, model, as_json=args.json))
    return 0


def _cloud_flag(spec: str, first_token_timeout_s: float | None) -> dict[str, Any]:
    try:
        endpoint = CloudEndpoint.parse(spec)
    except ValueError as exc:
        raise SettingsError([f"invalid setting cloud={spec}: {exc}"]) from None
    fields: dict[str, Any] = {
        "kind": endpoint.kind,
        "base_url": endpoint.base_url,
        "model": endpoint.model,
    }
    if first_token_timeout_s is not None:
        fields["first_token_timeout_s"] = first_token_timeout_s
    return fields


def _fleet(args: argparse.Namespace) -> int:
    from agent.telemetry.fleet import snapshot, watch

    if args.fleet_command not in ("watch", "snapshot"):
        from agent.telemetry.rollout import rollout_command

        return rollout_command(args)
    if args.fleet_command == "watch":
        try:
            watch(args.mqtt_url, args.prefix, args.json)
        except KeyboardInterrupt:
            return 0
        return 0
    view = snapshot(args.mqtt_url, args.prefix, args.wait_s)
    for row in sorted(view.rows.values(), key=lambda r: r.device_id):
        print(json.dumps(row.public()))
    if args.png is not None:
        from agent.telemetry.fleet_chart import ChartUnavailable, render

        try:
            render(view, args.png)
        except ChartUnavailable as exc:
            print(f"edge-agent: {exc}", file=sys.stderr)
            return 1
    return 0


def _profiles(args: argparse.Namespace) -> int:
    """Work on the state directory's profiles; a running daemon picks changes up."""
    from agent.engine.types import EngineError
    from agent.models.info import resolve_model
    from agent.models.profiles import ModelNames
    from agent.protocol import modelfile
    from agent.state.profiles import ProfileStore

    try:
        settings = load_settings(args.config, state_dir=args.state_dir)
    except SettingsError as exc:
        for line in exc.lines:
            print(f"edge-agent: {line}", file=sys.stderr)
        return EXIT_CONFIG
    info = resolve_model(settings.model_dir, settings.models.model_variant)
    names = ModelNames(
        info,
        settings.models.profiles,
        settings.models.model_aliases,
        ProfileStore(settings.state_dir),
    )
    try:
        if args.profiles_command == "import":
            parsed = modelfile.parse(args.file.read_text())
            names.create(args.name, parsed)
            for what in parsed.ignored:
                print(
                    f"edge-agent: ignored {what}: not supported (FROM, PARAMETER, SYSTEM are)",
                    file=sys.stderr,
                )
            print(f"created profile {args.name.removesuffix(':latest')}")
        elif args.profiles_command == "list":
            for name in names.listed():
                profile = names.profiles.get(name)
                kind = "profile" if profile else "model" if name == names.model else "alias"
                print(f"{name:<40} {kind:<8} {profile.description if profile else ''}".rstrip())
        elif args.profiles_command == "show":
            profile = names.resolve(args.name)
            fields = profile.model_dump() if profile else {}
            print(modelfile.render(fields.get("base") or info.name, fields.get("system"), fields))
        else:
            names.remove(args.name)
            print(f"removed profile {args.name}")
    except (EngineError, modelfile.ModelfileError, OSError) as exc:
        print(f"edge-agent: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return 0
