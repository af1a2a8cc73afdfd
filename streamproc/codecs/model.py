"""pydantic models as record values: JSON on the wire, validated objects in operators."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pydantic
from pydantic_core import PydanticSerializationError

from streamproc.errors import CodecError

M = TypeVar("M", bound=pydantic.BaseModel)


class PydanticCodec(Generic[M]):
    """Validates JSON into ``model`` on decode (a validation error is bad input) and serializes
    model instances on encode. ``strict=True`` refuses type coercion (e.g. "1" for an int)."""

    def __init__(self, model: type[M], *, strict: bool = False) -> None:
        self.model = model
        self.strict = strict
        self.name = f"pydantic:{model.__name__}"

    def decode(self, data: bytes | None) -> M:
        if data is None:
            raise CodecError(self.name, "null value cannot be validated as a model")
        try:
            return self.model.model_validate_json(data, strict=self.strict)
        except pydantic.ValidationError as exc:
            raise CodecError(self.name, _summarize(exc)) from exc

    def encode(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        if isinstance(obj, pydantic.BaseModel) and not isinstance(obj, self.model):
            raise CodecError(self.name, f"expected {self.model.__name__}, got "
                             f"{type(obj).__name__}")
        try:
            # A dict in the model's shape is accepted so that operators need not rebuild models.
            model = obj if isinstance(obj, self.model) else self.model.model_validate(
                obj, strict=self.strict)
            return model.model_dump_json().encode()
        except pydantic.ValidationError as exc:
            raise CodecError(self.name, _summarize(exc)) from exc
        except PydanticSerializationError as exc:
            # Valid in Python, not as JSON: lone surrogates, non-UTF-8 bytes, objects in Any.
            raise CodecError(self.name, f"not JSON-serializable: {exc}") from exc


def _summarize(exc: pydantic.ValidationError) -> str:
    # One line per failing field keeps DLQ headers short and readable.
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; (+{more} more)" if more > 0 else "")
