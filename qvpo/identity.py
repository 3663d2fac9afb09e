"""A run's identity: what it computes, not the bytes of its source.

The code identity of an algorithm is a hash over the definitions (functions, classes, module
constants) that its training can execute, found by following references from the training entry
point (`qvpo train`: cli.cmd_train) and the algorithm's registered agent class through the package,
each definition in a normalised form:
  - parsed, so comments and formatting are gone; docstrings and other bare strings dropped;
  - imports and the annotations of functions' arguments and results dropped (only type checkers read
    them; the annotations of class fields stay: a settings dataclass's types check `--set`),
    and every reference to a package definition written as that definition's own
    name, so moving a definition to another module (imports updated) changes nothing;
  - definitions hashed one by one and sorted by name, methods in a class sorted by name, so
    the order of definitions changes nothing (a class's other statements, e.g. dataclass fields,
    keep their order: it is part of what they mean);
  - a module's import-time statements (e.g. gymnasium's registration of the bandit) count for
    every module a reached definition lives in.
Anything else (an expression, a constant, a default, a called function's body, a string constant
such as qvpo.native's C SOURCE, a renamed definition) changes it, for exactly the algorithms whose
training reaches it. The pinned versions of the libraries that compute (PINNED) count too; the
machine never does. A run's identity adds its algorithm, env, seed and settings (`run_identity`).

This module is parsed, never imported, by the analysis: its own definitions, like the report and
bench subpackages, are not part of what a run computes.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

TRAIN_ROOT = ("qvpo.cli", "cmd_train")
"""`qvpo train`: everything a training run executes is reached from here and the agent class."""
EVALUATE_ROOT = ("qvpo.cli", "cmd_evaluate")
"""`qvpo evaluate`: the final evaluation of a run's saved policy."""
REGISTRY = ("qvpo.algos", "BUILT_IN")
"""The name -> agent class table. Its module (the registry) is left out: the agent class of the
identity's algorithm is a root instead, so registering another algorithm changes no identity. An
algorithm another package registers (qvpo.algos.plugins) has its module parsed beside the package's."""
NOT_COMPUTATION = ("qvpo.identity", "qvpo.report", "qvpo.bench")
"""Modules whose definitions cannot change what a run learns or records."""
PINNED = ("torch", "gymnasium", "mujoco", "numpy")
"""Libraries whose version is part of the identity (pinned in pyproject.toml); torch without its
build tag (2.13.0+cpu and 2.13.0+cu128 are one version), so a CUDA install keeps the identity."""
PINNED_WHERE_IMPORTED = {"sklearn": "scikit-learn"}
"""Libraries (import name -> distribution) whose version is part of the identity of the algorithms
whose reached modules import them, anywhere in the module (DACER's mixture fit)."""


@dataclass(frozen=True)
class Ref:
    """What a name in a module stands for: a definition ('def'), a package module ('module') or an
    outside module or object ('outside', its dotted path)."""

    kind: str
    module: str
    name: str = ""


@dataclass
class Module:
    name: str
    path: Path
    definitions: dict[str, list[ast.stmt]] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    """alias -> (module, name); name "" when the alias is the module itself"""
    init_statements: list[ast.stmt] = field(default_factory=list)


