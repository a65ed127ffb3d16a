"""The seed's `run_python` as a LangChain `StructuredTool` (langchain-core), sync and async.

    python examples/langchain_tool.py            # invokes the tool once, no model needed

Binding it to a model (`langchain.agents.create_agent`, as in the seed) needs the `langchain`
package and a model API key; `agent_demo()` shows it and is not run by the tests.
"""

from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field
from run_python_tool import arun_python, run_python


class RunPythonArgs(BaseModel):
    code: str = Field(description="Python code to execute. Use print() for any output you need.")
    requirements: list[str] = Field(
        default_factory=list,
        description='PyPI packages the code imports, e.g. ["pandas", "numpy>=1.20"]',
    )


python_sandbox = StructuredTool.from_function(
    func=run_python,
    coroutine=arun_python,
    name="run_python",
    description=(
        "Execute Python code in an isolated sandbox. No network access, unless "
        "requirements are passed (installing them attaches the container to the "
        "network for that job). Returns stdout, or the error/traceback if "
        "execution failed."
    ),
    args_schema=RunPythonArgs,
)


def tool_loop(model: Any, question: str, max_turns: int = 5) -> list[BaseMessage]:
    """What an agent runtime does with `python_sandbox` (LangGraph's model -> ToolNode loop, without
    LangGraph): the model's tool calls run, their ToolMessages go back, until it answers in text.
    Like ToolNode, an exception from the tool is not caught here: `run_python` returns errors as text."""
    bound = model.bind_tools([python_sandbox])
    messages: list[BaseMessage] = [HumanMessage(question)]
    for _ in range(max_turns):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not getattr(reply, "tool_calls", None):
            break
        messages += [python_sandbox.invoke({**call, "type": "tool_call"}) for call in reply.tool_calls]
    return messages


def agent_demo() -> None:  # pragma: no cover - needs `langchain` and a model API key
    from langchain.agents import create_agent

    agent = create_agent(
        model="anthropic:claude-sonnet-4-6",
        tools=[python_sandbox],
        system_prompt="You can execute Python via run_python. Compute, don't recall.",
    )
    result = agent.invoke({"messages": [{"role": "user", "content": "What is the 50th Fibonacci number?"}]})
    print(result["messages"][-1].content)


if __name__ == "__main__":
    print(python_sandbox.invoke({"code": "import sys; print(sys.version)"}))
