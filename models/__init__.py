"""SQLAlchemy models: the only place that writes SQL.

One module per noun: a table and the functions that read and write it live together,
named after it (``jobs``, ``image_scans``, ``results``, ``images``, ``findings``, ...).
Functions take the session and never commit: the API request or the task wrapper owns
the transaction. Every table is imported here, so ``Base.metadata`` (which Alembic
compares the migrations with) holds them all.
"""

from models.api_tokens import ApiToken
from models.base import Base
from models.callbacks import CallbackDelivery
from models.credentials import Credential
from models.findings import Finding, ImageTarget
from models.idempotency import IdempotencyKey
from models.image_scans import ImageScan, ItemStatus
from models.images import Image, ImagePackage, Tag
from models.jobs import ACTIVE_STATUSES, FINAL_STATUSES, JobKind, JobStatus, ScanJob
from models.layers import LayerAnalysis
from models.package_versions import PackageFinding, PackageVersion
from models.results import ScanResult
from models.schedule import ScanSchedule, ScheduleTick
from models.specs import RegistrySpec
from models.users import AuthToken, User
from models.vuln_records import VulnChange, VulnDbState, VulnPackage, VulnRecord, VulnSource
from models.webhooks import WebhookEvent

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "ApiToken",
    "AuthToken",
    "Base",
    "CallbackDelivery",
    "Credential",
    "Finding",
    "IdempotencyKey",
    "Image",
    "ImagePackage",
    "ImageScan",
    "ImageTarget",
    "ItemStatus",
    "JobKind",
    "JobStatus",
    "LayerAnalysis",
    "PackageFinding",
    "PackageVersion",
    "RegistrySpec",
    "ScanJob",
    "ScanResult",
    "ScanSchedule",
    "ScheduleTick",
    "Tag",
    "User",
    "VulnChange",
    "VulnDbState",
    "VulnPackage",
    "VulnRecord",
    "VulnSource",
    "WebhookEvent",
]
