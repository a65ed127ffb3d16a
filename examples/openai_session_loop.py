"""An OpenAI tool loop whose `python` tool keeps state across calls: one session per conversation.

    python examples/openai_session_loop.py   # a scripted fake model, no API key; a server on TAKO_VM_URL

The model defines `data` in one tool call and uses it in the next; both run in the same gVisor session,
which is deleted when the conversation ends. Pass `openai.OpenAI()` as `model` for a real model.
"""

import json
from types import SimpleNamespace
from typing import Any

import tako_vm

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python in a persistent sandboxed session (variables are kept between calls, "
            "no network). Returns stdout and the value of the last expression, or the error.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    }
]


def tool_output(record: tako_vm.models.sessions.SessionExecution) -> str:
    if record.status != "succeeded":
        kind, message = (record.error.type, record.error.message) if record.error else ("", "")
        return f"{record.status}: {kind}: {message}\n{record.stderr}"
    return record.stdout + (f"Out: {record.result}" if record.result is not None else "")


def conversation(model: Any, question: str, client: Any = None, max_turns: int = 6) -> list[Any]:
    """The loop: the model's tool calls run in this conversation's session until it answers in text."""
    messages: list[Any] = [{"role": "user", "content": question}]
    with tako_vm.Session(client, ttl_seconds=1800) as session:
        for _ in range(max_turns):
            reply = (
                model.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS)
                .choices[0]
                .message
            )
            messages.append(reply)
            if not reply.tool_calls:
                break
            for call in reply.tool_calls:
                record = session.run(json.loads(call.function.arguments)["code"], timeout=60)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": tool_output(record)})
    return messages


class FakeModel:
    """Scripted replies shaped like the OpenAI API's: two tool calls, then a text answer."""

    def __init__(self) -> None:
        self.script = ["data = [3, 1, 4, 1, 5, 9, 2, 6]", "sorted(data)[len(data) // 2]", None]
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **_: Any) -> Any:
        code = self.script.pop(0)
        if code is None:
            message = SimpleNamespace(role="assistant", content="The upper median is 4.", tool_calls=None)
        else:
            function = SimpleNamespace(name="python", arguments=json.dumps({"code": code}))
            call = SimpleNamespace(id=f"call-{len(self.script)}", type="function", function=function)
            message = SimpleNamespace(role="assistant", content=None, tool_calls=[call])
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


if __name__ == "__main__":
    for message in conversation(FakeModel(), "What is the upper median of 3,1,4,1,5,9,2,6?"):
        print(
            message
            if isinstance(message, dict)
            else (message.content or message.tool_calls[0].function.arguments)
        )
