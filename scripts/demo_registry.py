"""A local registry with a few images, for trying regscan by hand (see README.md).

Starts Debian's docker-registry on 127.0.0.1:5000 (or --port), pushes demo images
through the registry API, and keeps running until Ctrl-C:

    demo/alpine:3.19, demo/alpine:3.20   single-platform images
    demo/app:1.0, demo/app:latest       a multi-platform index (linux/amd64, linux/arm64/v8)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.images import Pusher
from testbed.services import RegistryServer


def alpine(version: str) -> dict[str, bytes]:
    """An Alpine-like root: release files and an apk database of two packages."""
    installed = "P:musl\nV:1.2.4-r2\no:musl\n\nP:libcrypto3\nV:3.1.4-r5\no:openssl\n"
    return {
        "etc/alpine-release": f"{version}\n".encode(),
        "etc/os-release": f'ID=alpine\nVERSION_ID={version}\nNAME="Alpine Linux"\n'.encode(),
        "lib/apk/db/installed": installed.encode(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    # A service manager's SIGTERM stops the registry too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with RegistryServer(port=args.port) as registry:
        push = Pusher(registry.url)
        push.push_image(
            "demo/alpine",
            "3.19",
            alpine("3.19.1"),
            created="2024-01-26T00:00:00Z",
        )
        push.push_image(
            "demo/alpine",
            "3.20",
            alpine("3.20.0"),
            created="2024-05-22T00:00:00Z",
        )
        app = push.push_multiplatform("demo/app", "1.0", {"app/main": b"demo\n"})
        push.push_index("demo/app", "latest", app.children)
        print(f"registry at {registry.host}: demo/alpine:3.19, :3.20, demo/app:1.0 = :latest")
        print("Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
