"""The seed's `run_python` as an OpenAI tool definition, with the dispatch of a model's tool call.

`handle_tool_call` is what an agent loop runs for each `tool_calls` entry; the tests feed it a
tool call shaped exactly as the OpenAI API returns one. `chat_demo()` is the seed's full loop and
needs the `openai` package and an API key (not run by the tests).
"""

import json
from typing import Any

from run_python_tool import run_python

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_python",
            "description": "Execute Python code in an isolated sandbox (no network "
            "unless requirements are passed). Returns stdout, or the "
            "error if execution failed.",
            "parameters": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "Python code; print() the result"},
                    "requirements": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["code"],
            },
        },
    }
]


def handle_tool_call(name: str, arguments: str) -> str:
    """Run one tool call (`call.function.name`, `call.function.arguments`) and return the tool message."""
    if name != "run_python":
        return f"unknown tool {name!r}; the only tool is run_python"
    args: dict[str, Any] = json.loads(arguments)
    return run_python(args["code"], args.get("requirements"))


def chat_demo(client: Any = None) -> Any:
    """The seed's loop. `client`: an `openai.OpenAI()` (the default; needs `openai` and an API key), or
    anything with the same `chat.completions.create` (the tests pass a scripted model)."""
    if client is None:  # pragma: no cover - needs `openai` and an API key
        from openai import OpenAI

        client = OpenAI()
    messages: list[Any] = [{"role": "user", "content": "Compute the eigenvalues of [[2,1],[1,2]]."}]
    response = client.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS)
    call = response.choices[0].message.tool_calls[0]
    output = handle_tool_call(call.function.name, call.function.arguments)
    messages += [response.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": output}]
    final = client.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS)
    print(final.choices[0].message.content)
    return final


if __name__ == "__main__":
    print(handle_tool_call("run_python", json.dumps({"code": "print(sum(range(10)))"})))
