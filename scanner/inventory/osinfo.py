"""Which operating system an image holds, from the few files that say so.

Paths are relative to the image root, as the layer reader names them. An empty text
stands for a path an upper layer replaced by something that is not a regular file (a
symlink, usually), so it says nothing and the next source is tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OS_RELEASE = "etc/os-release"
USR_OS_RELEASE = "usr/lib/os-release"
DEBIAN_VERSION = "etc/debian_version"
ALPINE_RELEASE = "etc/alpine-release"
REDHAT_RELEASE = "etc/redhat-release"
OS_FILES = frozenset({OS_RELEASE, USR_OS_RELEASE, DEBIAN_VERSION, ALPINE_RELEASE, REDHAT_RELEASE})

# Distributions whose security data is keyed by release codename.
_CODENAME_DISTROS = frozenset({"debian", "ubuntu"})
_RHEL_LIKE = frozenset({"rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn"})
_DEBIAN_CODENAMES = {
    "7": "wheezy",
    "8": "jessie",
    "9": "stretch",
    "10": "buster",
    "11": "bullseye",
    "12": "bookworm",
    "13": "trixie",
    "14": "forky",
}
# Leading words of /etc/redhat-release, lower case, and the os-release ID they stand for.
_REDHAT_NAMES = (
    ("red hat", "rhel"),
    ("centos", "centos"),
    ("rocky", "rocky"),
    ("almalinux", "almalinux"),
    ("fedora", "fedora"),
    ("oracle", "ol"),
)
_REDHAT_LINE = re.compile(r"^(?P<name>.+?)\s+release\s+(?P<version>\d[\w.]*)")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Inside double quotes only these characters are escaped by a backslash (POSIX shell).
_DOUBLE_QUOTE_ESCAPES = frozenset('$"\\`\n')


@dataclass
class OSInfo:
    """The image's distribution: ``debian`` / ``12`` / ``bookworm`` / a display name."""

    distro: str  # os-release ID, lower case ("debian", "alpine", "rhel"); "" if unknown
    version: str  # VERSION_ID ("12", "3.19.1", "9.3")
    release: str  # what security data is keyed by: codename, major.minor or major
    name: str  # for people: PRETTY_NAME


def detect_os(files: dict[str, str]) -> OSInfo:
    """The OS the files describe, trying etc/os-release, usr/lib/os-release, then the
    distribution-specific files; ``OSInfo("", "", "", "")`` when none says anything."""
    sources = (
        (OS_RELEASE, _from_os_release),
        (USR_OS_RELEASE, _from_os_release),
        (DEBIAN_VERSION, _from_debian_version),
        (ALPINE_RELEASE, _from_alpine_release),
        (REDHAT_RELEASE, _from_redhat_release),
    )
    for path, parse in sources:
        text = files.get(path, "")
        if not text.strip():
            continue
        info = parse(text)
        if info.distro:
            return info
    return OSInfo("", "", "", "")


def parse_os_release(text: str) -> dict[str, str]:
    """The assignments of an os-release file (freedesktop.org), values unquoted.

    Lines are ``KEY=value``; values may be quoted and escaped as in a POSIX shell;
    blank lines, comments and lines that are not assignments are skipped.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and _KEY.match(key):
            fields[key] = _unquote(value)
    return fields


def _unquote(value: str) -> str:
    """A shell word: quotes removed, backslash escapes applied, stops at a blank."""
    out: list[str] = []
    quote = ""
    chars = iter(value)
    for char in chars:
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(char)
        elif char == "\\":
            following = next(chars, "")
            if quote == '"' and following not in _DOUBLE_QUOTE_ESCAPES:
                out.append(char)
            out.append(following)
        elif char in "\"'" and (not quote or char == quote):
            quote = "" if quote else char
        elif not quote and char.isspace():
            break  # an unquoted blank ends the value; a comment may follow
        else:
            out.append(char)
    return "".join(out)


def _from_os_release(text: str) -> OSInfo:
    fields = parse_os_release(text)
    distro = fields.get("ID", "").lower()
    version = fields.get("VERSION_ID", "")
    name = fields.get("PRETTY_NAME") or " ".join(
        part for part in (fields.get("NAME", ""), fields.get("VERSION", "")) if part
    )
    return OSInfo(distro, version, _release(distro, fields), name)


def _release(distro: str, fields: dict[str, str]) -> str:
    """The release security data of ``distro`` is keyed by."""
    version = fields.get("VERSION_ID", "")
    codename = fields.get("VERSION_CODENAME") or fields.get("UBUNTU_CODENAME", "")
    if distro in _CODENAME_DISTROS:
        codename = codename or _parenthesised(fields.get("VERSION", ""))
        return codename or (_debian_codename(version) if distro == "debian" else "")
    if distro == "alpine":
        return _leading_parts(version, 2)
    like = set(fields.get("ID_LIKE", "").lower().split())
    if distro in _RHEL_LIKE or like & _RHEL_LIKE:
        return _leading_parts(version, 1)
    return codename or version


def _from_debian_version(text: str) -> OSInfo:
    # "12.5" on a stable release; "trixie/sid" on testing and unstable.
    value = text.strip().splitlines()[0].strip()
    if value[:1].isdigit():
        major = _leading_parts(value, 1)
        codename = _debian_codename(major)
        suffix = f" ({codename})" if codename else ""
        return OSInfo("debian", major, codename, f"Debian GNU/Linux {major}{suffix}")
    codename = value.partition("/")[0]
    return OSInfo("debian", "", codename, f"Debian GNU/Linux {value}")


def _from_alpine_release(text: str) -> OSInfo:
    version = text.strip().splitlines()[0].strip()
    release = _leading_parts(version, 2)
    return OSInfo("alpine", version, release, f"Alpine Linux v{release}")


def _from_redhat_release(text: str) -> OSInfo:
    line = text.strip().splitlines()[0].strip()
    match = _REDHAT_LINE.match(line)
    if match is None:
        return OSInfo("", "", "", "")
    name = match["name"].lower()
    distro = next((d for prefix, d in _REDHAT_NAMES if name.startswith(prefix)), "")
    distro = distro or name.split()[0]
    version = match["version"]
    return OSInfo(distro, version, _leading_parts(version, 1), line)


def _leading_parts(version: str, count: int) -> str:
    """The first ``count`` numeric dot-separated parts: ("3.19.1", 2) -> "3.19"."""
    parts = []
    for part in version.split(".")[:count]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(digits[0])
        if digits[0] != part:
            break  # "20_alpha20240329": nothing after a suffix is a version part
    return ".".join(parts)


def _parenthesised(text: str) -> str:
    """The first word in parentheses, lower case: "12 (bookworm)" -> "bookworm"."""
    match = re.search(r"\((\w+)", text)
    return match[1].lower() if match else ""


def _debian_codename(version: str) -> str:
    return _DEBIAN_CODENAMES.get(version.partition(".")[0], "")
