"""Field specs: one declaration per request field, read both by the validator and by
/openapi.json, so what the server documents is what it enforces.

    Field(type, doc, bounds, items, ...)   <- runner/serve/request_fields.py builds the tables
      -> validate(body, fields): strict types (true is not 1, "false" is not false, 2.5 is not
         an int), finite bounds, sizes; an unknown field is refused by name, as OpenAI does
         ("Unrecognized request argument supplied: x"); every error is APIError(400, param=the
         top-level field)
      -> json_schema(fields): the same rules as JSON Schema (OpenAPI 3.1) for the document

NaN and Infinity never reach here: runner/serve/limits.py refuses them while parsing. An
integral float (2.0) is an integer, as JSON Schema defines it. Lists of token ids, the one large
input, are checked with C-speed builtins rather than item by item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from runner.serve.errors import APIError

_PY_TYPES = {"boolean": "true or false", "integer": "an integer", "number": "a number",
             "string": "a string", "array": "an array", "object": "an object"}


@dataclass(frozen=True)
class Field:
    """A JSON value's rules. `any_of` makes a union; `unsupported` marks a field the server
    accepts only with the values its bounds allow (the message then says so)."""

    type: str = "any"              # boolean | integer | number | string | array | object | any
    doc: str = ""
    default: Any = None            # documented default (None: absent)
    nullable: bool = True          # null means "absent"
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: Optional[float] = None
    enum: Optional[tuple] = None
    min_length: Optional[int] = None   # strings
    max_length: Optional[int] = None
    min_items: Optional[int] = None    # arrays
    max_items: Optional[int] = None
    items: Optional["Field"] = None
    properties: Optional[dict] = None  # objects: name -> Field
    required: tuple = ()
    additional: Any = False            # objects: True (any), False, or a Field for the values
    max_properties: Optional[int] = None
    any_of: Optional[tuple] = None
    what: Optional[str] = None         # the union's description in messages
    unsupported: Optional[str] = None  # why other values are refused
    required_field: bool = False       # for body-level tables


def validate(body: dict, fields: dict[str, Field],
             not_implemented: frozenset = frozenset()) -> dict:
    """The body's fields checked against `fields`; null values are dropped (absent). A name in
    `not_implemented` is refused as such, any other unknown name as unrecognized."""
    out = {}
    for name, value in body.items():
        spec = fields.get(name)
        if spec is None:
            if name in not_implemented:
                raise APIError(400, f"{name} is not supported by this server.", name)
            raise APIError(400, f"Unrecognized request argument supplied: {name}", name)
        if value is None:
            if not spec.nullable:
                raise APIError(400, f"{name} cannot be null.", name)
            continue
        out[name] = check(value, spec, name, name)
    for name, spec in fields.items():
        if spec.required_field and name not in out:
            raise APIError(400, f"{name} is required.", name)
    return out


def check(value: Any, spec: Field, path: str, param: str) -> Any:
    """`value` if it obeys `spec` (integral floats become ints), else APIError(400)."""
    try:
        return _check(value, spec, path)
    except _Invalid as exc:
        msg = str(exc)
        if spec.unsupported:
            msg = f"{param} {spec.unsupported} (got {_show(value)})."
        raise APIError(400, msg, param) from None


class _Invalid(ValueError):
    pass


def _show(value: Any, limit: int = 60) -> str:
    import json
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check(v: Any, s: Field, path: str) -> Any:
    if v is None:
        if s.nullable:
            return None
        raise _Invalid(f"{path} cannot be null.")
    if s.any_of is not None:
        for option in s.any_of:
            try:
                return _check(v, option, path)
            except _Invalid:
                continue
        raise _Invalid(f"{path} must be {s.what or 'one of the documented forms'}, got "
                       f"{_show(v)}.")
    t = s.type
    if t == "boolean":
        if not isinstance(v, bool):
            raise _Invalid(f"{path} must be true or false, got {_show(v)}.")
    elif t in ("integer", "number"):
        v = _number(v, s, path)
    elif t == "string":
        if not isinstance(v, str):
            raise _Invalid(f"{path} must be a string, got {_show(v)}.")
        if s.min_length is not None and len(v) < s.min_length:
            raise _Invalid(f"{path} must have at least {s.min_length} character(s), got "
                           f"{_show(v)}.")
        if s.max_length is not None and len(v) > s.max_length:
            raise _Invalid(f"{path} must be at most {s.max_length} characters, got {len(v)}.")
    elif t == "array":
        v = _array(v, s, path)
    elif t == "object":
        v = _object(v, s, path)
    if s.enum is not None and v not in s.enum:
        raise _Invalid(f"{path} must be one of {', '.join(map(_show, s.enum))}, got {_show(v)}.")
    return v


def _number(v: Any, s: Field, path: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f"{path} must be {_PY_TYPES[s.type]}, got {_show(v)}.")
    if s.type == "integer" and not isinstance(v, int):
        if not v.is_integer():
            raise _Invalid(f"{path} must be an integer, got {_show(v)}.")
        v = int(v)
    _bounds(v, s, path)
    return v


def _bounds(v: Any, s: Field, path: str) -> None:
    if s.minimum is not None and v < s.minimum:
        raise _Invalid(f"{path} must be at least {_num(s.minimum)}, got {v}.")
    if s.exclusive_minimum is not None and v <= s.exclusive_minimum:
        raise _Invalid(f"{path} must be greater than {_num(s.exclusive_minimum)}, got {v}.")
    if s.maximum is not None and v > s.maximum:
        raise _Invalid(f"{path} must be at most {_num(s.maximum)}, got {v}.")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _array(v: Any, s: Field, path: str) -> list:
    if not isinstance(v, list):
        raise _Invalid(f"{path} must be an array, got {_show(v)}.")
    if s.min_items is not None and len(v) < s.min_items:
        raise _Invalid(f"{path} must have at least {s.min_items} item(s), got {len(v)}.")
    if s.max_items is not None and len(v) > s.max_items:
        raise _Invalid(f"{path} must have at most {s.max_items} items, got {len(v)}.")
    item = s.items
    if item is None:
        return v
    if item.type == "integer" and item.any_of is None and item.enum is None \
            and all(type(t) is int for t in v):
        # token ids: one pass in C for the types, one for each bound
        if v:
            lo, hi = min(v), max(v)
            _bounds(lo, item, f"{path}[{v.index(lo)}]")
            _bounds(hi, item, f"{path}[{v.index(hi)}]")
        return v
    return [_check(x, item, f"{path}[{i}]") for i, x in enumerate(v)]


def _object(v: Any, s: Field, path: str) -> dict:
    if not isinstance(v, dict):
        raise _Invalid(f"{path} must be an object, got {_show(v)}.")
    if s.max_properties is not None and len(v) > s.max_properties:
        raise _Invalid(f"{path} must have at most {s.max_properties} entries, got {len(v)}.")
    props = s.properties or {}
    out = {}
    for k, x in v.items():
        spec = props.get(k)
        if spec is None:
            if s.additional is False:
                raise _Invalid(f"{path} has an unknown key {_show(k)} (allowed: "
                               f"{', '.join(sorted(props)) or 'none'}).")
            spec = s.additional if isinstance(s.additional, Field) else None
        out[k] = _check(x, spec, f"{path}.{k}") if spec is not None else x
    for k in s.required:
        if k not in v:
            raise _Invalid(f"{path}.{k} is required.")
    return out


# ------------------------------------------------------------------------------ JSON Schema


def json_schema(spec: Field) -> dict:
    """`spec` as JSON Schema (OpenAPI 3.1 dialect)."""
    if spec.any_of is not None:
        out: dict = {"anyOf": [json_schema(o) for o in spec.any_of]}
    else:
        out = {} if spec.type == "any" else {"type": spec.type}
        for key, attr in (("minimum", "minimum"), ("maximum", "maximum"),
                          ("exclusiveMinimum", "exclusive_minimum"), ("minLength", "min_length"),
                          ("maxLength", "max_length"),
                          ("minItems", "min_items"), ("maxItems", "max_items"),
                          ("maxProperties", "max_properties")):
            value = getattr(spec, attr)
            if value is not None:
                out[key] = value
        if spec.enum is not None:
            out["enum"] = list(spec.enum)
        if spec.items is not None:
            out["items"] = json_schema(spec.items)
        if spec.type == "object":
            out["properties"] = {k: json_schema(f) for k, f in (spec.properties or {}).items()}
            if spec.required:
                out["required"] = list(spec.required)
            out["additionalProperties"] = (json_schema(spec.additional)
                                           if isinstance(spec.additional, Field)
                                           else bool(spec.additional))
    if spec.nullable:
        out = {"anyOf": [out, {"type": "null"}]} if out else {}
    doc = spec.doc + (f" {spec.unsupported[0].upper()}{spec.unsupported[1:]}."
                      if spec.unsupported else "")
    if doc:
        out["description"] = doc
    if spec.default is not None:
        out["default"] = spec.default
    return out


def body_schema(fields: dict[str, Field]) -> dict:
    """A request body table as one JSON Schema object (unknown keys refused)."""
    schema = {"type": "object",
              "properties": {name: json_schema(f) for name, f in fields.items()},
              "additionalProperties": False}
    required = [name for name, f in fields.items() if f.required_field]
    if required:
        schema["required"] = required
    return schema


__all__ = ["Field", "validate", "check", "json_schema", "body_schema"]
