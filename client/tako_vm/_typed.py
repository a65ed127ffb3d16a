"""Typed execution (`send` / `send_raw`): ship a function and its dataclasses, get a dataclass back.

`func` takes one dataclass instance and returns a dataclass instance. The SDK sends the source of
both dataclasses and of the function, plus a few lines that read `/input/data.json`, call the
function and write `dataclasses.asdict(result)` to `/output/result.json`. Pure: no I/O here.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tako_vm.errors import ValidationError

_PRELUDE = """\
from __future__ import annotations
import dataclasses, json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union
"""

_EPILOGUE = """
with open("/input/data.json") as _tako_in:
    _tako_input = {input_cls}(**json.load(_tako_in))
_tako_result = {func}(_tako_input)
if not dataclasses.is_dataclass(_tako_result):
    raise TypeError("{func} must return a {output_cls} instance, got " + type(_tako_result).__name__)
with open("/output/result.json", "w") as _tako_out:
    json.dump(asdict(_tako_result), _tako_out)
"""


@dataclass
class ExecutionResult:
    """What `send_raw` returns: the outcome of one synchronous execution, never raised."""

    success: bool
    output: Any = None
    """The function's return value as its dataclass, or the raw dict if coercion failed."""
    execution_time: float | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    job_type: str | None = None
    exit_code: int | None = None
    correlation_id: str | None = None
    job_id: str | None = None
    runtime: str | None = None
    deserialization_error: str | None = None


@dataclass(frozen=True)
class TypedSignature:
    func_name: str
    input_cls: type
    output_cls: type


def typed_signature(func: Callable[..., Any]) -> TypedSignature:
    """The input and output dataclasses of `func`, or a `ValidationError` naming what is missing."""
    name = getattr(func, "__name__", "")
    if not name.isidentifier() or name == "<lambda>":
        raise ValidationError("send() needs a named function defined with def, not a lambda")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ValidationError(f"cannot resolve the type hints of {name}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    if not params:
        raise ValidationError(f"{name} must take one dataclass argument")
    input_cls = hints.get(params[0].name)
    output_cls = hints.get("return")
    if not (isinstance(input_cls, type) and dataclasses.is_dataclass(input_cls)):
        raise ValidationError(f"the first parameter of {name} must be annotated with a dataclass")
    if not (isinstance(output_cls, type) and dataclasses.is_dataclass(output_cls)):
        raise ValidationError(f"the return annotation of {name} must be a dataclass")
    return TypedSignature(name, input_cls, output_cls)


def _class_source(cls: type) -> str:
    try:
        return textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        lines = ["@dataclass", f"class {cls.__name__}:"]
        lines += [f"    {f.name}: Any" for f in dataclasses.fields(cls)] or ["    pass"]
        return "\n".join(lines) + "\n"


def typed_program(func: Callable[..., Any], input_data: Any) -> tuple[str, dict[str, Any]]:
    """The code to run and the `input_data` to send for `send(func, input_data)`."""
    sig = typed_signature(func)
    if not isinstance(input_data, sig.input_cls):
        raise ValidationError(
            f"input_data must be a {sig.input_cls.__name__} instance, got {type(input_data).__name__}"
        )
    try:
        func_source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise ValidationError(f"cannot read the source of {sig.func_name}: {exc}") from exc
    classes = [sig.input_cls] + ([sig.output_cls] if sig.output_cls is not sig.input_cls else [])
    code = "\n\n".join([_PRELUDE, *(_class_source(cls) for cls in classes), func_source]) + _EPILOGUE.format(
        input_cls=sig.input_cls.__name__, func=sig.func_name, output_cls=sig.output_cls.__name__
    )
    return code, dataclasses.asdict(input_data)  # type: ignore[call-overload]  # checked above


def typed_result(
    func: Callable[..., Any], response: Mapping[str, Any], correlation_id: str | None
) -> ExecutionResult:
    """An `ExecutionResult` from a `POST /execute` answer, with `output` coerced to the return dataclass."""
    sig = typed_signature(func)
    output = response.get("output")
    deserialization_error = None
    if isinstance(output, Mapping):
        try:
            output = sig.output_cls(**output)
        except TypeError as exc:
            deserialization_error = f"cannot build {sig.output_cls.__name__} from the output: {exc}"
    return ExecutionResult(
        success=bool(response.get("success")),
        output=output,
        execution_time=response.get("execution_time"),
        stdout=response.get("stdout") or "",
        stderr=response.get("stderr") or "",
        error=response.get("error"),
        job_type=response.get("job_type"),
        exit_code=response.get("exit_code"),
        correlation_id=correlation_id,
        job_id=response.get("execution_id"),
        runtime=response.get("runtime"),
        deserialization_error=deserialization_error,
    )
