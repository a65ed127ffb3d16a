"""The layout promises of DESIGN.md that the rest of the project relies on."""

import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_import_package_named_operator_shadows_the_stdlib() -> None:
    import operator

    assert operator.__file__ is not None
    assert pathlib.Path(operator.__file__).parent != ROOT / "operator"
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_sdk_import_pulls_in_neither_kopf_nor_the_kubernetes_client() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in {"tako_vm", "kopf", "kubernetes"}]:
        del sys.modules[name]
    importlib.import_module("tako_vm")
    loaded = {m.split(".")[0] for m in sys.modules}
    assert "kopf" not in loaded
    assert "kubernetes" not in loaded
