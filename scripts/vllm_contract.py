"""The static contract between this project and a vLLM source tree (no import of that vLLM).

What the project uses is read from its own sources (``ast`` over ``earlytom_vllm/``, ``server/``
and ``benchmarks/``), so new code is covered without a list to keep:

- every ``from vllm... import name`` / ``import vllm...`` (also inside functions);
- every base class that comes from vLLM;
- every override: a method of a project class (or of a project mixin in its MRO) whose name a
  vLLM class in that MRO defines; the vLLM method's signature must be one the override accepts
  (each upstream parameter at the same position or by name, nothing else required);
- every call of a vLLM name (functions, classes, methods of module-level instances, decorators),
  every ``super().m(...)`` and ``self.m(...)`` that reaches a vLLM class: the arguments must bind
  to the vLLM signature (positional count, keyword names, required parameters);
- each release's runner-hook targets (``earlytom_vllm.vllm.compat.PRUNING_HOOKS``).

A member counts as used when ANY of the trees checked together defines it (the installed 0.32 is
always one), so a member renamed or removed in one release is reported for that release.

What it cannot see: behaviour (what a method does with the same signature), attributes read on
vLLM objects (``self.visual.blocks``, ``attn.qkv_proj``), members reached through an object the
project did not construct (``self.model.apply_pooling``), names reached by ``getattr``, and
classes outside vLLM (torch, transformers).

    python scripts/vllm_contract.py    # check the installed vLLM and the fetched 0.33/0.34
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Project source directory -> its import name (pyproject's package-dir).
PROJECT_PACKAGES = {"earlytom_vllm": "earlytom_vllm", "server": "earlytom_server",
                    "benchmarks": "benchmarks"}
_PROJECT_ROOTS = tuple(PROJECT_PACKAGES.values())

# The shapes compat's runner hooks rely on (earlytom_vllm/vllm/compat.py): a factory hook calls
# the original ``maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache)`` and
# ``MultiModalPruner(model, rope_state, encoder_cache, inputs_embeds_size)``; a ``Class.method``
# hook calls the original with what it got and then ``self.get_model()``.
_FACTORY_PARAMS = ("model_config", "model", "rope_state", "encoder_cache")
_PRUNER_ARGS = 4


# --------------------------------------------------------------------------------------------------
# Signatures and call shapes


@dataclass(frozen=True)
class Sig:
    positional: tuple[str, ...]  # after self/cls
    num_defaults: int  # of the positional ones (the last ones)
    kwonly: tuple[tuple[str, bool], ...]  # (name, has default)
    varargs: bool
    varkw: bool

    @classmethod
    def of(cls, fn: ast.FunctionDef | ast.AsyncFunctionDef, *, bound: bool) -> Sig:
        a = fn.args
        names = [p.arg for p in (*a.posonlyargs, *a.args)]
        if bound and names:
            names = names[1:]
        return cls(tuple(names), min(len(a.defaults), len(names)),
                   tuple((p.arg, d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults,
                                                                 strict=True)),
                   a.vararg is not None, a.kwarg is not None)

    @property
    def required(self) -> set[str]:
        n = len(self.positional) - self.num_defaults
        return set(self.positional[:n]) | {k for k, d in self.kwonly if not d}

    @property
    def names(self) -> set[str]:
        return set(self.positional) | {k for k, _ in self.kwonly}

    def text(self) -> str:
        n = len(self.positional) - self.num_defaults
        parts = [p if i < n else f"{p}=" for i, p in enumerate(self.positional)]
        if self.varargs:
            parts.append("*args")
        elif self.kwonly:
            parts.append("*")
        parts += [k if not d else f"{k}=" for k, d in self.kwonly]
        if self.varkw:
            parts.append("**kwargs")
        return f"({', '.join(parts)})"

    def binding_error(self, call: CallShape) -> str | None:
        """Why ``call`` cannot bind to this signature (None if it can)."""
        if call.npos > len(self.positional) and not self.varargs:
            return f"{call.npos} positional arguments for {self.text()}"
        filled = set(self.positional[:call.npos])
        for k in call.keywords:
            if k in filled:
                return f"{k!r} given twice for {self.text()}"
            if k not in self.names and not self.varkw:
                return f"no parameter {k!r} in {self.text()}"
        missing = self.required - filled - set(call.keywords)
        if missing and not call.spread:
            return f"missing {sorted(missing)} for {self.text()}"
        return None

    def accepts_calls_to(self, upstream: Sig) -> str | None:
        """Why this override cannot stand where ``upstream`` is called (None if it can)."""
        for i, name in enumerate(upstream.positional):
            if i < len(self.positional):
                if self.positional[i] != name and not self.varkw:
                    return f"parameter {i + 1} is {self.positional[i]!r}, upstream {name!r}"
            elif not (self.varargs and (self.varkw or name in dict(self.kwonly))):
                return f"upstream parameter {name!r} has no place in {self.text()}"
        for name, _ in upstream.kwonly:
            if name not in self.names and not self.varkw:
                return f"upstream keyword {name!r} has no place in {self.text()}"
        extra = self.required - upstream.names
        if extra:
            return f"requires {sorted(extra)}, which upstream {upstream.text()} never passes"
        return None


@dataclass(frozen=True)
class CallShape:
    npos: int
    keywords: tuple[str, ...]
    spread: bool  # *args or **kwargs in the call: missing parameters may be in them

    @classmethod
    def of(cls, call: ast.Call) -> CallShape:
        star = any(isinstance(a, ast.Starred) for a in call.args)
        return cls(sum(not isinstance(a, ast.Starred) for a in call.args),
                   tuple(k.arg for k in call.keywords if k.arg is not None),
                   star or any(k.arg is None for k in call.keywords))


# --------------------------------------------------------------------------------------------------
# A vLLM source tree, read lazily


@dataclass(frozen=True)
class Def:
    kind: str  # module | class | function | instance | value | external
    module: str
    node: ast.AST | None = None
    of: Def | None = None  # instance: its class


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _decorators(fn: ast.AST) -> set[str]:
    names = set()
    for d in getattr(fn, "decorator_list", ()):
        d = d.func if isinstance(d, ast.Call) else d
        names.add(d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", ""))
    return names


def _assigned(node: ast.stmt) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign) else [])
    return {t.id for t in targets if isinstance(t, ast.Name)}


def _statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, into ``if``/``try`` blocks (TYPE_CHECKING, fallbacks)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse):
                yield from _statements(block)
        else:
            yield node


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


class Tree:
    """The ``vllm`` package at ``root`` (a directory of ``.py`` files)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = Path(root), name
        self._ast: dict[str, ast.Module | None] = {}
        self._bindings: dict[str, dict[str, tuple]] = {}

    def path(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] != "vllm":
            return None
        base = self.root.joinpath(*parts[1:])
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    def is_module(self, module: str) -> bool:
        return self.path(module) is not None

    def _is_package(self, module: str) -> bool:
        p = self.path(module)
        return p is not None and p.name == "__init__.py"

    def parse(self, module: str) -> ast.Module | None:
        if module not in self._ast:
            p = self.path(module)
            self._ast[module] = ast.parse(p.read_text(), str(p)) if p else None
        return self._ast[module]

    def bindings(self, module: str) -> dict[str, tuple]:
        """Top-level names: ("def", node) | ("import", module, name|None) | ("assign", expr)."""
        if module in self._bindings:
            return self._bindings[module]
        out: dict[str, tuple] = {}
        tree = self.parse(module)
        pkg = self._is_package(module)
        lazy = False
        stars: list[str] = []
        for node in _statements(tree.body if tree else ()):
            if isinstance(node, (*_FUNCS, ast.ClassDef)):
                out[node.name] = ("def", node)
                lazy |= node.name == "__getattr__"
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(module, pkg, node.level, node.module)
                for a in node.names:
                    if a.name == "*":
                        stars.append(src)
                    else:
                        out[a.asname or a.name] = ("import", src, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        out[a.asname] = ("import", a.name, None)
                    else:
                        out.setdefault(a.name.split(".")[0], ("import", a.name.split(".")[0], None))
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        out.setdefault(t.id, ("assign", node.value))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out.setdefault(node.target.id, ("assign", node.value))
        if lazy:  # vllm/__init__.py: MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", ...}
            for value in [b[1] for b in list(out.values()) if b[0] == "assign"]:
                if isinstance(value, ast.Dict):
                    for k, v in zip(value.keys, value.values, strict=True):
                        if (isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                                and isinstance(v.value, str) and ":" in v.value):
                            mod, attr = v.value.split(":", 1)
                            level = len(mod) - len(mod.lstrip("."))
                            src = _absolute(module, pkg, level, mod.lstrip(".") or None)
                            out[k.value] = ("import", src, attr)
        out["*"] = ("stars", stars)  # ``from x import *`` sources, tried last
        self._bindings[module] = out
        return out

    def resolve(self, module: str, name: str, depth: int = 0) -> Def | None:
        if depth > 25:
            return None
        if not module.startswith("vllm"):
            return Def("external", f"{module}.{name}")
        bindings = self.bindings(module)
        b = bindings.get(name) if name != "*" else None
        if b is None:
            sub = f"{module}.{name}"
            if self.is_module(sub):
                return Def("module", sub)
            for src in bindings["*"][1]:
                found = self.resolve(src, name, depth + 1)
                if found is not None:
                    return found
            return None
        if b[0] == "def":
            return Def("class" if isinstance(b[1], ast.ClassDef) else "function", module, b[1])
        if b[0] == "import":
            _, src, attr = b
            if attr is None:
                return Def("module", src) if self.is_module(src) or not src.startswith(
                    "vllm") else None
            if self.is_module(f"{src}.{attr}"):
                return Def("module", f"{src}.{attr}")
            return self.resolve(src, attr, depth + 1)
        value = b[1]
        if isinstance(value, ast.Call):
            made = self.expr(module, value.func, depth + 1)
            if made is not None and made.kind == "class":
                return Def("instance", module, None, made)
        elif isinstance(value, (ast.Name, ast.Attribute)):
            alias = self.expr(module, value, depth + 1)
            if alias is not None:
                return alias
        return Def("value", module)

    def expr(self, module: str, node: ast.expr, depth: int = 0) -> Def | None:
        if isinstance(node, ast.Name):
            return self.resolve(module, node.id, depth)
        if isinstance(node, ast.Attribute):
            base = self.expr(module, node.value, depth)
            return None if base is None else self.attr(base, node.attr, depth)
        if isinstance(node, ast.Subscript):  # Base[Info], Generic[T]
            return self.expr(module, node.value, depth)
        return None

    def attr(self, base: Def, name: str, depth: int = 0) -> Def | None:
        if base.kind == "module":
            return self.resolve(base.module, name, depth + 1)
        if base.kind in ("class", "instance"):
            cls = base if base.kind == "class" else base.of
            return self.member(cls, name)
        if base.kind == "external":
            return Def("external", f"{base.module}.{name}")
        return None

    # -- classes ------------------------------------------------------------------------------
    def bases(self, cls: Def) -> list[Def]:
        out = []
        for b in cls.node.bases:
            d = self.expr(cls.module, b)
            if d is not None and d.kind == "class":
                out.append(d)
        return out

    def mro(self, cls: Def) -> list[Def]:
        """Depth-first, left to right, each class once (where it last appears: C3's order for
        the hierarchies involved here)."""
        order: list[Def] = []

        def visit(c: Def, depth: int) -> None:
            if depth > 40:
                return
            order.append(c)
            for b in self.bases(c):
                visit(b, depth + 1)

        visit(cls, 0)
        seen, out = set(), []
        for c in reversed(order):
            key = (c.module, c.node.name)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out[::-1]

    def member(self, cls: Def, name: str) -> Def | None:
        """``name`` on class ``cls`` (its MRO); a method is a "function" Def."""
        for c in self.mro(cls):
            found = None
            for node in c.node.body:
                if isinstance(node, _FUNCS) and node.name == name:
                    if "overload" not in _decorators(node):
                        found = Def("function", c.module, node, c)
                elif name in _assigned(node):
                    found = found or Def("value", c.module, node, c)
            if found is not None:
                return found
        return None

    def call_sig(self, d: Def, *, via_instance: bool) -> Sig | None:
        """The signature a call of ``d`` binds to (None: not knowable statically)."""
        if d.kind == "function":
            decos = _decorators(d.node)
            if "property" in decos or "cached_property" in decos:
                return None
            bound = d.of is not None and "staticmethod" not in decos and (
                via_instance or "classmethod" in decos)
            return Sig.of(d.node, bound=bound)
        if d.kind == "class":
            init = self.member(d, "__init__")
            if init is not None and init.kind == "function":
                return Sig.of(init.node, bound=True)
            return self._dataclass_sig(d)
        if d.kind == "instance":
            call = self.member(d.of, "__call__")
            return self.call_sig(call, via_instance=True) if call else None
        return None

    def _dataclass_sig(self, cls: Def) -> Sig | None:
        chain = self.mro(cls)
        if not any("dataclass" in _decorators(c.node) for c in chain):
            return None
        fields: dict[str, bool] = {}
        for c in reversed(chain):
            if "dataclass" not in _decorators(c.node):
                continue
            for node in c.node.body:
                if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                        and "ClassVar" not in ast.unparse(node.annotation)):
                    default = node.value is not None and not (
                        isinstance(node.value, ast.Call)
                        and ast.unparse(node.value.func).endswith("field")
                        and not any(k.arg in ("default", "default_factory")
                                    for k in node.value.keywords))
                    fields[node.target.id] = default
        names = tuple(fields)
        # keyword-only fields are not told apart: every field may be passed by name
        ndef = 0
        for n in reversed(names):
            if not fields[n]:
                break
            ndef += 1
        return Sig(names, ndef, (), False, False)