def _import_bindings(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> dict[str, tuple[str, str]]:
    """alias -> (module, name) for one import statement ("" name: the alias is the module)."""
    found = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                found[a.asname] = (a.name, "")
            else:  # `import qvpo.x` binds qvpo
                top = a.name.split(".")[0]
                found[top] = (top, "")
        return found
    base = node.module or ""
    if node.level:  # relative import
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    for a in node.names:
        found[a.asname or a.name] = (base, a.name)
    return found


class Package:
    """The package's modules, parsed once; definitions normalised and hashed on demand."""

    def __init__(self, package_dir: Path = PACKAGE_DIR):
        self.dir = Path(package_dir)
        self.root = self.dir.name
        self.modules: dict[str, Module] = {}
        for path in sorted(self.dir.rglob("*.py")):
            rel = path.relative_to(self.dir).with_suffix("")
            parts = [self.root, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            self.modules[".".join(parts)] = self._parse(".".join(parts), path)
        self._digests: dict[tuple[str, str, int], tuple[str, list[Ref]]] = {}

    def _parse(self, name: str, path: Path) -> Module:
        m = Module(name, path)
        is_package = path.name == "__init__.py"
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                m.imports.update(_import_bindings(node, name, is_package))

            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                m.definitions.setdefault(node.name, []).append(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                for n in names:
                    m.definitions.setdefault(n, []).append(node)
                if not names:
                    m.init_statements.append(node)
            elif not _is_string(node):
                m.init_statements.append(node)
        return m

    # -- names -------------------------------------------------------------------------------
    def in_package(self, module: str) -> bool:
        return module == self.root or module.startswith(self.root + ".") or module in self.modules

    def add_module(self, name: str) -> None:
        """Parse a module outside the package (a registered algorithm's), found on the import path."""
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise KeyError(f"module {name} of a registered algorithm has no Python source")
        self.modules[name] = self._parse(name, Path(spec.origin))

    def resolve(self, module: str, name: str, seen: frozenset = frozenset()) -> Ref | None:
        """What `name` means inside package module `module` (following re-exports)."""
        if (module, name) in seen or module not in self.modules:
            return None
        m = self.modules[module]
        if name in m.definitions:
            return Ref("def", module, name)
        if name in m.imports:
            return self.resolve_import(*m.imports[name], seen=seen | {(module, name)})
        if f"{module}.{name}" in self.modules:  # a submodule, as an attribute of its package
            return Ref("module", f"{module}.{name}")
        return None

    def resolve_import(self, module: str, name: str, seen: frozenset = frozenset()) -> Ref:
        if not self.in_package(module):
            return Ref("outside", f"{module}.{name}" if name else module)
        if not name:
            return Ref("module", module) if module in self.modules else Ref("outside", module)
        found = self.resolve(module, name, seen)
        return found if found is not None else Ref("outside", f"{module}.{name}")

    # -- definitions -------------------------------------------------------------------------
    def digest(self, module: str, name: str, index: int = 0) -> tuple[str, list[Ref]]:
        """sha256 of one definition's normalised form, and the package definitions it refers to."""
        key = (module, name, index)
        if key not in self._digests:
            node = self.modules[module].definitions[name][index] if name else \
                self.modules[module].init_statements[index]
            normal, refs = _Normaliser(self, module, node).run()
            text = ast.dump(normal, include_attributes=False)
            self._digests[key] = (hashlib.sha256(text.encode()).hexdigest(), refs)
        return self._digests[key]

    def registered_class(self, algo: str) -> Ref:
        """The agent class `algo` names in the registry table (read from the source, not imported)."""
        module, name = REGISTRY
        table = ast.literal_eval(self.modules[module].definitions[name][0].value)
        if algo not in table:
            from qvpo.algos import plugins

            table = plugins()
        if algo not in table:
            raise KeyError(algo)
        target_module, cls = table[algo].split(":")
        if target_module not in self.modules:
            self.add_module(target_module)
        return Ref("def", target_module, cls)

    def reached(self, roots: list[Ref]) -> tuple[dict[str, str], set[str]]:
        """{definition key: digest} of everything reachable from `roots`, with the import-time
        statements of every module a reached definition lives in; and those modules."""
        out: dict[str, str] = {}
        seen: set[tuple[str, str]] = set()
        todo = list(roots)
        modules: set[str] = set()
        while todo:
            ref = todo.pop()
            if ref.kind != "def" or (ref.module, ref.name) in seen or self._excluded(ref):
                continue
            seen.add((ref.module, ref.name))
            definitions = self.modules[ref.module].definitions.get(ref.name, [])
            for i in range(len(definitions)):
                digest, refs = self.digest(ref.module, ref.name, i)
                out[_unique_key(out, ref.name, digest)] = digest
                todo += refs
            if ref.module not in modules:
                modules.add(ref.module)
                for i in range(len(self.modules[ref.module].init_statements)):
                    digest, refs = self.digest(ref.module, "", i)
                    out[_unique_key(out, "<import-time statement>", digest)] = digest
                    todo += refs
        return out, modules

    def _excluded(self, ref: Ref) -> bool:
        if ref.module == REGISTRY[0]:
            return True
        return any(ref.module == m or ref.module.startswith(m + ".") for m in NOT_COMPUTATION)


def _unique_key(out: dict, name: str, digest: str) -> str:
    """Definitions share a name across modules rarely; the digest tells them apart then."""
    return name if name not in out else f"{name}#{digest[:8]}"


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


class _Normaliser(ast.NodeTransformer):
    """One definition without docstrings and imports, its package references by definition name."""

    def __init__(self, package: Package, module: str, node: ast.AST):
        self.package, self.module = package, module
        self.node = copy.deepcopy(node)
        self.local_imports: dict[str, tuple[str, str]] = {}
        for inner in ast.walk(self.node):
            if isinstance(inner, (ast.Import, ast.ImportFrom)):
                self.local_imports.update(_import_bindings(
                    inner, module, package.modules[module].path.name == "__init__.py"))
        self.refs: list[Ref] = []

    def run(self) -> tuple[ast.AST, list[Ref]]:
        return self.visit(self.node), self.refs

    def lookup(self, name: str) -> Ref | None:
        if name in self.local_imports:
            return self.package.resolve_import(*self.local_imports[name])
        return self.package.resolve(self.module, name)

    def ref_of(self, node: ast.AST) -> Ref | None:
        """What a Name or a chain of attributes on a package module stands for."""
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Attribute):
            base = self.ref_of(node.value)
            if base is None:
                return None
            if base.kind == "module":
                return self.package.resolve(base.module, node.attr)
            if base.kind == "outside":
                return Ref("outside", f"{base.module}.{node.attr}")
        return None

    def replaced(self, node: ast.expr) -> ast.expr | None:
        ref = self.ref_of(node)
        if ref is None:
            return None
        if ref.kind == "def":
            self.refs.append(ref)
            return ast.Name(id=ref.name, ctx=node.ctx)
        if ref.kind == "outside":
            return ast.Name(id=ref.module, ctx=node.ctx)
        return ast.Name(id=f"<module {ref.module}>", ctx=node.ctx)

    def visit_arg(self, node: ast.arg):
        node.annotation = None
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef):
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Name(self, node: ast.Name):
        return self.replaced(node) or node

    def visit_Attribute(self, node: ast.Attribute):
        found = self.replaced(node)
        return found if found is not None else self.generic_visit(node)

    def _body(self, body: list[ast.stmt], sort_functions: bool = False) -> list[ast.stmt]:
        kept = [s for s in body if not _is_string(s) and not isinstance(s, (ast.Import, ast.ImportFrom))]
        if sort_functions:  # methods in any order; other statements (fields) keep theirs
            functions = sorted((s for s in kept if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))),
                               key=lambda s: s.name)
            kept = [s for s in kept if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))] + functions
        return kept or [ast.Pass()]

    def generic_visit(self, node: ast.AST):
        for attr in ("body", "orelse", "finalbody"):
            body = getattr(node, attr, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, attr, self._body(body, sort_functions=isinstance(node, ast.ClassDef)))
        return super().generic_visit(node)


