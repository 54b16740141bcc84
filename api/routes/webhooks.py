"""``POST /registry/webhook/webhook``: registry push notifications start on-demand scans.

Two payloads are understood, told apart by their shape:

- the CNCF distribution registry's envelope ``{"events": [...]}``: a manifest pushed
  under a tag is scanned; manifests pushed by digest only (the children of a
  multi-arch index, which the registry reports before the tagged index), blobs,
  pulls, mounts and deletes are ignored;
- Harbor's ``PUSH_ARTIFACT`` webhook: each tagged resource is scanned.

The registry an event names is its identity ``host[:port]``: the host of the
event's ``target.url`` (which the distribution registry builds from the address it
was reached at, or from its ``http.host`` setting), else ``request.host``; for
Harbor, the host of ``resource_url``. ``?registry=HOST[:PORT]`` on the webhook URL
overrides it, for a registry known to regscan under another name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from api.deps import RawBody, State
from api.errors import ApiError
from api.guards import check_text
from api.openapi import body
from core.reference import ImageRef, parse_registry
from core.secrets import webhook_secret
from core.settings import Settings
from scanner.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from scheduler import pushes
from scheduler.pushes import Push

router = APIRouter()

WEBHOOK_PATH = "/registry/webhook/webhook"
SECRET_HEADER = "x-regscan-webhook-secret"
_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX})
_MAX_EVENT_ID = 255


def check_secret(request: Request, settings: Settings, secret_param: str | None) -> None:
    """401 unless the request carries the webhook secret (query or header)."""
    expected = webhook_secret(settings)
    if expected is None:
        raise ApiError(
            401,
            "push notifications are disabled: set REGSCAN_WEBHOOK_SECRET (or "
            "REGSCAN_SECRET_KEY, from which a secret is derived)",
        )
    given = secret_param or request.headers.get(SECRET_HEADER) or _bearer(request)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "wrong or missing webhook secret: append webhookUrlSuffix from "
            "GET /api/v1/settings/registry to the URL, or send it in X-Regscan-Webhook-Secret",
        )


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def webhook_sender(
    request: Request,
    state: State,
    secret: str | None = Query(None, description="the webhook secret"),
) -> None:
    """The sender must hold the webhook secret; checked before the body is read."""
    check_secret(request, state.settings, secret)


@router.post(WEBHOOK_PATH, openapi_extra=body(dict[str, Any]))
def receive_push(
    _sender: Annotated[None, Depends(webhook_sender)],
    body: RawBody,
    state: State,
    registry: str | None = Query(None, description="registry identity to use for events"),
) -> dict[str, Any]:
    """Scan what the notification says was pushed; answers with what became of each event."""
    host = _override_host(registry)
    parsed = parse_notification(_json(body), host)
    counts = {"scanned": 0, "ignored": parsed.ignored, "outOfScope": 0, "duplicate": 0}
    jobs = []
    for push in parsed.pushes:
        result = pushes.accept_push(state.admission, push)
        counts[_COUNT_OF[result.outcome]] += 1
        if result.job_id is not None:
            jobs.append(result.job_id)
    return {**counts, "jobs": jobs}


_COUNT_OF = {
    pushes.SCANNED: "scanned",
    pushes.OUT_OF_SCOPE: "outOfScope",
    pushes.DUPLICATE: "duplicate",
}


def _json(body: bytes) -> Any:
    # Not parse_json_body: a registry's payload is taken as it is, whatever it quotes.
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"notification body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "notification body nests too deep") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ApiError(400, f"notification body holds a number too large to read: {exc}") from None


def _override_host(registry: str | None) -> str | None:
    if not registry:
        return None
    try:
        return parse_registry(registry).host
    except ValueError as exc:
        raise ApiError(400, f"?registry= on the webhook URL: {exc}") from None


# -- payloads ------------------------------------------------------------------------


@dataclass
class Notification:
    """The pushes a notification asks to scan, and how many of its events were not."""

    pushes: list[Push] = field(default_factory=list)
    ignored: int = 0

    def add(self, push: Push | None) -> None:
        if push is None:
            self.ignored += 1
        else:
            self.pushes.append(push)


def parse_notification(payload: Any, host: str | None) -> Notification:
    """Read a distribution envelope or a Harbor webhook; 400 for anything else."""
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        found = Notification()
        for event in payload["events"]:
            found.add(distribution_push(event, host))
        return found
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        return harbor_pushes(payload, host)
    raise ApiError(
        400,
        'expected a registry notification: {"events": [...]} from a distribution registry, '
        'or a Harbor webhook {"type": "PUSH_ARTIFACT", "event_data": {...}}',
    )


def distribution_push(event: Any, host: str | None) -> Push | None:
    """The tagged manifest push an event reports, or None for anything to ignore."""
    if not isinstance(event, dict) or event.get("action") != "push":
        return None
    target = event.get("target")
    if not isinstance(target, dict) or target.get("mediaType") not in _MANIFEST_TYPES:
        return None
    event_id = event.get("id")
    if not target.get("tag") or not isinstance(event_id, str) or not event_id:
        return None  # by digest only: a child of an index whose tagged push follows
    if check_text(event_id) is not None:
        return None
    request = event.get("request")
    host = host or _url_host(target.get("url"))
    if not host and isinstance(request, dict):
        host = _plain_host(request.get("host"))
    ref = _checked_ref(host, target.get("repository"), target.get("tag"), target.get("digest"))
    if ref is None:
        return None
    return Push(_bounded_id(event_id), "distribution", ref)


def harbor_pushes(payload: dict[str, Any], host: str | None) -> Notification:
    """One push per tagged resource of a ``PUSH_ARTIFACT`` webhook; other types ignored."""
    found = Notification()
    data = payload.get("event_data")
    if not isinstance(data, dict):
        data = {}
    resources = data.get("resources")
    if payload["type"] != "PUSH_ARTIFACT" or not isinstance(resources, list):
        found.ignored += 1
        return found
    repository = data.get("repository")
    name = repository.get("repo_full_name") if isinstance(repository, dict) else None
    for resource in resources:
        found.add(_harbor_push(resource, name, payload.get("occur_at"), host))
    return found


def _harbor_push(resource: Any, name: Any, occur_at: Any, host: str | None) -> Push | None:
    if not isinstance(resource, dict):
        return None
    tag, digest = resource.get("tag"), resource.get("digest")
    ref = _checked_ref(host or _resource_host(resource.get("resource_url")), name, tag, digest)
    if ref is None:
        return None
    # Harbor sends no event id: the same push at the same moment is the same event.
    key = f"{ref.registry}\0{ref.repo}\0{ref.digest}\0{ref.tag}\0{occur_at}"
    return Push("harbor:" + hashlib.sha256(key.encode()).hexdigest(), "harbor", ref)


def _checked_ref(host: Any, repo: Any, tag: Any, digest: Any) -> ImageRef | None:
    """An image reference from an event's fields, or None when any of them is unusable."""
    if not all(isinstance(v, str) and v for v in (host, repo, tag)):
        return None
    try:
        return ImageRef(registry=host, repo=repo, tag=tag, digest=digest or "")
    except ValidationError:
        return None


def _url_host(url: Any) -> str | None:
    """The registry identity of an absolute http(s) URL, e.g. an event's ``target.url``."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        return parse_registry(f"{parts.scheme}://{parts.netloc}").host
    except ValueError:
        return None


def _plain_host(hostport: Any) -> str | None:
    if not isinstance(hostport, str):
        return None
    try:
        return parse_registry(hostport).host
    except ValueError:
        return None


def _resource_host(resource_url: Any) -> str | None:
    """Harbor's ``resource_url`` is ``host[:port]/project/repo:tag``, without a scheme."""
    if not isinstance(resource_url, str):
        return None
    if "://" in resource_url:
        return _url_host(resource_url)
    return _plain_host(resource_url.partition("/")[0])


def _bounded_id(event_id: str) -> str:
    if len(event_id) <= _MAX_EVENT_ID:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
