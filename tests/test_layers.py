"""What may import what (docs/architecture.md, "What may import what"): every module of both packages sits
in one layer, and imports only from its own layer or the ones below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("files and types", ("protosaga_core.io.atomic", "protosaga_core.io.bounded", "protosaga_core.io.cache",
                         "protosaga_core.io.labelmaps", "protosaga_core.io.outputs", "protosaga_core.io.ply", "protosaga_core.io.scene_lock",
                         "protosaga_core.io.source_ply",
                         "protosaga_core.gaussians",
                         "protosaga_core.cameras", "protosaga_core.palette", "protosaga_core.device", "protosaga_core.memory")),
    ("data and rendering", ("protosaga_core.datasets", "protosaga_core.render", "protosaga_core.orbit")),
    ("inputs", ("protosaga_core.masks", "protosaga_core.capture", "protosaga_core.io.scene_dir", "protosaga_core.synthetic")),
    ("stage utilities", ("protosaga_core.stages", "protosaga_core.threads", "protosaga_core.metrics",
                         "protosaga_core.io.exports", "protosaga_core.imports")),
    ("the method", ("protosaga_core.method",)),
    ("evaluation", ("protosaga_core.evaluate",)),
    ("commands", ("protosaga_core.pipeline", "protosaga_core.doctor", "protosaga_core.cli")),
    ("app model", ("protosaga_app.browser_camera", "protosaga_app.selection", "protosaga_app.splats",
                   "protosaga_app.framing", "protosaga_app.inspector", "protosaga_app.scene", "protosaga_app.edit_log",
                   "protosaga_app.document", "protosaga_app.live", "protosaga_app.picking")),
    ("app on viser", ("protosaga_app.origins", "protosaga_app.splat_nodes", "protosaga_app.training_cameras",
                      "protosaga_app.feedback", "protosaga_app.live_view", "protosaga_app.inspector_panel",
                      "protosaga_app.panels")),
    ("app server", ("protosaga_app.server",)),
    ("entry points", ("protosaga_app.viewer", "protosaga_app.command")),
)
"""Lowest first. A package name stands for every module in it."""
VISER_FREE = "app model"
"""Layers that never import viser itself (viser.transforms, plain rotation maths, is allowed)."""


def layer_of(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} sits in no layer: add it to LAYERS and to docs/architecture.md"
    return max(matches)[1]


def modules() -> dict[str, Path]:
    found = {}
    for package in ("protosaga_core", "protosaga_app"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """The modules of both packages, and viser, that a file imports (at any depth of its code)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found |= {name for name in names if name in ALL} or {target}
    return {name for name in found if name.split(".")[0] in ("protosaga_core", "protosaga_app", "viser")}


ALL = modules()
LAYERED = {m: path for m, path in ALL.items() if not (path.name == "__init__.py" and not imports(m, path))}
"""Every module but the packages that only say what they hold (their __init__ imports nothing)."""


def test_every_module_sits_in_a_layer():
    for module in LAYERED:
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for module, path in LAYERED.items():
        rank = layer_of(module)
        for target in imports(module, path):
            if target.split(".")[0] == "viser" or target not in LAYERED and target.rsplit(".", 1)[0] not in LAYERED:
                continue
            if layer_of(target) > rank:
                upward.append(f"{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_the_app_model_is_viser_free():
    model = [m for m in LAYERED if LAYERS[layer_of(m)][0] == VISER_FREE]
    offending = [f"{m} imports {t}" for m in model for t in imports(m, ALL[m]) if t.split(".")[0] == "viser" and t != "viser.transforms"]
    assert model and not offending, offending


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a stage utility importing the method is reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("from .method.prototypes import classify\nimport viser\n")
    assert imports("protosaga_core.probe", probe) == {"protosaga_core.method.prototypes", "viser"}
    assert layer_of("protosaga_core.method.prototypes") > layer_of("protosaga_core.stages")


METHOD_ORDER = ("classifier", "lifting", "label_edits", "schedule", "train", "frozen_features", "consensus", "association", "prototypes", "refine", "baselines", "segment")
"""The method's modules, shared rules first, then the stages in the order a scene goes through them."""


def test_an_earlier_stage_of_the_method_never_imports_a_later_one():
    method = sorted(m.rsplit(".", 1)[1] for m in LAYERED if m.startswith("protosaga_core.method."))
    assert method == sorted(METHOD_ORDER), "add the new module to METHOD_ORDER and to docs/architecture.md"
    backward = [
        f"{name} imports {target}"
        for name in METHOD_ORDER
        for target in imports(f"protosaga_core.method.{name}", ALL[f"protosaga_core.method.{name}"])
        if target.startswith("protosaga_core.method.")
        and METHOD_ORDER.index(target.rsplit(".", 1)[1]) > METHOD_ORDER.index(name)
    ]
    assert not backward, backward
