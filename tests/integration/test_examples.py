"""examples/: the seed's `run_python` as a LangChain StructuredTool and as an OpenAI tool definition,
invoked the way an agent framework invokes them (no model call) against a real server process."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import jsonschema
import pytest
from langchain_core.messages import ToolMessage
from sandbox_server import ROOT, SANDBOX_TESTS, strict_server

FIB50 = "a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)\n"

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    with strict_server(tmp_path_factory, "examples-server") as server:
        sys.path.insert(0, str(ROOT / "examples"))
        # The SDK module the examples will import (tests/unit/test_layout.py may have re-imported tako_vm).
        sdk = importlib.import_module("tako_vm")
        try:
            for name in ("run_python_tool", "langchain_tool", "openai_tool"):
                sys.modules.pop(name, None)
            loaded = {name: importlib.import_module(name) for name in ("langchain_tool", "openai_tool")}
            assert loaded["openai_tool"].run_python.__globals__["tako_vm"] is sdk
            sdk.configure(server.url)  # after import: the examples configure localhost:8000 verbatim
            yield loaded
        finally:
            sys.path.remove(str(ROOT / "examples"))
            sdk.configure()


def test_langchain_tool_computes_fibonacci_in_the_sandbox(examples: dict[str, ModuleType]) -> None:
    tool = examples["langchain_tool"].python_sandbox
    assert tool.name == "run_python"
    assert tool.invoke({"code": FIB50}) == "12586269025\n"


def test_langchain_tool_call_from_a_model_returns_a_tool_message(examples: dict[str, ModuleType]) -> None:
    tool = examples["langchain_tool"].python_sandbox
    call = {"type": "tool_call", "id": "call-1", "name": "run_python", "args": {"code": "print(1/0)"}}
    message = tool.invoke(call)
    assert isinstance(message, ToolMessage) and message.tool_call_id == "call-1"
    assert "Traceback (most recent call last)" in message.content
    assert "ZeroDivisionError: division by zero" in message.content


async def test_langchain_tool_ainvoke_uses_the_async_wrapper(examples: dict[str, ModuleType]) -> None:
    tool = examples["langchain_tool"].python_sandbox
    assert tool.coroutine is not None
    assert await tool.ainvoke({"code": "print('async ok')", "requirements": []}) == "async ok\n"


def test_langchain_args_schema_is_what_the_model_sees(examples: dict[str, ModuleType]) -> None:
    schema = examples["langchain_tool"].python_sandbox.tool_call_schema.model_json_schema()
    assert schema["required"] == ["code"] and set(schema["properties"]) == {"code", "requirements"}


def test_openai_tool_definition_and_dispatch(examples: dict[str, ModuleType]) -> None:
    openai_tool = examples["openai_tool"]
    (definition,) = openai_tool.TOOLS
    assert definition["type"] == "function" and definition["function"]["name"] == "run_python"
    arguments = json.dumps({"code": FIB50})  # exactly what `call.function.arguments` holds
    jsonschema.validate(json.loads(arguments), definition["function"]["parameters"])
    assert openai_tool.handle_tool_call("run_python", arguments) == "12586269025\n"
    failed = openai_tool.handle_tool_call("run_python", json.dumps({"code": "import nosuchmodule"}))
    assert failed.startswith("Execution failed.") and "ModuleNotFoundError" in failed
    assert "unknown tool" in openai_tool.handle_tool_call("browse", "{}")
