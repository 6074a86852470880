"""The service panel: a page in the browser that drives barmaid over its own WebSocket.

Plain static files shipped inside the package (barmaid/panel/), with no build step and nothing
fetched from elsewhere, since the machine is often offline at a party. `respond` answers the
HTTP requests that reach barmaid's port; the page then opens its WebSocket to the same host and
port (or to the `?ws=` URL in its query).
"""

from __future__ import annotations

from importlib import resources
from typing import Optional
from urllib.parse import urlsplit

from .transport import HttpResponse

#: The only files served, by URL path: a fixed table, so no path can reach another file.
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/panel.js": ("panel.js", "text/javascript; charset=utf-8"),
    "/panel.css": ("panel.css", "text/css; charset=utf-8"),
}


def respond(path: str) -> Optional[HttpResponse]:
    """The HTTP answer for a request path: (status, content type, body), or None if not the panel's.

    Args:
        path: the request target as it came, e.g. "/?ws=ws://pi:8765/"; the query is ignored.
    """
    entry = FILES.get(urlsplit(path).path)
    if entry is None:
        return None
    name, content_type = entry
    return HttpResponse(200, content_type, resources.files(__package__).joinpath("panel").joinpath(name).read_bytes())
