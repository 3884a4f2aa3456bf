"""The package's layers, as a contract over its real import graph (grimp).

Top to bottom; a module may import from its own layer's package and from layers below, never
from a layer above. Siblings on one line (``a | b``) are independent: neither imports the other.

    cli
    jobs | demo
    report
    sqlshell
    methods.combined (projection -> AdvPicker selection -> RIKD: built from the methods below)
    methods.tsl | methods.rikd | methods.advpicker | methods.projection
    methods.calibrenet (a refinement stage the distillation methods can run on their rounds)
    methods.common
    labeling | train
    evaluate
    engine
    store
    models
    console (the command line's parser and one-line errors)
    io | cluster | config | scores | selectors
    labels | records | logs (the ground floor)

Ray is wired in ``engine`` (and in ``train.loop``, Ray Train's one worker loop); the rest of
the package hands it plain callables.
"""

from __future__ import annotations

import pytest

LAYERS = [
    ["cli"],
    ["jobs", "demo"],
    ["report"],
    ["sqlshell"],
    ["methods.combined"],
    ["methods.tsl", "methods.rikd", "methods.advpicker", "methods.projection"],
    ["methods.calibrenet"],
    ["methods.common"],
    ["labeling", "train"],
    ["evaluate"],
    ["engine"],
    ["store"],
    ["models"],
    ["console"],
    ["io", "cluster", "config", "scores", "selectors"],
    ["labels", "records", "logs"],
]


def _layer_of(module: str) -> tuple[int, str]:
    rest = module.split(".", 1)[1] if "." in module else ""
    for depth, names in enumerate(LAYERS):
        for name in names:
            if rest == name or rest.startswith(name + "."):
                return depth, name
    return -1, rest


@pytest.fixture(scope="module")
def graph():
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("xner_ray")


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph.modules
                      if m not in ("xner_ray", "xner_ray.methods") and _layer_of(m)[0] < 0)
    assert unplaced == []


def test_no_import_goes_up_or_sideways(graph):
    bad = []
    for importer in sorted(graph.modules):
        (a, a_name) = _layer_of(importer)
        if a < 0:
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            (b, b_name) = _layer_of(imported)
            if b < 0 or a_name == b_name:
                continue
            if b < a or (b == a and a_name != b_name):
                bad.append(f"{importer} -> {imported}")
    assert bad == []


def test_no_import_cycle_between_packages(graph):
    packages = {_layer_of(m)[1] for m in graph.modules if _layer_of(m)[0] >= 0}
    edges = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = _layer_of(importer)[1], _layer_of(imported)[1]
            if a in packages and b in packages and a != b:
                edges.add((a, b))
    assert sorted((a, b) for a, b in edges if (b, a) in edges) == []
