"""``/credentials``: registry accounts that specifications name by ``credentialID``.

Shaped like the reference credentials store. The secret (and an ``apiToken``) is
encrypted on arrival (``core.secrets``) and never leaves again: no response and no log
line holds it. ``caCert`` and ``skipVerify`` set how workers check the TLS of the
registries using the credential; the other Prisma fields are kept and returned only.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from fastapi import APIRouter
from pydantic import Field, StrictBool, StrictStr, field_validator, model_validator
from sqlalchemy.exc import IntegrityError

from api.deps import Admin, RawBody, State
from api.errors import ApiError
from api.openapi import body
from api.schemas import Strict, parse_json_body
from core.secrets import SecretBox, SecretKeyError, secret_box
from core.views import ts
from models import Credential
from models import credentials as store
from models.db import transaction

router = APIRouter()

# Types whose secret is a password or token for a registry account (HTTP Basic, or the
# Docker token flow with those credentials). "dtr" is Docker Trusted Registry's name for it.
SUPPORTED_TYPES = ("basic", "dtr")
MAX_SECRET_CHARS = 64 << 10
MAX_CA_CERT_CHARS = 256 << 10
# Prisma fields kept as sent and returned, not acted on, with their defaults.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "useAWSRole": False,
    "accountName": "",
    "useSTSRegionalEndpoint": False,
}


class Secret(Strict):
    """The reference's ``{"encrypted": "", "plain": "..."}``."""

    encrypted: StrictStr = ""
    plain: StrictStr = ""

    @model_validator(mode="after")
    def _plain_only(self) -> Secret:
        if self.encrypted:
            raise ValueError(
                "an encrypted secret from another console cannot be read here; "
                'send it as {"plain": "..."} (it is encrypted before it is stored)'
            )
        if not self.plain:
            raise ValueError('the secret is empty: send {"plain": "PASSWORD-OR-TOKEN"}')
        if len(self.plain) > MAX_SECRET_CHARS:
            raise ValueError(f"the secret is longer than {MAX_SECRET_CHARS} characters")
        return self


class OptionalSecret(Strict):
    """A secret that may be left out, as the reference's ``apiToken`` often is."""

    encrypted: StrictStr = ""
    plain: StrictStr = Field(default="", max_length=MAX_SECRET_CHARS)

    @model_validator(mode="after")
    def _plain_only(self) -> OptionalSecret:
        if self.encrypted:
            raise ValueError('send the token as {"plain": "..."}; it is encrypted before storing')
        return self


class CredentialIn(Strict):
    id: StrictStr = Field(alias="_id")
    type: StrictStr = "basic"
    accountID: StrictStr
    secret: Secret
    description: StrictStr = Field(default="", max_length=255)
    caCert: StrictStr = Field(default="", max_length=MAX_CA_CERT_CHARS)
    skipVerify: StrictBool = False
    apiToken: OptionalSecret = Field(default_factory=OptionalSecret)
    useAWSRole: StrictBool = False
    accountName: StrictStr = Field(default="", max_length=255)
    useSTSRegionalEndpoint: StrictBool = False
    # Read-only in GET /credentials: accepted back and ignored.
    lastModified: Any = None

    @field_validator("caCert")
    @classmethod
    def _ca_cert(cls, v: str) -> str:
        if not v.strip():
            return ""
        try:
            x509.load_pem_x509_certificates(v.encode())
        except ValueError:
            raise ValueError(
                "must be PEM CA certificates (-----BEGIN CERTIFICATE-----...), "
                "the CAs that signed the registry's certificate"
            ) from None
        return v

    @field_validator("apiToken", mode="before")
    @classmethod
    def _token_string(cls, v: Any) -> Any:
        return {"plain": v} if isinstance(v, str) else v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v or len(v) > 128:
            raise ValueError('must be 1 to 128 characters, e.g. "my-registry"')
        if v != v.strip() or "/" in v or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(
                "must not contain '/', control characters, or leading or trailing spaces"
            )
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v not in SUPPORTED_TYPES:
            raise ValueError(
                f'credential type {v!r} is not supported; use "basic" '
                "(a registry account and its password or access token)"
            )
        return v

    @field_validator("accountID")
    @classmethod
    def _account(cls, v: str) -> str:
        if not v or len(v) > 255:
            raise ValueError("must be the registry account (user name), 1 to 255 characters")
        return v

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_string(cls, v: Any) -> Any:
        # A plain string is accepted as well as the reference's object.
        if isinstance(v, str):
            return {"plain": v}
        if not isinstance(v, dict):
            raise ValueError('must be {"plain": "PASSWORD-OR-TOKEN"} or a string')
        return v


