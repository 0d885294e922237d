"""docs/config.md from the config's pydantic models (``ToolRLConfig`` and all it nests): ``python -m
cluster.config_reference`` rewrites it; tests/cluster/test_config_reference.py fails when it is stale."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from cluster.config import ToolRLConfig

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"
COMMAND = "python -m cluster.config_reference"
INTRO = (f"Generated from the pydantic models of the config (`cluster/config.py` and the models it nests) "
         f"by `{COMMAND}`; do not edit by hand. How presets and `--set` overrides work: "
         "[configuration.md](configuration.md).")


def type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if annotation is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    return annotation.__name__


def _nested(annotation: Any, prefix: str) -> tuple[type[BaseModel], str] | None:
    """The model in a field's type (itself, optional, list items, dict values) and its fields' prefix."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, prefix + "."
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple):
        return _nested(args[0], prefix + "[]")
    if origin is dict:
        return _nested(args[1], prefix + ".<key>")
    for arg in args if origin in (Union, types.UnionType) else ():
        if (found := _nested(arg, prefix)) is not None:
            return found
    return None


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return f"`{json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))}`"


def _row(dotted: str, field: FieldInfo) -> str:
    """Pipes escaped for the table; ``<`` in prose escaped so that ``runs/<name>`` is not read as HTML."""
    description = " ".join((field.description or "").split()).replace("<", "&lt;")
    cells = [f"`{dotted}`", f"`{type_name(field.annotation)}`", _default(field), description]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One table row per field, depth first; a field holding a model gets a row only where it is optional,
    a list or a dict (a plain sub-section is its fields)."""
    out = []
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation, prefix + name)
        if nested is None or nested[0] is not field.annotation:
            out.append(_row(prefix + name, field))
        if nested is not None:
            out += rows(*nested)
    return out


def render() -> str:
    header = ["# Config reference", "", INTRO, ""]
    table_head = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    fields = ToolRLConfig.model_fields.items()
    top = [_row(name, field) for name, field in fields if _nested(field.annotation, name) is None]
    sections = [("Top level", "Fields outside the sections.", top)] + [
        (f"`{name}`", field.description or "", rows(*nested))
        for name, field in fields if (nested := _nested(field.annotation, name)) is not None]
    for title, description, section_rows in sections:
        header += [f"## {title}", "", description, "", *table_head, *section_rows, ""]
    return "\n".join(header)


def main() -> None:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
