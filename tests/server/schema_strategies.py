"""Hypothesis strategies from a JSON Schema: the subset pydantic emits for the front end's models
(``type``, ``properties``/``required``/``additionalProperties``, ``items``/``minItems``,
``anyOf``/``oneOf``, ``const``/``enum``, ``$ref`` into the OpenAPI components, string and number
bounds; ``discriminator`` and ``title``/``description`` are ignored).

Written here because ``hypothesis-jsonschema`` 0.23.1 (the latest) fails on every object schema
with hypothesis 6.170 (``AttributeError: 'many' object has no attribute 'more'``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_SCALAR_TEXT = st.text(max_size=24)
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | _SCALAR_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


def from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, *,
                depth: int = 0) -> st.SearchStrategy[Any]:
    """Values valid against ``schema`` (``root``: where ``#/...`` references resolve)."""
    root = root if root is not None else schema
    if depth > 8:
        return st.none()
    if "$ref" in schema:
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        return st.deferred(lambda: from_schema(target, root, depth=depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, root, depth=depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root, depth=depth) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40) - 1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 2**40 + 1) - 1)
        return st.integers(int(lo), int(hi))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                         allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0),
                       max_size=max(schema.get("minLength", 0), schema.get("maxLength", 40)))
    if kind == "array":
        items = from_schema(schema.get("items", {}), root, depth=depth + 1)
        lo = schema.get("minItems", 0)
        return st.lists(items, min_size=lo, max_size=max(lo, schema.get("maxItems", 3)))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        req = {k: from_schema(v, root, depth=depth + 1) for k, v in props.items()
               if k in required}
        opt = {k: from_schema(v, root, depth=depth + 1) for k, v in props.items()
               if k not in required}
        extra = schema.get("additionalProperties", True)
        extras = st.just({})
        if extra is True:
            extras = st.dictionaries(st.text(min_size=1, max_size=10).filter(
                lambda k: k not in props), _ANY_JSON, max_size=2)
        elif isinstance(extra, dict):
            extras = st.dictionaries(st.text(min_size=1, max_size=10).filter(
                lambda k: k not in props), from_schema(extra, root, depth=depth + 1), max_size=2)
        return st.builds(lambda a, b, c: {**c, **a, **b},
                         st.fixed_dictionaries(req, optional=opt), st.just({}), extras)
    return _ANY_JSON
