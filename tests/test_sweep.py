"""Sweeps at fleet speed: tags that share an image, and images scanned in batches.

Every test runs against the real API and Celery workers (separate processes), a real
Redis, a real registry behind a FaultProxy that counts what it serves, and the database
under test (SQLite and PostgreSQL).
"""

from __future__ import annotations

from sqlalchemy import func, select

from models import Image, ScanResult
from testbed.images import DOCKER_MANIFEST, Pusher
from testbed.proxy import FaultProxy
from testbed.stack import Api


def spec(registry: str, repository: str = "", **extra) -> dict:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def test_tags_sharing_an_image_have_it_fetched_and_scanned_once_per_sweep(
    api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str, db
):
    # Given four tags on one image (as debian:12 and debian:bookworm), swept two batches
    # at a time, so that two workers meet the image at once
    repo = f"{name}/debian"
    image = pusher.push_image(repo, "12", {"etc/os-release": b"ID=debian\n", "id": name.encode()})
    for alias in ("bookworm", "latest", "stable"):
        pusher.push_manifest(repo, alias, image.manifest_bytes, DOCKER_MANIFEST)
    slow_registry.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=2, cap=0))

    # When a sweep runs
    done = api.wait_job(api.started(), timeout=60)

    # Then every tag was scanned and has its result, on one stored image
    assert done["status"] == "completed"
    assert done["counts"] == {"total": 4, "scanned": 4, "failed": 0, "skipped": 0}
    tags = {"12", "bookworm", "latest", "stable"}
    for tag in tags:
        [result] = api.results(name=f"{slow_registry.host}/{repo}:{tag}")
        assert result["repoTag"]["digest"] == image.digest and result["err"] == ""
    with db() as session:
        per_tag = dict(
            session.execute(
                select(ScanResult.tag, func.count(func.distinct(ScanResult.image_id)))
                .where(ScanResult.job_id == done["id"])
                .group_by(ScanResult.tag)
            ).all()
        )
        stored = session.scalar(
            select(func.count()).where(Image.repository == repo, Image.digest == image.digest)
        )
    assert per_tag == dict.fromkeys(tags, 1) and stored == 1

    # And the registry served its config blob and its layer once, and each tag's manifest
    # once
    assert slow_registry.count("GET", f"/v2/{repo}/blobs/{image.config_digest}") == 1
    assert slow_registry.count("GET", f"/v2/{repo}/blobs/{image.layers[0].digest}") == 1
    for tag in tags:
        assert slow_registry.count("GET", f"/v2/{repo}/manifests/{tag}") == 1


def test_an_unchanged_sweep_asks_the_registry_once_per_tag_and_fetches_no_blob(
    api: Api, pusher: Pusher, proxy: FaultProxy, name: str, db
):
    # Given 30 tags over 10 images in two repositories, swept once already
    pushed = {}
    for i in range(10):
        repo = f"{name}/app{i % 2}"
        image = pusher.push_image(
            repo, f"v{i}", {"etc/os-release": b"ID=debian\n"}, labels={"build": str(i)}
        )
        pushed[f"{repo}:v{i}"] = image.digest
        for k in (1, 2):
            pusher.push_manifest(repo, f"v{i}-{k}", image.manifest_bytes, DOCKER_MANIFEST)
            pushed[f"{repo}:v{i}-{k}"] = image.digest
    api.set_specs(spec(f"http://{proxy.host}", f"{name}/*", scanners=3, cap=0))
    first = api.wait_job(api.started(), timeout=60)
    assert first["counts"]["scanned"] == 30
    proxy.clear()

    # When it is swept again, nothing having changed
    again = api.wait_job(api.started(), timeout=60)

    # Then each tag cost one manifest request and no blob, and each has its new result
    assert again["counts"] == {"total": 30, "scanned": 30, "failed": 0, "skipped": 0}
    for r in (0, 1):
        assert proxy.count("GET", f"/v2/{name}/app{r}/blobs/") == 0
    manifests = sum(proxy.count("GET", f"/v2/{name}/app{r}/manifests/") for r in (0, 1))
    assert manifests == len(pushed) == 30
    with db() as session:
        rows = session.execute(
            select(ScanResult.repository, ScanResult.tag, ScanResult.digest).where(
                ScanResult.job_id == again["id"]
            )
        ).all()
    assert sorted(f"{r}:{t}" for r, t, _d in rows) == sorted(pushed)
    assert {f"{r}:{t}": d for r, t, d in rows} == pushed