# --------------------------------------------------------------------------------------------------
# The project's side


@dataclass
class ProjectClass:
    key: tuple[str, str]  # (module, name)
    file: str
    node: ast.ClassDef
    bases: list[tuple] = field(default_factory=list)  # ("project", key) | ("vllm", ref)


@dataclass(frozen=True)
class Use:
    kind: str  # import | base | override | call | super-call | self-call
    ref: tuple[str, ...]  # (module, name, *attrs); override/self/super: ("class", ...) + member
    where: str
    call: CallShape | None = None


def _ref_text(ref: tuple[str, ...]) -> str:
    return f"{ref[0]}:{'.'.join(ref[1:])}" if len(ref) > 1 else ref[0]


class Project:
    def __init__(self, root: Path = ROOT) -> None:
        self.root = Path(root)
        self.modules: dict[str, tuple[str, ast.Module]] = {}
        for directory, package in PROJECT_PACKAGES.items():
            for p in sorted((self.root / directory).rglob("*.py")):
                rel = p.relative_to(self.root / directory).with_suffix("")
                parts = [package, *rel.parts]
                if parts[-1] == "__init__":
                    parts.pop()
                self.modules[".".join(parts)] = (str(p.relative_to(self.root)),
                                                 ast.parse(p.read_text(), str(p)))
        self.names: dict[str, dict[str, tuple]] = {m: self._names(m) for m in self.modules}
        self.classes: dict[tuple[str, str], ProjectClass] = {}
        for module, (file, tree) in self.modules.items():
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes[(module, node.name)] = ProjectClass((module, node.name), file,
                                                                     node)
        for cls in self.classes.values():
            for b in cls.node.bases:
                ref = self.ref(cls.key[0], b)
                if ref is not None:
                    cls.bases.append(ref)

    def _names(self, module: str) -> dict[str, tuple]:
        """Every import binding of a module (top level and inside functions) and its classes."""
        file, tree = self.modules[module]
        out: dict[str, tuple] = {}
        pkg = file.endswith("__init__.py")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _absolute(module, pkg, node.level, node.module)
                for a in node.names:
                    out[a.asname or a.name] = ("from", src, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    out[a.asname or a.name.split(".")[0]] = (
                        "module", a.name if a.asname else a.name.split(".")[0])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                out[node.name] = ("class", module, node.name)
        return out

    def ref(self, module: str, node: ast.expr) -> tuple | None:
        """("vllm", (mod, name, *attrs)) or ("project", (mod, name)) for a name expression."""
        attrs: list[str] = []
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            if isinstance(node, ast.Attribute):
                attrs.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        b = self.names[module].get(node.id)
        if b is None:
            return None
        if b[0] == "class":
            return ("project", (b[1], b[2])) if not attrs else None
        if b[0] == "from":
            src, name = b[1], b[2]
            if src == "vllm" or src.startswith("vllm."):
                return ("vllm", (src, name, *attrs))
            if src.startswith(_PROJECT_ROOTS) and (src, name) in self.classes and not attrs:
                return ("project", (src, name))
            return None
        mod = b[1]  # ``import vllm.x [as y]``: the attributes name submodules, then a member
        if (mod == "vllm" or mod.startswith("vllm.")) and attrs:
            return ("vllm", (".".join([mod, *attrs[:-1]]), attrs[-1]))
        return None

    # -- what the project uses ----------------------------------------------------------------
    def uses(self) -> list[Use]:
        out: list[Use] = []
        for module, (file, tree) in self.modules.items():
            for node in ast.walk(tree):
                where = f"{file}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                        node.module == "vllm" or node.module.startswith("vllm.")):
                    out += [Use("import", (node.module, a.name), where) for a in node.names]
                elif isinstance(node, ast.Import):
                    out += [Use("import", (a.name,), where) for a in node.names
                            if a.name == "vllm" or a.name.startswith("vllm.")]
                elif isinstance(node, ast.Call):
                    r = self.ref(module, node.func)
                    if r is not None and r[0] == "vllm":
                        out.append(Use("call", r[1], where, CallShape.of(node)))
        for cls in self.classes.values():
            out += [Use("base", r[1], f"{cls.file}:{cls.node.lineno}")
                    for r in cls.bases if r[0] == "vllm"]
        return out

    def project_mro(self, key: tuple[str, str]) -> list:
        """C3 linearisation over project classes, vLLM bases as leaves ("vllm", ref)."""

        def lin(item) -> list:
            if item[0] == "vllm":
                return [item]
            bases = self.classes[item[1]].bases
            return merge([[item], *[lin(b) for b in bases], list(bases)])

        def merge(seqs: list[list]) -> list:
            out, seqs = [], [list(s) for s in seqs if s]
            while seqs:
                for s in seqs:
                    head = s[0]
                    if not any(head in t[1:] for t in seqs):
                        break
                else:
                    raise ValueError(f"no C3 order for {key}")
                out.append(head)
                seqs = [[x for x in t if x != head] for t in seqs]
                seqs = [t for t in seqs if t]
            return out

        return lin(("project", key))

    def vllm_classes(self) -> dict[tuple[str, str], list]:
        """Project classes with a vLLM class in their MRO -> that MRO."""
        out = {}
        for key in self.classes:
            order = self.project_mro(key)
            if any(item[0] == "vllm" for item in order):
                out[key] = order
        return out


# --------------------------------------------------------------------------------------------------
# The check


@dataclass(frozen=True)
class Member:
    """A vLLM member the project relies on through one of its classes."""

    kind: str  # override | super-call | self-call
    cls: tuple[str, str]  # the project class whose MRO it is in
    name: str
    where: str
    defined_in: object  # override: the project class defining it; calls: the calling class
    call: CallShape | None = None
    sig: Sig | None = None


def _method_calls(fn: ast.AST) -> Iterator[tuple[str, str, ast.Call]]:
    """("super" | "self", member, call) for each ``super().m(...)`` / ``self.m(...)``."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            v = node.func.value
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                yield "super", node.func.attr, node
            elif isinstance(v, ast.Name) and v.id == "self":
                yield "self", node.func.attr, node


def _vllm_member(tree: Tree, order: list, start: int, name: str) -> Def | None:
    """``name`` on the vLLM classes of a project MRO from position ``start`` on."""
    for item in order[start:]:
        if item[0] == "project":
            continue
        cls = tree.resolve(item[1][0], item[1][1])
        if cls is None or cls.kind != "class":
            continue
        for attr in item[1][2:]:
            cls = tree.attr(cls, attr)
        found = tree.member(cls, name) if cls is not None and cls.kind == "class" else None
        if found is not None:
            return found
    return None


def _defines(project: Project, item, name: str) -> ast.AST | None:
    if item[0] != "project":
        return None
    for node in project.classes[item[1]].node.body:
        if isinstance(node, _FUNCS) and node.name == name:
            return node
    return None


def members(project: Project, trees: list[Tree]) -> list[Member]:
    """The vLLM members reached through project classes (defined in at least one tree)."""
    out: list[Member] = []
    constructed = {r[1] for r in _calls(project) if r is not None and r[0] == "project"}
    for key, order in project.vllm_classes().items():
        for i, item in enumerate(order):
            if item[0] != "project":
                continue
            cls = project.classes[item[1]]
            for fn in cls.node.body:
                if not isinstance(fn, _FUNCS):
                    continue
                where = f"{cls.file}:{fn.lineno}"
                if fn.name == "__init__" and key in constructed:
                    pass  # the project builds it with its own arguments
                elif any(_vllm_member(t, order, i + 1, fn.name) is not None for t in trees):
                    bound = "staticmethod" not in _decorators(fn)
                    out.append(Member("override", key, fn.name, where, item,
                                      sig=Sig.of(fn, bound=bound)))
                for how, name, call in _method_calls(fn):
                    start = i + 1 if how == "super" else 0
                    if any(_defines(project, it, name) for it in order[start:]
                           if it[0] == "project"):
                        continue  # the project's own method
                    if any(_vllm_member(t, order, start, name) is not None for t in trees):
                        out.append(Member(f"{how}-call", key, name,
                                          f"{cls.file}:{call.lineno}", start,
                                          call=CallShape.of(call)))
    return out


def _calls(project: Project) -> Iterator[tuple | None]:
    """What each call in the project's sources calls (a ``Project.ref``)."""
    for module, (_, tree) in project.modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield project.ref(module, node.func)


def check_tree(project: Project, tree: Tree, used: list[Use], reached: list[Member],
               hooks: Iterable = ()) -> list[str]:
    """Problems of one tree, one line each (empty: the contract holds)."""
    problems: list[str] = []
    tag = tree.name

    def resolve_ref(ref: tuple[str, ...]) -> Def | None:
        if len(ref) == 1:
            return Def("module", ref[0]) if tree.is_module(ref[0]) else None
        d = tree.resolve(ref[0], ref[1])
        for attr in ref[2:]:
            d = None if d is None else tree.attr(d, attr)
        return d

    for use in used:
        d = resolve_ref(use.ref)
        if d is None:
            problems.append(f"{tag}: {_ref_text(use.ref)} not found ({use.kind}, {use.where})")
            continue
        if use.kind == "base" and d.kind not in ("class", "external"):
            problems.append(f"{tag}: {_ref_text(use.ref)} is no class ({use.where})")
        if use.kind == "call" and use.call is not None:
            via_instance = len(use.ref) > 2 and resolve_ref(use.ref[:-1]) is not None and \
                resolve_ref(use.ref[:-1]).kind == "instance"
            sig = tree.call_sig(d, via_instance=via_instance)
            err = sig.binding_error(use.call) if sig else None
            if err:
                problems.append(f"{tag}: call {_ref_text(use.ref)}: {err} ({use.where})")

    vllm_orders = project.vllm_classes()
    for m in reached:
        order = vllm_orders[m.cls]
        cls_name = ".".join(m.cls)
        if m.kind == "override":
            start = order.index(m.defined_in) + 1
            d = _vllm_member(tree, order, start, m.name)
            if d is None:
                problems.append(f"{tag}: {cls_name}.{m.name} overrides nothing: no vLLM base "
                                f"defines {m.name!r} ({m.where})")
            elif d.kind == "function" and m.sig is not None:
                bound = "staticmethod" not in _decorators(d.node)
                err = m.sig.accepts_calls_to(Sig.of(d.node, bound=bound))
                if err:
                    problems.append(f"{tag}: {cls_name}.{m.name} vs {d.module}."
                                    f"{d.of.node.name}.{m.name}: {err} ({m.where})")
            continue
        d = _vllm_member(tree, order, m.defined_in, m.name)
        if d is None:
            problems.append(f"{tag}: {m.kind} {cls_name} -> {m.name!r}: no vLLM base defines it "
                            f"({m.where})")
            continue
        sig = tree.call_sig(d, via_instance=True)
        err = sig.binding_error(m.call) if sig and m.call else None
        if err:
            problems.append(f"{tag}: {m.kind} {d.module}.{d.of.node.name}.{m.name}: {err} "
                            f"({m.where})")

    for hook in hooks:
        problems += [f"{tag}: hook {hook.module}:{hook.target}: {e}" for e in _hook_errors(tree,
                                                                                       hook)]
    return problems


def _hook_errors(tree: Tree, hook) -> list[str]:
    if not tree.is_module(hook.module):
        return ["module not found"]
    errors = []
    owner, _, name = hook.target.rpartition(".")
    if owner:
        cls = tree.resolve(hook.module, owner)
        if cls is None or cls.kind != "class":
            return [f"class {owner} not found"]
        for member in (name, "get_model"):
            d = tree.member(cls, member)
            if d is None or d.kind != "function":
                errors.append(f"{owner}.{member} not found")
    else:
        d = tree.resolve(hook.module, name)
        if d is None or d.kind != "function":
            return [f"{name} not found"]
        err = Sig.of(d.node, bound=False).binding_error(CallShape(len(_FACTORY_PARAMS), (), False))
        if err or Sig.of(d.node, bound=False).positional != _FACTORY_PARAMS:
            errors.append(f"{name}{Sig.of(d.node, bound=False).text()} is not "
                          f"({', '.join(_FACTORY_PARAMS)})")
        # the patch replaces the module's global: it works where the module calls it by that name
        if not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
                   for n in ast.walk(tree.parse(hook.module))):
            errors.append(f"{hook.module} never calls {name} by its global name")
    if hook.pruner is not None:
        pruner = tree.resolve(hook.pruner, "MultiModalPruner") if tree.is_module(
            hook.pruner) else None
        sig = tree.call_sig(pruner, via_instance=False) if pruner else None
        if sig is None:
            errors.append(f"{hook.pruner}.MultiModalPruner not found")
        elif err := sig.binding_error(CallShape(_PRUNER_ARGS, (), False)):
            errors.append(f"{hook.pruner}.MultiModalPruner: {err}")
    return errors


