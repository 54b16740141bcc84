"""Request bodies, as the reference API writes them, checked strictly."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from api.errors import ApiError
from api.guards import MAX_JSON_DEPTH, walk_strings
from core.callbacks import form_problem
from core.reference import ImageRef, parse_registry

# Curly quotes, as word processors and web pages print them (written as escapes).
TYPOGRAPHIC_QUOTES = "\u201c\u201d\u2018\u2019\u201e\u201f\u00ab\u00bb"


def parse_json_body(raw: bytes) -> Any:
    """Parse a JSON body, with errors a person can act on. Empty means ``None``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return None
    if any(q in text for q in TYPOGRAPHIC_QUOTES):
        raise ApiError(
            400,
            "request body contains typographic quotes (such as “ or ”), which JSON does "
            "not accept; they often come from copying an example out of a document. Use "
            'plain double quotes: {"onDemandScan": true, "tag": {...}}',
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ApiError(400, f"request body holds a number too large to read: {exc}") from None
    if value is None:
        raise ApiError(400, "request body is JSON null: send an object, or no body at all")
    why = walk_strings(value)
    if why is not None:
        raise ApiError(400, f"request body {why}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def validate_callback_url(url: str) -> str:
    """Where a job's final state is POSTed, by its form; where it leads is checked when
    the job is accepted and again when the callback is sent (core.callbacks)."""
    problem = form_problem(url)
    if problem is not None:
        raise ValueError(problem)
    if len(url) > MAX_CALLBACK_URL:
        raise ValueError(f"callbackUrl is longer than {MAX_CALLBACK_URL} characters")
    return url


class ScanRequest(Strict):
    onDemandScan: StrictBool = False
    tag: ImageRef | None = None
    callbackUrl: StrictStr = ""

    @field_validator("callbackUrl")
    @classmethod
    def _callback(cls, v: str) -> str:
        return validate_callback_url(v) if v else v

    @model_validator(mode="after")
    def _on_demand_needs_tag(self) -> ScanRequest:
        if self.onDemandScan and self.tag is None:
            raise ValueError(
                'an on-demand scan needs the image: add "tag": {"registry": ..., "repo": ..., '
                '"tag": ...}'
            )
        return self


MAX_BULK_IMAGES = 1000
MAX_CALLBACK_URL = 2048


class BulkScanRequest(Strict):
    """Many on-demand scans at once: one job per image."""

    images: list[ImageRef] = Field(min_length=1)
    callbackUrl: StrictStr = ""

    @field_validator("images", mode="before")
    @classmethod
    def _at_most(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_BULK_IMAGES:
            raise ValueError(
                f"{len(v)} images is more than {MAX_BULK_IMAGES} per request; split the list"
            )
        return v

    @field_validator("callbackUrl")
    @classmethod
    def _callback(cls, v: str) -> str:
        return validate_callback_url(v) if v else v


SUPPORTED_VERSIONS = {"2": "Docker Registry v2"}
MAX_COLLECTIONS = 100
MAX_SPECIFICATIONS = 500
MAX_PATTERNS = 100  # exclusions per specification
MAX_CAP = 10_000  # newest tags per repository
# What a repository or tag glob may hold: the characters of the names it matches
# (letters, digits, ``._-`` and ``/`` between path components) and the glob's own.
_REPOSITORY_GLOB = re.compile(r"[a-z0-9._/*?\[\]!-]*")
_TAG_GLOB = re.compile(r"[A-Za-z0-9._*?\[\]!-]*")


def _glob(kind: str, pattern: str, allowed: re.Pattern[str]) -> str:
    if len(pattern) > 255 or not allowed.fullmatch(pattern):
        raise ValueError(
            f"{kind} pattern {pattern!r} may only hold the characters of {kind} names and "
            "the glob characters * ? [ ] ! (at most 255)"
        )
    return pattern


class Specification(Strict):
    """One entry of the registry scanning configuration, in the reference shape."""

    version: StrictStr = "2"
    registry: StrictStr = Field(max_length=255)
    repository: StrictStr = ""
    tag: StrictStr = ""
    excludedRepositories: list[StrictStr] = Field(default_factory=list, max_length=MAX_PATTERNS)
    excludedTags: list[StrictStr] = Field(default_factory=list, max_length=MAX_PATTERNS)
    credentialID: StrictStr = Field(default="", max_length=255)
    os: StrictStr = "linux"
    cap: StrictInt = Field(default=5, ge=0, le=MAX_CAP)
    scanners: StrictInt = Field(default=2, ge=1, le=64)
    # Prisma fields regscan applies (see scheduler/scope.py).
    namespace: StrictStr = Field(default="", max_length=255)
    versionPattern: StrictStr = Field(default="", max_length=255)
    # Prisma fields kept and returned, not acted on.
    harborDeploymentSecurity: StrictBool = False
    collections: list[dict[str, Any] | StrictStr] = Field(
        default_factory=list, max_length=MAX_COLLECTIONS
    )
    gitlabRegistrySpec: dict[str, Any] | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(
                f'registry type {v!r} is not supported; use "2" (Docker Registry v2, '
                "which covers any OCI distribution registry)"
            )
        return v

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        parse_registry(v)
        return v

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        return _glob("repository", v, _REPOSITORY_GLOB)

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        return _glob("tag", v, _TAG_GLOB)

    @field_validator("excludedRepositories")
    @classmethod
    def _excluded_repositories(cls, v: list[str]) -> list[str]:
        return [_glob("repository", p, _REPOSITORY_GLOB) for p in v]

    @field_validator("excludedTags")
    @classmethod
    def _excluded_tags(cls, v: list[str]) -> list[str]:
        return [_glob("tag", p, _TAG_GLOB) for p in v]

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _glob("namespace", v, _REPOSITORY_GLOB)

    @field_validator("versionPattern")
    @classmethod
    def _version_pattern(cls, v: str) -> str:
        return _glob("versionPattern", v, _TAG_GLOB)

    @field_validator("os")
    @classmethod
    def _os(cls, v: str) -> str:
        if v not in ("linux", "windows"):
            raise ValueError(f'os {v!r} is not known; use "linux" or "windows"')
        return v


class RegistrySettings(Strict):
    """``{"specifications": [...]}``, with the read-only fields ``GET`` adds, so that a
    document read can be written back: they are accepted and ignored."""

    specifications: list[Specification] = Field(max_length=MAX_SPECIFICATIONS)
    id: Any = Field(default=None, alias="_id")
    webhookUrlSuffix: Any = None
    harborScannerUrlSuffix: Any = None


class Credentials(Strict):
    username: StrictStr
    password: StrictStr
