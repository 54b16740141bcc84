"""Layers read as streams from a real registry: packages, whiteouts, the OS, and every
way a layer can be broken or hostile.

A tiny cataloger defined here reports each line of a ``*.pkglist`` file as a package,
so these tests do not depend on the real catalogers. A proxy in front of the registry
counts the blob downloads.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import zstandard

from scanner.errors import InvalidContent, RegistryUnavailable
from scanner.inventory.analysis import FOREIGN_LAYER, analyse_image, analyse_layer
from scanner.inventory.osinfo import OSInfo
from scanner.inventory.packages import OS_PACKAGE, Package
from scanner.inventory.results import Inventory, LayerAnalysis, Limits
from scanner.registry.client import RegistryClient
from scanner.registry.images import Layer, PlatformImage, resolve_image
from testbed.images import Blob, Pusher, make_tar, sha256_digest
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
ROOT = Path(__file__).resolve().parent.parent


class PkgList:
    """A cataloger for tests: ``*.pkglist`` files, one "name version" per line."""

    name = "pkglist"

    def wants(self, path: str, head: bytes) -> bool:
        return path.endswith(".pkglist")

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        packages = []
        for line in file.read().decode().splitlines():
            name, _, version = line.partition(" ")
            if not version:
                raise InvalidContent(f"line {line!r} has no version")
            packages.append(Package(OS_PACKAGE, name, version, path=path))
        return packages


CATALOGERS = [PkgList()]

# The registry client goes through the test's proxy, which counts the blob downloads.
pytestmark = pytest.mark.registry_client(via_proxy=True, retries=1)


# -- fixtures and helpers ----------------------------------------------------------------


@dataclass
class DictCache:
    """The layer cache the worker keeps in its database, in a dict."""

    analyses: dict[str, LayerAnalysis] = field(default_factory=dict)
    puts: list[tuple[str, str, int]] = field(default_factory=list)

    def get(self, digest: str) -> LayerAnalysis | None:
        return self.analyses.get(digest)

    def put(self, digest: str, media_type: str, size: int, analysis: LayerAnalysis) -> None:
        self.puts.append((digest, media_type, size))
        # Stored as the database stores it: JSON.
        self.analyses[digest] = LayerAnalysis.from_json(json.loads(json.dumps(analysis.to_json())))


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, data


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A tar of exactly these members, in this order (no parent directories added)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def gzipped(tar: bytes) -> bytes:
    return gzip.compress(tar, mtime=0)


def zstd(tar: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(tar)


def layer(data: bytes, media_type: str = OCI_GZIP) -> Blob:
    return Blob.of(data, media_type, diff_id=sha256_digest(data))


def gzip_layer(files: dict[str, bytes]) -> Blob:
    return layer(gzipped(make_tar(files)))


def push(pusher: Pusher, repo: str, layers: list[Blob], tag: str = "1") -> str:
    pusher.push_image(repo, tag, layers, oci=True)
    return tag


def inventory(
    client: RegistryClient,
    repo: str,
    tag: str = "1",
    *,
    cache: DictCache | None = None,
    limits: Limits | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> Inventory:
    """Resolve ``repo:tag`` and analyse its layers as a worker does."""
    [image] = resolve_image(client, repo, tag)
    cache = cache if cache is not None else DictCache()
    return analyse_image(
        client,
        repo,
        image.layers,
        catalogers=CATALOGERS,
        cache_get=cache.get,
        cache_put=cache.put,
        checkpoint=checkpoint,
        limits=limits or Limits(),
    )


def found(inv: Inventory) -> list[tuple[str, str, str]]:
    return [(p.name, p.version, p.path) for p in inv.packages]


def blob_file(registry: RegistryServer, digest: str) -> Path:
    """Where the registry's filesystem storage keeps a blob."""
    assert registry.tmpdir is not None
    hex_digest = digest.removeprefix("sha256:")
    blobs = registry.tmpdir / "storage/docker/registry/v2/blobs/sha256"
    return blobs / hex_digest[:2] / hex_digest / "data"


