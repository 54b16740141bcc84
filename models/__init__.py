"""SQLAlchemy models: the only place that writes SQL."""

from models.base import Base
from models.credentials import Credential
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
from models.specs import RegistrySpec
from models.users import AuthToken, User
from models.vulns import Finding, ImagePackage, VulnDbState, VulnPackage, VulnRecord, VulnSource

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "AuthToken",
    "Base",
    "Credential",
    "Finding",
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
    "Tag",
    "User",
    "VulnDbState",
    "VulnPackage",
    "VulnRecord",
    "VulnSource",
]
