"""The architecture's two promises, checked mechanically on the source (issue 15, "enforce the architecture").

1. The domain (``include/``) imports nothing from Airflow: it must be testable without a scheduler.
2. Only the release gateway hands an item to a sender: outside ``caldicott/gateway.py`` a call
   ``<something>.send(<item>)`` may appear only inside a sender's own ``send`` method (a wrapper that delegates,
   e.g. the print house's SFTP sender), which the gateway itself calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "include" / "caldicott" / "gateway.py"


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_domain_has_no_airflow_import():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(ast.parse(p.read_text()))
                                                  if n.split(".")[0] == "airflow") for p in _modules("include")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert len(_modules("include")) > 50 and not offenders, f"the domain must not depend on Airflow: {offenders}"


class _SendCalls(ast.NodeVisitor):
    """``x.send(item)`` calls (one positional argument, no keywords) and the function each sits in."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "send" and len(node.args) == 1 and not node.keywords:
            self.found.append((node.lineno, self.stack[-1] if self.stack else "<module>"))
        self.generic_visit(node)


def _sends(path: Path) -> list[tuple[int, str]]:
    v = _SendCalls()
    v.visit(ast.parse(path.read_text()))
    return v.found


def test_only_the_gateway_sends():
    offenders = {str(p.relative_to(ROOT)): [line for line, fn in _sends(p) if fn != "send"]
                 for p in _modules("include", "plugins", "dags") if p != GATEWAY}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, ("these lines call .send(item) outside a sender's own send(); every outbound item goes "
                           f"through caldicott.gateway.release: {offenders}")


def test_the_check_sees_a_send_that_bypasses_the_gateway(tmp_path):
    """The detector itself: a direct send in a flow is found, a delegating sender is not, the gateway does."""
    bad = tmp_path / "flow.py"
    bad.write_text("def deliver(sender, item):\n    return sender.send(item)\n")
    ok = tmp_path / "wrapper.py"
    ok.write_text("class S:\n    def send(self, item):\n        return self.inner.send(item)\n")
    assert _sends(bad) == [(2, "deliver")]
    assert [fn for _, fn in _sends(ok)] == ["send"]
    assert any(fn != "send" for _, fn in _sends(GATEWAY)), "the gateway's own call is what the rule protects"


#: Where each release fact is established (caldicott.policy.evidence): the code that owns it, and nowhere else.
#: A new caller of ``establish`` is a new place vouching for a fact: add it here only after review.
EVIDENCE_MINTERS = {
    "include/caldicott/dataset/submit.py": {"validated"},
    "include/caldicott/dataset/pipeline.py": {"ndop_applied"},
    "include/caldicott/updates/deliver.py": {"contract_fields_applied"},
    "include/caldicott/letters/flow.py": {"gp_sharing_consent"},
    "include/caldicott/transfers/flow.py": {"*"},   # the facts its receiver decision established (by name)
    "include/caldicott/policy/ndop.py": {"nhs_numbers_only"},
}


def _establishes(path: Path) -> set[str]:
    """The facts a module mints with ``establish(...)`` (a literal name, or ``*`` when computed)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "establish":
            arg = node.args[0] if node.args else None
            found.add(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "*")
    return found


def test_release_facts_are_established_only_by_the_code_that_owns_them():
    minted = {str(p.relative_to(ROOT)): facts for p in _modules("include", "plugins", "dags")
              if p.name != "evidence.py" and (facts := _establishes(p))}
    assert minted == EVIDENCE_MINTERS