def blob_gets(proxy: FaultProxy, repo: str) -> int:
    return proxy.count("GET", f"/v2/{repo}/blobs/")


# -- reading layers ----------------------------------------------------------------------

DEBIAN_OS_RELEASE = b"""\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""


@pytest.mark.parametrize(
    "compress, media_type",
    [(gzipped, OCI_GZIP), (zstd, OCI_ZSTD), (lambda tar: tar, OCI_TAR)],
    ids=["gzip", "zstd", "uncompressed"],
)
def test_layers_are_read_whatever_their_compression(
    client: RegistryClient,
    pusher: Pusher,
    proxy: FaultProxy,
    name: str,
    compress: Callable[[bytes], bytes],
    media_type: str,
) -> None:
    # Given an image whose one layer holds a package list and an os-release file
    files = {
        "var/lib/pkgs/base.pkglist": b"bash 5.2\ncoreutils 9.1\n",
        "usr/lib/os-release": DEBIAN_OS_RELEASE,
        "usr/bin/unrelated": b"\x7fELF" + bytes(4096),
    }
    blob = layer(compress(make_tar(files)), media_type)
    push(pusher, name, [blob])
    [image] = resolve_image(client, name, "1")
    proxy.clear()
    cache = DictCache()

    # When its layers are analysed
    inv = analyse_image(
        client, name, image.layers, catalogers=CATALOGERS, cache_get=cache.get, cache_put=cache.put
    )

    # Then every package is found, with the file and layer it came from, and the OS
    assert [(p.name, p.version, p.path, p.layer) for p in inv.packages] == [
        ("bash", "5.2", "var/lib/pkgs/base.pkglist", blob.digest),
        ("coreutils", "9.1", "var/lib/pkgs/base.pkglist", blob.digest),
    ]
    assert inv.os == OSInfo("debian", "12", "bookworm", "Debian GNU/Linux 12 (bookworm)")
    # And the layer was downloaded once, then stored with what the manifest says of it
    assert blob_gets(proxy, name) == 1
    assert cache.puts == [(blob.digest, media_type, blob.size)]
    assert cache.analyses[blob.digest].expanded_bytes == len(make_tar(files))


def test_a_mislabelled_layer_is_read_as_what_it_holds(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given a gzip layer whose manifest calls it an uncompressed tar
    blob = layer(gzipped(make_tar({"a.pkglist": b"zlib 1.3\n"})), DOCKER_TAR)
    push(pusher, name, [blob])

    # When it is analysed, then its packages are found all the same
    assert found(inventory(client, name)) == [("zlib", "1.3", "a.pkglist")]


def test_a_layer_in_no_known_format_is_refused(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given a "gzip" layer that is neither gzip, zstd nor tar
    push(pusher, name, [layer(b"PK\x03\x04 this is a zip file" * 40)])

    # When it is analysed, then the error says what it is not
    with pytest.raises(InvalidContent, match=r"is labelled .*gzip.* but is neither gzip, zstd nor"):
        inventory(client, name)


def test_analysis_round_trips_through_json() -> None:
    # Given the analysis of a layer with packages, OS files and whiteouts
    tar = tar_of(
        member("app/x.pkglist", b"one 1.0\ntwo 2.0\n"),
        member("etc/alpine-release", b"3.19.1\n"),
        member("etc/os-release", kind=tarfile.SYMTYPE, linkname="../usr/lib/os-release"),
        member("app/.wh.gone"),
        member("opt/.wh..wh..opq"),
    )
    analysis = analyse_layer(
        io.BytesIO(tar), digest="sha256:" + "1" * 64, media_type=OCI_TAR, catalogers=CATALOGERS
    )

    # When it is stored as JSON and read back, then nothing is lost
    assert LayerAnalysis.from_json(json.loads(json.dumps(analysis.to_json()))) == analysis
    assert analysis.whiteouts == ["app/gone"]
    assert analysis.opaque_dirs == ["opt"]
    assert analysis.os_files == {"etc/alpine-release": "3.19.1\n", "etc/os-release": ""}


# -- overlay semantics ---------------------------------------------------------------------


def test_upper_layers_delete_replace_and_hide_lower_files(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given three layers: a base, one deleting and hiding, one re-adding and replacing
    base = gzip_layer(
        {
            "app/one.pkglist": b"one 1.0\n",
            "app/two.pkglist": b"two 1.0\n",
            "opt/tool/old.pkglist": b"old-tool 1.0\n",
            "var/cache/c.pkglist": b"cached 1.0\n",
            "keep.pkglist": b"kept 1.0\n",
            "linked.pkglist": b"linked 1.0\n",
        }
    )
    middle = layer(
        gzipped(
            tar_of(
                member("app/.wh.one.pkglist"),  # deletes a file
                member("var/.wh.cache"),  # deletes a directory and what it holds
                member("opt/tool/.wh..wh..opq"),  # hides the lower opt/tool
                member("opt/tool/new.pkglist", b"new-tool 2.0\n"),  # but not its own
                member("linked.pkglist", kind=tarfile.SYMTYPE, linkname="/dev/null"),
            )
        )
    )
    top = gzip_layer({"app/one.pkglist": b"one 3.0\n", "app/two.pkglist": b"two 2.0\n"})
    push(pusher, name, [base, middle, top])

    # When the image is analysed
    inv = inventory(client, name)

    # Then what is left is what a container of that image would see
    assert [(p.name, p.version, p.layer) for p in inv.packages] == [
        ("kept", "1.0", base.digest),
        ("new-tool", "2.0", middle.digest),
        ("one", "3.0", top.digest),
        ("two", "2.0", top.digest),
    ]


def test_an_opaque_root_hides_every_lower_file(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    base = gzip_layer({"a.pkglist": b"a 1\n", "etc/alpine-release": b"3.18.0\n"})
    squashed = layer(gzipped(tar_of(member(".wh..wh..opq"), member("b.pkglist", b"b 2\n"))))
    push(pusher, name, [base, squashed])

    inv = inventory(client, name)

    assert found(inv) == [("b", "2", "b.pkglist")]
    assert inv.os == OSInfo("", "", "", "")


# -- OS detection ----------------------------------------------------------------------------

ALPINE_OS_RELEASE = b"""\
NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.19.1
PRETTY_NAME="Alpine Linux v3.19"
HOME_URL="https://alpinelinux.org/"
"""


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param(
            # Debian's layout: etc/os-release is a symlink to usr/lib/os-release
            [
                member("usr/lib/os-release", DEBIAN_OS_RELEASE),
                member("etc/os-release", kind=tarfile.SYMTYPE, linkname="../usr/lib/os-release"),
                member("etc/debian_version", b"12.5\n"),
            ],
            OSInfo("debian", "12", "bookworm", "Debian GNU/Linux 12 (bookworm)"),
            id="debian",
        ),
        pytest.param(
            [
                member("etc/os-release", ALPINE_OS_RELEASE),
                member("etc/alpine-release", b"3.19.1\n"),
            ],
            OSInfo("alpine", "3.19.1", "3.19", "Alpine Linux v3.19"),
            id="alpine",
        ),
        pytest.param(
            # An old image with no os-release at all
            [member("etc/redhat-release", b"CentOS Linux release 7.9.2009 (Core)\n")],
            OSInfo("centos", "7.9.2009", "7", "CentOS Linux release 7.9.2009 (Core)"),
            id="rhel-like",
        ),
        pytest.param(
            [member("app/main.py", b"print('hello')\n")],
            OSInfo("", "", "", ""),
            id="no-os",
        ),
    ],
)
def test_the_os_is_detected(
    client: RegistryClient,
    pusher: Pusher,
    name: str,
    files: list[tuple[tarfile.TarInfo, bytes]],
    expected: OSInfo,
) -> None:
    push(pusher, name, [layer(gzipped(tar_of(*files)))])
    assert inventory(client, name).os == expected


def test_an_upper_layer_changing_the_os_wins(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given an alpine base and a layer that turns the image into a Debian one
    alpine = layer(gzipped(tar_of(member("etc/os-release", ALPINE_OS_RELEASE))))
    debian = layer(
        gzipped(
            tar_of(
                member("usr/lib/os-release", DEBIAN_OS_RELEASE),
                member("etc/os-release", kind=tarfile.SYMTYPE, linkname="../usr/lib/os-release"),
            )
        )
    )
    push(pusher, name, [alpine, debian])

    # Then the symlink hides the alpine file and the Debian one is what counts
    assert inventory(client, name).os.distro == "debian"


# -- broken and hostile layers -------------------------------------------------------------


def _bomb(expanded: int) -> bytes:
    """A gzip layer of one file of ``expanded`` zero bytes, built without holding it."""
    info = tarfile.TarInfo("zeros")
    info.size = expanded
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    parts = [compressor.compress(info.tobuf(tarfile.PAX_FORMAT))]
    zeros = bytes(1 << 20)
    for _ in range(expanded >> 20):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(1024)))  # end of archive
    parts.append(compressor.flush())
    return b"".join(parts)


def _corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


def _bad_header() -> bytes:
    tar = bytearray(make_tar({"a.pkglist": b"a 1\n", "b.pkglist": b"b 1\n"}))
    second = tar.index(b"b.pkglist", 600) - (tar.index(b"b.pkglist", 600) % 512)
    tar[second + 148 : second + 156] = b"0000000\x00"  # a wrong header checksum
    return gzipped(bytes(tar))


_PKGS = make_tar({f"pkg/{n}.pkglist": f"p{n} 1.0\n".encode() * 2000 for n in range(4)})


@pytest.mark.parametrize(
    "data, media_type, error",
    [
        pytest.param(
            gzipped(_PKGS)[: len(gzipped(_PKGS)) // 2],
            OCI_GZIP,
            "corrupt or truncated gzip stream",
            id="truncated-gzip",
        ),
        pytest.param(
            _corrupt_middle(zstd(_PKGS)), OCI_ZSTD, "corrupt or truncated zstd", id="corrupt-zstd"
        ),
        pytest.param(
            zstd(_PKGS)[: len(zstd(_PKGS)) // 2],
            OCI_ZSTD,
            "truncated zstd stream",
            id="truncated-zstd",
        ),
        pytest.param(_bad_header(), OCI_GZIP, "corrupt tar header", id="corrupt-tar-header"),
        pytest.param(
            gzipped(tar_of(member("../etc/passwd", b"root::0:0::/:/bin/sh\n"))),
            OCI_GZIP,
            "member '../etc/passwd' escapes the image root",
            id="dotdot",
        ),
        pytest.param(
            gzipped(tar_of(member("usr/../../x", b"x"))),
            OCI_GZIP,
            "member 'usr/../../x' escapes the image root",
            id="dotdot-inside",
        ),
        pytest.param(
            gzipped(tar_of(member("lib/evil", kind=tarfile.SYMTYPE, linkname="../../etc/shadow"))),
            OCI_GZIP,
            r"symlink 'lib/evil' -> '../../etc/shadow' points outside the image root",
            id="symlink-escape",
        ),
        pytest.param(
            gzipped(tar_of(member("etc/pw", kind=tarfile.LNKTYPE, linkname="/etc/passwd"))),
            OCI_GZIP,
            r"hard link 'etc/pw' -> '/etc/passwd' points to an absolute path",
            id="hardlink-absolute",
        ),
        pytest.param(
            gzipped(tar_of(member("etc/pw", kind=tarfile.LNKTYPE, linkname="../passwd"))),
            OCI_GZIP,
            r"hard link 'etc/pw' -> '../passwd' points outside the image root",
            id="hardlink-escape",
        ),
        pytest.param(
            gzipped(tar_of(member("dev/console", kind=tarfile.CHRTYPE))),
            OCI_GZIP,
            "member 'dev/console' is a character device",
            id="char-device",
        ),
        pytest.param(
            gzipped(tar_of(member("dev/sda", kind=tarfile.BLKTYPE))),
            OCI_GZIP,
            "member 'dev/sda' is a block device",
            id="block-device",
        ),
        pytest.param(
            gzipped(tar_of(member("run/pipe", kind=tarfile.FIFOTYPE))),
            OCI_GZIP,
            "member 'run/pipe' is a FIFO",
            id="fifo",
        ),
        pytest.param(
            gzipped(make_tar({"bad.pkglist": b"no-version-here\n"})),
            OCI_GZIP,
            "bad.pkglist: line 'no-version-here' has no version",
            id="malformed-package-file",
        ),
    ],
)
def test_broken_or_hostile_layers_are_refused(
    client: RegistryClient,
    pusher: Pusher,
    name: str,
    data: bytes,
    media_type: str,
    error: str,
) -> None:
    # Given an image whose layer is broken or hostile (its digest is right: it is
    # pushed as it is)
    blob = layer(data, media_type)
    push(pusher, name, [blob])
    cache = DictCache()

    # When it is analysed, then the error names the layer and the problem
    with pytest.raises(InvalidContent, match=f"layer {blob.digest}: .*{error}"):
        inventory(client, name, cache=cache)
    # And nothing is cached for it
    assert cache.puts == []


def test_a_decompression_bomb_is_stopped_early(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given a 150 KiB gzip layer that expands to 128 MiB
    bomb = layer(_bomb(128 << 20))
    assert bomb.size < 200_000
    push(pusher, name, [bomb])

    # When it is analysed with a limit of 1 MiB expanded, then it is refused
    with pytest.raises(InvalidContent, match=f"layer {bomb.digest} expands to more than the limit"):
        inventory(client, name, limits=Limits(max_expanded_bytes=1 << 20))

    # And without reading much of it: the limit stops the decompression itself
    source = _Counting(io.BytesIO(bomb.data))
    with pytest.raises(InvalidContent, match="expands to more than the limit of 1048576 bytes"):
        analyse_layer(
            source,
            digest=bomb.digest,
            media_type=OCI_GZIP,
            catalogers=CATALOGERS,
            limits=Limits(max_expanded_bytes=1 << 20),
        )
    assert source.count < bomb.size // 4


def _zstd_bomb(expanded: int) -> bytes:
    """A zstd layer of one file of ``expanded`` zero bytes, streamed into the compressor."""
    info = tarfile.TarInfo("zeros")
    info.size = expanded
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=19).stream_writer(out, closefd=False) as writer:
        writer.write(info.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(expanded >> 20):
            writer.write(zeros)
        writer.write(bytes(1024))
    return out.getvalue()


def test_a_zstd_decompression_bomb_is_stopped_early(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given a tiny zstd layer that expands to 128 MiB
    bomb = layer(_zstd_bomb(128 << 20), OCI_ZSTD)
    assert bomb.size < 200_000
    push(pusher, name, [bomb])

    # When it is analysed with a limit of 1 MiB expanded, then it is refused
    with pytest.raises(InvalidContent, match=f"layer {bomb.digest} expands to more than the limit"):
        inventory(client, name, limits=Limits(max_expanded_bytes=1 << 20))


class _Counting:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


def test_a_package_file_over_the_file_limit_is_refused(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    push(pusher, name, [gzip_layer({"big.pkglist": b"p 1\n" * 1000})])
    with pytest.raises(InvalidContent, match=r"big\.pkglist is 4000 bytes, over the limit of 1000"):
        inventory(client, name, limits=Limits(max_file_bytes=1000))


def test_absolute_and_dotted_names_are_read_from_the_root(
    client: RegistryClient, pusher: Pusher, name: str
) -> None:
    # Given members named /etc/..., ./usr/... and usr/x/../y, and an absolute symlink
    tar = tar_of(
        member("/etc/alpine-release", b"3.19.1\n"),
        member("./usr/share/a.pkglist", b"a 1.0\n"),
        member("usr//lib/x/../b.pkglist", b"b 2.0\n"),
        member("usr/bin/sh", kind=tarfile.SYMTYPE, linkname="/bin/busybox"),
        member("usr/lib/c.pkglist", kind=tarfile.LNKTYPE, linkname="./usr/lib/b.pkglist"),
    )
    push(pusher, name, [layer(gzipped(tar))])

    # Then they are all taken as paths inside the image
    inv = inventory(client, name)
    assert found(inv) == [
        ("a", "1.0", "usr/share/a.pkglist"),
        ("b", "2.0", "usr/lib/b.pkglist"),
        ("b", "2.0", "usr/lib/c.pkglist"),
    ]
    assert inv.os.distro == "alpine"


# -- verification against the manifest --------------------------------------------------------


def test_a_tampered_layer_is_a_digest_mismatch(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer, name: str
) -> None:
    # Given a layer whose stored bytes were changed behind the registry's back (same size)
    blob = gzip_layer({f"{name}.pkglist": b"victim 1.0\n" * 100})
    push(pusher, name, [blob])
    blob_file(registry, blob.digest).write_bytes(_corrupt_middle(blob.data))
    cache = DictCache()

    # When it is analysed, then the digest mismatch is what is reported
    with pytest.raises(InvalidContent, match=f"layer {blob.digest} digest mismatch: content is"):
        inventory(client, name, cache=cache)
    assert cache.puts == []


def test_a_tampered_layer_that_still_decompresses_is_not_cached(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer, name: str
) -> None:
    # Given a plain tar layer changed in a file's contents only: it still reads fine
    blob = layer(make_tar({"a.pkglist": b"real 1.0\n"}), OCI_TAR)
    push(pusher, name, [blob])
    blob_file(registry, blob.digest).write_bytes(blob.data.replace(b"real 1.0", b"fake 6.6"))
    cache = DictCache()

    # Then its analysis is refused, because only a verified layer counts
    with pytest.raises(InvalidContent, match="digest mismatch"):
        inventory(client, name, cache=cache)
    assert cache.puts == []


@pytest.mark.parametrize("lie", [-10, +10], ids=["smaller", "larger"])
def test_a_manifest_lying_about_a_layer_size_is_refused(
    client: RegistryClient, pusher: Pusher, name: str, lie: int
) -> None:
    # Given a manifest whose layer descriptor has the right digest but the wrong size
    blob = gzip_layer({"a.pkglist": b"a 1\n" * 50})
    liar = Blob(blob.data, blob.digest, blob.size + lie, blob.media_type, blob.diff_id)
    push(pusher, name, [liar])

    # When it is analysed, then the sizes are named
    with pytest.raises(
        InvalidContent, match=f"manifest says {blob.size + lie} bytes, registry sent {blob.size}"
    ):
        inventory(client, name)


class _Scripted(BaseHTTPRequestHandler):
    """Answers every GET with ``body``, cut short of ``length`` when that is larger."""

    body = b""
    length: int | None = None

    def do_GET(self) -> None:
        self.send_response(200)
        if self.length is not None:
            self.send_header("Content-Length", str(self.length))
        self.end_headers()
        self.wfile.write(self.body)
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[[bytes, int | None], str]]:
    servers: list[ThreadingHTTPServer] = []

    def serve(body: bytes, length: int | None) -> str:
        handler = type("Handler", (_Scripted,), {"body": body, "length": length})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_registry_sending_more_than_the_size_is_cut_off(
    scripted: Callable[[bytes, int | None], str],
) -> None:
    # Given a registry that streams more bytes than the manifest said, without a length
    body = bytes(5000)
    url = scripted(body, None)
    digest = sha256_digest(body[:1000])

    # When the blob is read, then reading stops past the size, with the reason
    with (
        RegistryClient(url, retries=0) as client,
        client.open_blob("repo", digest, size=1000) as blob,
    ):
        with pytest.raises(InvalidContent, match="manifest says 1000 bytes, registry sent more"):
            blob.read()
        # A caller that ignores it still gets no clean end
        with pytest.raises(InvalidContent):
            blob.read(1)


def test_a_connection_lost_mid_layer_is_unavailable(
    scripted: Callable[[bytes, int | None], str],
) -> None:
    # Given a registry that hangs up after 100 of the 1000 bytes it announced
    url = scripted(bytes(100), 1000)
    digest = sha256_digest(bytes(1000))

    # Then reading the layer fails as a transient error
    with (
        RegistryClient(url, retries=0) as client,
        client.open_blob("repo", digest, size=1000) as blob,
        pytest.raises(RegistryUnavailable, match="connection lost"),
    ):
        blob.read()


# -- answers that break off after their headers ---------------------------------------------


def _big_layer() -> Blob:
    # Random bytes do not compress: the body is long enough to be cut in its middle.
    return gzip_layer({"var/lib/pkgs/a.pkglist": b"a 1\n", "noise.bin": os.urandom(256 << 10)})


def test_a_layer_download_cut_short_after_its_headers_starts_over(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given a registry whose first answer for the layer breaks off after 100 bytes
    blob = _big_layer()
    push(pusher, name, [blob])
    path = f"/v2/{name}/blobs/{blob.digest}"
    proxy.cut_next(1, path, after=100)
    cache = DictCache()

    # When the image is analysed, the download starts over and the layer is read whole
    inv = inventory(client, name, cache=cache)

    assert [(p.name, p.version) for p in inv.packages] == [("a", "1")]
    assert proxy.count("GET", path) == 2
    assert [put[0] for put in cache.puts] == [blob.digest]


@pytest.mark.registry_client(via_proxy=True, retries=1, read_timeout=1.0)
def test_a_layer_download_that_stalls_past_the_read_timeout_starts_over(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given a registry that goes silent mid-layer for longer than the read timeout (1 s)
    blob = _big_layer()
    push(pusher, name, [blob])
    path = f"/v2/{name}/blobs/{blob.digest}"
    proxy.cut_next(1, path, after=100, stall=3)

    # When the image is analysed, the stalled download is given up and made again
    inv = inventory(client, name)

    assert [(p.name, p.version) for p in inv.packages] == [("a", "1")]
    assert proxy.count("GET", path) == 2


def test_a_layer_that_keeps_breaking_off_fails_as_unavailable_within_the_retries(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given a registry that cuts every answer for the layer short (retries=1 here)
    blob = _big_layer()
    push(pusher, name, [blob])
    path = f"/v2/{name}/blobs/{blob.digest}"
    proxy.cut_next(5, path, after=100)

    # Then the analysis fails as a transient error after one retry, not more
    with pytest.raises(RegistryUnavailable, match="connection lost"):
        inventory(client, name)
    assert proxy.count("GET", path) == 2


# -- unsupported and foreign layers ------------------------------------------------------------


def test_layer_types_we_cannot_read_fail_before_any_download(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    readable = gzip_layer({"a.pkglist": b"a 1\n"})
    push(pusher, name, [readable])
    [image] = resolve_image(client, name, "1")
    weird = Layer(sha256_digest(b"weird"), 5, "application/vnd.example.blob.v1")
    proxy.clear()

    with pytest.raises(InvalidContent, match=r"'application/vnd\.example\.blob\.v1', which is not"):
        analyse_image(
            client,
            name,
            [*image.layers, weird],
            catalogers=CATALOGERS,
            cache_get=DictCache().get,
            cache_put=DictCache().put,
        )
    assert blob_gets(proxy, name) == 0


def test_foreign_layers_are_skipped(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given a Windows-style image whose base layer is foreign (served from elsewhere)
    own = gzip_layer({"app/a.pkglist": b"a 1\n"})
    push(pusher, name, [own])
    [image] = resolve_image(client, name, "1")
    foreign = Layer(sha256_digest(b"windows base"), 1 << 30, FOREIGN_LAYER)
    proxy.clear()
    cache = DictCache()

    inv = analyse_image(
        client,
        name,
        [foreign, *image.layers],
        catalogers=CATALOGERS,
        cache_get=cache.get,
        cache_put=cache.put,
    )

    assert found(inv) == [("a", "1", "app/a.pkglist")]
    assert blob_gets(proxy, name) == 1
    assert [digest for digest, _, _ in cache.puts] == [own.digest]


# -- downloads saved ----------------------------------------------------------------------------


def test_a_known_image_is_resolved_without_downloading_any_blob(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given a single image and a multi-platform one, resolved once
    pusher.push_image(name, "single", {"a": b"1"})
    pusher.push_multiplatform(name, "multi", {"b": b"2"})
    first = resolve_image(client, name, "single") + resolve_image(client, name, "multi")
    # As a database would return them: without the index they were reached through
    seen: dict[str, PlatformImage] = {
        image.digest: PlatformImage(**{**vars(image), "index_digest": None}) for image in first
    }
    proxy.clear()

    # When they are resolved again with the images already known
    again = resolve_image(client, name, "single", known=seen.get) + resolve_image(
        client, name, "multi", known=seen.get
    )

    # Then the result is the same, and only the two tags' manifests were fetched
    assert again == first
    assert blob_gets(proxy, name) == 0
    assert proxy.count("GET", f"/v2/{name}/manifests/") == 2


def test_a_layer_shared_by_two_images_is_downloaded_once(
    client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given two images on the same base layer
    base = gzip_layer({"var/lib/base.pkglist": b"libc 2.36\n"})
    first = gzip_layer({"app/first.pkglist": b"first 1\n"})
    second = gzip_layer({"app/second.pkglist": b"second 1\n"})
    push(pusher, name, [base, first], tag="first")
    push(pusher, name, [base, second], tag="second")
    cache = DictCache()
    checkpoints: list[None] = []

    def checkpoint() -> None:
        checkpoints.append(None)

    # When both are analysed with one cache, and the first once more
    inv_first = inventory(client, name, "first", cache=cache, checkpoint=checkpoint)
    inv_second = inventory(client, name, "second", cache=cache, checkpoint=checkpoint)
    inventory(client, name, "first", cache=cache, checkpoint=checkpoint)

    # Then each layer was downloaded once (the rest are the two configs, fetched per resolve)
    layer_gets = [
        target
        for method, target in proxy.requests
        if method == "GET" and any(b.digest in target for b in (base, first, second))
    ]
    assert sorted(layer_gets) == sorted(
        f"/v2/{name}/blobs/{b.digest}" for b in (base, first, second)
    )
    assert len(checkpoints) == 3  # one per download
    # And both inventories carry the base layer's package, from the base layer
    for inv, own in ((inv_first, first), (inv_second, second)):
        assert [(p.name, p.layer) for p in inv.packages if p.name == "libc"] == [
            ("libc", base.digest)
        ]
        assert any(p.layer == own.digest for p in inv.packages)


# -- memory ----------------------------------------------------------------------------------

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from scanner.inventory.analysis import analyse_layer
    from scanner.inventory.packages import Package

    class Counter:
        name = "counter"
        def wants(self, path, head):
            return path.endswith(".bin")
        def parse(self, path, file):
            total = 0
            while chunk := file.read(1 << 16):
                total += len(chunk)
            return [Package("package", path, str(total), path=path)]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(sys.argv[1], "rb") as stream:
        analysis = analyse_layer(
            stream,
            digest="sha256:" + "0" * 64,
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            catalogers=[Counter()],
        )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "growth_kib": after - before,
        "expanded": analysis.expanded_bytes,
        "versions": [p.version for found in analysis.packages.values() for p in found],
    }))
    """
)


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_memory_does_not_grow_with_the_layer(tmp_path: Path) -> None:
    # Given a gzip layer of ~208 MiB expanded, on disk: a 160 MiB file a cataloger reads
    # and a 48 MiB one nobody wants
    path = tmp_path / "layer.tar.gz"
    sizes = {"data/big.bin": 160 << 20, "data/other.img": 48 << 20}
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for member_name, size in sizes.items():
            info = tarfile.TarInfo(member_name)
            info.size = size
            tar.addfile(info, _Zeros(size))

    # When it is analysed in a fresh interpreter
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    result = json.loads(probe.stdout)

    # Then every byte went through, and the peak memory grew by far less than the layer
    assert result["versions"] == [str(160 << 20)]
    assert result["expanded"] > 208 << 20
    assert result["growth_kib"] < 64 << 10, result
