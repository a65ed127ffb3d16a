"""The layout promises of DESIGN.md that the rest of the project relies on."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_import_package_named_operator_shadows_the_stdlib() -> None:
    import operator

    assert operator.__file__ is not None
    assert pathlib.Path(operator.__file__).parent != ROOT / "operator"
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_sdk_import_pulls_in_neither_kopf_nor_the_kubernetes_client() -> None:
    # A fresh interpreter: re-importing tako_vm in this process would split its classes in two.
    probe = (
        "import sys, tako_vm, tako_vm.models.wire, tako_vm.models.crd\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes', 'aiohttp'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
