"""organscope's HTTP service and browser viewer (`organscope serve`; needs the serve extra).

    from organscope.service import create_app
    app = create_app(allowed_dir="/data/scans", max_upload_mb=512)

See app.py for the endpoints; the viewer's built files are in static/ (sources in the repository's viewer/).
"""
from __future__ import annotations


def create_app(**kwargs):
    """See organscope.service.app.create_app (imported here lazily: FastAPI loads only when it is used)."""
    from .app import create_app as _create_app

    return _create_app(**kwargs)


__all__ = ["create_app"]
