"""orjson-encoded JSON responses: the hot path returns dicts it already validated by construction."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

try:
    import orjson

    def _dumps(content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - orjson is in the serve extra
    import json

    def _dumps(content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)
