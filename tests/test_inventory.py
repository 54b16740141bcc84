"""What a scan finds inside images, end to end: images whose contents are known are
built and pushed to the real registry, scanned through the API, and their package
lists compared exactly."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import update

from models import Image, LayerAnalysis
from scanner.inventory.packages import ANALYSER_VERSION
from testbed.images import DOCKER_LAYER_GZIP, Blob, Pusher, make_layer
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer
from testbed.stack import Api
from tests.test_catalogers import GO_EXPECTED, go_binaries, rpm_listing, rpm_root

__all__ = ["go_binaries", "rpm_root"]  # fixtures shared with the cataloger tests

DEBIAN_OS_RELEASE = Path("/etc/os-release").read_bytes()
ALPINE_OS_RELEASE = (
    b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\nPRETTY_NAME="Alpine Linux v3.19"\n'
)


def spec(registry: str, repository: str = "", **extra) -> dict:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def packages(result: dict) -> dict[str, set[tuple[str, str]]]:
    return {
        group["pkgsType"]: {(p["name"], p["version"]) for p in group["pkgs"]}
        for group in result["packages"]
    }


def scan_one(api: Api, registry: RegistryServer, repo: str, tag: str) -> dict:
    ask = {"registry": registry.host, "repo": repo, "tag": tag, "digest": ""}
    done = api.wait_job(api.started({"onDemandScan": True, "tag": ask}), timeout=60)
    assert done["status"] == "completed", done
    [result] = api.results(name=f"{registry.host}/{repo}:{tag}")
    assert result["err"] == ""
    return result


def installed_dpkg() -> set[tuple[str, str]]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}\t${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = (line.split("\t") for line in out.splitlines())
    return {(name, version) for status, name, version in rows if status == "installed"}


def dist_info(name: str, version: str) -> dict[str, bytes]:
    base = f"usr/lib/python3/dist-packages/{name}-{version}.dist-info"
    return {
        f"{base}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    }


def jar(group: str, artifact: str, version: str, nested: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        props = f"groupId={group}\nartifactId={artifact}\nversion={version}\n"
        z.writestr(f"META-INF/maven/{group}/{artifact}/pom.properties", props)
        if nested is not None:
            z.writestr("BOOT-INF/lib/inner.jar", nested)
    return buf.getvalue()


@pytest.fixture
def scope(api: Api, registry: RegistryServer, name: str) -> str:
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    return name


def test_a_debian_image_lists_exactly_its_dpkg_packages(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str
):
    # Given an image holding this machine's real dpkg database and os-release
    files = {
        "etc/os-release": DEBIAN_OS_RELEASE,
        "var/lib/dpkg/status": Path("/var/lib/dpkg/status").read_bytes(),
    }
    expected = installed_dpkg()
    pusher.push_image(f"{scope}/debian", "12", files)

    # When it is scanned
    result = scan_one(api, registry, f"{scope}/debian", "12")

    # Then the OS and every installed package are reported, nothing more
    assert (result["osDistro"], result["osDistroVersion"]) == ("debian", "12")
    assert result["osDistroRelease"] == "bookworm"
    assert packages(result) == {"package": expected}
    libc = next(p for p in result["packages"][0]["pkgs"] if p["name"] == "libc6")
    assert libc["sourceName"] == "glibc" and libc["path"] == "/var/lib/dpkg/status"


def test_language_packages_of_an_image_without_os(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str
):
    # Given a distroless-style image: dpkg status.d stanzas, Python, npm and Java
    inner = jar("org.example", "inner", "1.2.3")
    files = {
        "var/lib/dpkg/status.d/base": (
            b"Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\n"
            b"Status: install ok installed\n"
        ),
        "var/lib/dpkg/status.d/tzdata": (
            b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n"
        ),
        **dist_info("requests", "2.31.0"),
        "app/node_modules/left-pad/package.json": b'{"name": "left-pad", "version": "1.3.0"}',
        "app/node_modules/left-pad/node_modules/tiny/package.json": (
            b'{"name": "tiny", "version": "0.0.1"}'
        ),
        "opt/app.jar": jar("org.example", "app", "4.5.6", nested=inner),
    }
    pusher.push_image(f"{scope}/distroless", "1", files)

    result = scan_one(api, registry, f"{scope}/distroless", "1")

    assert result["osDistro"] == ""
    assert packages(result) == {
        "package": {("base-files", "12.4+deb12u5"), ("tzdata", "2024a-0+deb12u1")},
        "python": {("requests", "2.31.0")},
        "nodejs": {("left-pad", "1.3.0"), ("tiny", "0.0.1")},
        "jar": {("org.example:app", "4.5.6"), ("org.example:inner", "1.2.3")},
    }


def test_an_alpine_image_lists_its_apk_packages_with_origins(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str
):
    installed = (
        b"C:Q1abc=\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\no:musl\n\n"
        b"C:Q1def=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n\n"
        b"C:Q1ghi=\nP:busybox-binsh\nV:1.36.1-r15\nA:x86_64\no:busybox\n"
    )
    files = {"etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": installed}
    pusher.push_image(f"{scope}/alpine", "3.19", files)

    result = scan_one(api, registry, f"{scope}/alpine", "3.19")

    assert (result["osDistro"], result["osDistroRelease"]) == ("alpine", "3.19")
    assert packages(result) == {
        "package": {
            ("musl", "1.2.4_git20230717-r4"),
            ("libcrypto3", "3.1.4-r5"),
            ("busybox-binsh", "1.36.1-r15"),
        }
    }
    origins = {p["name"]: p["sourceName"] for p in result["packages"][0]["pkgs"]}
    assert origins["libcrypto3"] == "openssl"


def test_packages_deleted_or_replaced_in_later_layers_are_reported_as_the_image_has_them(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str
):
    # Given: layer 1 installs three Python packages and two dpkg packages
    base = "usr/lib/python3/dist-packages"
    layer1 = {
        **dist_info("alpha", "1.0"),
        **dist_info("beta", "1.0"),
        **dist_info("gamma", "1.0"),
        "var/lib/dpkg/status": (
            b"Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10\n\n"
            b"Package: wget\nStatus: install ok installed\nVersion: 1.21.3-1\n"
        ),
    }
    # layer 2 deletes beta (a whiteout) and rewrites the dpkg database without wget
    layer2 = {
        f"{base}/.wh.beta-1.0.dist-info": b"",
        "var/lib/dpkg/status": b"Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10\n",
    }
    # layer 3 replaces alpha 1.0 by alpha 2.0, and makes an opaque copy of gamma's folder
    layer3 = {
        f"{base}/.wh.alpha-1.0.dist-info": b"",
        **dist_info("alpha", "2.0"),
        f"{base}/gamma-1.0.dist-info/.wh..wh..opq": b"",
    }
    layers = [make_layer(layer1), make_layer(layer2), make_layer(layer3)]
    pushed = pusher.push_image(f"{scope}/layered", "1", layers)

    result = scan_one(api, registry, f"{scope}/layered", "1")

    # Then: alpha 2.0 from layer 3, beta gone, gamma's metadata hidden, wget gone
    assert packages(result) == {
        "package": {("curl", "7.88.1-10")},
        "python": {("alpha", "2.0")},
    }
    by_name = {p["name"]: p for g in result["packages"] for p in g["pkgs"]}
    assert by_name["alpha"]["layer"] == pushed.layers[2].digest
    assert by_name["curl"]["layer"] == pushed.layers[1].digest


def test_a_shared_layer_is_fetched_once_and_unchanged_images_fetch_no_blob(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given three images on one base layer, behind a proxy counting requests
    proxy = FaultProxy.for_url(registry.url)
    base = make_layer({"var/lib/dpkg/status": Path("/var/lib/dpkg/status").read_bytes()})
    for i in range(3):
        pusher.push_image(f"{name}/app{i}", "1", [base, make_layer({f"app{i}": b"x"})])
    api.set_specs(spec(f"http://{proxy.host}", f"{name}/*", scanners=3))
    try:
        # When a sweep scans them all, three at a time
        first = api.wait_job(api.started())
        assert first["counts"]["scanned"] == 3

        # Then the base layer was downloaded once, whichever repository it came through
        base_gets = [p for m, p in proxy.requests if m == "GET" and p.endswith(base.digest)]
        assert len(base_gets) == 1

        # When they are scanned again, unchanged
        proxy.clear()
        second = api.wait_job(api.started())
        assert second["counts"]["scanned"] == 3

        # Then no blob at all is fetched, and the inventories are still there
        assert [p for _m, p in proxy.requests if "/blobs/" in p] == []
        for i in range(3):
            [r] = api.results(name=f"{proxy.host}/{name}/app{i}:1")
            assert len(r["packages"][0]["pkgs"]) > 100
    finally:
        proxy.close()


def test_an_rpm_image_lists_what_rpm_itself_lists(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str, rpm_root: Path
):
    # Given an image with an rpmdb.sqlite written by rpm (four packages and a signing key)
    db = rpm_root / "var/lib/rpm/rpmdb.sqlite"
    files = {
        "etc/os-release": b'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\n',
        "var/lib/rpm/rpmdb.sqlite": db.read_bytes(),
    }
    expected = {
        (name, version)
        for name, version, _epoch, _src in rpm_listing(rpm_root / "var/lib/rpm")
        if name != "gpg-pubkey"
    }
    pusher.push_image(f"{scope}/rocky", "9", files)

    result = scan_one(api, registry, f"{scope}/rocky", "9")

    assert (result["osDistro"], result["osDistroVersion"]) == ("rocky", "9.3")
    assert packages(result) == {"package": expected}


def test_a_go_binary_lists_its_modules(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str, go_binaries: dict
):
    files = {"usr/local/bin/app": go_binaries["plain"].read_bytes()}
    pusher.push_image(f"{scope}/goapp", "1", files)

    result = scan_one(api, registry, f"{scope}/goapp", "1")

    assert packages(result) == {"go": {(name, version) for _t, name, version in GO_EXPECTED}}


def hostile_layer(kind: str) -> Blob:
    """A gzip layer with one member a scanner must refuse."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        if kind == "traversal":
            info.name = "../../etc/cron.d/evil"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "bomb":
            info.size = 128 << 20  # zeros: tiny once compressed, over the stack's 64 MiB cap
        payload = b"\0" * info.size
        tar.addfile(info, io.BytesIO(payload) if info.size else None)
    data = gzip.compress(buf.getvalue(), compresslevel=9)
    return Blob.of(data, DOCKER_LAYER_GZIP)


