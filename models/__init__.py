"""SQLAlchemy models: the only place that writes SQL."""

from models.base import Base
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
from models.specs import RegistrySpec
from models.users import AuthToken, User

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "AuthToken",
    "Base",
    "Image",
    "ImageScan",
    "ItemStatus",
    "JobKind",
    "JobStatus",
    "RegistrySpec",
    "ScanJob",
    "ScanResult",
    "Tag",
    "User",
]
