"""JSON Schema -> llguidance lark rules, with the bounds a small model needs.

llguidance's own `%json` accepts numbers with any number of digits, and a small model
can write `163.1333333...` until max_tokens. Here numbers have at most 15 integer and 16
fraction digits (llama.cpp's JSON-schema grammar bounds them the same way), objects take
only the declared properties unless the schema says `additionalProperties` (llama.cpp's
default for generation), and the JSON is written in one style, compact or spaced.
What these rules do not cover (`allOf`, `patternProperties`, string `pattern`/`format`,
number ranges, ...) is handed to `%json` for that sub-schema.
"""

from __future__ import annotations

import json
from typing import Any

INT_DIGITS, FRACTION_DIGITS = 15, 16
MAX_INT = 10**INT_DIGITS - 1
STYLES = {"compact": (",", ":"), "spaced": (", ", ": ")}
TERMINALS = {
    "JSON_STRING": r'/"(\\([\"\\\/bfnrt]|u[a-fA-F0-9]{4})|[^\"\\\x00-\x1F\x7F])*"/',
    "JSON_INT": rf"/-?(0|[1-9][0-9]{{0,{INT_DIGITS - 1}}})/",
    "JSON_NUMBER": rf"/-?(0|[1-9][0-9]{{0,{INT_DIGITS - 1}}})(\.[0-9]{{1,{FRACTION_DIGITS}}})?"
    r"([eE][-+]?[0-9]{1,2})?/",  # exponents below 100: a float never overflows to inf
}
TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
_HANDLED = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "title", "description",
    "default", "examples", "$schema", "$id", "x-guidance",
}  # fmt: skip
_NUMERIC = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}


class SchemaError(ValueError):
    """The schema is not one we can generate for; the message says where."""


def literal(text: str) -> str:
    """A lark string literal for `text`."""
    return json.dumps(text, ensure_ascii=False)


