"""Ollama Modelfiles: `FROM`, `PARAMETER` and `SYSTEM` become a profile; anything else is
reported back to the user, never dropped silently."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Modelfile PARAMETER name -> Profile field.
PARAMETERS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "num_ctx": "num_ctx",
    "num_predict": "max_tokens",
    "stop": "stop",
    "repeat_penalty": "repetition_penalty",
    "seed": "seed",
}
_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.DOTALL)


class ModelfileError(ValueError):
    """The Modelfile cannot be read; the message names the line."""


@dataclass
class Modelfile:
    base: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # what edge-agent does not support

    def add_parameter(self, name: str, value: Any) -> None:
        """One PARAMETER (stop repeats and accumulates); unknown names go to `ignored`."""
        key = PARAMETERS.get(name.lower())
        if key is None:
            self.ignored.append(f"PARAMETER {name}")
            return
        if key == "stop":
            stops = value if isinstance(value, list) else [value]
            self.parameters.setdefault("stop", []).extend(str(s) for s in stops)
        else:
            self.parameters[key] = _number(value)


def parse(text: str) -> Modelfile:
    result = Modelfile()
    for number, (instruction, argument) in enumerate(_instructions(text), start=1):
        name = instruction.upper()
        if name == "FROM":
            result.base = argument.strip()
        elif name == "SYSTEM":
            result.system = argument
        elif name == "PARAMETER":
            key, _, value = argument.strip().partition(" ")
            if not value.strip():
                raise ModelfileError(f"instruction {number}: PARAMETER {key} has no value")
            result.add_parameter(key, _unquote(value.strip()))
        else:
            result.ignored.append(name)
    if result.base is None:
        raise ModelfileError("the Modelfile has no FROM line")
    return result


def _instructions(text: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs; `\"\"\"` arguments may span lines."""
    found: list[tuple[str, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _INSTRUCTION.match(line)
        if match is None:
            raise ModelfileError(f"line {index}: expected INSTRUCTION ARGUMENT, got {line!r}")
        instruction, argument = match.groups()
        if argument.startswith('"""'):
            body = argument[3:]
            while '"""' not in body:
                if index >= len(lines):
                    raise ModelfileError(f'line {index}: unterminated """')
                body += "\n" + lines[index]
                index += 1
            argument = body[: body.index('"""')]
        else:
            argument = _unquote(argument.strip())
        found.append((instruction, argument))
    return found


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded: str = json.loads(value)  # a JSON document in double quotes is a string
        except json.JSONDecodeError:
            return value[1:-1]
        return decoded
    return value


def _number(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def parameter_lines(fields: dict[str, Any]) -> list[str]:
    """A profile's fields as Modelfile PARAMETER arguments (`temperature 0.3`, ...)."""
    lines = []
    for name, key in PARAMETERS.items():
        value = fields.get(key)
        if value is None or value == []:
            continue
        if key == "stop":
            lines += [f"stop {json.dumps(s)}" for s in value]
        else:
            lines.append(f"{name} {value}")
    return lines


def render(base: str, system: str | None, fields: dict[str, Any]) -> str:
    """Modelfile text for a profile, as `ollama show --modelfile` prints it."""
    text = f"FROM {base}\n" + "".join(f"PARAMETER {line}\n" for line in parameter_lines(fields))
    if system:
        text += f'SYSTEM """{system}"""\n'
    return text
