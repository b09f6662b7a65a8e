"""JSON bodies serialized by orjson straight from dicts.

The hot routes build plain dicts from domain results and skip pydantic's
response validation (the ``response_model`` still documents them in OpenAPI).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
