"""kubernetes/*.yaml agree with the bridge they run: its settings, its port, its probes, its image, its drain.

No cluster here: the manifests are validated against the Kubernetes API's own schemas (strict: no field
the API does not have), and what their probes ask is asked of a real bridge started with the manifests'
own environment.
"""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from bridge_process import BridgeProcess, healthcheck_command
from builders import WorkflowRun

from otel_bridge.config import Settings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
SERVICE, STATEFUL_SET = yaml.safe_load_all((ROOT / "kubernetes" / "otel-bridge.yaml").read_text())
(SIDECAR_APP,) = yaml.safe_load_all((ROOT / "kubernetes" / "sidecar.yaml").read_text())
(INGRESS,) = yaml.safe_load_all((ROOT / "kubernetes" / "ingress.yaml").read_text())
BACKUP_CLAIM, BACKUP_JOB = yaml.safe_load_all((ROOT / "kubernetes" / "backup-cronjob.yaml").read_text())
ALONE = STATEFUL_SET["spec"]["template"]["spec"]["containers"][0]
BACKUP_POD = BACKUP_JOB["spec"]["jobTemplate"]["spec"]["template"]
(BACKUP,) = BACKUP_POD["spec"]["containers"]
(SIDECAR,) = SIDECAR_APP["spec"]["template"]["spec"]["initContainers"]
(APP,) = SIDECAR_APP["spec"]["template"]["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables that have a value of their own (not from a Secret)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value)
    return Settings()


# The oldest Kubernetes the manifests are for (the sidecar is a native one: an init container that keeps
# running, 1.29 and later), and the newest whose schemas the validator carries.
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]


# The Prometheus Operator's kinds are not the API's own: test_prometheus_operator.py checks that file.
MANIFESTS = sorted(p for p in (ROOT / "kubernetes").glob("*.yaml") if p.name != "prometheus-operator.yaml")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_api_schemas(manifest, version):
    # Strict: a field the API does not have (`readinesProbe`) is an error, where a parse took it and
    # Kubernetes dropped it (a warning at best), leaving the bridge without the probe it was written with.
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_a_misspelled_field_is_caught_by_that_validation():
    broken = yaml.safe_load_all((ROOT / "kubernetes" / "otel-bridge.yaml").read_text())
    _, workload = broken
    container = workload["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(workload, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("container", [ALONE, SIDECAR], ids=["service", "sidecar"])
def test_every_bridge_variable_is_a_setting_and_the_settings_are_valid(container, monkeypatch):
    assert container["image"].startswith("otel-bridge:")
    assert unknown_variables({e["name"]: "" for e in container["env"]}) == []
    settings = _settings(container, monkeypatch)  # raises if a value is not one the bridge takes
    folder = Path(settings.state).parent
    mounted = {Path(m["mountPath"]) for m in container["volumeMounts"]}
    assert mounted == {folder, Path("/tmp")}  # its volume, and SQLite's temporary files: the rest is read-only
    for path in (settings.state, settings.dead_letter, settings.span_dead_letter):
        assert Path(path).parent == folder, "all on the volume, none in the image"


# Each workload's pod template.
PODS = {"service": STATEFUL_SET["spec"]["template"], "sidecar": SIDECAR_APP["spec"]["template"], "backup": BACKUP_POD}


@pytest.mark.parametrize("pod", PODS.values(), ids=PODS.keys())
def test_the_pod_runs_as_the_images_user_and_makes_the_volume_its_own(pod):
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    security = pod["spec"]["securityContext"]
    assert security == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# What the "restricted" Pod Security Standard asks of a pod (kubernetes.io/docs/concepts/security/
# pod-security-standards): a namespace that enforces it refuses any pod that asks for more.
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_problems(pod: dict[str, Any]) -> list[str]:
    problems = [f"{host} is set" for host in ("hostNetwork", "hostPID", "hostIPC") if pod.get(host)]
    security = pod.get("securityContext", {})
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        problems += [f"volume {volume['name']} is a {kind}" for kind in kinds - _RESTRICTED_VOLUMES]
    for container in pod.get("initContainers", []) + pod["containers"]:
        own = container.get("securityContext", {})
        name = container["name"]
        if own.get("privileged"):
            problems.append(f"{name} is privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name} does not say allowPrivilegeEscalation: false")
        if not own.get("runAsNonRoot", security.get("runAsNonRoot")):
            problems.append(f"{name} may run as root")
        if own.get("runAsUser", security.get("runAsUser")) == 0:
            problems.append(f"{name} runs as uid 0")
        seccomp = own.get("seccompProfile", security.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name} has no seccomp profile")
        capabilities = own.get("capabilities", {})
        if capabilities.get("drop") != ["ALL"] or set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name} does not drop every capability")
        problems += [f"{name} binds a host port" for port in container.get("ports", []) if port.get("hostPort")]
    return problems


