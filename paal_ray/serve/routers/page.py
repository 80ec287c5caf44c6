"""GET /: the annotators' page (server-rendered HTML, one small script, no build step).

The page's shell is open and shows nothing until a token is entered (kept in the tab's
sessionStorage, sent as ``Authorization: Bearer``): every datum, images included, comes from the
API with that token.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from paal_ray.serve.auth import public

router = APIRouter(tags=["page"], include_in_schema=False)

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def _asset(name: str) -> str:
    return resources.files("paal_ray.serve").joinpath("page", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
@public
def page() -> HTMLResponse:
    from paal_ray import __version__

    html = _asset("index.html").replace("{{version}}", __version__)
    return HTMLResponse(html, headers={"Content-Security-Policy": _CSP})


@router.get("/page.js")
@public
def page_script() -> Response:
    return Response(_asset("page.js"), media_type="text/javascript")


@router.get("/page.css")
@public
def page_style() -> Response:
    return Response(_asset("page.css"), media_type="text/css")
