"""``/settings/registry``: the registry scanning configuration."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from api.deps import Admin, RawBody, State, Viewer
from api.errors import ApiError
from api.openapi import body
from api.schemas import RegistrySettings, Specification, parse_json_body
from core.reference import parse_registry
from core.requester import Requester
from core.secrets import webhook_secret
from core.views import job_view
from models import RegistrySpec
from models import credentials as credential_store
from models import specs as spec_store
from models.db import transaction
from scheduler.errors import SchedulerError

router = APIRouter()


def spec_view(row: RegistrySpec) -> dict[str, Any]:
    return {
        "version": row.version,
        "registry": row.address,
        "repository": row.repository,
        "tag": row.tag,
        "excludedRepositories": row.excluded_repositories,
        "excludedTags": row.excluded_tags,
        "credentialID": row.credential_id,
        "os": row.os,
        "cap": row.cap,
        "scanners": row.scanners,
        "namespace": row.namespace,
        "versionPattern": row.version_pattern,
        **{**_REFERENCE_DEFAULTS, **(row.reference_fields or {})},
    }


# Prisma fields stored as sent and returned, but not acted on, with their defaults.
_REFERENCE_DEFAULTS: dict[str, Any] = {
    "harborDeploymentSecurity": False,
    "collections": [],
    "gitlabRegistrySpec": None,
}


def _row_fields(spec: Specification) -> dict[str, Any]:
    return {
        "version": spec.version,
        "address": spec.registry,
        "registry_host": parse_registry(spec.registry).host,
        "repository": spec.repository,
        "tag": spec.tag,
        "excluded_repositories": spec.excludedRepositories,
        "excluded_tags": spec.excludedTags,
        "credential_id": spec.credentialID,
        "os": spec.os,
        "cap": spec.cap,
        "scanners": spec.scanners,
        "namespace": spec.namespace,
        "version_pattern": spec.versionPattern,
        "reference_fields": {name: getattr(spec, name) for name in _REFERENCE_DEFAULTS},
    }


@router.get("/settings/registry")
def get_registry_settings(caller: Viewer, state: State) -> dict[str, Any]:
    """The configuration; the webhook secret (which starts scans) only for admins."""
    with state.sessions() as session:
        specs = [spec_view(r) for r in spec_store.list_specs(session)]
    secret = webhook_secret(state.settings) if caller.may("admin") else None
    return {
        "specifications": specs,
        "webhookUrlSuffix": f"?secret={secret}" if secret else "",
        # Where Harbor reaches regscan as its pluggable scanner, after the server's address.
        "harborScannerUrlSuffix": "/harbor",
    }


@router.put("/settings/registry", openapi_extra=body(RegistrySettings))
def put_registry_settings(
    caller: Admin, state: State, body: RawBody, scanLater: bool = Query(False)
) -> dict[str, Any]:
    """Replace the whole configuration, then scan it unless ``scanLater=true``."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(400, 'body must be {"specifications": [...]}')
    specs = RegistrySettings.model_validate(payload).specifications
    with transaction(state.sessions) as session:
        _check_credentials(session, specs)
        rows = spec_store.replace_specs(session, [_row_fields(s) for s in specs])
        saved = [spec_view(r) for r in rows]
    return {"specifications": saved, **_maybe_scan(state, caller.name, scanLater or not saved)}


@router.post("/settings/registry", openapi_extra=body(RegistrySettings | Specification))
def add_registry_settings(
    caller: Admin, state: State, body: RawBody, scanLater: bool = Query(False)
) -> dict[str, Any]:
    """Append one specification (or ``{"specifications": [...]}``) to the configuration."""
    payload = parse_json_body(body)
    if isinstance(payload, dict) and "specifications" in payload:
        specs = RegistrySettings.model_validate(payload).specifications
    elif isinstance(payload, dict):
        specs = [Specification.model_validate(payload)]
    else:
        raise ApiError(400, 'body must be one specification object or {"specifications": [...]}')
    with transaction(state.sessions) as session:
        _check_credentials(session, specs)
        rows = spec_store.append_specs(session, [_row_fields(s) for s in specs])
        saved = [spec_view(r) for r in rows]
    return {"specifications": saved, **_maybe_scan(state, caller.name, scanLater)}


def _check_credentials(session: Session, specs: list[Specification]) -> None:
    """A specification may only name a credential that exists."""
    missing = credential_store.missing_credentials(session, (s.credentialID for s in specs))
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ApiError(
            400,
            f"credentialID {names} is not a known credential: create it first with "
            "POST /api/v1/credentials (GET /api/v1/credentials lists them)",
        )


def _maybe_scan(state: State, user: str, later: bool) -> dict[str, Any]:
    """Saving starts a regular scan; a refusal does not undo the save, it is reported."""
    if later:
        return {"scan": None}
    try:
        job = state.admission.request_regular_all(Requester(user, source="settings"))
    except SchedulerError as exc:
        return {"scan": None, "scanNotStarted": str(exc)}
    return {"scan": job_view(job)}
