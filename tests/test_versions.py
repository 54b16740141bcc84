"""Version ordering, checked against each scheme's own reference implementation.

dpkg is checked against ``dpkg --compare-versions`` on real versions from this
machine's apt lists, rpm against rpm's ``rpm.vercmp()``, npm against npm's
``semver`` package, Go against ``golang.org/x/mod/semver`` and PEP 440 against
``packaging``. apk-tools and Maven do not run here: their tables below follow
their documented rules and real version sequences.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from scanner.vulns.versions import SCHEMES, InvalidVersion, compare, scheme_for, sort_key

OPS = {-1: "lt", 0: "eq", 1: "gt"}


def _shuffled_pairs(pairs: Iterable[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """Each pair once, in a random orientation, so both directions get checked."""
    out = []
    for a, b in sorted(set(pairs)):
        out.append((a, b) if rng.random() < 0.5 else (b, a))
    return out


def _neighbour_pairs(ordered: Sequence[str], strides: Sequence[int]) -> set[tuple[str, str]]:
    """Pairs of versions close to each other in sorted order: the hard cases."""
    return {(ordered[i], ordered[i + k]) for k in strides for i in range(len(ordered) - k)}


def _sample(items: Iterable[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[str, str]]:
    items = sorted(items)
    return items if len(items) <= n else rng.sample(items, n)


# -- dpkg ------------------------------------------------------------------------------------

APT_LISTS = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"
_SOURCE = re.compile(r"(\S+)(?: \((\S+)\))?")


@functools.cache
def debian_versions() -> dict[str, frozenset[str]]:
    """Versions by binary package and by source package, from this machine's apt lists."""
    lists = sorted(glob.glob(f"{APT_LISTS}/*_Packages*"))
    if not lists:
        pytest.fail(f"no package lists in {APT_LISTS}: run apt-get update (scripts/test.sh does)")
    by_name: dict[str, set[str]] = defaultdict(set)
    for path in lists:
        out = subprocess.run([APT_HELPER, "cat-file", path], capture_output=True, check=True)
        for stanza in out.stdout.decode("utf-8", "surrogateescape").split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line[:80])
            if "Package" not in fields or "Version" not in fields:
                continue
            by_name[fields["Package"]].add(fields["Version"])
            source = _SOURCE.fullmatch(fields.get("Source", fields["Package"]))
            if source:
                by_name["src:" + source[1]].add(source[2] or fields["Version"])
    return {name: frozenset(vs) for name, vs in by_name.items()}


def dpkg_confirms(cases: Sequence[tuple[str, str, str]]) -> list[bool]:
    """Ask ``dpkg --compare-versions a op b`` for every case, in parallel bash loops."""
    workers = max(2, os.cpu_count() or 2)
    chunks = [cases[i::workers] for i in range(workers)]
    loop = (
        "while IFS=$'\\t' read -r a op b; do "
        'if dpkg --compare-versions "$a" "$op" "$b" 2>/dev/null; then echo 1; else echo 0; fi; '
        'done < "$1"'
    )
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for n, chunk in enumerate(chunks):
            path = Path(tmp, f"cases{n}")
            path.write_bytes(
                "".join(f"{a}\t{op}\t{b}\n" for a, op, b in chunk).encode(
                    "utf-8", "surrogateescape"
                )
            )
            procs.append(
                subprocess.Popen(["bash", "-c", loop, "loop", path], stdout=subprocess.PIPE)
            )
        answers = [proc.communicate()[0].split() for proc in procs]
        assert all(proc.returncode == 0 for proc in procs)
    results: list[bool] = [False] * len(cases)
    for n, chunk_answers in enumerate(answers):
        assert len(chunk_answers) == len(chunks[n])
        for j, answer in enumerate(chunk_answers):
            results[n + j * workers] = answer == b"1"
    return results


DPKG_CRAFTED = [
    *["0", "0~", "0~~", "0~a", "0a", "0.", "0.0", "00", "000", "1", "01", "1.0", "1.00"],
    *["1.0-0", "1.0-00", "1.0-1", "1.0-1~bpo11+1", "1.0-1+b1", "1.0-1.1", "1.0-1-1", "1.0-1-2"],
    *["1.0~rc1", "1.0~rc1-1", "1.0~~", "1.0~", "1.0+~", "1.0-0~", "1.0+", "1.0.", "1..0"],
    *["1.0+dfsg", "1.0+dfsg-1", "1.0a", "1.0A", "1.0z", "1.0Z", "1.0.a", "1.0-a", "1.0aa"],
    *["1:0", "1:1.0", "0:1.0", "00:1.0", "+1:1.0", "2:0.1", "1:2:3", "1:2:3-4", "1:1.0-1"],
    *["2147483647:1", "1.2.3+git20200101.abcdef-1", "10", "9", "1.00001", "1.1", "1.0-a.b+c"],
    *["3.0.11-1~deb12u2", "3.0.11-1", "3.0.13-1~deb12u1", "3.0.13-1", "2.36-9+deb12u4"],
    *["1.0é", "1.0-é", "1.0_1", "1.0=1", "abc", "a1", "1.0~beta1", "1.0~alpha", "1.0~ALPHA"],
    *["99999999999999999999", "99999999999999999998", "1.99999999999999999999", "1:+"],
]
# dpkg refuses these with an error (a warning still compares, as dpkg does).
DPKG_INVALID = ["1:", ":1", "a:1", "1a:1", "1.0-", "1 0", "2147483648:1", "1:-1", " ", "1:2 3"]


