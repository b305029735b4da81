"""The package's shape: a notebook's module imports only modules of notebooks before it, and the parts that serve,
monitor or document a model reach it through the registry, never through evaluation."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]/"mlops_nb"


def notebook_of(module:Path) -> str|None:
    "The notebook a generated module is exported from, e.g. '05_evaluate'."
    found = re.search(r"File to edit: \.\./nbs/(\S+)\.ipynb", module.read_text())
    return found.group(1) if found else None


def imported(module:Path) -> set[str]:
    "The package's modules that `module` imports, at its top or inside functions."
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: names.add(node.module.split(".")[0])
            elif node.module.startswith("mlops_nb."): names.add(node.module.split(".")[1])
    return names


MODULES = {p.stem: p for p in PACKAGE.glob("*.py") if notebook_of(p)}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_earlier_notebooks(name):
    own = notebook_of(MODULES[name])
    later = {m: notebook_of(MODULES[m]) for m in imported(MODULES[name]) if m in MODULES and notebook_of(MODULES[m]) > own}
    assert not later, f"{own} imports later notebooks: {later}"


@pytest.mark.parametrize("name", ["serve", "monitor", "docs", "loop"])
def test_serving_and_monitoring_reach_models_through_the_registry(name):
    assert "evaluate" not in imported(MODULES[name]) and "registry" in imported(MODULES[name])


def test_the_checks_see_every_notebook_module():
    assert {"config", "runs", "registry", "prepare", "drift", "runner", "clean", "evaluate", "serve", "monitor"} <= set(MODULES)


def _pins(lock:str) -> dict[str, str]:
    "The exact versions a lock file pins, by package name."
    root = Path(__file__).resolve().parents[1]
    return dict(line.split("==", 1) for line in (root/lock).read_text().splitlines() if "==" in line and not line.startswith((" ", "#")))


@pytest.mark.parametrize("lock", ["requirements-serve.lock", "requirements-pipeline.lock"])
def test_the_images_install_the_versions_the_tests_ran(lock):
    "An image's lock pins each package at the version of requirements.lock (`make lock` holds them to it); its xgboost-cpu at xgboost's."
    tested, image = _pins("requirements.lock"), _pins(lock)
    assert image.pop("xgboost-cpu") == tested["xgboost"] and "xgboost" not in image
    assert {name: version for name, version in image.items() if tested.get(name) != version} == {}
    assert not {"jupyterlab", "pytest", "hypothesis", "selenium", "moto", "schemathesis", "podman-compose"} & image.keys()  # the test tools stay out