class JsonRules:
    """Collects the lark rules for one or more schemas in one grammar."""

    def __init__(self, style: str = "compact") -> None:
        self.comma, self.colon = STYLES[style]
        self.style = style
        self.rules: dict[str, str] = {}
        self._defs: dict[str, Any] = {}
        self._count = 0

    def lines(self) -> list[str]:
        used = [f"{name}: {body}" for name, body in self.rules.items()]
        text = "\n".join(used)
        return used + [f"{name}: {body}" for name, body in TERMINALS.items() if name in text]

    def dumps(self, value: Any) -> str:
        """`value` as JSON text in this grammar's style."""
        return json.dumps(value, ensure_ascii=False, separators=(self.comma, self.colon))

    def rule(self, schema: Any, hint: str = "v") -> str:
        """The name of a rule that generates JSON valid against `schema`."""
        if isinstance(schema, dict):
            for key in ("$defs", "definitions"):
                for name, sub in (schema.get(key) or {}).items():
                    self._defs.setdefault(f"#/{key}/{name}", sub)
        name = self._new(hint)
        self.rules[name] = self._body(schema)
        return name

    def _new(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _body(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self._any()
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, not {schema!r}")
        for key in _NUMERIC | {"minLength", "maxLength", "minItems", "maxItems"}:
            value = schema.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SchemaError(f"{key} must be a number, not {value!r}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return literal(self.dumps(schema["const"]))
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise SchemaError("enum must be a non-empty list")
            return " | ".join(literal(self.dumps(v)) for v in schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                base = {k: v for k, v in schema.items() if k != key}
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise SchemaError(f"{key} must be a non-empty list")
                return " | ".join(self.rule({**base, **o} if isinstance(o, dict) else o)
                                  for o in options)  # fmt: skip
        if set(schema) - _HANDLED - _NUMERIC - {"minLength", "maxLength"}:
            return self._fallback(schema)
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else None
        if isinstance(kind, list):
            return " | ".join(self.rule({**schema, "type": k}) for k in kind)
        if kind is None:
            return self._any()
        if kind not in TYPES:
            raise SchemaError(f"unknown type {kind!r}")
        return str(getattr(self, f"_{kind}")(schema))

    def _ref(self, ref: str) -> str:
        if ref not in self._defs:
            raise SchemaError(f"$ref {ref!r} is not a local definition ($defs or definitions)")
        name = "def_" + "".join(c if c.isalnum() else "_" for c in ref.rsplit("/", 1)[-1])
        if name not in self.rules:
            self.rules[name] = "ANY"  # placeholder: a recursive definition refers to itself
            self.rules[name] = self._body(self._defs[ref])
        return name

    def _object(self, schema: dict[str, Any]) -> str:
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise SchemaError("properties must be an object and required a list")
        extra = schema.get("additionalProperties", False)
        free = extra is not False or "additionalProperties" not in schema
        if not properties and not required and extra in (False, True, {}) and free:
            return self._any_object()  # json_object, or a free-form object
        if extra is not False:
            return self._fallback(schema)
        names = list(properties) + [n for n in required if n not in properties]
        items = [
            literal(self.dumps(n) + self.colon) + " " + self.rule(properties.get(n, {}), "p")
            for n in names
        ]
        return '"{" ' + self._sequence(items, [n in required for n in names]) + ' "}"'

    def _sequence(self, items: list[str], required: list[bool]) -> str:
        """Items in order, the optional ones possibly absent, with commas between."""
        rest: dict[tuple[int, bool], str] = {}
        comma = literal(self.comma)
        for index in range(len(items) - 1, -1, -1):
            for first in (True, False):
                later = rest.get((index + 1, False), "")
                skip = rest.get((index + 1, first), "")
                take = ("" if first else f"{comma} ") + items[index]
                take += f" {later}" if later else ""
                body = take if required[index] else f"({take}){'' if skip else '?'}"
                if not required[index] and skip:
                    body = f"({take}) | {skip}"
                name = self._new("o")
                self.rules[name] = body
                rest[(index, first)] = name
        return rest.get((0, True), "")

    def _array(self, schema: dict[str, Any]) -> str:
        item = self.rule(schema.get("items", {}), "i")
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            raise SchemaError("minItems and maxItems must be integers")
        comma = literal(self.comma)
        if high == 0:
            return '"[" "]"'
        more = f"({comma} {item})"
        tail_low, tail_high = max(low - 1, 0), None if high is None else high - 1
        tail = f"{more}{{{tail_low},{'' if tail_high is None else tail_high}}}"
        body = f"{item} {tail}"
        return f'"[" {body} "]"' if low > 0 else f'"[" ({body})? "]"'

    def _string(self, schema: dict[str, Any]) -> str:
        if "minLength" in schema or "maxLength" in schema:
            return self._fallback(schema)
        return "JSON_STRING"

    def _integer(self, schema: dict[str, Any]) -> str:
        if not _NUMERIC & set(schema):
            return "JSON_INT"
        bounded = dict(schema)
        # A one-sided range is closed on the other side, so the digits stay bounded.
        if "minimum" not in bounded and "exclusiveMinimum" not in bounded:
            bounded["minimum"] = -MAX_INT
        if "maximum" not in bounded and "exclusiveMaximum" not in bounded:
            bounded["maximum"] = MAX_INT
        return self._fallback(bounded)

    def _number(self, schema: dict[str, Any]) -> str:
        return self._fallback(schema) if _NUMERIC & set(schema) else "JSON_NUMBER"

    def _boolean(self, schema: dict[str, Any]) -> str:
        return '"true" | "false"'

    def _null(self, schema: dict[str, Any]) -> str:
        return '"null"'

    def _any(self) -> str:
        if "any" not in self.rules:
            self.rules["any"] = "ANY"  # placeholder while the members are made
            self.rules["any"] = (
                f'{self._any_object()} | "[" (any ({literal(self.comma)} any)*)? "]" '
                '| JSON_STRING | JSON_NUMBER | "true" | "false" | "null"'
            )
        return "any"

    def _any_object(self) -> str:
        self._any()
        pair = f"JSON_STRING {literal(self.colon)} any"
        return f'"{{" ({pair} ({literal(self.comma)} {pair})*)? "}}"'

    def _fallback(self, schema: dict[str, Any]) -> str:
        """llguidance's own JSON for what these rules do not cover, closed and styled."""
        closed = close_objects(schema)
        closed["x-guidance"] = {"whitespace_flexible": False, "item_separator": self.comma,
                                "key_separator": self.colon}  # fmt: skip
        return f"%json {json.dumps(closed)}"


def close_objects(schema: Any) -> Any:
    """`schema` with additionalProperties false wherever an object schema leaves it out."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: close_objects(v) for k, v in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def conforms(value: Any, schema: Any, root: Any = None) -> bool:
    """Whether `value` is valid against `schema`, for the keywords the rules above
    generate (type, enum, const, properties, required, additionalProperties, items,
    min/maxItems, min/maxLength, numeric ranges, anyOf, oneOf, allOf, local $ref);
    other keywords are not checked. The call reader rejects calls that fail it."""
    root = schema if root is None else root
    if schema is True or not isinstance(schema, dict):
        return schema is not False
    if "$ref" in schema:
        target = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return conforms(value, target, root)
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "anyOf" in schema and not any(conforms(value, s, root) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and not any(conforms(value, s, root) for s in schema["oneOf"]):
        return False
    if "allOf" in schema and not all(conforms(value, s, root) for s in schema["allOf"]):
        return False
    kind = schema.get("type")
    if kind is not None and not any(
        _is(value, k) for k in (kind if isinstance(kind, list) else [kind])
    ):
        return False
    if isinstance(value, dict):
        return _object_conforms(value, schema, root)
    if isinstance(value, list):
        items = schema.get("items", True)
        low, high = schema.get("minItems", 0), schema.get("maxItems", len(value))
        return bool(low <= len(value) <= high) and all(conforms(v, items, root) for v in value)
    if isinstance(value, str):
        return bool(schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _in_range(value, schema)
    return True


def _object_conforms(value: dict[str, Any], schema: dict[str, Any], root: Any) -> bool:
    properties = schema.get("properties") or {}
    if any(name not in value for name in schema.get("required") or ()):
        return False
    extra = schema.get("additionalProperties", True)
    return all(conforms(item, properties.get(name, extra), root) for name, item in value.items())


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, types.get(kind, object))


def _in_range(value: float, schema: dict[str, Any]) -> bool:
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    return (
        (low is None or value >= low)
        and (high is None or value <= high)
        and (above is None or value > above)
        and (below is None or value < below)
    )
