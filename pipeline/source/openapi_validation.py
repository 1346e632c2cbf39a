"""Check device API answers against the OpenAPI document the project keeps for the API.

The document (``openapi.yaml``) is the contract: the simulator serves it and the
client validates every answer against it before reading a single field, so a
changed or broken API is caught at the door with a reason that names the
offending field rather than surfacing later as a strange reading.

OpenAPI 3.0 schema objects are JSON Schema with a few dialect differences; the
one this document uses is ``nullable``, which is rewritten into JSON Schema's
``null`` type before validation. ``format: date-time`` is checked with Python's
ISO-8601 parser, the same one the client uses to read the times.
"""

from __future__ import annotations

import copy
import functools
from datetime import datetime
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT_URI = "urn:sensibo-api-v2"
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if isinstance(value, str):
        datetime.fromisoformat(value)
    return True


class SchemaViolation(ValueError):
    """An answer that does not match the API document; the message says where and how."""


def _to_json_schema(node: Any) -> Any:
    """Rewrite OpenAPI 3.0's ``nullable: true`` into JSON Schema, recursively."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _escape(token: str) -> str:
    """One JSON Pointer token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _where(path: Any) -> str:
    """A JSON path such as ``result.temperature[3].value`` for an error location."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(the whole body)"


class ApiDocument:
    """The API document, ready to validate answers by operation and HTTP status."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document
        converted = _to_json_schema(copy.deepcopy(document))
        resource = Resource(contents=converted, specification=DRAFT7)
        self._registry = Registry().with_resource(DOCUMENT_URI, resource)
        self._operations = {
            operation["operationId"]: (path, method)
            for path, item in document["paths"].items()
            for method, operation in item.items()
            if isinstance(operation, dict) and "operationId" in operation
        }

    @classmethod
    @functools.cache
    def bundled(cls) -> ApiDocument:
        """The document shipped beside this module (and served by the simulator)."""
        text = resources.files(__package__).joinpath("openapi.yaml").read_text()
        return cls(yaml.safe_load(text))

    @functools.cache  # noqa: B019 - one validator per (operation, status), for the process
    def _validator(self, operation_id: str, status: int) -> Draft7Validator | None:
        path, method = self._operations[operation_id]
        responses = self._document["paths"][path][method]["responses"]
        code = next(
            (c for c in (str(status), f"{status // 100}XX", "default") if c in responses), None
        )
        if code is None:
            return None
        pointer = f"/paths/{_escape(path)}/{method}/responses/{code}"
        response = responses[code]
        if "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            response = self._resolve(pointer)
        if "application/json" not in response.get("content", {}):
            return None
        pointer += "/content/application~1json/schema"
        return Draft7Validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer}"},
            registry=self._registry,
            format_checker=FORMATS,
        )

    def _resolve(self, pointer: str) -> dict[str, Any]:
        node: Any = self._document
        for token in pointer.strip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def documents(self, operation_id: str, status: int) -> bool:
        """Whether the document describes a JSON answer with this status."""
        return self._validator(operation_id, status) is not None

    def check(self, operation_id: str, status: int, body: Any) -> None:
        """Raise ``SchemaViolation`` unless ``body`` is a documented answer with this status."""
        validator = self._validator(operation_id, status)
        if validator is None:
            raise SchemaViolation(f"HTTP {status} is not a documented JSON answer")
        error = best_match(validator.iter_errors(body))
        if error is not None:
            raise SchemaViolation(f"{_where(error.absolute_path)}: {error.message}")
