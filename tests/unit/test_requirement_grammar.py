"""The requirement grammar is defined once (`tako_vm.models.crd.REQUIREMENT_PATTERN`) and every
place that checks a requirement agrees with it, on ordinary, edge and hostile input:

- the PythonJob model (pydantic, Rust's regex engine): what the Kubernetes backend creates;
- the CRD's own `pattern`, read from crds/ and run by the same non-Python engine (RE2-like: `$`
  is the end of the text), standing in for the API server;
- the shim's `check_requirements` (the 422 both backends give), after its strip;
- the runner's stdlib copy (`runner.check_requirements`, the last check before pip).

Before this, `numpy-` was a 422 on the local backend but a PythonJob on Kubernetes whose Pod then
failed with dependency_error, and `six>=\\n--pre` passed the runner's `\\s*`.
"""

from __future__ import annotations

import pathlib
from typing import Annotated, Any

import pydantic
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tako_runner import runner
from tako_shim.errors import InvalidRequest
from tako_shim.submission import check_requirements as shim_check
from tako_vm.models import crd

ROOT = pathlib.Path(__file__).resolve().parents[2]

VALID = [
    "six",
    "a",
    "1pkg",
    "numpy>=1.26",
    "numpy >= 1.26",
    "numpy\t==1.0",  # PEP 508 whitespace is spaces and tabs
    "numpy==1.0 , <2",
    "idna==3.7",
    "x===1.0",
    "a.b_c-d~=1.0",
    "Django==4.2.*",
    "numpy==1!2.0",
    "torch==2.3.0+cpu",
    "pkg[a,b]",
    "pkg[a, b]",
    "pkg[ a ]",
    "pkg [a]>=1",
    "requests[socks,security]>=2,<3",
    "a" * crd.REQUIREMENT_MAX_CHARS,
]

INVALID = [
    "",
    " ",
    "\t",
    "\n",
    "numpy-",  # a name ends with a letter or digit (PEP 508)
    "numpy.",
    "-e .",
    "-e",
    "--pre",
    "--index-url https://evil.test/simple",
    "six --index-url=https://evil.test/simple",
    "https://evil.test/x.whl",
    "pkg @ https://evil.test/x.whl",
    "git+https://github.com/x/y",
    "git+ssh://git@github.com/x/y.git",
    "../local",
    "./pkg",
    "/abs/path",
    "file:///tmp/pkg",
    "C:\\pkg",
    'pkg; python_version<"3.12"',
    "pkg ; python_version<'3.12'",
    "six>=\n--pre",  # a newline inside the version clause
    "six>= --pre",
    "six\n",
    "\nsix",
    "numpy\n==1",
    "numpy\r==1",
    "numpy\v==1",
    "numpy\f==1",
    "numpy\u00a0==1",  # no-break space
    "numpy\u2028",  # line separator
    "numpy\u3000==1",  # ideographic space
    "nump\u0443",  # Cyrillic u
    "\uff4e\uff55\uff4d\uff50\uff59",  # full-width numpy
    "\u212aeras",  # Kelvin sign, case-folds to k
    "numpy==1\u0661",  # Arabic-Indic digit one
    "pkg[a,]",
    "pkg[]",
    "pkg[a",
    "pkg[a b]",
    "pkg[-a]",
    "numpy==",
    "==1.0",
    "numpy=1.0",
    "numpy<>1",
    "pkg>=1,",
    "pkg,other",
    "pkg other",
    "pkg==1.0 ",
    " pkg",
    "pkg==1.0;",
    "a; rm -rf /",
    "x==1 --hash=sha256:00",
    "six$(id)",
    "six`id`",
    "six|cat",
    "six>1&&x",
    "a" * (crd.REQUIREMENT_MAX_CHARS + 1),
    "a" * 5000 + "!",
]


def _crd_items_schema() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "crds" / "pythonjobs.takovm.dev.yaml").read_text())
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["requirements"]["items"]  # type: ignore[no-any-return]


_ITEMS = _crd_items_schema()
_CRD_ITEM = pydantic.TypeAdapter(
    Annotated[
        str,
        pydantic.Field(
            min_length=_ITEMS["minLength"], max_length=_ITEMS["maxLength"], pattern=_ITEMS["pattern"]
        ),
    ]
)


def _passes(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except (pydantic.ValidationError, InvalidRequest, ValueError):
        return False
    return True


def verdicts(entry: str) -> dict[str, bool]:
    """Each checker's answer for `entry` as it reaches it (the shim strips first, then the others
    see the stripped string; the grammar itself never strips)."""
    return {
        "grammar": crd.is_requirement(entry),
        "model": _passes(crd.PythonJobSpec.model_validate, {"code": "x", "requirements": [entry]}),
        "crd": _passes(_CRD_ITEM.validate_python, entry),
        "runner": _passes(runner.check_requirements, [entry]),
    }


def test_one_definition_the_runner_copy_and_the_crd_pattern_are_the_same_string() -> None:
    assert runner.REQUIREMENT_PATTERN == crd.REQUIREMENT_PATTERN
    assert _ITEMS["pattern"] == crd.REQUIREMENT_PATTERN
    assert _ITEMS["maxLength"] == crd.REQUIREMENT_MAX_CHARS == runner.MAX_REQUIREMENT_LENGTH
    chart = yaml.safe_load((ROOT / "charts" / "tako-vm" / "crds" / "pythonjobs.takovm.dev.yaml").read_text())
    chart_items = chart["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert chart_items["properties"]["requirements"]["items"]["pattern"] == crd.REQUIREMENT_PATTERN


@pytest.mark.parametrize("entry", VALID)
def test_valid_requirements_pass_every_checker(entry: str) -> None:
    assert verdicts(entry) == dict.fromkeys(("grammar", "model", "crd", "runner"), True)
    assert _passes(shim_check, [entry])


@pytest.mark.parametrize("entry", INVALID)
def test_hostile_and_malformed_requirements_fail_every_checker(entry: str) -> None:
    assert verdicts(entry) == dict.fromkeys(("grammar", "model", "crd", "runner"), False)
    assert _passes(shim_check, [entry]) == crd.is_requirement(entry.strip())


@pytest.mark.parametrize("entry", ["numpy-", "pkg[a, b]", "numpy\t==1.0", "six>=\n--pre"])
def test_the_cases_that_used_to_disagree(entry: str) -> None:
    """The shim (both backends' 422) and the PythonJob model now give the same answer."""
    stripped = entry.strip()
    assert _passes(shim_check, [entry]) == verdicts(stripped)["model"] == verdicts(stripped)["runner"]


_ALPHABET = st.sampled_from(list("aZ09._-[], \t\n\r=<>!~*+;@/:'\"\\$|&\u00a0\u0443\u212a\uff41\u0661"))


@settings(max_examples=400, deadline=None)
@given(st.text(_ALPHABET, max_size=40))
@example("a\n")
@example("a==1\n")
def test_every_checker_agrees_on_arbitrary_text(entry: str) -> None:
    """Differences between Python's re and the Rust/RE2 engines (`$`, `\\s`, Unicode) would show here."""
    answers = verdicts(entry)
    assert len(set(answers.values())) == 1, answers
    assert _passes(shim_check, [entry]) == verdicts(entry.strip())["grammar"]