@pytest.mark.slow  # over 10,000 pairs, each a dpkg process: about 20 s
def test_dpkg_agrees_with_dpkg_on_the_debian_index() -> None:
    rng = random.Random(1)
    index = debian_versions()
    every = sorted({v for vs in index.values() for v in vs})
    ordered = sorted(every, key=functools.partial(sort_key, "dpkg"))
    same_package = {pair for vs in index.values() for pair in itertools.combinations(sorted(vs), 2)}
    by_upstream: dict[str, list[str]] = defaultdict(list)
    for v in every:
        by_upstream[v.rsplit("-", 1)[0]].append(v)
    same_upstream = {pair for vs in by_upstream.values() for pair in itertools.combinations(vs, 2)}
    neighbours = _neighbour_pairs(ordered, [1])
    near = _neighbour_pairs(ordered, range(2, 12))
    randoms = {tuple(rng.sample(every, 2)) for _ in range(1500)}
    crafted = set(itertools.combinations(DPKG_CRAFTED, 2))
    pairs = _shuffled_pairs(
        [
            *same_package,
            *_sample(same_upstream, 2000, rng),
            *_sample(neighbours, 3000, rng),
            *_sample(near, 1000, rng),
            *randoms,
            *crafted,
            *((v, v) for v in rng.sample(every, 100)),
        ],
        rng,
    )
    cases = [(a, OPS[compare("dpkg", a, b)], b) for a, b in pairs]
    confirmed = dpkg_confirms(cases)
    wrong = [case for case, ok in zip(cases, confirmed, strict=True) if not ok]
    print(f"dpkg: {len(cases)} pairs of {len(every)} real versions agree with dpkg")
    assert not wrong, f"dpkg disagrees on {len(wrong)} of {len(cases)}: {wrong[:20]}"
    assert len(cases) >= 10_000
    assert len(same_package) > 300 and len(same_upstream) > 10_000  # many real close pairs


def test_dpkg_rejects_what_dpkg_rejects() -> None:
    script = 'for v in "$@"; do dpkg --compare-versions "$v" lt 1 2>/dev/null; echo $?; done'
    out = subprocess.run(["bash", "-c", script, "x", *DPKG_INVALID], capture_output=True)
    assert out.stdout.split() == [b"2"] * len(DPKG_INVALID)  # dpkg's "bad syntax" error
    for v in [*DPKG_INVALID, ""]:
        with pytest.raises(InvalidVersion):
            compare("dpkg", v, "1")


# -- rpm -------------------------------------------------------------------------------------

RPM_RELEASES = [
    *["1", "2", "10", "1.el9", "1.el9_3", "3.el8_9.2", "2.el9_4.1", "0.1.rc1.el9", "1.fc39"],
    *["150500.3.6.1", "150400.14.3", "lp155.2.1", "1.mga9", "2.mga9", "1.module+el8.9.0+1+0a1b"],
    *["0.1.beta2.fc40", "1.1", "1.1.1", "11.el7_9", "1~rc1", "1^20230101git1", "alpha", "a1"],
]
RPM_CRAFTED = [
    *["1.0", "1.0~rc1", "1.0~rc2", "1.0~~", "1.0^", "1.0^1", "1.0^git1", "1.0^~", "1.0~^"],
    *["1.0.1", "1.0a", "1.0A", "1.0.a", "1.0_1", "1.00", "01.0", "1..0", "1.0.", "1.0+1", "1.0-1"],
    *["1:1.0", "0:1.0", ":1.0", "2:0.1-1", "1:1.0-1", "1:1.0-1~1", "1.0-1.el9", "1.0-1.el9_1"],
    *["a", "b", "ab", "1a", "a1", "1.0é", "1.0-é", "12-3:4", "1.0-", "1.0--1", "~", "^", "-1"],
    *["1.0-1^", "1.0-1~", "999999999999999999999999", "999999999999999999999998", "1.0-rc1"],
]


def _rpm_versions(rng: random.Random) -> list[str]:
    """Real upstream versions from the Debian index, with rpm-style releases and epochs."""
    upstreams = set()
    for vs in debian_versions().values():
        for v in vs:
            upstream = v.split(":", 1)[-1].rsplit("-", 1)[0]
            if re.fullmatch(r"[0-9A-Za-z.+~^_]+", upstream):
                upstreams.add(upstream.replace("+", "."))  # rpm forbids nothing but "-"
    picked = rng.sample(sorted(upstreams), 1500)
    out = set(RPM_CRAFTED)
    for v in picked:
        out.add(v)
        out.add(f"{v}-{rng.choice(RPM_RELEASES)}")
        if rng.random() < 0.2:
            out.add(f"{rng.choice('0123')}:{v}-{rng.choice(RPM_RELEASES)}")
    return sorted(out)


