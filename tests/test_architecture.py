"""The shape of the package: no import cycles (imports inside functions included), registries
that name every plug-in, and code that cites only documents inside the repository."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import maskdiff
from maskdiff.config import RunConfig
from maskdiff.data import FORMATS
from maskdiff.errors import MaskdiffError
from maskdiff.nets import ARCHITECTURES
from maskdiff.objectives import OBJECTIVES
from maskdiff.registry import Registry
from maskdiff.tokenizer import TOKENIZERS

PACKAGE = Path(maskdiff.__file__).parent
REPO = PACKAGE.parent.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``. The
    implicit import of a module's own parent packages is left out: Python runs a package's
    ``__init__`` before its modules, so ``maskdiff.data.text`` importing ``maskdiff.data.splits``
    is no cycle through ``maskdiff.data``.
    """
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        parents = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name and t not in parents}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_outside_the_objectives_touches_the_denoiser():
    """Generation, evaluation, training and the CLI go through the model's own methods."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "objectives":
            assert ".denoiser" not in path.read_text(), path


def test_code_cites_only_documents_in_the_repository():
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        assert "DESIGN.md" not in path.read_text(), path
    for doc in ("docs/architecture.md", "docs/method.md"):
        assert (REPO / doc).is_file(), doc


def test_config_validation_asks_the_registries():
    assert set(ARCHITECTURES) == {"transformer", "unet", "uvit"}
    assert set(OBJECTIVES) >= {"md4", "genmd4", "ar"} and set(TOKENIZERS) >= {"char", "pixel"}
    assert {FORMATS.get(name).modality for name in FORMATS} == {"text", "image"}
    with pytest.raises(MaskdiffError, match="choose one of transformer, unet, uvit"):
        RunConfig().with_overrides(["model.architecture=resnet"])
    with pytest.raises(MaskdiffError, match="diffusion.objective must be one of md4, genmd4, ar"):
        RunConfig().with_overrides(["diffusion.objective=sedd"])


def test_each_architecture_has_its_own_model_section():
    unet = RunConfig().with_overrides(["model.architecture=unet", "data.format=idx", "data.image_size=4", "data.seq_len=16"])
    assert type(unet.model).__name__ == "UNetConfig" and "residual blocks" in unet.model.docs()["n_layers"]
    assert "mlp_ratio" not in unet.model.docs()  # a transformer field is not part of a U-Net
    with pytest.raises(MaskdiffError, match="model.patch_size needs model.architecture uvit"):
        unet.with_overrides(["model.patch_size=2"])
    # a saved config round-trips, and a config.json from before the split still loads
    assert RunConfig.from_dict(unet.to_dict()) == unet


def test_a_config_json_with_every_architectures_fields_in_one_section_still_loads(tmp_path):
    legacy = RunConfig().to_dict()
    legacy["model"].update(architecture="transformer", pixel_features=32, patch_size=4, num_classes=0, label_dropout=0.1)
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert RunConfig.load(tmp_path / "config.json") == RunConfig()


def test_a_registry_names_its_choices_and_refuses_duplicates():
    registry: Registry[int] = Registry("thing")
    registry.add("one", 1)
    assert registry.get("one") == 1 and registry.names() == ("one",) and "one" in registry
    with pytest.raises(MaskdiffError, match="unknown thing 'two'; choose one of one"):
        registry.get("two")
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("one", 2)
