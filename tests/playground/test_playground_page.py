"""The playground's files are served from the package, with a same-origin-only policy."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server import playground

STATIC = Path(playground.__file__).parent / "static"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(playground.router)
    return TestClient(app)


def test_index_is_the_packaged_page_with_a_same_origin_policy(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == (STATIC / "index.html").read_bytes()
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("name", "media"), [("app.js", "text/javascript"), ("style.css", "text/css")])
def test_static_files_are_served_with_their_media_type(client: TestClient, name: str, media: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.content == (STATIC / name).read_bytes()


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2Fplayground.py", "/static/playground.py",
                                  "/static/.hidden.js", "/static/%2e%2e%2Fprotocol.py", "/static/app.js.map"])
def test_only_the_pages_own_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_page_references_only_relative_urls() -> None:
    """No CDN, no absolute URL: everything the page loads or calls is relative to its origin."""
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text()
    css = (STATIC / "style.css").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(not re.match(r"^[a-z]+://|^//", ref) for ref in refs), refs
    assert not re.search(r"https?://", js + css)
    assert "@import" not in css and "url(" not in css


def test_static_files_ship_as_package_data() -> None:
    """pyproject's package discovery and data globs include every file of server/static."""
    import tomllib
    from setuptools import find_namespace_packages

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_namespace_packages(where=str(root), include=config["packages"]["find"]["include"])
    assert "server.static" in packages
    globs = config["package-data"]["*"]
    for path in STATIC.iterdir():
        assert any(path.match(g) for g in globs), f"{path.name} is not matched by package-data {globs}"
    assert (resources.files("server") / "static" / "index.html").is_file()


def test_the_server_app_serves_the_page_without_an_api_key() -> None:
    """`build_app` includes the router; the page loads without a key where /v1 routes need one."""
    from server.app import build_app
    from server.settings import Settings

    app = build_app(Settings(api_keys="secret-key"), load_models=False)
    client = TestClient(app)  # no lifespan: the page needs no models
    assert client.get("/").content == (STATIC / "index.html").read_bytes()
    assert client.get("/static/app.js").status_code == 200
