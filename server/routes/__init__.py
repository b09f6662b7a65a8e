"""The HTTP routes, one module per group; ``create_app`` includes ``ROUTERS`` in order."""

from __future__ import annotations

from tandem.server.routes import admin, embeddings, info, probes, search

ROUTERS = (probes.router, search.router, embeddings.router, info.router, admin.router)