def test_hostile_images_end_their_own_scan_with_a_clear_error_and_the_sweep_goes_on(
    api: Api, pusher: Pusher, registry: RegistryServer, scope: str
):
    # Given a repository with one sound image and three hostile ones
    repo = f"{scope}/mixed"
    pusher.push_image(repo, "good", dist_info("fine", "1.0"))
    for kind in ("traversal", "device", "bomb"):
        pusher.push_image(repo, kind, [hostile_layer(kind)])
    api.set_specs(spec(f"http://{registry.host}", repo, cap=0))

    # When a sweep scans the repository
    done = api.wait_job(api.started(), timeout=120)

    # Then the sound image is scanned and each hostile one fails with its reason
    assert done["status"] == "completed"
    assert (done["counts"]["scanned"], done["counts"]["failed"]) == (1, 3)
    errors = {e["tag"]: e["err"] for e in done["errors"]}
    assert "'../../etc/cron.d/evil' escapes the image root" in errors["traversal"]
    assert "device" in errors["device"] and "etc/hostname" in errors["device"]
    assert "expands to more than the limit" in errors["bomb"]
    for tag, err in errors.items():
        [result] = api.results(name=f"{registry.host}/{repo}:{tag}")
        assert result["err"] == err
    assert packages(api.results(name=f"{registry.host}/{repo}:good")[0]) == {
        "python": {("fine", "1.0")}
    }


