"""Zyx's modules import one way: base modules -> trace -> jit/runtime (kernels, devices) -> the tensor layer ->
the public face (@zyx.jit's zyx/step, nn, the command line). No import cycle, not even through imports inside
functions, so the circle between the tensor, its mixins, creation and the devices cannot come back."""
import os
import ast
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# child processes import this repository first, then what the parent found (dependencies installed with --target)
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
PACKAGE = REPOSITORY / "zyx"
BASE = {"zyx", "zyx.cache_dir", "zyx.counters", "zyx.debug", "zyx.dtypes", "zyx.errors", "zyx.precision", "zyx.progress"}
LOWER_PACKAGES = ("zyx.trace", "zyx.jit", "zyx.runtime")  # what the tensor layer is built on
# The one upward reach: a Device's factories (dev.randn...) and unpickling call the layer that makes tensors
UPWARD = {("zyx.runtime.device", "zyx.creation"), ("zyx.runtime.device", "zyx.devices")}


def is_lower(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in LOWER_PACKAGES)


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPOSITORY).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The zyx modules `module` imports at run time, at its top or inside functions (not under TYPE_CHECKING)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = package[:len(package) - child.level + 1] if child.level else []
                stem = ".".join(base + ([child.module] if child.module else []))
                targets = [f"{stem}.{alias.name}" for alias in child.names]
            else:
                visit(child)
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    found.add(target)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {module: imports_of(module, path, modules) - {"zyx"} for module, path in modules.items()}


def test_no_module_imports_the_tensor_layer_from_below():
    graph = import_graph()
    allowed = BASE | {m for m in graph if is_lower(m)}
    upward = {(module, target) for module, targets in graph.items() if is_lower(module)
              for target in targets if target not in allowed}
    assert upward == UPWARD


def test_there_is_no_import_cycle():
    graph = {module: targets - {t for m, t in UPWARD if m == module} for module, targets in import_graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [module, target])
            elif target not in state:
                walk(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    assert cycles == []


def test_the_devices_and_the_compiler_load_without_the_tensor_layer():
    script = ("import sys, zyx.devices, zyx.runtime.opencl_device, zyx.runtime.wgpu_device, zyx.trace.capture\n"
              "zyx.devices.OpenCL()\n"
              "print(sorted(m for m in sys.modules if m.startswith(('zyx.tensor', 'zyx.creation', 'zyx.step'))))")
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                              timeout=120, env={"PYTHONPATH": CHILD_PYTHONPATH, "PATH": "/usr/bin:/bin"})
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"
