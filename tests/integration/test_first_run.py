"""Issue #18, "the agent's first run": the seed's OpenAI and LangChain snippets (examples/), driven by a
scripted model that asks for `requirements: ["numpy"]`, against a server on the shipped tako_vm.yaml.

The model is scripted (no API key or network to a model provider here): for OpenAI, an object with the
`chat.completions.create` shape returning what the API returns; for LangChain, langchain-core's
`FakeMessagesListChatModel` with tool calls. Everything else is real: the server process, runsc, the
numpy install in its own sandbox, the examples' code.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from sandbox_server import ROOT, RUNSC_PATH, SANDBOX_TESTS

from tako_vm.testing import local_server

EIGEN_CODE = "import numpy as np\nprint(np.linalg.eigvals(np.array([[2, 1], [1, 2]])))\n"
EIGENVALUES = "[3. 1.]"

pytestmark = SANDBOX_TESTS


def shipped_config(**changes: Any) -> dict[str, Any]:
    """The repository's tako_vm.yaml (what `make server` uses), with ``changes``."""
    config = yaml.safe_load((ROOT / "tako_vm.yaml").read_text())
    assert "allow_runtime_requirements" in config  # present, and left empty: the loopback default applies
    return {**config, "warm_pool_size": 0, **changes}


def _examples(server_url: str) -> dict[str, ModuleType]:
    sys.path.insert(0, str(ROOT / "examples"))
    for name in ("run_python_tool", "langchain_tool", "openai_tool"):
        sys.modules.pop(name, None)
    loaded = {
        name: importlib.import_module(name) for name in ("run_python_tool", "langchain_tool", "openai_tool")
    }
    loaded["run_python_tool"].tako_vm.configure(server_url)
    return loaded


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    settings = shipped_config()
    with local_server(tmp_path_factory.mktemp("first-run"), settings, env={"PATH": RUNSC_PATH}) as server:
        sdk = importlib.import_module("tako_vm")
        try:
            yield _examples(server.url)
        finally:
            sys.path.remove(str(ROOT / "examples"))
            sdk.configure()


class ScriptedOpenAI:
    """`client.chat.completions.create(...)` answering from a script, recording what it was sent."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.sent: list[list[Any]] = []
        self.arguments = arguments
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, *, model: str, messages: list[Any], tools: list[Any]) -> Any:
        self.sent.append(list(messages))
        if len(self.sent) == 1:
            call = SimpleNamespace(
                id="call_1",
                type="function",
                function=SimpleNamespace(name="run_python", arguments=json.dumps(self.arguments)),
            )
            message = SimpleNamespace(role="assistant", content=None, tool_calls=[call])
        else:
            tool_output = messages[-1]["content"]
            message = SimpleNamespace(
                role="assistant", content=f"The eigenvalues are {tool_output}", tool_calls=None
            )
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


def test_openai_snippet_with_numpy_ends_with_the_eigenvalues(default_server: dict[str, ModuleType]) -> None:
    model = ScriptedOpenAI({"code": EIGEN_CODE, "requirements": ["numpy"]})
    final = default_server["openai_tool"].chat_demo(model)
    tool_message = model.sent[-1][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert tool_message["content"].strip() == EIGENVALUES, tool_message["content"]
    assert EIGENVALUES in final.choices[0].message.content


class ScriptedChatModel(FakeMessagesListChatModel):
    """langchain-core's scripted chat model, accepting `bind_tools` as a tool-calling model does."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def test_langchain_snippet_with_numpy_ends_with_the_eigenvalues(
    default_server: dict[str, ModuleType],
) -> None:
    call = {"name": "run_python", "args": {"code": EIGEN_CODE, "requirements": ["numpy"]}, "id": "call_1"}
    model = ScriptedChatModel(
        responses=[AIMessage("", tool_calls=[call]), AIMessage("The eigenvalues are 3 and 1.")]
    )
    messages = default_server["langchain_tool"].tool_loop(model, "Compute the eigenvalues of [[2,1],[1,2]].")
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.content.strip() for m in tool_messages] == [EIGENVALUES]
    assert messages[-1].content == "The eigenvalues are 3 and 1."


def test_a_refused_request_is_error_text_for_the_model_not_an_exception(tmp_path: Path) -> None:
    """With allow_runtime_requirements: false the 422 comes back as the tool's text, naming the setting."""
    settings = shipped_config(allow_runtime_requirements=False)
    with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as server:
        sdk = importlib.import_module("tako_vm")
        try:
            examples = _examples(server.url)
            text = examples["openai_tool"].handle_tool_call(
                "run_python", json.dumps({"code": EIGEN_CODE, "requirements": ["numpy"]})
            )
            call = {"name": "run_python", "args": {"code": EIGEN_CODE, "requirements": ["numpy"]}, "id": "c"}
            model = ScriptedChatModel(responses=[AIMessage("", tool_calls=[call]), AIMessage("cannot")])
            messages = examples["langchain_tool"].tool_loop(model, "eigenvalues?")
        finally:
            sys.path.remove(str(ROOT / "examples"))
            sdk.configure()
    assert text.startswith("Execution could not run.") and "422" in text
    assert "allow_runtime_requirements: true in tako_vm.yaml" in text
    assert "TAKO_VM_ALLOW_RUNTIME_REQUIREMENTS=true" in text
    (tool_message,) = [m for m in messages if isinstance(m, ToolMessage)]
    assert "allow_runtime_requirements" in tool_message.content and messages[-1].content == "cannot"