@dataclass(frozen=True)
class CodeIdentity:
    hash: str
    """sha256 (16 hex) of the definitions and PINNED versions"""
    definitions: dict[str, str]
    """definition name -> its digest (12 hex): what a refusal compares to say what changed"""
    files: tuple[Path, ...]
    """the package files the definitions live in (the workflow's plain inputs)"""


def pinned_versions() -> dict[str, str]:
    found = {}
    for name in PINNED:
        try:
            found[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def imported_pinned_versions(paths) -> dict[str, str]:
    """The versions of the PINNED_WHERE_IMPORTED libraries that these module files import."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for top in {n.split(".")[0] for n in names} & PINNED_WHERE_IMPORTED.keys():
                distribution = PINNED_WHERE_IMPORTED[top]
                try:
                    found[distribution] = metadata.version(distribution)
                except metadata.PackageNotFoundError:
                    found[distribution] = "absent"
    return found


def code_identity(algo: str, package: Package | None = None, evaluation: bool = False) -> CodeIdentity:
    """The code identity of `algo`'s training (evaluation=True: of `qvpo evaluate` on its runs)."""
    package = package or Package()
    root = EVALUATE_ROOT if evaluation else TRAIN_ROOT
    definitions, modules = package.reached([Ref("def", *root), package.registered_class(algo)])
    versions = pinned_versions() | imported_pinned_versions(package.modules[m].path for m in modules)
    blob = json.dumps({"definitions": sorted(definitions.items()), "versions": versions}, sort_keys=True)
    files = tuple(sorted(package.modules[m].path for m in modules))
    return CodeIdentity(hashlib.sha256(blob.encode()).hexdigest()[:16],
                        {k: v[:12] for k, v in sorted(definitions.items())}, files)


@cache
def current(algo: str, evaluation: bool = False) -> CodeIdentity:
    """`code_identity` of this checkout's package, parsed once per process."""
    return code_identity(algo, _this_package(), evaluation)


@cache
def _this_package() -> Package:
    return Package()


def changed_definitions(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Names of the definitions that differ, were added or went, between two `definitions` maps."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
