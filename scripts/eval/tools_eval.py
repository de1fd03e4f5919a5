"""Tool calling and structured output on the real model (SmolLM2-135M, `make real-model`):
a fixed set of 32 requests, over the OpenAI and the Ollama API, for int4 block sizes
32/64/128 and fp32, with the grammar's JSON spaced or compact.

Reports per API the share of replies that are complete and valid against the schema
(calls that parse, name a declared tool and validate; JSON that validates) and the share
that picked the expected tool (reported only: this is a 135M model). Greedy decoding,
max_tokens 100. Extra block sizes are built from models/real/hf with the build venv.
Usage: .venv/bin/python scripts/eval/tools_eval.py [--styles spaced compact] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import ollama
import openai
import tomli_w

REPO = Path(__file__).absolute().parents[2]
sys.path.insert(0, str(REPO))
from tests.conftest import start_daemon  # noqa: E402

REAL = REPO / "models" / "real"
MODEL = REAL / "smollm2-135m-instruct"
NAME = "smollm2-135m-instruct"
MAX_TOKENS = 100
SCHEMAS = {
    "get_weather": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]},
    "circle_area": {"type": "object", "properties": {"radius": {"type": "number"}},
                    "required": ["radius"]},
    "set_valve": {"type": "object", "properties": {"valve": {"type": "integer"},
                  "open": {"type": "boolean"}}, "required": ["valve", "open"]},
    "send_alert": {"type": "object", "properties": {"message": {"type": "string"},
                   "level": {"type": "string", "enum": ["info", "warning", "critical"]}},
                   "required": ["message", "level"]},
}  # fmt: skip
TOOLS = [
    {
        "type": "function",
        "function": {"name": n, "description": n.replace("_", " "), "parameters": s},
    }
    for n, s in SCHEMAS.items()
]
SHAPES = {
    "city": {"type": "object", "properties": {"city": {"type": "string"},
             "population": {"type": "integer"}}, "required": ["city", "population"]},
    "reading": {"type": "object", "properties": {"sensor": {"type": "integer"},
                "value": {"type": "number"}, "ok": {"type": "boolean"}},
                "required": ["sensor", "value", "ok"]},
    "person": {"type": "object", "properties": {"name": {"type": "string"},
               "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
               "required": ["name", "age", "tags"]},
}  # fmt: skip
# (mode, prompt, expected tool or output shape)
CASES = [
    ("required", "What is the weather in Paris?", "get_weather"),
    ("required", "How warm is it in Tokyo right now, in celsius?", "get_weather"),
    ("required", "Is it raining in London?", "get_weather"),
    ("required", "What's the weather like in Berlin in fahrenheit?", "get_weather"),
    ("required", "Compute the area of a circle with radius 163.13.", "circle_area"),
    ("required", "I need the area of a circle whose radius is 2.5 meters.", "circle_area"),
    ("required", "Open valve 3.", "set_valve"),
    ("required", "Close valve 7, please.", "set_valve"),
    ("required", "Alert the operator: pump 2 is overheating. This is critical.", "send_alert"),
    ("required", "Send an info alert saying the night shift has started.", "send_alert"),
    ("required", "Shut valve 12 now.", "set_valve"),
    ("required", "What is the area of a circle of radius 10?", "circle_area"),
    ("named", "Tell me about Oslo.", "get_weather"),
    ("named", "Radius 4 circle.", "circle_area"),
    ("named", "Valve 5 should be open.", "set_valve"),
    ("named", "The boiler pressure is too high.", "send_alert"),
    ("named", "Weather for Madrid in celsius.", "get_weather"),
    ("named", "Close valve 1.", "set_valve"),
    ("auto", "What is the weather in Rome?", "get_weather"),
    ("auto", "Open valve 2.", "set_valve"),
    ("auto", "What is the capital of France?", None),
    ("auto", "Warn everyone that the line stops at noon.", "send_alert"),
    ("auto", "Area of a circle with radius 3?", "circle_area"),
    ("auto", "Say hello.", None),
    ("json_schema", "Give the largest city of France and its population as JSON.", "city"),
    ("json_schema", "Give the capital of Japan and its population as JSON.", "city"),
    ("json_schema", "Sensor 4 reads 21.5 and is fine. Report it as JSON.", "reading"),
    ("json_schema", "Sensor 9 reads -3 and has a fault. Report it as JSON.", "reading"),
    ("json_schema", "Describe Ada, 36, a mathematician and writer, as JSON.", "person"),
    ("json_schema", "Describe Bob, 52, a plumber, as JSON.", "person"),
    ("json_object", "Describe pump 2 as a JSON object.", None),
    ("json_object", "List three colours as a JSON object.", None),
]
CONFIG = '[profiles.eval-required]\ndescription = "tool calls only"\ntool_choice = "required"\n'


def variant_dirs(work: Path, styles: list[str]) -> dict[str, Path]:
    """label -> a model folder (manifest + one variant) for each block size and style."""
    builds = {"int4-b32": MODEL / "cpu-int4", "fp32": MODEL / "cpu-fp32"}
    for block in (64, 128):
        out = REAL / f"eval-int4-b{block}"
        if not (out / "cpu-int4" / "genai_config.json").is_file():
            subprocess.run(
                [str(REPO / ".venv-build/bin/python"), "-m", "agent", "models", "convert",
                 str(REAL / "hf"), "--out", str(out), "--block-size", str(block),
                 "--python", str(REPO / ".venv-build/bin/python")],
                check=True, cwd=REPO,
            )  # fmt: skip
        builds[f"int4-b{block}"] = out / "cpu-int4"
    manifest = tomllib.loads((MODEL / "manifest.toml").read_text())
    folders = {}
    for label, source in builds.items():
        for style in styles:
            folder = work / f"{label}-{style}"
            folder.mkdir()
            (folder / "variant").symlink_to(source)
            entry = {**manifest, "tool_calls": {**manifest["tool_calls"], "json_style": style}}
            entry["variants"] = [{"name": label, "provider": "cpu",
                                  "precision": "fp32" if label == "fp32" else "int4",
                                  "path": "variant"}]  # fmt: skip
            entry.pop("files", None)
            (folder / "manifest.toml").write_text(tomli_w.dumps(entry))
            folders[f"{label} {style}"] = folder
    return folders


def judge(mode: str, expected: str | None, calls: list[tuple[str, dict]], text: str,
          finish: str) -> tuple[bool, bool]:  # fmt: skip
    """(complete and valid, right tool or shape)."""
    if mode == "json_object":
        try:
            return isinstance(json.loads(text), dict) and finish == "stop", True
        except json.JSONDecodeError:
            return False, False
    if mode == "json_schema":
        try:
            jsonschema.validate(
                json.loads(text), {**SHAPES[expected], "additionalProperties": False}
            )
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return False, False
        return finish == "stop", True
    for name, arguments in calls:
        try:
            jsonschema.validate(arguments, SCHEMAS[name])
        except (KeyError, jsonschema.ValidationError):
            return False, False
    right = calls[0][0] == expected if calls else expected is None
    if mode == "auto":
        return (finish == "tool_calls") if calls else finish in ("stop", "length"), right
    return bool(calls) and finish == "tool_calls", right


def run_openai(url: str) -> list[tuple[bool, bool]]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    results = []
    for mode, prompt, expected in CASES:
        body: dict = {"model": NAME, "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": MAX_TOKENS, "temperature": 0}  # fmt: skip
        if mode in ("required", "named", "auto"):
            body["tools"] = TOOLS
            body["tool_choice"] = (
                {"type": "function", "function": {"name": expected}} if mode == "named" else mode
            )
        elif mode == "json_schema":
            schema = {"name": "s", "schema": SHAPES[expected]}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": "json_object"}
        choice = client.chat.completions.create(**body).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments))
                 for c in choice.message.tool_calls or ()]  # fmt: skip
        results.append(judge(mode, expected, calls, choice.message.content or "",
                             choice.finish_reason))  # fmt: skip
    return results


def run_ollama(url: str) -> list[tuple[bool, bool] | None]:
    """Ollama has no tool_choice: `required` goes through a profile, `named` is skipped."""
    talk = ollama.Client(host=url)
    results: list[tuple[bool, bool] | None] = []
    options = {"num_predict": MAX_TOKENS, "temperature": 0}
    for mode, prompt, expected in CASES:
        messages = [{"role": "user", "content": prompt}]
        if mode == "named":
            results.append(None)
            continue
        if mode in ("required", "auto"):
            model = "eval-required" if mode == "required" else NAME
            reply = talk.chat(model=model, messages=messages, tools=TOOLS, options=options)
        else:
            shape = SHAPES[expected] if mode == "json_schema" else "json"
            reply = talk.chat(model=NAME, messages=messages, format=shape, options=options)
        calls = [(c.function.name, dict(c.function.arguments))
                 for c in reply.message.tool_calls or ()]  # fmt: skip
        finish = "tool_calls" if calls and reply.done_reason == "stop" else reply.done_reason
        results.append(judge(mode, expected, calls, reply.message.content or "", finish))
    return results


def shares(results: list, mode_filter: set[str]) -> tuple[str, str]:
    picked = [r for r, (mode, _, _) in zip(results, CASES, strict=True)
              if mode in mode_filter and r is not None]  # fmt: skip
    if not picked:
        return "n/a", "n/a"
    valid = sum(r[0] for r in picked) / len(picked)
    right = sum(r[1] for r in picked) / len(picked)
    return f"{valid:.0%} ({len(picked)})", f"{right:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=["spaced", "compact"])
    parser.add_argument("--variants", nargs="+", help="labels: int4-b32 int4-b64 int4-b128 fp32")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-agent-eval-"))
    config = work / "edge-agent.toml"
    config.write_text(CONFIG)
    raw = {}
    print(
        "| model | JSON | API | required | named | auto | json_schema/format | json_object "
        "| right tool |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for label, folder in variant_dirs(work, args.styles).items():
            if args.variants and label.split()[0] not in args.variants:
                continue
            daemon = start_daemon("--model", str(folder), "--config", str(config))
            try:
                for api, runner in (("OpenAI", run_openai), ("Ollama", run_ollama)):
                    results = runner(daemon.url)
                    raw[f"{label} {api}"] = results
                    modes = ("required", "named", "auto", "json_schema", "json_object")
                    cells = [shares(results, {m})[0] for m in modes]
                    right = shares(results, {"required", "named", "auto"})[1]
                    model, style = label.split()
                    print(f"| {model} | {style} | {api} | " + " | ".join(cells) + f" | {right} |",
                          flush=True)  # fmt: skip
            finally:
                daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
