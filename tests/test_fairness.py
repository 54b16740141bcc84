"""Fairness between teams on the on-demand queue: a flooding team is capped, and the
workers take teams in turn, so a light team is served while a flood still waits."""

from __future__ import annotations

from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer
from testbed.stack import FINAL, Api, Stack, wait_for
from tests.test_enqueue import client, issue_token

V1 = "/api/v1"


def test_a_flooding_team_is_capped_and_cannot_starve_a_light_one(
    stack: Stack, api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given two teams, and a registry slow enough that a flood takes a while
    proxy = FaultProxy.for_url(registry.url)
    pusher.push_image(f"{name}/heavy", "1", {"h": b"1"})
    pusher.push_image(f"{name}/light", "1", {"l": b"1"})
    api.set_specs({"version": "2", "registry": f"http://{proxy.host}", "repository": f"{name}/*"})
    proxy.delay(0.3, path_prefix=f"/v2/{name}/")
    heavy = client(stack, issue_token(api, "operator", team=f"heavy-{name}")["token"])
    light = client(stack, issue_token(api, "operator", team=f"light-{name}")["token"])
    image = {"registry": proxy.host, "repo": f"{name}/heavy", "tag": "1"}
    heavy_ids: list[int] = []
    try:
        # When the heavy team floods with 100 on-demand scans
        flood = heavy.post(f"{V1}/registry/scan/bulk", json={"images": [image] * 100})
        assert flood.status_code == 200, flood.text
        heavy_ids = [e["id"] for e in flood.json()["images"]]

        # Then more than its limit (120 here) is refused with 429 and Retry-After
        over = heavy.post(f"{V1}/registry/scan/bulk", json={"images": [image] * 30})
        assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
        assert "limit is 120 per team" in over.json()["err"]

        # And the light team's scans, asked after the flood, finish while most of it waits
        ask = {"onDemandScan": True, "tag": {**image, "repo": f"{name}/light"}}
        light_ids = [light.started(ask) for _ in range(3)]
        for job_id in light_ids:
            assert api.wait_job(job_id, timeout=30)["status"] == "completed"
        scans = api.get(f"{V1}/registry/scans", params={"kind": "on-demand", "limit": 250}).json()
        waiting = [s for s in scans if s["id"] in set(heavy_ids) and s["status"] not in FINAL]
        assert len(waiting) >= 50, f"only {len(waiting)} of the flood still waiting"
    finally:
        proxy.reset()
        wait_for(lambda: all(api.job(i)["status"] in FINAL for i in heavy_ids), 120, "the flood")
        proxy.close()
