"""Secure by default: loopback bind, tokens (constant-time, never logged), Origin checks, size
limits with a stated reason, security headers on every answer, and SQL with bound values only.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomllib
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.ports import free_port
from trainvitals.protocol import Batch, RunStart, encode
from trainvitals.server import ServerThread, Settings, SQLiteStore, create_app
from trainvitals.server.security import SECURITY_HEADERS, token_ok

ROOT = Path(__file__).resolve().parents[2]
INGEST, VIEW = "ingest-token-secure-defaults", "view-token-secure-defaults"
LIMIT = 2048


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("secure"), ingest_token=INGEST,
                        view_token=VIEW, max_message_bytes=LIMIT, log_alerts=False)
    with ServerThread(settings) as server:
        yield server


def ingest(srv: ServerThread, headers: dict[str, str] | None = None,
           query: str = "") -> ClientConnection:
    ws: ClientConnection = connect(f"{srv.ws_url}/ws/ingest{query}", proxy=None,
                                   open_timeout=10, additional_headers=headers)
    return ws


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def has_security_headers(headers: Any) -> bool:
    return all(headers.get(name) == value for name, value in SECURITY_HEADERS.items())


# --------------------------------------------------------------------------- defaults


def test_the_server_binds_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path)
    assert settings.host == "127.0.0.1"
    with ServerThread(settings) as server:
        assert server._sock.getsockname()[0] == "127.0.0.1"
    assert Settings.model_fields["ingest_token"].default is None  # `serve` makes one: below
    out = subprocess.run([sys.executable, "-m", "trainvitals.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "0.0.0.0 exposes the server" in out.stdout


def test_tokens_are_compared_in_constant_time() -> None:
    source = ast.parse(Path(ROOT / "server" / "security.py").read_text())
    (fn,) = [n for n in ast.walk(source) if isinstance(n, ast.FunctionDef)
             and n.name == "token_ok"]
    calls = {ast.unparse(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)}
    assert "hmac.compare_digest" in calls
    assert not any(isinstance(c, ast.Compare) and any(isinstance(o, (ast.Eq, ast.NotEq))
                                                      for o in c.ops) for c in ast.walk(fn))
    assert token_ok("secret-token", "secret-token") and not token_ok("secret-token", "secret")
    assert not token_ok("secret-token", None) and token_ok(None, None)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("headers, query", [(None, ""), (bearer("wrong-token-123"), ""),
                                            (None, "?token=wrong-token-123")])
def test_ingest_without_the_token_is_refused_with_401(srv: ServerThread,
                                                      headers: dict[str, str] | None,
                                                      query: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ingest(srv, headers, query)
    response = refused.value.response
    assert (response.status_code, response.body) == (401, b"missing or wrong ingest token")
    assert has_security_headers(response.headers)


@pytest.mark.parametrize("path", ["/ws/ingest", "/ws/live"])
def test_a_foreign_origin_is_refused_with_403(srv: ServerThread, path: str) -> None:
    headers = {**bearer(INGEST if path == "/ws/ingest" else VIEW),
               "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{srv.ws_url}{path}", proxy=None, additional_headers=headers)
    response = refused.value.response
    assert (response.status_code, response.body) == (403, b"origin not allowed")
    assert has_security_headers(response.headers)


def test_viewing_requires_the_view_token_when_set(srv: ServerThread) -> None:
    assert httpx.get(f"{srv.http_url}/api/runs").status_code == 401
    assert httpx.get(f"{srv.http_url}/api/runs", headers=bearer(VIEW)).status_code == 200
    origin = {"Origin": f"http://127.0.0.1:{srv.port}"}
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{srv.ws_url}/ws/live", proxy=None, additional_headers=origin)
    assert refused.value.response.status_code == 401
    with connect(f"{srv.ws_url}/ws/live?token={VIEW}", proxy=None, additional_headers=origin):
        pass


def test_an_oversized_frame_is_refused_with_a_stated_reason(srv: ServerThread) -> None:
    big = encode(Batch((RunStart(run="big", session="s", config={"x": "y" * LIMIT}),)))
    with ingest(srv, bearer(INGEST)) as ws:
        ws.send(big)
        error = json.loads(ws.recv(timeout=10))
        assert (error["type"], error["code"], error["fatal"]) == ("error", "too_large", False)
        assert error["message"] == f"frame of {len(big)} bytes exceeds the limit of {LIMIT}"
        ws.send(encode(RunStart(run="small", session="s")))  # the connection goes on
        assert json.loads(ws.recv(timeout=10))["seq"] == 0
    # Beyond 4x the limit the websocket layer itself closes the connection: 1009, with reason.
    with ingest(srv, bearer(INGEST)) as ws:
        ws.send("x" * (4 * LIMIT + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    assert closed.value.rcvd.reason == f"frame exceeds limit of {4 * LIMIT} bytes"
    names = {r["name"] for r in httpx.get(f"{srv.http_url}/api/runs",
                                          headers=bearer(VIEW)).json()["runs"]}
    assert names == {"small"}


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 200), ("GET", "/static/app.js", 200), ("GET", "/static/nope.js", 404),
    ("GET", "/static/../pyproject.toml", 404), ("GET", "/nope", 404),
    ("GET", "/api/runs", 401), ("GET", f"/api/runs?token={VIEW}", 200),
    ("GET", f"/api/runs/abc?token={VIEW}", 422), ("GET", f"/api/runs/99?token={VIEW}", 404),
    ("POST", f"/api/runs?token={VIEW}", 405), ("GET", "/healthz", 200),
    ("GET", "/openapi.json", 200), ("GET", "/docs", 404), ("GET", "/ws/ingest", 404),
])
def test_every_answer_carries_the_security_headers(srv: ServerThread, method: str, path: str,
                                                   status: int) -> None:
    response = httpx.request(method, f"{srv.http_url}{path}", timeout=10)
    assert response.status_code == status
    assert has_security_headers(response.headers), dict(response.headers)
    assert "script-src 'self';" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"].split(
        "script-src")[1].split(";")[0]


def test_even_a_server_error_carries_the_security_headers(tmp_path: Path) -> None:
    class FailingStore(SQLiteStore):  # a real store whose run list breaks (a disk fault)
        def runs(self) -> Any:
            raise OSError("disk I/O error")

    app = create_app(Settings(port=0, data_dir=tmp_path, log_alerts=False),
                     store=FailingStore(tmp_path / "tv.sqlite3"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/runs")
    assert (response.status_code, response.text) == (500, "Internal Server Error")
    assert has_security_headers(response.headers)


def test_the_page_has_no_inline_script(srv: ServerThread) -> None:
    page = httpx.get(f"{srv.http_url}/", timeout=10).text.lower()
    scripts = page.split("<script")[1:]
    assert scripts, "the page loads its modules with <script src=...>"
    assert all(s.split(">")[0].count("src=") == 1 and s.split(">", 1)[1].lstrip()
               .startswith("</script") for s in scripts)
    assert " on" + "click=" not in page and "javascript:" not in page


# --------------------------------------------------------------------------- logs



@pytest.mark.slow
def test_tokens_never_reach_the_log(tmp_path: Path) -> None:
    """A real ``trainvitals serve`` at debug level, visited with right and wrong tokens in
    headers and in query strings (where browsers put them): no token in its output."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainvitals.cli", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--ingest-token", INGEST, "--view-token",
             VIEW, "--log-level", "debug"], stdout=out, stderr=subprocess.STDOUT)
    base, wrong = f"127.0.0.1:{port}", "wrong-token-leak-check"
    try:
        _wait_up(f"http://{base}/healthz", proc)
        origin = {"Origin": f"http://{base}"}
        for query in (f"?token={INGEST}", f"?token={wrong}"):
            _try(lambda q=query: _visit(f"ws://{base}/ws/ingest{q}"))
        _try(lambda: _visit(f"ws://{base}/ws/ingest", bearer(wrong)))
        for query in (f"?token={VIEW}", f"?token={wrong}"):
            _try(lambda q=query: _visit(f"ws://{base}/ws/live{q}", origin))
            httpx.get(f"http://{base}/api/runs{query}", timeout=10)
        httpx.get(f"http://{base}/api/runs", headers=bearer(VIEW), timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = log.read_text()
    assert '"WebSocket /ws/live?token=[redacted]" [accepted]' in text  # the lines are there
    assert "/ws/ingest?token=[redacted]" in text
    for secret in (INGEST, VIEW, wrong):
        assert secret not in text


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        _try(lambda: _pause(0.05))
    raise AssertionError("the server did not start")


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def _try(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, InvalidStatus):
        action()


def _visit(url: str, headers: dict[str, str] | None = None) -> None:
    with connect(url, proxy=None, additional_headers=headers):
        pass


# --------------------------------------------------------------------------- SQL


EXECUTE = {"execute", "executemany", "executescript"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Where SQL text holds identifiers, never values. Each entry: (file, function) -> why.
TRANSFER = "server/store/transfer.py"
IDENTIFIERS_FROM_SCHEMA = {
    (TRANSFER, "_tables"): "PRAGMA table_info takes the table name as text; names come "
    "from sqlite_master of the same database",
    (TRANSFER, "export_runs"): "table.select(): table and column names from the schema",
    (TRANSFER, "_count"): "table.select(): table and column names from the schema",
    (TRANSFER, "_insert"): "column names checked against the table's schema first",
}


def _placeholders(node: ast.AST) -> bool:
    """``", ".join("?" * n)``: only question marks, however many."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "join" and isinstance(node.func.value, ast.Constant)
            and len(node.args) == 1 and isinstance(node.args[0], ast.BinOp)
            and isinstance(node.args[0].op, ast.Mult)):
        return False
    return any(isinstance(s, ast.Constant) and s.value == "?"
               for s in (node.args[0].left, node.args[0].right))


def _static(node: ast.AST | None, env: set[str]) -> bool:
    """Text written in the code: literals, and names bound only to such text."""
    if isinstance(node, ast.Constant):  # text, or a number (which cannot carry SQL)
        return isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format" and _static(node.func.value, env)):
        return all(_static(a, env) for a in [*node.args, *(k.value for k in node.keywords)])
    if isinstance(node, ast.JoinedStr):
        return all(_static(v.value, env) for v in node.values
                   if isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _static(node.left, env) and _static(node.right, env)
    if isinstance(node, ast.Name):
        return node.id in env
    if _composed(node, env):
        return True
    return node is not None and _placeholders(node)


def _composed(node: ast.AST | None, env: set[str]) -> bool:
    """psycopg's ``sql.SQL(text).format(sql.Identifier(x), ...)``: text written in the code
    whose holes are filled only with quoted identifiers or bound literals."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format" and isinstance(node.func.value, ast.Call)):
        return False
    base = node.func.value
    quoted = ("Identifier", "Literal")
    return (getattr(base.func, "attr", None) == "SQL" and len(base.args) == 1
            and _static(base.args[0], env)
            and all(isinstance(a, ast.Call) and getattr(a.func, "attr", None) in quoted
                    for a in node.args))


def _nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one scope, not those of functions defined inside it."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (*FUNCTIONS, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def _static_names(scope: ast.AST, outer: set[str], tuples: dict[str, list[ast.expr]]) -> set[str]:
    values: dict[str, list[ast.expr | None]] = {}
    for node in _nodes(scope):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        values.setdefault(name.id, []).append(
                            node.value if target is name else None)
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            it = node.iter
            items = (it.elts if isinstance(it, (ast.Tuple, ast.List)) else
                     tuples.get(it.id, [None]) if isinstance(it, ast.Name) else [None])
            values.setdefault(node.target.id, []).extend(items)
    env = set(outer)
    while more := {n for n, vs in values.items() if all(_static(v, env) for v in vs)} - env:
        env |= more
    return env


@functools.cache
def _source(module: str) -> Path | None:
    """The file of one of our modules, from pyproject's folder mapping (nothing imported)."""
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    package = max((p for p in folders if module == p or module.startswith(p + ".")), key=len,
                  default=None)
    if package is None:
        return None
    base = ROOT / folders[package] / module[len(package):].lstrip(".").replace(".", "/")
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()),
                None)


