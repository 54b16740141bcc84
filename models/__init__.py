"""SQLAlchemy models: the only place that writes SQL."""

from models.base import Base
from models.credentials import Credential
from models.enqueue import ApiToken, CallbackDelivery, IdempotencyKey
from models.images import Image, Tag
from models.jobs import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    ImageScan,
    ItemStatus,
    JobKind,
    JobStatus,
    ScanJob,
    ScanResult,
)
from models.layers import LayerAnalysis
from models.schedule import ScanSchedule, ScheduleTick, WebhookEvent
from models.specs import RegistrySpec
from models.users import AuthToken, User
from models.vulns import (
    Finding,
    ImagePackage,
    VulnChange,
    VulnDbState,
    VulnPackage,
    VulnRecord,
    VulnSource,
)

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
    "ItemStatus",
    "JobKind",
    "JobStatus",
    "LayerAnalysis",
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
