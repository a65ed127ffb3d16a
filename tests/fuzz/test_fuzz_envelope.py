"""Property tests of the runner's envelope parser and the outcome classifier (hypothesis).

The parser reads text that user code can write to (a job's stdout / a Pod's log), so it must never
crash, never hang on crafted input, never accept a frame whose length, checksum or end marker is wrong,
and always return the LAST valid frame (the runner prints its own after every user process is dead).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tako_runner.outcome import (
    END_MARKER,
    HEADER,
    TERMINAL_STATUSES,
    classify,
    classify_error,
    frame_envelope,
    parse_envelope,
)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=40)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
envelopes = st.fixed_dictionaries(
    {"v": st.just(1), "exit_code": st.integers(-300, 300)},
    optional={
        "stdout": st.text(max_size=200),
        "stderr": st.text(max_size=200),
        "output": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
        "extra": json_values,
    },
)
noise = st.text(max_size=300)


@FUZZ
@given(text=st.text(max_size=2000))
@example(text=f"{HEADER} 9999999999 {'0' * 64}\n")
@example(text=f"{HEADER} 2 {'a' * 64}\n{{}}\n{END_MARKER}\n")
def test_arbitrary_text_never_crashes_and_yields_a_v1_object_or_none(text: str) -> None:
    found = parse_envelope(text)
    assert found is None or (isinstance(found, dict) and found.get("v") == 1)


@FUZZ
@given(before=noise, body=envelopes, after=noise)
def test_a_framed_envelope_survives_any_surrounding_noise(
    before: str, body: dict[str, Any], after: str
) -> None:
    assume(END_MARKER not in after and HEADER not in after)
    assert parse_envelope(before + frame_envelope(body) + after) == json.loads(json.dumps(body))


@FUZZ
@given(first=envelopes, second=envelopes, between=noise)
def test_the_last_valid_frame_wins(first: dict[str, Any], second: dict[str, Any], between: str) -> None:
    assume(HEADER not in between)
    text = frame_envelope(first) + between + frame_envelope(second)
    assert parse_envelope(text) == json.loads(json.dumps(second))


@FUZZ
@given(body=envelopes, position=st.integers(min_value=0), replacement=st.characters())
def test_a_tampered_frame_is_rejected(body: dict[str, Any], position: int, replacement: str) -> None:
    """Changing any one character of the JSON body breaks its checksum (or its length): no frame."""
    frame = frame_envelope(body)
    header_end = frame.index("\n", 1) + 1
    body_end = frame.index("\n" + END_MARKER)
    index = header_end + position % (body_end - header_end)
    assume(frame[index] != replacement)
    tampered = frame[:index] + replacement + frame[index + 1 :]
    assert parse_envelope(tampered) is None


@FUZZ
@given(body=envelopes, cut=st.integers(min_value=1))
def test_a_truncated_frame_is_rejected(body: dict[str, Any], cut: int) -> None:
    frame = frame_envelope(body)
    assert parse_envelope(frame[: len(frame) - 1 - cut % (len(frame) - 1) - 1]) is None


@FUZZ
@given(forged=envelopes, real=envelopes)
def test_user_output_cannot_forge_a_frame_inside_the_real_envelopes_stdout(
    forged: dict[str, Any], real: dict[str, Any]
) -> None:
    """User code printing a complete forged frame ends up INSIDE the runner's JSON (escaped), so the
    runner's own frame is still the last valid one."""
    real = {**real, "stdout": frame_envelope(forged) * 2}
    assert parse_envelope(frame_envelope(real)) == json.loads(json.dumps(real))


def _bogus_lengths() -> str:
    return f"{HEADER} 1000000 {'f' * 64}\n" * 20_000 + "x" * 1_000_000


def _headers_sharing_one_end_marker() -> str:
    """3,000 headers whose claimed lengths all reach the same end marker: each is sliced and hashed."""
    count, width = 3_000, len(f"{HEADER} {0:010d} {'e' * 64}\n")
    headers = "".join(f"{HEADER} {(count - 1 - i) * width:010d} {'e' * 64}\n" for i in range(count))
    return headers + "\n" + END_MARKER + "\n"


@pytest.mark.parametrize("crafted", [_bogus_lengths, _headers_sharing_one_end_marker])
def test_crafted_inputs_parse_in_linear_time(crafted: Callable[[], str]) -> None:
    """A few MB of crafted header lines parse in ~0.1 s (linear); a quadratic scan would take minutes.
    The 5 s bound leaves room for a shared, loaded CI machine."""
    text = crafted()
    started = time.monotonic()
    assert parse_envelope(text) is None
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"{elapsed:.1f} s to parse {len(text):,} characters"


@FUZZ
@given(
    install=st.none() | envelopes,
    run=st.none() | envelopes,
    exit_code=st.none() | st.integers(-300, 300),
    oom=st.booleans(),
    deadline=st.booleans(),
    cancelled=st.booleans(),
)
def test_classification_is_total_and_always_terminal(
    install: dict[str, Any] | None,
    run: dict[str, Any] | None,
    exit_code: int | None,
    oom: bool,
    deadline: bool,
    cancelled: bool,
) -> None:
    outcome = classify(
        install,
        run,
        exit_code=exit_code,
        oom_killed=oom,
        deadline_exceeded=deadline,
        cancelled=cancelled,
        runtime="runsc",
    )
    assert outcome.status in TERMINAL_STATUSES
    assert (outcome.status == "succeeded") == (outcome.error is None)
    if cancelled:
        assert outcome.status == "cancelled"
    elif oom:
        assert outcome.status == "oom"
    json.dumps(outcome.to_dict())  # always serialisable into a record


@FUZZ
@given(exit_code=st.none() | st.integers(), stderr=st.text(max_size=3000))
def test_error_classification_of_any_stderr_is_bounded(exit_code: int | None, stderr: str) -> None:
    kind, message = classify_error(exit_code, stderr)
    assert kind and isinstance(message, str)