@functools.cache
def _module_static(path: Path) -> set[str]:
    return _static_names(ast.parse(path.read_text()), set(), {})


def _imported_static(tree: ast.Module) -> set[str]:
    """Names imported from our own modules that are static text there."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainvitals."):
            path = _source(node.module or "")
            if path is None:
                continue
            env = _module_static(path)
            names |= {a.asname or a.name for a in node.names if a.name in env}
    return names


def sql_not_written_in_code(source: str, filename: str) -> list[str]:
    """Calls of execute/executemany/executescript whose SQL is not text written in the code
    (a parameter counts when every call in the module passes such text)."""
    tree = ast.parse(source)
    tuples = {t.id: list(n.value.elts) for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, (ast.Tuple, ast.List)) for t in n.targets
              if isinstance(t, ast.Name)}
    module_env = _static_names(tree, _imported_static(tree), tuples)
    scopes: list[tuple[ast.AST, set[str]]] = [(tree, module_env)]
    scopes += [(fn, _static_names(fn, module_env, tuples)) for fn in ast.walk(tree)
               if isinstance(fn, FUNCTIONS)]
    calls: dict[str, list[tuple[ast.Call, set[str]]]] = {}
    for scope, env in scopes:
        for call in _nodes(scope):
            if isinstance(call, ast.Call):
                callee = getattr(call.func, "id", getattr(call.func, "attr", None))
                calls.setdefault(str(callee), []).append((call, env))
    found = []
    for scope, env in scopes:
        env = env | _static_params(scope, calls)
        name = getattr(scope, "name", "<module>")
        for call in _nodes(scope):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in EXECUTE and call.args
                    and not _static(call.args[0], env)
                    and (filename, name) not in IDENTIFIERS_FROM_SCHEMA):
                found.append(f"{filename}:{call.lineno} in {name}: {ast.unparse(call.args[0])}")
    return found


def _static_params(fn: ast.AST, calls: dict[str, list[tuple[ast.Call, set[str]]]]) -> set[str]:
    """The parameters of ``fn`` to which every call in the module passes static text."""
    if not isinstance(fn, FUNCTIONS):
        return set()
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    ok = set(params) if fn.name in calls else set()
    for call, env in calls.get(fn.name, []):
        shift = 1 if params[:1] in (["self"], ["cls"]) else 0
        for i, param in enumerate(params[shift:]):
            arg = call.args[i] if i < len(call.args) else next(
                (k.value for k in call.keywords if k.arg == param), None)
            if not _static(arg, env):
                ok.discard(param)
    return ok


def test_the_sql_checker_catches_values_in_sql_text() -> None:
    bad = '''
def find(conn, name):
    conn.execute(f"SELECT id FROM runs WHERE name='{name}'")
    conn.execute("SELECT id FROM runs WHERE name='" + name + "'")
    conn.execute("SELECT id FROM runs WHERE name='%s'" % name)
    conn.execute("SELECT id FROM runs WHERE name={}".format(name))
    query = "SELECT 1"
    query = name
    conn.execute(query)
def helper(conn, sql):
    conn.execute(sql)
helper(None, "SELECT 1")
helper(None, input())
def listen(conn, name):
    conn.execute(sql.SQL("LISTEN " + name).format())
    conn.execute(sql.SQL("LISTEN {}").format(name))
'''
    good = '''
TABLES = ("DELETE FROM a WHERE id=?", "DELETE FROM b WHERE id=?")
BASE = "SELECT id FROM runs"
def find(conn, name, n):
    conn.execute(f"{BASE} WHERE name=?", (name,))
    conn.execute(f"SELECT id FROM runs WHERE id IN ({','.join('?' * n)})", range(n))
    for sql in TABLES:
        conn.execute(sql, (1,))
def count(conn, sql, *params):
    return conn.execute(sql, params)
count(None, "SELECT count(*) FROM runs WHERE id=?", 1)
def listen(conn, channel):
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
'''
    assert len(sql_not_written_in_code(bad, "bad.py")) == 8
    assert sql_not_written_in_code(good, "good.py") == []


def test_sql_is_written_in_the_code_and_values_are_bound() -> None:
    files = sorted(p.relative_to(ROOT) for folder in ("server", "root", "cli", "trainer_plugin",
                                                      "demo")
                   for p in (ROOT / folder).rglob("*.py"))
    assert Path("server/store/sqlite/store.py") in files
    found = [v for p in files for v in sql_not_written_in_code((ROOT / p).read_text(), str(p))]
    assert found == []
    checked = {(str(p), fn.name) for p in files
               for fn in ast.walk(ast.parse((ROOT / p).read_text())) if isinstance(fn, FUNCTIONS)}
    stale = set(IDENTIFIERS_FROM_SCHEMA) - checked
    assert not stale, f"exceptions for functions that no longer exist: {stale}"
