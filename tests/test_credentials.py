"""Private registries end to end: credentials through the API, HTTP Basic and the Docker
token flow against the real registry, and secrets that never leak.

Images are pushed through an open registry whose storage root a Basic-auth registry
and a token-auth registry share. The token registry trusts a token server run here:
it checks HTTP Basic and signs JWTs with a key whose self-signed certificate is the
registry's ``rootcertbundle``. The API and workers run as processes with a secret key,
on a database and Redis database of their own.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from redis import Redis

from core.secrets import SecretBox, SecretKeyError, generate_key, load_or_create_key_file
from core.settings import Settings
from models import Credential
from models.db import make_engine, make_sessionmaker, transaction
from regscan.db import upgrade
from regscan.standalone import key_file_path
from scanner.registry.auth import RegistryAuth, parse_challenges
from scanner.registry.client import RegistryClient
from scanner.registry.images import resolve_image
from testbed.images import Pusher
from testbed.services import RedisServer, RegistryServer
from testbed.stack import ADMIN, FAST_TIMINGS, FINAL, Api, Stack, wait_for
from tests.conftest import _postgres_database
from worker.runtime import CredentialUnavailable, RegistryAuths

ACCOUNT = "scanner"
# Unique per run, so that finding one anywhere means it leaked from here.
SECRET = f"pw-{uuid.uuid4().hex}"
WRONG_SECRET = f"wrong-{uuid.uuid4().hex}"
KEY = generate_key()
ISSUER = "regscan-test-issuer"
SERVICE = "regscan-test-registry"
# Redis databases of their own (conftest's stacks count up from 1).
REDIS_DB = {"sqlite": 15, "postgresql": 14}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- services of this module ---------------------------------------------------------


class TokenServer:
    """A registry token server on loopback: HTTP Basic in, signed JWTs out, all counted."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.users = users
        self.expires_in: int | None = 300
        self.token_field = "token"
        self.issued: list[tuple[str, str]] = []  # (account, scope) of every token issued
        self.refused = 0
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self._certificate()
        self.rootcertbundle = workdir / "token-root.pem"
        self.rootcertbundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._server.token_server = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_config(self) -> dict[str, str]:
        """What the registry's ``auth.token`` needs to trust this server."""
        return {
            "realm": self.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(self.rootcertbundle),
        }

    def fetches(self, scope: str) -> int:
        with self._lock:
            return sum(1 for _account, s in self.issued if s == scope)

    def answer(self, authorization: str | None, query: str) -> tuple[int, dict[str, Any]]:
        """Check the Basic credentials and issue a token for every requested scope."""
        account = self._account(authorization)
        if account is None:
            with self._lock:
                self.refused += 1
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        params = parse_qs(query)
        scopes = params.get("scope", [])
        token = self._jwt(account, [_access(s) for s in scopes], params.get("service", [""])[0])
        body: dict[str, Any] = {self.token_field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        with self._lock:
            self.issued += [(account, s) for s in scopes or [""]]
            self.tokens.append(token)
        return 200, body

    def _account(self, authorization: str | None) -> str | None:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _jwt(self, subject: str, access: list[dict[str, Any]], audience: str) -> str:
        # distribution 2.8 trusts a token whose x5c certificate is in its rootcertbundle.
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "exp": now + (self.expires_in or 60),
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _access(scope: str) -> dict[str, Any]:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": actions.split(",")}


class _TokenHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: TokenServer = self.server.token_server  # type: ignore[attr-defined]
        status, body = server.answer(self.headers.get("Authorization"), urlsplit(self.path).query)
        _send_json(self, status, body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class BlobStore:
    """Stands in for the object storage a registry redirects blob downloads to: serves
    files of the registry's storage root and records the headers of every request."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
        self._server.blob_store = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        # Another host name than the registry's 127.0.0.1, as object storage would be.
        return f"http://localhost:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _BlobHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        store: BlobStore = self.server.blob_store  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        store.requests.append((path, self.headers.get("Authorization")))
        target = (store.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(store.root.resolve()) or not target.is_file():
            _send_json(self, 404, {"error": "no such blob"})
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Private:
    """The registries of this module, all serving one storage root."""

    open: RegistryServer
    basic: RegistryServer
    token: RegistryServer
    redirecting: RegistryServer
    token_server: TokenServer
    blob_store: BlobStore
    pusher: Pusher

    def push_repo(self, repo: str, tags: tuple[str, ...] = ("1", "2", "3")) -> dict[str, str]:
        """Push one image per tag through the open registry; their digests by tag."""
        return {
            tag: self.pusher.push_image(repo, tag, {f"{tag}.txt": f"{repo}:{tag}".encode()}).digest
            for tag in tags
        }


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    workdir = tmp_path_factory.mktemp("private")
    storage = workdir / "storage"
    users = {ACCOUNT: SECRET}
    htpasswd = write_htpasswd(workdir / "htpasswd", users)
    token_server = TokenServer(workdir, users)
    blob_store = BlobStore(storage)
    servers = [
        RegistryServer(storage_dir=storage),
        RegistryServer(storage_dir=storage, htpasswd=htpasswd),
        RegistryServer(storage_dir=storage, token_auth=token_server.registry_config()),
        RegistryServer(
            storage_dir=storage,
            token_auth=token_server.registry_config(),
            redirect_blobs_to=blob_store.url,
        ),
    ]
    try:
        for server in servers:
            server.start()
        open_, basic, token, redirecting = servers
        yield Private(open_, basic, token, redirecting, token_server, blob_store, Pusher(open_.url))
    finally:
        for server in servers:
            server.stop()
        token_server.close()
        blob_store.close()


# -- the service, with a secret key ------------------------------------------------------


class RecordingApi(Api):
    """The admin's client, keeping every response so none can hide a secret."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.seen: list[requests.Response] = []

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = super().request(method, path, **kwargs)
        self.seen.append(response)
        return response


@dataclass
class Keyed:
    stack: Stack
    api: RecordingApi
    database_url: str
    sessions: Any = field(repr=False)


@pytest.fixture(scope="module")
def keyed(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keyed]:
    """API and workers with ``REGSCAN_SECRET_KEY``, on a database of their own of the
    backend under test (the shared stack has no key and keeps its configuration)."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    if backend == "sqlite":
        databases: Iterator[str] = iter(
            [f"sqlite:///{tmp_path_factory.mktemp('keyed') / 'regscan.db'}"]
        )
    else:
        databases = _postgres_database()
    url = next(databases)
    upgrade(url)
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend]}"
    Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        **FAST_TIMINGS,
        "REGSCAN_DATABASE_URL": url,
        "REGSCAN_REDIS_URL": redis_url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
        "REGSCAN_SECRET_KEY": KEY,
    }
    stack = Stack(env, tmp_path_factory.mktemp("keyed-logs"))
    api = RecordingApi(stack.api.base)
    stack.api = api
    engine = make_engine(url)
    try:
        stack.start_api()
        stack.start_worker("regular", "regular,images")
        stack.start_worker("ondemand", "ondemand")
        yield Keyed(stack, api, url, make_sessionmaker(engine))
    finally:
        stack.stop()
        engine.dispose()
        for _ in databases:  # runs the generator's clean-up (drops a PostgreSQL database)
            pass


@pytest.fixture
def kapi(keyed: Keyed) -> Iterator[RecordingApi]:
    """The keyed service's admin client; no scan is left running when the test ends."""
    yield keyed.api
    keyed.api.post("/api/v1/registry/stop")

    def quiet() -> bool:
        scans = keyed.api.get("/api/v1/registry/scans", params={"limit": 250}).json()
        return all(s["status"] in FINAL for s in scans)

    wait_for(quiet, 60, "every scan to end before the next test")


def spec(registry: RegistryServer, repository: str, credential: str = "", **extra: Any) -> dict:
    return {
        "version": "2",
        "registry": f"http://{registry.host}",
        "repository": repository,
        "credentialID": credential,
        **extra,
    }


def create_credential(api: Api, cid: str, secret: str = SECRET, **extra: Any) -> dict:
    body = {"_id": cid, "type": "basic", "accountID": ACCOUNT, "secret": {"plain": secret}}
    r = api.post("/api/v1/credentials", json={**body, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def scan_and_wait(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = api.scan(body)
    assert r.status_code == 200, r.text
    api.wait_job(r.json()["id"])
    return api.job(r.json()["id"])


def on_demand(registry: RegistryServer, repo: str, tag: str) -> dict[str, Any]:
    return {"onDemandScan": True, "tag": {"registry": registry.host, "repo": repo, "tag": tag}}


# -- the credentials API ---------------------------------------------------------------


def test_credentials_are_stored_encrypted_and_listed_without_their_secret(
    kapi: RecordingApi, keyed: Keyed, name: str
):
    # Given a credential posted in the reference shape
    cid = f"{name}-reg"
    created = create_credential(kapi, cid, description="CI registry")

    # Then the answer and the listing show it without any secret
    assert set(created) == {
        *("_id", "type", "accountID", "description", "lastModified"),
        # Prisma's fields (see test_prisma_compat.py); never the secret or an apiToken
        *("caCert", "skipVerify", "useAWSRole", "accountName", "useSTSRegionalEndpoint"),
    }
    assert (created["_id"], created["type"], created["accountID"]) == (cid, "basic", ACCOUNT)
    listed = {c["_id"]: c for c in kapi.get("/api/v1/credentials").json()}
    assert listed[cid] == created
    # And the database holds a Fernet token of the secret under the key, never the secret
    with keyed.sessions() as session:
        row = session.get(Credential, cid)
        assert row is not None and SECRET not in row.secret_token
        assert SecretBox(KEY).decrypt(row.secret_token) == SECRET

    # When it is posted again with the secret as a plain string (an update)
    time.sleep(0.01)
    updated = create_credential(kapi, cid, secret=SECRET, accountID="other")
    # Then the same id now has the new account and a later lastModified
    assert updated["accountID"] == "other" and updated["lastModified"] > created["lastModified"]
    assert [c["_id"] for c in kapi.get("/api/v1/credentials").json()].count(cid) == 1


@pytest.mark.parametrize(
    ("body", "fix"),
    [
        ({"type": "basic", "accountID": "u", "secret": "s"}, "_id: Field required"),
        ({"_id": "a/b", "accountID": "u", "secret": "s"}, "must not contain '/'"),
        ({"_id": "x", "type": "aws", "accountID": "u", "secret": "s"}, 'use "basic"'),
        ({"_id": "x", "accountID": "", "secret": "s"}, "registry account"),
        ({"_id": "x", "accountID": "u", "secret": {"plain": ""}}, "the secret is empty"),
        ({"_id": "x", "accountID": "u", "secret": {"encrypted": "abc"}}, 'as {"plain"'),
        ({"_id": "x", "accountID": "u", "secret": 7}, 'must be {"plain"'),
        ({"_id": "x", "accountID": "u", "secret": "s", "owner": "me"}, "owner: unknown field"),
    ],
)
def test_credential_requests_are_checked_strictly(kapi: RecordingApi, body: dict, fix: str):
    # When a malformed credential is posted
    r = kapi.post("/api/v1/credentials", json=body)
    # Then it is refused with a message saying what to fix
    assert r.status_code == 400, r.text
    assert fix in r.json()["err"]


def test_specifications_name_existing_credentials_which_stay_while_used(
    kapi: RecordingApi, private: Private, name: str
):
    # Given a credential
    cid = f"{name}-used"
    create_credential(kapi, cid)

    # When a specification names an unknown credential, by PUT or POST
    unknown = spec(private.basic, f"{name}/*", "no-such-credential")
    put = kapi.put("/api/v1/settings/registry?scanLater=true", json={"specifications": [unknown]})
    post = kapi.post("/api/v1/settings/registry?scanLater=true", json=unknown)
    # Then both are refused, naming it and how to create it
    for r in (put, post):
        assert r.status_code == 400
        assert "'no-such-credential' is not a known credential" in r.json()["err"]
        assert "POST /api/v1/credentials" in r.json()["err"]

    # When a specification names the existing one
    kapi.set_specs(spec(private.basic, f"{name}/*", cid))
    # Then the credential cannot be deleted while it is used
    r = kapi.request("DELETE", f"/api/v1/credentials/{cid}")
    assert r.status_code == 409
    assert f"credential '{cid}' is used by 1 specification(s)" in r.json()["err"]

    # When the specification is gone, the credential can be deleted, once
    kapi.set_specs()
    assert kapi.request("DELETE", f"/api/v1/credentials/{cid}").status_code == 200
    assert cid not in [c["_id"] for c in kapi.get("/api/v1/credentials").json()]
    gone = kapi.request("DELETE", f"/api/v1/credentials/{cid}")
    assert gone.status_code == 404 and "GET /api/v1/credentials" in gone.json()["err"]


def test_without_the_secret_key_credentials_are_refused_clearly(
    kapi: RecordingApi, keyed: Keyed, private: Private, name: str
):
    # Given a credential stored by the keyed service
    cid = f"{name}-nokey"
    create_credential(kapi, cid)

    # When an API without REGSCAN_SECRET_KEY is asked to store one
    env = {k: v for k, v in keyed.stack.env.items() if k != "REGSCAN_SECRET_KEY"}
    keyless_logs = keyed.stack.logs / "keyless"
    keyless_logs.mkdir(exist_ok=True)
    keyless = Stack(env, keyless_logs)
    keyless.api = RecordingApi(keyless.api.base)
    try:
        keyless.start_api()
        refused = keyless.api.post(
            "/api/v1/credentials", json={"_id": cid, "accountID": ACCOUNT, "secret": SECRET}
        )
        listed = keyless.api.get("/api/v1/credentials")
    finally:
        keyless.stop()
    # Then it answers 503 saying which setting is missing; listing needs no key
    assert refused.status_code == 503
    assert "set REGSCAN_SECRET_KEY to a Fernet key" in refused.json()["err"]
    assert listed.status_code == 200 and cid in [c["_id"] for c in listed.json()]
    keyed.api.seen += keyless.api.seen

    # And a worker without the key, or with another one, fails the credential clearly
    for key, expected in [(None, "REGSCAN_SECRET_KEY is not set"), (generate_key(), "decrypted")]:
        settings = Settings(database_url=keyed.database_url, secret_key=key)
        auths = RegistryAuths(settings, keyed.sessions)
        with pytest.raises(CredentialUnavailable) as failure:
            auths.for_registry(private.basic.url, cid)
        assert f"credential '{cid}'" in str(failure.value) and expected in str(failure.value)
    # And an unknown credential is named too
    auths = RegistryAuths(Settings(database_url=keyed.database_url), keyed.sessions)
    with pytest.raises(CredentialUnavailable, match="credential 'gone' does not exist"):
        auths.for_registry(private.basic.url, "gone")


# -- scanning private registries ---------------------------------------------------------


def test_regular_and_on_demand_scans_of_a_basic_auth_registry(
    kapi: RecordingApi, private: Private, name: str
):
    # Given three images in a registry that wants HTTP Basic, and its credential
    repo = f"{name}/app"
    digests = private.push_repo(repo)
    cid = f"{name}-basic"
    create_credential(kapi, cid)
    kapi.set_specs(spec(private.basic, f"{name}/*", cid))

    # When everything in scope is scanned
    job = scan_and_wait(kapi)
    # Then every image was read through the credential
    assert job["status"] == "completed", job
    assert job["counts"] == {"total": 3, "scanned": 3, "failed": 0, "skipped": 0}
    for tag, digest in digests.items():
        [result] = kapi.results(name=f"{private.basic.host}/{repo}:{tag}")
        assert result["repoTag"]["digest"] == digest and result["err"] == ""

    # And an on-demand scan of one image works the same way
    job = scan_and_wait(kapi, on_demand(private.basic, repo, "2"))
    assert job["status"] == "completed" and job["counts"]["scanned"] == 1, job


def test_scans_of_a_token_registry_fetch_one_token_per_scope(
    kapi: RecordingApi, private: Private, name: str
):
    # Given three images of one repository in a registry using the Docker token flow
    repo = f"{name}/app"
    digests = private.push_repo(repo)
    cid = f"{name}-token"
    create_credential(kapi, cid)
    kapi.set_specs(spec(private.token, f"{name}/*", cid))
    scope = f"repository:{repo}:pull"
    tokens = private.token_server

    # When everything in scope is scanned
    job = scan_and_wait(kapi)
    # Then all three were scanned with one token for the repository (discovery and every
    # image request of the sweep's worker share it), fetched with the credential's account
    assert job["status"] == "completed", job
    assert job["counts"] == {"total": 3, "scanned": 3, "failed": 0, "skipped": 0}
    assert tokens.fetches(scope) == 1
    assert {a for a, s in tokens.issued if s == scope} == {ACCOUNT}
    for tag, digest in digests.items():
        [result] = kapi.results(name=f"{private.token.host}/{repo}:{tag}")
        assert result["repoTag"]["digest"] == digest

    # When two on-demand scans of the repository run (in the on-demand worker process)
    for tag in ("1", "3"):
        job = scan_and_wait(kapi, on_demand(private.token, repo, tag))
        assert job["status"] == "completed", job
    # Then that process fetched one token of its own, and reused it for the second scan
    assert tokens.fetches(scope) == 2


def test_a_wrong_password_fails_the_images_and_not_the_sweep(
    kapi: RecordingApi, private: Private, name: str
):
    # Given images in both protected registries, a wrong credential for one repository
    # and a right one for another
    private.push_repo(f"{name}/app", ("1",))
    private.push_repo(f"{name}/ok", ("1", "2"))
    wrong, right = f"{name}-wrong", f"{name}-right"
    create_credential(kapi, wrong, secret=WRONG_SECRET)
    create_credential(kapi, right)
    kapi.set_specs(
        spec(private.basic, f"{name}/app", wrong),
        spec(private.token, f"{name}/app", wrong),
        spec(private.token, f"{name}/ok", right),
    )

    # When on-demand scans of the image behind the wrong credential run
    for registry in (private.basic, private.token):
        job = scan_and_wait(kapi, on_demand(registry, f"{name}/app", "1"))
        # Then the image fails with the refusal: 401, unauthorized
        assert job["status"] == "failed", job
        [error] = job["errors"]
        assert "(401" in error["err"] and "unauthorized" in error["err"].lower(), error

    # When a sweep covers both
    job = scan_and_wait(kapi)
    # Then the refused repositories are reported and the other one is scanned anyway
    assert job["status"] == "completed", job
    assert job["counts"]["scanned"] == 2
    assert job["error"].count("(401") == 2, job["error"]


def test_a_credential_that_cannot_be_decrypted_fails_only_its_images(
    kapi: RecordingApi, keyed: Keyed, private: Private, name: str
):
    # Given a credential encrypted under another key (as if the key had been changed)
    repo = f"{name}/app"
    private.push_repo(repo, ("1",))
    foreign, right = f"{name}-foreign", f"{name}-right"
    with transaction(keyed.sessions) as session:
        token = SecretBox(generate_key()).encrypt(SECRET)
        session.add(Credential(id=foreign, type="basic", account_id=ACCOUNT, secret_token=token))
    create_credential(kapi, right)
    kapi.set_specs(spec(private.token, repo, foreign), spec(private.basic, repo, right))

    # When the image is scanned on demand through that credential
    job = scan_and_wait(kapi, on_demand(private.token, repo, "1"))
    # Then it fails, naming the credential and what to do
    assert job["status"] == "failed", job
    [error] = job["errors"]
    assert f"credential '{foreign}' cannot be decrypted" in error["err"]
    assert "REGSCAN_SECRET_KEY" in error["err"]

    # And a sweep reports it and scans what the other specification covers
    job = scan_and_wait(kapi)
    assert job["status"] == "completed" and job["counts"]["scanned"] == 1, job
    assert f"credential '{foreign}' cannot be decrypted" in job["error"]


# -- the client on its own ----------------------------------------------------------------


def test_tokens_expire_and_never_follow_a_redirect_to_blob_storage(private: Private, name: str):
    # Given a token registry whose blobs are served by other storage, and a token server
    # that answers with access_token and short-lived tokens
    repo = f"{name}/app"
    private.push_repo(repo)
    tokens = private.token_server
    tokens.expires_in, tokens.token_field = 3, "access_token"
    scope = f"repository:{repo}:pull"
    auth = RegistryAuth(private.redirecting.url, ACCOUNT, SECRET)
    try:
        # When three images are read within the token's lifetime
        with RegistryClient(private.redirecting.url, auth=auth) as client:
            images = [resolve_image(client, repo, tag) for tag in ("1", "2", "3")]
        # Then one token served them all
        assert all(len(found) == 1 for found in images)
        assert tokens.fetches(scope) == 1

        # When the token has expired, the next read fetches a new one
        time.sleep(3.1)
        with RegistryClient(private.redirecting.url, auth=auth) as client:
            resolve_image(client, repo, "1")
        assert tokens.fetches(scope) == 2
    finally:
        tokens.expires_in, tokens.token_field = 300, "token"
        auth.close()
    # And the blob storage got the config blobs, without any credential or token
    downloads = [(p, a) for p, a in private.blob_store.requests if "/blobs/" in p]
    assert len(downloads) == 4
    assert all(authorization is None for _path, authorization in downloads)


def test_www_authenticate_challenges_are_parsed():
    header = (
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a/b:pull,push", Basic realm="x \\"y\\""'
    )
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'x "y"'})
    assert [c.scheme for c in parse_challenges("Basic abc==, Bearer realm=r")] == [
        "basic",
        "bearer",
    ]


def test_secret_keys_are_checked_without_being_repeated(tmp_path: Path):
    # A malformed key is refused without echoing it
    with pytest.raises(SecretKeyError) as failure:
        SecretBox("not-a-fernet-key-but-maybe-a-password")
    assert "not-a-fernet-key" not in str(failure.value)
    # Standalone keeps its key next to the SQLite database, private, and reuses it
    assert key_file_path(f"sqlite:///{tmp_path}/regscan.db") == tmp_path / "regscan.key"
    first = load_or_create_key_file(tmp_path / "regscan.key")
    assert load_or_create_key_file(tmp_path / "regscan.key") == first
    assert stat.S_IMODE((tmp_path / "regscan.key").stat().st_mode) == 0o600
    # Several keys rotate: the old one still decrypts
    old = SecretBox(first).encrypt(SECRET)
    assert SecretBox(f"{generate_key()},{first}").decrypt(old) == SECRET


# -- no leaks ---------------------------------------------------------------------------


def test_no_secret_in_any_response_or_log_line(keyed: Keyed, private: Private):
    # Given everything the tests above did with the keyed service
    basic_pairs = [
        base64.b64encode(f"{ACCOUNT}:{s}".encode()).decode() for s in (SECRET, WRONG_SECRET)
    ]
    secrets = [SECRET, WRONG_SECRET, *basic_pairs, *private.token_server.tokens]
    assert keyed.api.seen and private.token_server.tokens

    # Then no response body or header holds a secret or a registry token
    for response in keyed.api.seen:
        text = response.text + json.dumps(dict(response.headers))
        for secret in secrets:
            assert secret not in text, f"{response.request.method} {response.url} leaks"
    # And neither does any log line of the API or the workers
    logs = list(keyed.stack.logs.rglob("*.log"))
    assert {p.name for p in logs} >= {"api.log", "regular.log", "ondemand.log"}
    for path in logs:
        content = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in content, f"{path.name} leaks a secret"