@pytest.mark.parametrize("pod", PODS.values(), ids=PODS.keys())
def test_the_pods_are_admitted_where_the_restricted_pod_security_standard_is_enforced(pod):
    # Without it, a namespace labelled pod-security.kubernetes.io/enforce=restricted refused the pods.
    assert _restricted_problems(pod["spec"]) == []


def test_the_backup_job_mounts_the_bridges_own_volume_on_its_node_and_reads_the_state_it_writes(monkeypatch):
    pod = BACKUP_POD["spec"]
    (template,) = STATEFUL_SET["spec"]["volumeClaimTemplates"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    # A StatefulSet's claim is named `<template>-<set>-<ordinal>`.
    assert claims == {"data": f"{template['metadata']['name']}-{STATEFUL_SET['metadata']['name']}-0",
                      "backups": BACKUP_CLAIM["metadata"]["name"]}  # fmt: skip
    # ReadWriteOnce: mounted by pods of one node only, the bridge's.
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == STATEFUL_SET["spec"]["template"]["metadata"]["labels"]
    assert _settings(BACKUP, monkeypatch).state == _settings(ALONE, monkeypatch).state
    (mounted,) = [m["mountPath"] for m in BACKUP["volumeMounts"] if m["name"] == "data"]
    (bridges,) = [m["mountPath"] for m in ALONE["volumeMounts"] if m["name"] == "data"]
    assert mounted == bridges
    assert BACKUP_JOB["spec"]["concurrencyPolicy"] == "Forbid", "a second copy would replace the one being written"


def test_the_backup_jobs_command_copies_a_running_bridges_state_whole(tmp_path, otlp_http, monkeypatch):
    # The job's arguments and environment, its volumes directories of the test's, beside a real bridge.
    import sqlite3

    data, backups = tmp_path / "data", tmp_path / "backups"
    data.mkdir(), backups.mkdir()
    paths = {m["mountPath"]: str(tmp_path / m["name"]) for m in BACKUP["volumeMounts"] if m["name"] != "tmp"}

    def mapped(value: str) -> str:
        for mount, there in paths.items():
            value = value.replace(mount, there)
        return value

    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    bridge.env["OTEL_BRIDGE_STATE"] = mapped(_env(BACKUP)["OTEL_BRIDGE_STATE"])
    run = WorkflowRun("checkout", service="shop", env="production").started().step_started("pay").after(20)
    try:
        bridge.start()
        assert bridge.post(run.events).json()["accepted"] == len(run.events)
        job = {**bridge.env, **{name: mapped(value) for name, value in _env(BACKUP).items()}}
        done = subprocess.run(
            [sys.executable, "-m", "otel_bridge", *(mapped(a) for a in BACKUP["args"])],
            env=job, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        bridge.close()
    assert done.returncode == 0, done.stderr
    (copy,) = backups.iterdir()
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM state").fetchone()[0] == 1, "the open run, whole"
    db.close()


def test_the_restricted_check_finds_what_the_standard_refuses():
    pod = yaml.safe_load(yaml.safe_dump(STATEFUL_SET["spec"]["template"]["spec"]))
    (container,) = pod["containers"]
    del container["securityContext"]["allowPrivilegeEscalation"]
    container["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    pod["securityContext"].pop("seccompProfile")
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    assert sorted(_restricted_problems(pod)) == [
        "otel-bridge does not drop every capability",
        "otel-bridge does not say allowPrivilegeEscalation: false",
        "otel-bridge has no seccomp profile",
        "volume host is a hostPath",
    ]


@pytest.mark.parametrize("container", [ALONE, SIDECAR], ids=["service", "sidecar"])
def test_the_bridge_serves_with_the_root_filesystem_read_only_writing_its_volume_and_tmp_only(
    container, tmp_path, otlp_http, monkeypatch
):
    # readOnlyRootFilesystem, as the manifests ask: a bridge in a mount namespace of its own where / is
    # read-only, the manifest's volume is a directory of the test's (at /mnt) and /tmp writable.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volume = tmp_path / "volume"
    volume.mkdir()
    settings = _settings(container, monkeypatch)
    folder = str(Path(settings.state).parent)
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    for name, value in _env(container).items():
        if name.startswith("OTEL_BRIDGE_") and name not in ("OTEL_BRIDGE_PORT", "OTEL_BRIDGE_HOST"):
            bridge.env[name] = value.replace(folder, "/mnt")
    bridge.wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", _READ_ONLY_ROOT, "sh", str(volume)]
    run = WorkflowRun("checkout", service="shop", env="production").started().step_started("pay").after(20)
    run.step_completed("pay").completed(["pay"])
    try:
        bridge.start()
        assert bridge.proc is not None
        mounts = [line.split() for line in Path(f"/proc/{bridge.proc.pid}/mounts").read_text().splitlines()]
        assert {(at, options.split(",")[0]) for _dev, at, _kind, options, *_ in mounts} >= {
            ("/", "ro"),
            ("/mnt", "rw"),
            ("/tmp", "rw"),
        }
        assert bridge.post(run.events).json()["accepted"] == len(run.events)
        otlp_http.received.wait_for(lambda: len(otlp_http.received.unique_spans()) == 2)
        assert bridge.stop(), bridge.log.read_text()
    finally:
        bridge.close()
    assert {p.name for p in volume.iterdir()} >= {Path(settings.state).name}
    assert "Read-only file system" not in bridge.log.read_text()


# Mounts the volume at /mnt, keeps /tmp writable, makes / read-only, then runs the bridge ("$@").
# /tmp stays itself (a mount of its own, writable, as the manifests' emptyDir): a tmpfs over it hid the
# checkout's .venv wherever the checkout is under /tmp, as CI's may be.
_READ_ONLY_ROOT = (
    'volume="$1"; shift; mount --bind "$volume" /mnt; mount --bind /tmp /tmp; mount -o remount,bind,ro /; exec "$@"'
)


@pytest.mark.parametrize(("workload", "container"), [(STATEFUL_SET, ALONE), (SIDECAR_APP, SIDECAR)])
def test_the_grace_period_covers_the_pause_before_sigterm_the_last_settling_and_the_drain(
    workload, container, monkeypatch
):
    settings = _settings(container, monkeypatch)
    pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pause[0] == "sleep"
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # What is left at the end of the drain stays on the volume, but a SIGKILL mid-export sends it again.
    assert grace >= int(pause[1]) + settings.drain_timeout_seconds + 10


def test_the_service_reaches_the_port_the_bridge_listens_on_from_outside_its_pod(monkeypatch):
    settings = _settings(ALONE, monkeypatch)
    (port,) = SERVICE["spec"]["ports"]
    (named,) = [p for p in ALONE["ports"] if p["name"] == port["targetPort"]]
    assert named["containerPort"] == settings.port == port["port"]
    assert settings.host == "0.0.0.0"
    labels = STATEFUL_SET["spec"]["template"]["metadata"]["labels"]
    assert SERVICE["spec"]["selector"].items() <= labels.items()


def test_the_service_bridge_is_alive_by_healthz_and_ready_by_readyz():
    for probe in ("startupProbe", "livenessProbe"):
        assert ALONE[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ALONE["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_the_sidecar_starts_before_the_application_and_never_takes_it_out_of_service(monkeypatch):
    assert SIDECAR["restartPolicy"] == "Always"  # a native sidecar: up first, stopped last
    assert "readinessProbe" not in SIDECAR  # a pod is ready only if every container is
    settings = _settings(SIDECAR, monkeypatch)
    assert settings.host == "127.0.0.1"  # the pod's own containers only
    assert _env(APP)["TRACKER_ENDPOINT"] == f"http://127.0.0.1:{settings.port}{settings.path}"


def test_the_sidecars_probes_are_the_images_health_check(monkeypatch):
    command = healthcheck_command()
    for probe in ("startupProbe", "livenessProbe"):
        given = SIDECAR[probe]["exec"]["command"]
        assert [sys.executable if given[0] == "python" else given[0], *given[1:]] == command


def test_what_the_probes_ask_is_answered_by_a_bridge_run_with_the_manifests_environment(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    for name, value in _env(SIDECAR).items():
        if name.startswith("OTEL_BRIDGE_") and name not in ("OTEL_BRIDGE_PORT", "OTEL_BRIDGE_STATE"):
            is_path = value.startswith("/data/")
            bridge.env[name] = str(tmp_path / Path(value).name) if is_path else value
    bridge.start()
    try:
        probe = subprocess.run(healthcheck_command(), env=bridge.env, capture_output=True, timeout=10)
        assert probe.returncode == 0, probe.stderr
        for path in ("/healthz", "/readyz"):  # the service's httpGet probes
            assert httpx.get(f"{bridge.url}{path}", timeout=5).status_code == 200
    finally:
        bridge.close()


# ingress-nginx's idle time for its kept-alive connections to a backend (its upstream-keepalive-timeout).
INGRESS_NGINX_KEEPALIVE_SECONDS = 60


def test_the_ingress_routes_the_batch_path_alone_to_the_service_with_room_for_the_largest_batch(monkeypatch):
    settings = _settings(ALONE, monkeypatch)
    (rule,) = INGRESS["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == (settings.path, "Exact")  # /metrics and the listings stay inside
    backend = path["backend"]["service"]
    assert backend["name"] == SERVICE["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in SERVICE["spec"]["ports"]}
    # ingress-nginx refuses a larger body itself, unseen by the bridge.
    size = INGRESS["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.removesuffix("m")) * 1024 * 1024 >= settings.max_body_bytes
    # Behind it, the bridge keeps an idle connection longer than ingress-nginx does (else a 502 now and then).
    assert settings.keep_alive_seconds > INGRESS_NGINX_KEEPALIVE_SECONDS
    (tls,) = INGRESS["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and "cert-manager.io/cluster-issuer" in INGRESS["metadata"]["annotations"]
