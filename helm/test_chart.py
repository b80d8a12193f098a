"""Tests of the Helm chart helm/consent, run by CI (.ci/run) with a real Helm engine
(PyPI helm-python-sdk, the Helm Go SDK) and the Kubernetes API schemas (PyPI
kubernetes-validate, offline):

1. lint (strict) passes with the Secrets named, and the schema refuses a missing database or
   Redis URL;
2. the default, dev and "everything on" values render, and every manifest validates against
   the Kubernetes 1.30 API (ServiceMonitor, a CRD, is checked by hand);
3. the facts that break deployments: probes point at paths and ports consentd serves, the
   migration Job runs `consentd migrate` before install and upgrade, every variable the
   chart sets is one consentd reads (`consentd config` refuses unknown ones), hardening
   (non-root, read-only root filesystem, no capabilities), selectors that match;
4. consentd started with exactly the rendered environment (the Secrets' values pointed at
   the CI PostgreSQL and Redis, the ConfigMap's file in place) migrates with the Job's
   command, answers /healthz and /readyz 200, serves calls, and every series the Grafana
   dashboard plots is one /metrics shows.

Environment: CONSENTD_BIN (the binary), CONSENT_CHART_DATABASE_URL (an empty PostgreSQL
database), CONSENT_TEST_REDIS_URL; the Python client's stubs generated in clients/python.
Run: python helm/test_chart.py
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import helm_python as helm
import kubernetes_validate
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "consent"
KUBE_VERSION = "1.30.0"
NAMESPACE = "ledger"
RELEASE = "consent"

SECRETS = {
    "database": {"existingSecret": "consent-db", "secretKey": "url"},
    "redis": {"existingSecret": "consent-redis", "secretKey": "url", "cluster": False},
}
# Kinds that are CustomResourceDefinitions, absent from the Kubernetes schemas.
CRD_KINDS = {"ServiceMonitor"}
# OpenTelemetry's standard variables, read by the SDK (consentd checks them at start).
OTEL_NAMES = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}

failures: list[str] = []


def check(condition: bool, what: str) -> None:
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}")


def merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        out = deep_merge(out, layer)
    return out


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__path"] = path
                docs.append(doc)
    return docs


def kind(docs: list[dict], name: str) -> list[dict]:
    return [d for d in docs if d["kind"] == name]


def one(docs: list[dict], name: str) -> dict:
    found = kind(docs, name)
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def lint() -> None:
    dev = yaml.safe_load((CHART / "values-dev.yaml").read_text())
    for label, values in [("default values with the Secrets named", SECRETS), ("values-dev.yaml", dev)]:
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        check(not problems, f"lint ({label}): {problems}")
    refused = helm.lint(str(CHART), None, strict=True, kube_version=f"v{KUBE_VERSION}")
    text = " ".join(refused["errors"])
    check(
        "/database/existingSecret" in text and "/redis/existingSecret" in text,
        f"the schema must refuse missing database and Redis Secrets: {refused['errors']}",
    )
    for label, bad in [
        ("two SQLite replicas", merged(dev, {"replicaCount": 2})),
        ("auth.mode none on a pod address", merged(SECRETS, {"config": {"auth": {"mode": "none"}}})),
        ("a store URL in the ConfigMap", merged(SECRETS, {"config": {"store": {"url": "postgres://u:p@db/x"}}})),
        ("a misspelt value", merged(SECRETS, {"replicaCont": 3})),
    ]:
        report = helm.lint(str(CHART), bad, strict=True, kube_version=f"v{KUBE_VERSION}")
        check(bool(report["errors"]), f"the schema must refuse {label}")


def validate(docs: list[dict], label: str) -> None:
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__path"}
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{label}: {doc['__path']} does not validate: {e}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:  # type: ignore[attr-defined]
            check(False, f"{label}: {doc['__path']}: no schema: {e}")


def env_of(container: dict) -> list[dict]:
    return container.get("env", [])


def port_of(container: dict, name_or_number) -> int | None:
    for port in container.get("ports", []):
        if port["name"] == name_or_number or port["containerPort"] == name_or_number:
            return port["containerPort"]
    return None


def listen_port(container: dict, variable: str) -> int | None:
    for entry in env_of(container):
        if entry["name"] == variable:
            return int(entry["value"].rsplit(":", 1)[1])
    return None


def facts(docs: list[dict], values: dict, label: str) -> None:
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    # Probes: the paths consentd serves, on the port its HTTP listener binds.
    http_port = listen_port(container, "CONSENT__HTTP__LISTEN")
    grpc_port = listen_port(container, "CONSENT__SERVER__LISTEN")
    check(http_port == port_of(container, "http"), f"{label}: the http port is the one http.listen binds")
    check(grpc_port == port_of(container, "grpc"), f"{label}: the grpc port is the one server.listen binds")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        check(get["path"] == path, f"{label}: {probe} path {get['path']} (consentd serves {path})")
        check(port_of(container, get["port"]) == http_port, f"{label}: {probe} port {get['port']} is not http.listen's")
    check(container["args"] == ["serve"], f"{label}: the container serves")
    # Hardening.
    security = container["securityContext"]
    check(security.get("readOnlyRootFilesystem") is True, f"{label}: read-only root filesystem")
    check(security.get("allowPrivilegeEscalation") is False, f"{label}: no privilege escalation")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities dropped")
    check(pod["spec"]["securityContext"].get("runAsNonRoot") is True, f"{label}: non-root")
    # Selectors.
    pod_labels = pod["metadata"]["labels"]
    for doc in kind(docs, "Service") + kind(docs, "PodDisruptionBudget"):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        check(all(pod_labels.get(k) == v for k, v in selector.items()), f"{label}: {doc['kind']} selects the pods")
    for service in kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            check(port_of(container, port["targetPort"]) is not None, f"{label}: Service port {port['name']} targets a container port")
    for hpa in kind(docs, "HorizontalPodAutoscaler"):
        check(hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], f"{label}: the HPA scales the Deployment")
        check("replicas" not in deployment["spec"], f"{label}: with an HPA the Deployment leaves replicas to it")
    # The ConfigMap holds no credentials.
    config_map = one(docs, "ConfigMap") if len(kind(docs, "ConfigMap")) == 1 else next(
        d for d in kind(docs, "ConfigMap") if "consentd.toml" in d["data"])
    toml_text = config_map["data"]["consentd.toml"]
    check(not re.search(r"postgres(ql)?://|redis://|password", toml_text), f"{label}: no credentials in the ConfigMap")
    # The migration Job: `consentd migrate`, before install and upgrade, with the store URL.
    jobs = kind(docs, "Job")
    if values.get("migrations", {}).get("enabled", True) and not values.get("sqlite", {}).get("enabled"):
        check(len(jobs) == 1, f"{label}: one migration Job")
        for job in jobs:
            hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
            check(set(hooks) == {"pre-install", "pre-upgrade"}, f"{label}: the Job runs before install and upgrade: {hooks}")
            migrate = job["spec"]["template"]["spec"]["containers"][0]
            check(migrate["command"] == container["command"] and migrate["args"] == ["migrate"],
                  f"{label}: the Job runs `consentd migrate`: {migrate['command']} {migrate['args']}")
            names = {e["name"] for e in env_of(migrate)}
            check("CONSENT__STORE__URL" in names, f"{label}: the Job gets the store URL")
    else:
        check(not jobs, f"{label}: no migration Job")
    for monitor in kind(docs, "ServiceMonitor"):
        endpoint = monitor["spec"]["endpoints"][0]
        check(endpoint["port"] == "http" and endpoint["path"] == "/metrics", f"{label}: ServiceMonitor scrapes /metrics on http")
    for board in kind(docs, "ConfigMap"):
        if "consent.json" in board.get("data", {}):
            json.loads(board["data"]["consent.json"])
            check(board["metadata"]["labels"].get("grafana_dashboard") == "1", f"{label}: the dashboard has the sidecar label")
    # Every variable is one consentd reads: `consentd config` refuses unknown and
    # contradictory settings, with the ConfigMap's file as the pod has it.
    with tempfile.TemporaryDirectory() as scratch:
        env = pod_env(container, toml_text, pathlib.Path(scratch), {
            "consent-db": "postgres://consent:secret@db:5432/consent",
            "consent-redis": "redis://:secret@cache:6379" if not values.get("redis", {}).get("cluster")
            else "redis://:secret@c1:7000,redis://:secret@c2:7000",
        })
        done = subprocess.run([consentd(), "config"], env=env, cwd=scratch, capture_output=True, text=True, timeout=60)
        check(done.returncode == 0, f"{label}: consentd refuses the chart's environment: {done.stderr.strip()}")
        if done.returncode == 0:
            shown = json.loads(done.stdout)
            check(shown["config"]["server"]["listen"].endswith(f":{grpc_port}"), f"{label}: server.listen in effect")
            check(shown["config"]["http"]["listen"].endswith(f":{http_port}"), f"{label}: http.listen in effect")
            check("secret" not in done.stdout, f"{label}: `consentd config` hides credentials")
            expected_cache = values.get("config", {}).get("cache", {}).get("mode", "redis")
            check(shown["config"]["cache"]["mode"] == expected_cache, f"{label}: cache.mode {shown['config']['cache']['mode']}")
            for variable in {e["name"] for e in env_of(container)}:
                check(variable == "CONSENT_CONFIG" or variable.startswith("CONSENT__") or variable in OTEL_NAMES,
                      f"{label}: {variable} is not a consentd setting")


def consentd() -> str:
    """The binary, as an absolute path (commands run in scratch directories)."""
    return str(pathlib.Path(os.environ.get("CONSENTD_BIN") or REPO / "target" / "debug" / "consentd").resolve())


def pod_env(container: dict, toml_text: str, scratch: pathlib.Path, secrets: dict) -> dict:
    """The container's environment as the kubelet would give it: Secret references
    resolved from `secrets`, mounted files at paths under `scratch`."""
    # Not in the working directory, where consentd would read it without being told.
    (scratch / "etc").mkdir(exist_ok=True)
    config_file = scratch / "etc" / "consentd.toml"
    config_file.write_text(toml_text)
    env = {"PATH": os.environ.get("PATH", "")}
    for entry in env_of(container):
        if "value" in entry:
            value = entry["value"]
        else:
            value = secrets[entry["valueFrom"]["secretKeyRef"]["name"]]
        if entry["name"] == "CONSENT_CONFIG":
            value = str(config_file)
        env[entry["name"]] = value
    return env


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run_as_rendered(values: dict) -> None:
    """consentd from exactly the chart's environment, on the CI PostgreSQL and Redis."""
    database = os.environ["CONSENT_CHART_DATABASE_URL"]
    redis_url = os.environ["CONSENT_TEST_REDIS_URL"]
    docs = render(values)
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    job = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    toml_text = next(d for d in kind(docs, "ConfigMap") if "consentd.toml" in d["data"])["data"]["consentd.toml"]
    secrets = {"consent-db": database, "consent-redis": redis_url}
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = pathlib.Path(scratch)
        binary = consentd()
        # The migration Job first, with its own environment.
        migrate_env = pod_env(job, toml_text, scratch_path, secrets)
        migrated = subprocess.run([binary, *job["args"]], env=migrate_env, cwd=scratch, capture_output=True, text=True, timeout=300)
        check(migrated.returncode == 0, f"the migration Job's command failed: {migrated.stderr}")
        env = pod_env(container, toml_text, scratch_path, secrets)
        admin = lambda *args: subprocess.run([binary, *args], env=env, cwd=scratch, capture_output=True, text=True, timeout=120)
        for args in (["tenants", "create", "chart-ci"], ["catalog", "apply", "--tenant", "chart-ci", str(REPO / "examples/catalog/callnex.toml")]):
            done = admin(*args)
            check(done.returncode == 0, f"consentd {' '.join(args)}: {done.stderr}")
        created = admin("keys", "create", "--tenant", "chart-ci", "--scopes", "consent:read,consent:write")
        check(created.returncode == 0, f"keys create: {created.stderr}")
        key = created.stdout.strip().splitlines()[-1] if created.returncode == 0 else ""
        log = open(scratch_path / "consentd.log", "w")
        server = subprocess.Popen([binary, *container["args"]], env=env, cwd=scratch, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            grpc_address = None
            assert server.stdout is not None
            for line in server.stdout:
                if line.startswith("consentd listening on "):
                    grpc_address = line.removeprefix("consentd listening on ").strip()
                    break
            check(grpc_address is not None, f"consentd did not start: {(scratch_path / 'consentd.log').read_text()[-2000:]}")
            if grpc_address is None:
                return
            http_port = listen_port(container, "CONSENT__HTTP__LISTEN")
            # Each probe as the kubelet sends it: its path, on the port it names.
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                status, body = http_get(port_of(container, get["port"]), get["path"])
                check(status == 200, f"{probe} {get['path']} answered {status}: {body}")
            status, body = http_get(http_port, "/readyz")
            report = json.loads(body)
            check(report.get("cache") == "ok", f"/readyz reports Redis: {report}")
            exercise(grpc_address.replace("0.0.0.0", "127.0.0.1"), key, http_port)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=120)
            check(code == 0, f"consentd exited {code} on SIGTERM")