def rpm_vercmp(pairs: Sequence[tuple[str, str]]) -> list[int]:
    """rpm's own ``rpm.vercmp(a, b)`` for every pair, in one rpm process."""
    if shutil.which("rpm") is None:
        pytest.fail("rpm is not installed: scripts/test.sh installs it")
    lua = (
        "%{lua:\n"
        "local out = {}\n"
        'for line in io.lines(rpm.expand("%{_regscan_pairs}")) do\n'
        '  local a, b = line:match("^(.-)\\t(.*)$")\n'
        "  out[#out + 1] = tostring(rpm.vercmp(a, b))\n"
        "end\n"
        'print(table.concat(out, " "))\n'
        "}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "pairs")
        path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
        out = subprocess.run(
            ["rpm", "--define", f"_regscan_pairs {path}", "--eval", lua],
            capture_output=True,
            check=True,
            text=True,
        )
    results = [int(x) for x in out.stdout.split()]
    assert len(results) == len(pairs)
    return results


@pytest.mark.slow  # over 12,000 pairs through rpm's own comparison
def test_rpm_agrees_with_rpm_vercmp() -> None:
    rng = random.Random(2)
    every = _rpm_versions(rng)
    ordered = sorted(every, key=functools.partial(sort_key, "rpm"))
    pairs = _shuffled_pairs(
        [
            *_neighbour_pairs(ordered, [1, 2, 3]),
            *(tuple(rng.sample(every, 2)) for _ in range(1500)),
            *itertools.combinations(RPM_CRAFTED, 2),
        ],
        rng,
    )
    expected = rpm_vercmp(pairs)
    ours = [compare("rpm", a, b) for a, b in pairs]
    wrong = [(a, b, e, o) for (a, b), e, o in zip(pairs, expected, ours, strict=True) if e != o]
    print(f"rpm: {len(pairs)} pairs agree with rpm.vercmp()")
    assert not wrong, f"rpm disagrees on {len(wrong)} of {len(pairs)}: {wrong[:20]}"
    assert len(pairs) >= 3000


def test_rpm_rejects_only_the_empty_string() -> None:
    with pytest.raises(InvalidVersion):
        compare("rpm", "", "1")
    assert compare("rpm", "1.0-1", "1.0") == 1  # a missing release sorts first, as in rpm


# -- PEP 440 ---------------------------------------------------------------------------------


def _pep440_versions(rng: random.Random) -> list[str]:
    releases = ["0", "1", "1.0", "1.0.0", "1.2", "1.10", "2", "2.0.1", "10.0", "1.0.0.0.1"]
    pres = ["", "a1", "a2", "b1", "rc1", "rc10", "c1", "alpha1", "-beta.2", "preview3", "a"]
    posts = ["", ".post1", ".post2", "-1", "post", ".rev3", "r4"]
    devs = ["", ".dev0", ".dev1", "dev", "-dev2"]
    locals_ = ["", "+abc", "+1", "+abc.1", "+1.abc", "+ubuntu-1", "+0"]
    out = set()
    for _ in range(1200):
        epoch = rng.choice(["", "", "", "1!", "2!"])
        parts = [rng.choice(x) for x in (releases, pres, posts, devs, locals_)]
        v = epoch + "".join(parts)
        out.add(rng.choice([v, v.upper(), "v" + v, " " + v + " "]))
    return sorted(out)


def test_pep440_agrees_with_packaging() -> None:
    rng = random.Random(3)
    every = _pep440_versions(rng)
    ordered = sorted(every, key=Version)
    pairs = [*_neighbour_pairs(ordered, [1, 2]), *(rng.sample(every, 2) for _ in range(3000))]
    for a, b in pairs:
        va, vb = Version(a), Version(b)
        assert compare("pep440", a, b) == (va > vb) - (va < vb), (a, b)
    print(f"pep440: {len(pairs)} pairs agree with packaging")
    for bad in ["", "latest", "1.0.0-foo", "1..0", "1.0+", "0x1"]:
        with pytest.raises(InvalidVersion):
            compare("pep440", bad, "1.0")


# -- semver (npm) ----------------------------------------------------------------------------

SEMVER_SPEC_ORDER = [
    *["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2"],
    *["1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "2.0.0", "2.1.0", "2.1.1"],
]
SEMVER_INVALID = [
    *["", "1", "1.2", "01.2.3", "1.02.3", "1.2.03", "1.2.3-", "1.2.3-01", "1.2.3-a..b"],
    *["1.2.3+", "1.2.3+a..b", "==1.2.3", "V1.2.3", "v=1.2.3", "1.2.3.4", "a.b.c", "1.2.3-a_b"],
    *["-1.2.3", "1.2.3 4"],
]


def _semver_versions(rng: random.Random) -> list[str]:
    cores = ["0.0.0", "0.0.1", "0.1.0", "1.0.0", "1.0.1", "1.1.0", "1.2.3", "2.0.0", "10.20.30"]
    idents = ["alpha", "beta", "rc", "0", "1", "2", "10", "11", "a1", "1a", "0a", "-", "x-y", "Z"]
    builds = ["", "+build", "+001", "+exp.sha.5114f85", "+20130313144700", "+a-b"]
    out = set(SEMVER_SPEC_ORDER)
    for _ in range(700):
        pre = ".".join(rng.choice(idents) for _ in range(rng.choice([0, 0, 1, 1, 2, 3])))
        v = rng.choice(cores) + (f"-{pre}" if pre else "") + rng.choice(builds)
        out.add(rng.choice(["", "", "v", "=", "=v"]) + v)
    return sorted(out)


@pytest.fixture(scope="session")
def node_semver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """npm's ``semver`` package, installed into a temporary directory."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed to check semver: scripts/test.sh installs them")
    prefix = tmp_path_factory.mktemp("npm")
    subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", prefix, "semver@7"],
        check=True,
        capture_output=True,
    )
    return prefix / "node_modules" / "semver"


_NODE_SCRIPT = """
const semver = require(process.argv[1]);
const {versions, pairs} = JSON.parse(require("fs").readFileSync(0, "utf8"));
const clean = (v) => v.trim().replace(/^=/, "");
const valid = versions.map((v) => semver.valid(clean(v)) !== null);
const order = pairs.map(([a, b]) => semver.compare(clean(a), clean(b)));
process.stdout.write(JSON.stringify({valid, order}));
"""


def test_semver_agrees_with_npm_semver(node_semver: Path) -> None:
    rng = random.Random(4)
    every = _semver_versions(rng)
    ordered = sorted(every, key=functools.partial(sort_key, "semver"))
    pairs = _shuffled_pairs(
        [
            *_neighbour_pairs(ordered, [1, 2, 3]),
            *(tuple(rng.sample(every, 2)) for _ in range(3000)),
        ],
        rng,
    )
    candidates = every + SEMVER_INVALID
    out = subprocess.run(
        ["node", "-e", _NODE_SCRIPT, str(node_semver)],
        input=json.dumps({"versions": candidates, "pairs": pairs}),
        capture_output=True,
        check=True,
        text=True,
    )
    reference = json.loads(out.stdout)
    for v, ok in zip(candidates, reference["valid"], strict=True):
        assert _parses("semver", v) == ok, v
    ours = [compare("semver", a, b) for a, b in pairs]
    wrong = [(p, e, o) for p, e, o in zip(pairs, reference["order"], ours, strict=True) if e != o]
    print(f"semver: {len(pairs)} pairs agree with npm semver")
    assert not wrong, f"npm semver disagrees on {len(wrong)} of {len(pairs)}: {wrong[:20]}"
    assert len(pairs) >= 3000
    for a, b in itertools.pairwise(SEMVER_SPEC_ORDER):
        assert compare("semver", a, b) == -1
    assert compare("semver", "1.0.0+a", "1.0.0+b") == 0  # build metadata never counts


def _parses(scheme: str, v: str) -> bool:
    try:
        sort_key(scheme, v)
    except InvalidVersion:
        return False
    return True


# -- Go --------------------------------------------------------------------------------------

GO_XMOD = "/usr/share/gocode"  # Debian's golang-golang-x-mod-dev
_GO_PROGRAM = """package main

import (
\t"bufio"
\t"fmt"
\t"os"
\t"strings"

\t"golang.org/x/mod/semver"
)

func main() {
\tin := bufio.NewScanner(os.Stdin)
\tout := bufio.NewWriter(os.Stdout)
\tdefer out.Flush()
\tfor in.Scan() {
\t\tf := strings.Split(in.Text(), "\\t")
\t\tif len(f) == 1 {
\t\t\tfmt.Fprintln(out, semver.IsValid(f[0]))
\t\t} else {
\t\t\tfmt.Fprintln(out, semver.Compare(f[0], f[1]))
\t\t}
\t}
}
"""


@pytest.fixture(scope="session")
def go_semver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small program answering with golang.org/x/mod/semver, the Go toolchain's own rules."""
    if shutil.which("go") is None or not Path(GO_XMOD, "src/golang.org/x/mod/semver").is_dir():
        pytest.fail("go and golang-golang-x-mod-dev are needed: scripts/test.sh installs them")
    work = tmp_path_factory.mktemp("gosemver")
    (work / "main.go").write_text(_GO_PROGRAM)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GO_XMOD, "GOFLAGS": ""}
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    subprocess.run(
        ["go", "build", "-o", str(work / "gosemver"), "main.go"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    return work / "gosemver"


def _go_versions(rng: random.Random) -> list[str]:
    cores = ["v0.0.0", "v0.1.0", "v1.0.0", "v1.2.3", "v1.2.4", "v2.0.0", "v1", "v1.2", "v0"]
    pres = ["", "-pre", "-rc.1", "-rc.2", "-alpha", "-0", "-1", "-beta.10", "-beta.9"]
    pseudo_times = ["20191109021931", "20200101000000", "20230717120000"]
    hashes = ["daa7c04131f5", "0123456789ab", "ffffffffffff"]
    out = {"v1.2.3+incompatible", "v2.0.0+incompatible", "v1.2.3+meta", "v1.0.0-0"}
    for _ in range(500):
        core = rng.choice(cores)
        if core.count(".") == 2 and rng.random() < 0.4:
            time, rev = rng.choice(pseudo_times), rng.choice(hashes)
            if core == "v0.0.0":
                v = f"{core}-{time}-{rev}"  # no earlier tag
            elif rng.random() < 0.5:
                v = f"{core}-0.{time}-{rev}"  # after a release tag
            else:
                v = f"{core}-pre.0.{time}-{rev}"  # after a pre-release tag
        else:
            v = core + (rng.choice(pres) if core.count(".") == 2 else "")
        if core.count(".") == 2 and rng.random() < 0.15:
            v += "+incompatible"
        out.add(v)
    return sorted(out)


GO_INVALID = ["", "v", "v1.2.3.4", "v01.2.3", "v1.2-pre", "v1.2.3-01", "v1.2.3-", "vv1.2.3"]


def test_go_agrees_with_x_mod_semver(go_semver: Path) -> None:
    rng = random.Random(5)
    every = _go_versions(rng)
    ordered = sorted(every, key=functools.partial(sort_key, "go"))
    pairs = _shuffled_pairs(
        [
            *_neighbour_pairs(ordered, [1, 2, 3]),
            *(tuple(rng.sample(every, 2)) for _ in range(2000)),
        ],
        rng,
    )
    candidates = every + GO_INVALID
    lines = [*candidates, *(f"{a}\t{b}" for a, b in pairs)]
    out = subprocess.run(
        [str(go_semver)], input="\n".join(lines) + "\n", capture_output=True, check=True, text=True
    ).stdout.split()
    valid, order = out[: len(candidates)], [int(x) for x in out[len(candidates) :]]
    for v, ok in zip(candidates, valid, strict=True):
        assert _parses("go", v) == (ok == "true"), v
    wrong = []
    for (a, b), expected in zip(pairs, order, strict=True):
        # OSV writes Go versions without the "v": both spellings must order alike.
        got = {compare("go", a, b), compare("go", a[1:], b), compare("go", a[1:], b[1:])}
        if got != {expected}:
            wrong.append((a, b, expected, got))
    print(f"go: {len(pairs)} pairs agree with golang.org/x/mod/semver")
    assert not wrong, f"x/mod/semver disagrees on {len(wrong)} of {len(pairs)}: {wrong[:20]}"
    assert len(pairs) >= 2000


# -- apk -------------------------------------------------------------------------------------

# Strictly increasing sequences: real Alpine versions and apk-tools' documented rules.
APK_CHAINS = [
    # openssl, busybox, musl, curl, zlib across Alpine releases
    ["3.0.12-r0", "3.0.12-r1", "3.1.4-r0", "3.1.4-r1", "3.1.4-r5", "3.1.5-r0", "3.3.0-r0"],
    ["1.36.1-r2", "1.36.1-r5", "1.36.1-r15", "1.36.1-r19", "1.36.1-r29", "1.37.0-r0"],
    ["1.2.4-r2", "1.2.4_git20230717-r4", "1.2.4_git20230717-r5", "1.2.5-r0", "1.2.5-r1"],
    ["8.5.0-r0", "8.9.1-r0", "8.9.1-r2", "8.10.0-r0", "8.10.1-r0", "8.11.0_rc1-r0", "8.11.0"],
    ["1.2.13-r0", "1.3-r0", "1.3-r2", "1.3.1-r0", "1.3.1-r1"],
    # suffixes: pre-releases < none < -rN < post-releases < letters < more dotted parts
    [
        *["1.2.3_alpha", "1.2.3_alpha1", "1.2.3_alpha2", "1.2.3_alpha10", "1.2.3_beta"],
        *["1.2.3_beta1", "1.2.3_pre1", "1.2.3_pre2_rc1", "1.2.3_rc1", "1.2.3_rc2", "1.2.3"],
        *["1.2.3-r0", "1.2.3-r1", "1.2.3-r10", "1.2.3_cvs20200101", "1.2.3_svn1", "1.2.3_git1"],
        *["1.2.3_git20230717", "1.2.3_git20230717-r4", "1.2.3_hg1", "1.2.3_p", "1.2.3_p1"],
        *["1.2.3_p1-r1", "1.2.3_p2", "1.2.3_p10", "1.2.3a", "1.2.3a_p1", "1.2.3b", "1.2.3.0"],
        *["1.2.3.1", "1.2.4_alpha", "1.2.4_rc1", "1.2.4"],
    ],
    # a dotted part with a leading zero compares as a string, below all plain numbers
    ["1.0", "1.00", "1.001", "1.01", "1.010", "1.02", "1.1", "1.9", "1.10", "1.100"],
    ["2.0_rc1", "2.0_rc1_p1", "2.0_rc2", "2.0", "2.0_p1_alpha", "2.0_p1", "2.0_p1_p1", "2.0_p2"],
    # a commit hash sorts after a revision but before a suffix, and as a string
    ["1.0", "1.0-r0", "1.0~ABC", "1.0~abc", "1.0~abc-r1", "1.0~abd", "1.0~abd0", "1.0_p1"],
    ["0.1", "0.9.9", "1", "1.0.0.0.1", "1.0.1", "9", "10", "100a", "100z", "101", "20240101"],
]
# Single facts from real Alpine/Gentoo histories: (smaller, larger).
APK_PAIRS = [
    *[("1.07-r1", "1.07.5"), ("1.07", "1.19"), ("2.02.06", "2.02.10"), ("1.2.07.8", "1.2.12.04")],
    *[("0.20070118", "0.20070207_rc1"), ("0.1.0_alpha_pre2", "0.1.0_alpha"), ("0.98", "1.00")],
    *[
        ("1.3_pre1-r1", "1.3.2"),
        ("22.7-r1", "22.7.3-r1"),
        ("2.5.1-r8", "2.5.1a-r1"),
        ("1.7", "1.7b"),
    ],
    *[("2.12r-r4", "2.12r-r5"), ("0.59s-r11", "0.65"), ("1.2.07.8", "1.6d"), ("0.01", "0.06")],
    *[("1.0.0_pre20191002222144-r0", "1.0.0_pre20210530193627-r0"), ("1.0_p9-r0", "1.0_p10-r0")],
    *[("0.9.28.1", "087-r1"), ("02.08.01b", "2.10.1"), ("0.9.8c-r1", "0.9.8d"), ("1.1a", "1.3a")],
    *[("0.15.1b", "0.15.1b-r2"), ("1.6.8_p9-r2", "1.6.8_p12-r1"), ("4.01", "4.20")],
]
APK_EQUAL = [
    ("01.0", "1.0"),
    ("1.0_rc01", "1.0_rc1"),
    ("1.0-r01", "1.0-r1"),
    ("001", "1"),
]
APK_INVALID = [
    *["", "a1", "v1.0", "1.0-r", "1.0-1", "1.0_foo", "1.0_", "1.0~", "1.0~xyz", "1..0", "1.0 "],
    *["1.0a1", "1.0ab", "1.0.a", "1.0-r1-r2", "1.0-r1_p1", "1.0~ab~cd", "1.0-r1~ab", "1.0_p1a"],
    *["1.0_alpha_", "1.0A", "1.0.", "1.0-", ".1", "1.0_Alpha", "1.0_alpha1a", "1.0-r1a"],
]


def _check_chain(scheme: str, chain: Sequence[str]) -> int:
    """Every pair of a strictly increasing sequence, both ways; returns the pair count."""
    for i, j in itertools.combinations(range(len(chain)), 2):
        assert compare(scheme, chain[i], chain[j]) == -1, (chain[i], chain[j])
        assert compare(scheme, chain[j], chain[i]) == 1, (chain[j], chain[i])
    return len(chain) * (len(chain) - 1)


def _check_total_order(scheme: str, versions: Sequence[str]) -> int:
    """Sorting by sort_key gives an order that compare agrees with on every pair."""
    ordered = sorted(versions, key=functools.partial(sort_key, scheme))
    for a, b in itertools.combinations(ordered, 2):
        assert compare(scheme, a, b) <= 0, (a, b)
    return len(ordered) * (len(ordered) - 1) // 2


def test_apk_orders_like_apk_tools() -> None:
    pairs = sum(_check_chain("apk", chain) for chain in APK_CHAINS)
    pairs += sum(_check_chain("apk", pair) for pair in APK_PAIRS)
    for a, b in APK_EQUAL:
        assert compare("apk", a, b) == 0 == compare("apk", b, a), (a, b)
    every = {v for c in [*APK_CHAINS, *APK_PAIRS] for v in c}
    transitive = _check_total_order("apk", sorted(every))
    print(f"apk: {pairs} chain pairs, {transitive} pairs checked for transitivity")
    assert pairs >= 300
    for bad in APK_INVALID:
        with pytest.raises(InvalidVersion):
            compare("apk", bad, "1.0")


# -- Maven -----------------------------------------------------------------------------------

MAVEN_CHAINS = [
    ["1-alpha", "1-beta", "1-milestone", "1-rc", "1-snapshot", "1", "1-sp"],
    ["1", "1.1"],
    ["1-snapshot", "1", "1-sp"],
    ["1-foo2", "1-foo10"],
    ["1.foo", "1-1", "1.1"],
    ["1-ga", "1-sp"],
    ["1-ga.1", "1-sp.1"],
    ["1-sp-1", "1-ga-1"],
    ["1.0.0.RC1", "1.0.0-RC2"],
    ["1-0.alpha", "1-0.beta", "1"],
    # qualifiers, then numbers after a hyphen
    [
        *["1-alpha2snapshot", "1-alpha2", "1-alpha-123", "1-beta-2", "1-beta123", "1-m2"],
        *["1-m11", "1-rc", "1-cr2", "1-rc123", "1-SNAPSHOT", "1", "1-sp", "1-sp2", "1-sp123"],
        *["1-abc", "1-def", "1-pom-1", "1-1-snapshot", "1-1", "1-2", "1-123"],
    ],
    # numbers, and a qualifier after a dot standing for one after a hyphen
    [
        *["2.0", "2.0.a", "2-1", "2.0.2", "2.0.123", "2.1.0", "2.1-a", "2.1b", "2.1-c"],
        *["2.1-1", "2.1.0.1", "2.2", "2.123", "11.a2", "11.a11", "11.b2", "11.b11", "11.m2"],
        *["11.m11", "11", "11.a", "11b", "11c", "11m"],
    ],
    ["1.0-alpha-1", "1.0-alpha-2", "1.0-beta-1", "1.0-rc-1", "1.0-SNAPSHOT", "1.0", "1.0.1"],
    ["5.3.29", "5.3.30", "5.3.31", "6.0.0-M1", "6.0.0-RC1", "6.0.0", "6.0.1", "6.0.10"],
    ["2.9.10", "2.9.10.1", "2.9.10.8", "2.10.0", "2.10.0.pr1", "2.10.1", "2.12.7.1", "2.13.0"],
    ["9", "10", "2147483647", "2147483648", "9223372036854775807", "9223372036854775808"],
    ["31.1-jre", "32.0.0-android", "32.0.0-jre", "32.0.1-jre", "33.0.0-jre"],
]
MAVEN_EQUAL = [
    *[("1", "1.0"), ("1", "1.0.0"), ("1.0", "1.0.0"), ("1", "1-ga"), ("1", "1-final")],
    *[("1", "1-release"), ("1", "1.ga"), ("1", "1-0"), ("1", "1.0-GA"), ("1-rc", "1-cr")],
    *[("1-a1", "1-alpha-1"), ("1-b1", "1-beta-1"), ("1-m1", "1-milestone-1"), ("1a", "1-a")],
    *[("1a", "1.0.0-a"), ("1.0a", "1-a"), ("1ga", "1"), ("1RELeaSE", "1"), ("1cR", "1rC")],
    *[("1a1", "1-alpha-1"), ("1b2", "1-beta-2"), ("1m3", "1MILESTONE3"), ("1.0x", "1-x")],
    *[("1-RC1", "1-rc1"), ("1-ALPHA", "1-alpha"), ("1.0.0.0", "1"), ("01", "1"), ("1.010", "1.10")],
    *[("1-abc", "1-ABC"), ("2-abc", "2.0.abc"), ("2-abc", "2.0.0.abc"), ("1-", "1"), ("1.", "1")],
    *[("0", "0.0"), ("1..1", "1.0.1"), ("1-sp", "1-SP")],
]


def test_maven_orders_like_comparable_version() -> None:
    pairs = sum(_check_chain("maven", chain) for chain in MAVEN_CHAINS)
    for a, b in MAVEN_EQUAL:
        assert compare("maven", a, b) == 0 == compare("maven", b, a), (a, b)
    # "1-0.alpha" and "1-0.beta" take part in a cycle of Maven's (see below).
    acyclic = {v for c in MAVEN_CHAINS for v in c} - {"1-0.alpha", "1-0.beta"}
    transitive = _check_total_order("maven", sorted(acyclic))
    print(f"maven: {pairs} chain pairs, {len(MAVEN_EQUAL)} equal, {transitive} transitivity")
    with pytest.raises(InvalidVersion):
        compare("maven", "", "1")


def test_maven_keeps_the_cycle_maven_has() -> None:
    # ComparableVersion itself is not transitive here: 1-abc > 1 > 1-0.alpha > 1-abc.
    assert compare("maven", "1-abc", "1") == 1
    assert compare("maven", "1", "1-0.alpha") == 1
    assert compare("maven", "1-0.alpha", "1-abc") == 1


# -- properties, for every scheme ---------------------------------------------------------

_DIGITS = st.integers(0, 12).map(str)


def _joined(*parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map("".join)


def _opt(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), strategy)


_DOTTED = st.lists(_DIGITS, min_size=1, max_size=4).map(".".join)
_SEMVER_PRE = _opt(
    st.lists(st.sampled_from(["alpha", "beta", "rc", "0", "1", "7", "x-1"]), min_size=1, max_size=3)
    .map(".".join)
    .map("-".__add__)
)
STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    "dpkg": _joined(
        _opt(_DIGITS.map(lambda d: d + ":")),
        _DIGITS,
        st.text("0123456789.+~ab", max_size=6),
        _opt(st.text("0123456789.+~ab", min_size=1, max_size=5).map("-".__add__)),
    ),
    "apk": _joined(
        _DOTTED,
        _opt(st.sampled_from("abz")),
        _opt(st.sampled_from(["_alpha", "_beta1", "_pre", "_rc2", "_git1", "_p", "_p3", "_cvs"])),
        _opt(st.sampled_from(["~ab", "~0f"])),
        _opt(_DIGITS.map("-r".__add__)),
    ),
    "rpm": _joined(
        _opt(_DIGITS.map(lambda d: d + ":")),
        st.text("0123456789.~^ab_", min_size=1, max_size=7),
        _opt(st.text("0123456789.~^ab", min_size=1, max_size=5).map("-".__add__)),
    ),
    "pep440": _joined(
        _opt(st.just("1!")),
        _DOTTED,
        _opt(st.sampled_from(["a1", "b2", "rc1", "rc10"])),
        _opt(st.sampled_from([".post1", ".post2"])),
        _opt(st.sampled_from([".dev0", ".dev3"])),
        _opt(st.sampled_from(["+abc", "+1.x"])),
    ),
    "semver": _joined(
        _opt(st.just("v")), _DIGITS, st.just("."), _DIGITS, st.just("."), _DIGITS, _SEMVER_PRE
    ),
    "go": _joined(st.just("v"), _DIGITS, st.just("."), _DIGITS, st.just("."), _DIGITS, _SEMVER_PRE),
    # Maven's own order has cycles among strings that start with a zero or a letter
    # ("0m0" < "0" < "b" < "0m0"); real versions start with a non-zero number.
    "maven": _joined(st.sampled_from("123456789"), st.text("0123456789.-abcglmprs", max_size=9)),
}


def test_every_scheme_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(SCHEMES)


@pytest.mark.slow  # 300 generated examples per scheme: seconds each
@pytest.mark.parametrize("scheme", SCHEMES)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_ordering_properties(scheme: str, data: st.DataObject) -> None:
    """Reflexive, antisymmetric, transitive, and sort_key agrees with compare."""
    sample = [v for v in data.draw(st.lists(STRATEGIES[scheme], min_size=3, max_size=6))]
    sample = [v for v in sample if _parses(scheme, v)]
    ordered = sorted(sample, key=functools.partial(sort_key, scheme))
    for v in sample:
        assert compare(scheme, v, v) == 0
    for a, b in itertools.combinations(ordered, 2):
        ab, ba = compare(scheme, a, b), compare(scheme, b, a)
        assert ab == -ba, (a, b)
        assert ab <= 0, (a, b)  # sorted order is compare's order: the relation is transitive
        assert (ab == 0) == (sort_key(scheme, a) == sort_key(scheme, b)), (a, b)


# -- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ecosystem", "scheme"),
    [
        *[("Debian", "dpkg"), ("Debian:12", "dpkg"), ("Ubuntu", "dpkg"), ("Ubuntu:22.04", "dpkg")],
        *[("Ubuntu:Pro:18.04:LTS", "dpkg"), ("Alpine", "apk"), ("Alpine:v3.19", "apk")],
        *[("Red Hat", "rpm"), ("Red Hat:enterprise_linux:9::appstream", "rpm")],
        *[("Rocky Linux", "rpm"), ("Rocky Linux:9", "rpm"), ("AlmaLinux", "rpm")],
        *[("AlmaLinux:8", "rpm"), ("openSUSE", "rpm"), ("SUSE", "rpm"), ("Mageia", "rpm")],
        *[("Mageia:9", "rpm"), ("PyPI", "pep440"), ("npm", "semver"), ("Go", "go")],
        *[("Maven", "maven"), ("crates.io", None), ("RubyGems", None), ("", None)],
        *[("debian", None), ("Linux", None), ("Packagist", None)],
    ],
)
def test_scheme_for_maps_osv_ecosystems(ecosystem: str, scheme: str | None) -> None:
    assert scheme_for(ecosystem) == scheme


def test_unknown_scheme_is_a_value_error_not_an_invalid_version() -> None:
    with pytest.raises(ValueError, match="unknown version scheme") as caught:
        compare("cargo", "1.0.0", "1.0.1")
    assert not isinstance(caught.value, InvalidVersion)
    with pytest.raises(ValueError, match="unknown version scheme"):
        sort_key("cargo", "1.0.0")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_invalid_version_is_a_value_error(scheme: str) -> None:
    with pytest.raises(ValueError):
        compare(scheme, "", "1")
    assert issubclass(InvalidVersion, ValueError)


def test_sort_key_sorts_many_versions() -> None:
    vs = ["1.0-1", "1:0.1-1", "1.0~rc1-1", "1.0-1+deb12u1", "0.9-3"]
    assert sorted(vs, key=lambda v: sort_key("dpkg", v)) == [
        "0.9-3",
        "1.0~rc1-1",
        "1.0-1",
        "1.0-1+deb12u1",
        "1:0.1-1",
    ]
