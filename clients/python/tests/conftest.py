"""A real consentd for the tests: the binary CI built (CONSENTD_BIN, else
target/debug/consentd, else target/release/consentd), on a fresh SQLite file, in api_key
mode, with the seed catalogue applied to tenant `acme`. It listens on 127.0.0.1:0 and says
where on stdout; no sleeps."""

from __future__ import annotations

import os
import pathlib
import subprocess
import threading
from dataclasses import dataclass

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
CATALOG = REPO / "examples" / "catalog" / "callnex.toml"


def consentd_binary() -> pathlib.Path:
    explicit = os.environ.get("CONSENTD_BIN")
    if explicit:
        return pathlib.Path(explicit)
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / "consentd"
        if candidate.exists():
            return candidate
    pytest.fail("no consentd binary: run `cargo build --bin consentd` or set CONSENTD_BIN")


@dataclass
class Server:
    address: str
    writer_key: str
    reader_key: str
    store_url: str


def run(binary: pathlib.Path, env: dict, *args: str) -> str:
    done = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"consentd {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    binary = consentd_binary()
    directory = tmp_path_factory.mktemp("consentd")
    store_url = f"sqlite://{directory}/consent.db"
    env = {
        **os.environ,
        "CONSENT__STORE__URL": store_url,
        "CONSENT__AUTH__MODE": "api_key",
        # A free port for probes and metrics: tests may run beside another consentd.
        "CONSENT__HTTP__LISTEN": "127.0.0.1:0",
    }
    run(binary, env, "migrate")
    run(binary, env, "tenants", "create", "acme")
    run(binary, env, "catalog", "apply", "--tenant", "acme", str(CATALOG))
    writer = run(binary, env, "keys", "create", "--tenant", "acme", "--scopes", "consent:read,consent:write,rights:write,identity:read,identity:write,admin")
    reader = run(binary, env, "keys", "create", "--tenant", "acme", "--scopes", "consent:read")
    log = open(directory / "consentd.log", "w")
    process = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    address = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("consentd listening on "):
            address = line.removeprefix("consentd listening on ").strip()
            break
    if address is None:
        process.wait(timeout=30)
        pytest.fail(f"consentd exited before listening; see {directory / 'consentd.log'}")
    # Keep reading stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    yield Server(address, writer.splitlines()[-1], reader.splitlines()[-1], store_url)
    process.terminate()
    process.wait(timeout=60)
    log.close()
