"""Registry addresses and reference parts, checked without any server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.reference import (
    RegistryAddress,
    image_name,
    parse_registry,
    validate_digest,
    validate_reference,
    validate_repository,
    validate_tag,
)
from scanner.errors import InvalidManifest
from scanner.registry.images import parse_created
from scanner.registry.manifests import compute_digest, verify_digest

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "0123456789abcdef" * 8


@pytest.mark.parametrize(
    ("address", "base_url", "host"),
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("registry.example.com", "https://registry.example.com", "registry.example.com"),
        ("https://registry.example.com/", "https://registry.example.com", "registry.example.com"),
        ("https://r.example:443", "https://r.example", "r.example"),
        ("http://r:80", "http://r", "r"),
        ("HTTPS://Registry.Example.COM:5000", "https://registry.example.com:5000",
         "registry.example.com:5000"),
        ("localhost:5000", "https://localhost:5000", "localhost:5000"),
        ("http://r:443", "http://r:443", "r:443"),
        ("http://[::1]:5000", "http://[::1]:5000", "[::1]:5000"),
    ],
)  # fmt: skip
def test_parse_registry(address: str, base_url: str, host: str) -> None:
    assert parse_registry(address) == RegistryAddress(base_url=base_url, host=host)


def test_same_registry_written_differently_has_one_identity() -> None:
    spellings = ["r.example", "https://r.example", "https://R.example:443/", "r.example:443"]
    assert {parse_registry(s).host for s in spellings} == {"r.example"}


@pytest.mark.parametrize(
    ("address", "hint"),
    [
        ("", "empty"),
        ("https://r.example/v2/", "path"),
        ("r.example/team", "path"),
        ("https://user:pw@r.example", "user info"),
        ("r.example:0", "port 0"),
        ("r.example:70000", "port 70000"),
        ("r.example:http", "no valid host"),
        (" r.example", "whitespace"),
        ("r.example\n", "whitespace"),
        ("ftp://r.example", "scheme 'ftp'"),
        ("https://", "no valid host"),
        ("https://r.example?x=1", "path"),
    ],
)
def test_parse_registry_rejects(address: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_registry(address)


@pytest.mark.parametrize(
    "repo", ["app", "team/app", "a/b/c", "my-app", "my__app", "my.app", "a--b", "x1/y_2", "a" * 255]
)
def test_valid_repositories(repo: str) -> None:
    assert validate_repository(repo) == repo


@pytest.mark.parametrize(
    "repo", ["", "My App", "App", "app/", "/app", "a//b", "-app", "app-", "a___b", "a..b", "é"]
)
def test_invalid_repositories(repo: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_repository(repo)
    assert str(info.value) == (
        f"repo {repo!r} is not a valid repository name: "
        "use lowercase letters, digits and separators . _ - /"
    )


def test_repository_length_is_limited() -> None:
    with pytest.raises(ValueError, match="256 characters long: repository names are at most 255"):
        validate_repository("a" * 256)


@pytest.mark.parametrize("tag", ["latest", "1.0", "v1.2.3-rc_1", "_x", "A" * 128, "1"])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a:b", "a/b", "A" * 129, "ü", "a b"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(ValueError, match=rf"^tag {tag!r} is not a valid tag"):
        validate_tag(tag)


@pytest.mark.parametrize("digest", [SHA256, SHA512])
def test_valid_digests(digest: str) -> None:
    assert validate_digest(digest) == digest
    assert validate_reference(digest) == digest


@pytest.mark.parametrize(
    ("digest", "hint"),
    [
        ("sha256:" + "A" * 64, "64 lowercase hex"),
        ("sha256:" + "a" * 63, "64 lowercase hex"),
        ("sha512:" + "a" * 64, "128 lowercase hex"),
        ("md5:" + "a" * 32, "algorithm 'md5': use sha256 or sha512"),
        ("sha256", "use algorithm:hex"),
        ("", "use algorithm:hex"),
        ("sha256:../../etc", "use algorithm:hex"),
    ],
)
def test_invalid_digests(digest: str, hint: str) -> None:
    with pytest.raises(ValueError, match=f"^digest {digest!r}.*{hint}"):
        validate_digest(digest)


def test_reference_is_a_tag_or_a_digest() -> None:
    assert validate_reference("1.0") == "1.0"
    with pytest.raises(ValueError, match="not a valid tag"):
        validate_reference("../x")


def test_image_name() -> None:
    assert image_name("127.0.0.1:5000", "app", tag="1.0") == "127.0.0.1:5000/app:1.0"
    assert image_name("r", "a/b", digest=SHA256) == f"r/a/b@{SHA256}"
    assert image_name("r", "app", "1.0", SHA256) == f"r/app:1.0@{SHA256}"
    assert image_name("r", "app") == "r/app"


def test_verify_digest_accepts_matching_content_and_names_a_mismatch() -> None:
    data = b'{"schemaVersion": 2}'
    verify_digest(data, compute_digest(data), "manifest r/app:1")
    verify_digest(data, compute_digest(data, "sha512"), "manifest r/app:1")
    with pytest.raises(InvalidManifest, match=r"^manifest r/app:1: digest mismatch: expected"):
        verify_digest(data + b" ", compute_digest(data), "manifest r/app:1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-06T07:08:09Z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09.123456789Z", datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)),
        ("2024-05-06T09:08:09.5+02:00", datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)),
        ("2024-05-06T07:08:09", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1714979289, None),
    ],
)
def test_parse_created(value: object, expected: datetime | None) -> None:
    created = parse_created(value)
    assert created == expected
    if created is not None:
        assert created.tzinfo is UTC