def exercise(address: str, key: str, http_port: int) -> None:
    """Some calls (one refused), then every series the dashboard plots must exist."""
    sys.path.insert(0, str(REPO / "clients" / "python"))
    from consent_client import ConsentClient, ConsentError, types  # noqa: E402

    with ConsentClient(address, api_key=key) as client:
        client.record_consent("+32470000001", {"call_recording": types.DECISION_GRANTED})
        check(client.allowed("+32470000001", "call_recording"), "the recorded consent is allowed")
        client.check_batch([("+32470000002", "call_recording"), ("+32470000001", "call_recording")])
    with ConsentClient(address, api_key="ck_" + "0" * 16 + "_" + "0" * 64) as stranger:
        try:
            stranger.allowed("+32470000001", "call_recording")
            check(False, "an unknown key was let in")
        except ConsentError:
            pass
    status, metrics = http_get(http_port, "/metrics")
    check(status == 200, f"/metrics answered {status}")
    served = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and not line.startswith("#")}
    board = json.loads((CHART / "dashboards" / "consent.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            for series in re.findall(r"\b([a-z][a-z0-9_]*)\{", target["expr"]):
                check(series in served, f"dashboard panel {panel['title']!r} plots {series}, which /metrics does not show")


def main() -> int:
    lint()
    dev = yaml.safe_load((CHART / "values-dev.yaml").read_text())
    everything = merged(SECRETS, {
        "redis": {"cluster": True},
        "tls": {"existingSecret": "consent-tls", "clientCaSecret": "consent-client-ca"},
        "otel": {"endpoint": "http://otel-collector.monitoring:4317"},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True, "grpcFrom": [{"namespaceSelector": {"matchLabels": {"consent-client": "true"}}}],
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "grafanaDashboard": {"enabled": True},
    })
    for label, values in [("default", SECRETS), ("dev", dev), ("everything on", everything)]:
        docs = render(values)
        print(f"{label}: {len(docs)} manifests: {sorted(d['kind'] for d in docs)}")
        validate(docs, label)
        facts(docs, values, label)
    # The TLS files the chart mounts are the paths it tells consentd.
    docs = render(everything)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for variable in ("CONSENT__TLS__CERT", "CONSENT__TLS__KEY", "CONSENT__TLS__CLIENT_CA"):
        path = next(e["value"] for e in env_of(container) if e["name"] == variable)
        check(any(path.startswith(m + "/") for m in mounts), f"{variable} {path} is under a mounted volume")
    # Ports chosen away from anything else on the CI machine: still exactly the chart's env.
    run_as_rendered(merged(SECRETS, {"ports": {"grpc": 55051, "http": 59090}}))
    if failures:
        print(f"\n{len(failures)} chart checks failed")
        return 1
    print("\nchart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
