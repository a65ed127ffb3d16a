"""A LangChain tool bound to one stateful session per conversation (langchain-core).

    python examples/langchain_session_tool.py   # a fake chat model, no API key; a server on TAKO_VM_URL

`session_tool(session)` wraps a `tako_vm.Session` as a `StructuredTool`; an agent runtime creates one
session (and one tool) per conversation, so a variable the model defines in one call is there in the next.
"""

from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

import tako_vm


class PythonArgs(BaseModel):
    code: str = Field(
        description="Python code; variables persist between calls; the last expression is shown"
    )


def session_tool(session: tako_vm.Session) -> StructuredTool:
    def python(code: str) -> str:
        record = session.run(code, timeout=60)
        if record.status != "succeeded":
            return f"{record.status}: {record.error.type if record.error else ''}\n{record.stderr}"
        return record.stdout + (f"Out: {record.result}" if record.result is not None else "")

    return StructuredTool.from_function(
        func=python, name="python", args_schema=PythonArgs,
        description="Run Python in a persistent gVisor session (no network). State is kept between calls.",
    )  # fmt: skip


class _ToolCallingFake(FakeMessagesListChatModel):
    def bind_tools(self, tools: Any, **_: Any) -> Any:
        return self


def fake_model() -> Any:
    calls = ["prices = {'apple': 3, 'pear': 5}", "sum(prices.values())"]
    replies: list[BaseMessage] = [
        AIMessage("", tool_calls=[{"name": "python", "args": {"code": code}, "id": f"t{i}"}])
        for i, code in enumerate(calls)
    ]
    replies.append(AIMessage("The total is 8."))
    return _ToolCallingFake(responses=replies)


def conversation(model: Any, question: str, client: Any = None, max_turns: int = 6) -> list[BaseMessage]:
    """One conversation = one session: the model -> tool loop (as LangGraph's ToolNode runs it)."""
    with tako_vm.Session(client, ttl_seconds=1800) as session:
        tool = session_tool(session)
        bound = model.bind_tools([tool])
        messages: list[BaseMessage] = [HumanMessage(question)]
        for _ in range(max_turns):
            reply = bound.invoke(messages)
            messages.append(reply)
            if not getattr(reply, "tool_calls", None):
                break
            messages += [tool.invoke({**call, "type": "tool_call"}) for call in reply.tool_calls]
    return messages


if __name__ == "__main__":
    for message in conversation(fake_model(), "What do an apple and a pear cost together?"):
        print(type(message).__name__, message.content)