def test_layers_analysed_by_an_older_analyser_are_analysed_again_and_only_they(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str, db
):
    # Given an image of two layers, scanned once, behind a proxy counting requests
    proxy = FaultProxy.for_url(registry.url)
    older, current = make_layer(dist_info("old", "1.0")), make_layer(dist_info("new", "1.0"))
    pushed = pusher.push_image(f"{name}/app", "1", [older, current])
    api.set_specs(spec(f"http://{proxy.host}", f"{name}/app"))
    try:
        assert api.wait_job(api.started())["status"] == "completed"

        # When one layer's cached analysis (and so the image's inventory) is from an
        # older analyser version
        with db.begin() as session:
            session.execute(
                update(LayerAnalysis)
                .where(LayerAnalysis.digest == older.digest)
                .values(analyser_version=ANALYSER_VERSION - 1)
            )
            session.execute(
                update(Image)
                .where(Image.digest == pushed.digest)
                .values(analyser_version=ANALYSER_VERSION - 1)
            )
        proxy.clear()
        assert api.wait_job(api.started())["status"] == "completed"

        # Then exactly that layer (and the config) is fetched and analysed again
        blobs = sorted(p.rsplit("/", 1)[-1] for m, p in proxy.requests if "/blobs/" in p)
        assert blobs == sorted([older.digest, pushed.config_digest])
        [result] = api.results(name=f"{proxy.host}/{name}/app:1")
        assert packages(result) == {"python": {("old", "1.0"), ("new", "1.0")}}
    finally:
        proxy.close()