def credential_view(row: Credential) -> dict[str, Any]:
    """A credential on the wire: everything but the secret."""
    return {
        "_id": row.id,
        "type": row.type,
        "accountID": row.account_id,
        "description": row.description,
        "lastModified": ts(row.updated_at),
        "caCert": row.ca_cert,
        "skipVerify": row.skip_verify,
        **{**REFERENCE_DEFAULTS, **(row.reference_fields or {})},
    }


def _box(state: State) -> SecretBox:
    try:
        return secret_box(state.settings)
    except SecretKeyError as exc:
        raise ApiError(503, f"credentials cannot be stored: {exc}") from None


@router.get("/credentials")
def list_credentials(_caller: Admin, state: State) -> list[dict[str, Any]]:
    """Every credential, without secrets."""
    with state.sessions() as session:
        return [credential_view(r) for r in store.list_credentials(session)]


@router.post("/credentials", openapi_extra=body(CredentialIn))
def put_credential(_caller: Admin, state: State, body: RawBody) -> dict[str, Any]:
    """Create a credential, or replace the one with the same ``_id``."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            'body must be {"_id": "NAME", "type": "basic", "accountID": "USER", '
            '"secret": {"plain": "PASSWORD"}}',
        )
    cred = CredentialIn.model_validate(payload)
    box = _box(state)
    fields = {
        "type": cred.type,
        "account_id": cred.accountID,
        "secret_token": box.encrypt(cred.secret.plain),
        "description": cred.description,
        "ca_cert": cred.caCert,
        "skip_verify": cred.skipVerify,
        "api_token": box.encrypt(cred.apiToken.plain) if cred.apiToken.plain else "",
        "reference_fields": {name: getattr(cred, name) for name in REFERENCE_DEFAULTS},
    }
    try:
        return _save(state, cred.id, fields)
    except IntegrityError:
        # Two requests created the same new id at once: the second one now updates it.
        return _save(state, cred.id, fields)


def _save(state: State, credential_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    with transaction(state.sessions) as session:
        return credential_view(store.put_credential(session, credential_id, **fields))


@router.get("/credentials/{credential_id}/usages")
def credential_usages(_caller: Admin, state: State, credential_id: str) -> list[dict[str, Any]]:
    """The specifications that use a credential, as the reference lists usages."""
    with state.sessions() as session:
        if store.get_credential(session, credential_id) is None:
            raise ApiError(
                404, f"no credential {credential_id!r}: GET /api/v1/credentials lists them"
            )
        users = store.specs_using(session, credential_id)
    return [
        {
            "type": "registry",
            "description": f"{s.address} {s.repository or '*'}",
            "registry": s.address,
            "repository": s.repository,
        }
        for s in users
    ]


@router.delete("/credentials/{credential_id}")
def delete_credential(_caller: Admin, state: State, credential_id: str) -> dict[str, Any]:
    """Delete a credential no specification uses."""
    with transaction(state.sessions) as session:
        row = store.lock_credential(session, credential_id)
        if row is None:
            raise ApiError(
                404, f"no credential {credential_id!r}: GET /api/v1/credentials lists them"
            )
        users = store.specs_using(session, credential_id)
        if users:
            named = ", ".join(f"{s.address} {s.repository or '*'}" for s in users)
            raise ApiError(
                409,
                f"credential {credential_id!r} is used by {len(users)} specification(s) "
                f"({named}): change their credentialID or remove them in "
                "/settings/registry first",
            )
        store.delete_credential(session, row)
    return {"deleted": credential_id}
