"""The web dashboard, served by the API at ``/`` and under ``/ui/``.

Server-rendered pages (Jinja2 templates in ``templates/``), a vendored htmx
(``static/``) refreshing the live parts, no build step. Behind the API's users and
roles (``session``); what a page shows is gathered in ``panels``, the fleet chart's
geometry in ``charts``, the routes in ``pages``.
"""

from api.dashboard.pages import install

__all__ = ["install"]