def check(trees: dict[str, tuple[Path, Iterable]], project_root: Path = ROOT) -> list[str]:
    """Check the project against every tree: ``{name: (vllm package dir, runner hooks)}``.
    Members used are those defined in any of these trees."""
    project = Project(project_root)
    loaded = [Tree(path, name) for name, (path, _) in trees.items()]
    used = project.uses()
    reached = members(project, loaded)
    problems = []
    for tree, (_, hooks) in zip(loaded, trees.values(), strict=True):
        problems += check_tree(project, tree, used, reached, hooks)
    return problems


def summary(project_root: Path = ROOT, tree: Path | None = None) -> dict[str, int]:
    """How many uses of each kind the project has (against ``tree`` for the members)."""
    project = Project(project_root)
    counts: dict[str, int] = {}
    for u in project.uses():
        counts[u.kind] = counts.get(u.kind, 0) + 1
    if tree is not None:
        for m in members(project, [Tree(tree, "t")]):
            counts[m.kind] = counts.get(m.kind, 0) + 1
    return counts


def tree_version(tree: Path) -> tuple[int, int] | None:
    """``(major, minor)`` from an installed tree's generated ``_version.py`` (sdists lack it)."""
    p = Path(tree) / "_version.py"
    m = re.search(r"__version__ = version = '(\d+)\.(\d+)", p.read_text()) if p.is_file() else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import vllm_sources

    from earlytom_vllm.vllm.compat import PRUNING_HOOKS

    installed = vllm_sources.installed_tree()
    minor = tree_version(installed)
    trees = {f"installed {minor}": (installed, PRUNING_HOOKS[minor])}
    for version in vllm_sources.SDISTS:
        major, minor_v = (int(x) for x in version.split(".")[:2])
        trees[version] = (vllm_sources.fetch(version), PRUNING_HOOKS[(major, minor_v)])
    problems = check(trees)
    print(summary(tree=installed))
    print("\n".join(problems) or f"contract holds for {', '.join(trees)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
