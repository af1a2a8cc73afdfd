"""deploy/k8s and deploy/grafana, checked without a cluster (docs/kubernetes.md).

- Every manifest is valid against the pinned Kubernetes version's JSON schemas, strictly
  (unknown fields rejected), with kubernetes-validate (dev extras; its schemas ship inside the
  package, so no download). A missing validator fails here: it is not a reason to skip.
- The manifests agree with each other (selectors, the headless Service, ports, volumes, the
  Secret's and ConfigMap's names and keys), with the image (docker/Dockerfile) and with the
  application: every STREAMPROC_* variable is a setting, the pod's environment loads as
  Settings, secrets come from files where the setting has a file twin, and the grace period
  covers the preStop sleep and the shutdown timeout.
- Every metric the Grafana dashboard's PromQL names is one the app exports: the names come
  from rendering /metrics through the real exporter (streamproc/ops/prometheus.py), fed a
  snapshot that holds every counter the engine increments (found in streamproc/ by its call
  sites), not from a list kept by hand.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamproc import connection
from streamproc.config import ENV_PREFIX, Settings, load_settings
from streamproc.ops.endpoint import parse_endpoint
from streamproc.ops.instances import advertised_url
from streamproc.ops.prometheus import _ENGINE_HELP, InstanceMetrics
from streamproc.ops.status import (
    CheckpointStatus,
    PartitionStatus,
    RestoreStatus,
    Snapshot,
    StatusBoard,
    StoreStatus,
    TaskStatus,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "streamproc-dashboard.json"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

# The oldest Kubernetes minor the manifests are written for (docs/kubernetes.md): the
# StatefulSet's PVC retention policy, the PDB's unhealthyPodEvictionPolicy and the preStop
# sleep action are all on by default from 1.31.
KUBERNETES_VERSION = "1.31"
SECRET_EXAMPLE = "secret.example.yaml"
# What the fieldRefs resolve to in the environment test.
POD_NAME, POD_NAMESPACE = "wordcount-0", "streamproc"


# -- loading ----------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; in a manifest that silently
    drops half of an edit. Refused here."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _load(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.load_all(path.read_text(), Loader=_StrictLoader) if d is not None]
    assert docs, f"{path.name} holds no document"
    return docs


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def _parsed() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((path.name, doc) for path in manifest_files() for doc in _load(path))


def resources() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every manifest document with its file's name (parsed once: tests never change them)."""
    yield from _parsed()


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in resources()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> dict[str, Any]:
    return one("StatefulSet")


def pod_spec() -> dict[str, Any]:
    return statefulset()["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def http_port() -> int:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    return ports["http"]


def _port_number(port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port in ports, f"port {port!r} is not a named port of the container"
    return ports[port]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- schema validation ------------------------------------------------------------------------
def test_every_manifest_is_valid_against_the_pinned_kubernetes_schema() -> None:
    checked, errors = [], []
    for name, doc in resources():
        where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where} is invalid at {path or 'the top'}: {exc.message}")
            continue
        # Not silently an older schema set: the pinned one.
        assert version == KUBERNETES_VERSION, where
        checked.append(doc["kind"])
    assert not errors, "\n".join(errors)
    assert {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
    } <= set(checked)


def test_the_validator_rejects_unknown_fields_and_wrong_types() -> None:
    """The strict schemas really are strict: a typo'd field and a wrong type both fail."""
    sts = statefulset()
    typo = json.loads(json.dumps(sts))
    typo["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbes"):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = json.loads(json.dumps(sts))
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError, match="three"):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_yaml_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a'"):
        _load(f)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kust = _load(K8S / "kustomization.yaml")[0]
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert set(kust) <= {"apiVersion", "kind", "resources", "images"}
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in manifest_files()} - {SECRET_EXAMPLE}
    assert set(listed) == expected
    # The image override names the container's image.
    assert [i["name"] for i in kust["images"]] == [container()["image"].split(":")[0]]


# -- cross-references -------------------------------------------------------------------------
def test_selectors_match_the_pod_labels() -> None:
    sts = statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert set(sts["spec"]["selector"]) == {"matchLabels"}
    assert _matches(sts["spec"]["selector"]["matchLabels"], labels)
    pdb = one("PodDisruptionBudget")
    assert set(pdb["spec"]["selector"]) == {"matchLabels"}
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    # The PDB selects exactly this StatefulSet's pods, not more.
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1
    services = [d for _, d in resources() if d["kind"] == "Service"]
    assert len(services) == 2
    for svc in services:
        assert _matches(svc["spec"]["selector"], labels), svc["metadata"]["name"]
    for tsc in pod_spec().get("topologySpreadConstraints", []):
        assert _matches(tsc["labelSelector"]["matchLabels"], labels)


def test_the_statefulsets_service_is_headless() -> None:
    sts = statefulset()
    svc = one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    # DNS names for pods that are not ready yet: restoring instances still own partitions.
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_probes_and_services_use_the_containers_http_port() -> None:
    c = container()
    assert http_port() == 8080
    probes = {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert _port_number(probe["httpGet"]["port"]) == http_port(), kind
    for _, svc in ((n, d) for n, d in resources() if d["kind"] == "Service"):
        for port in svc["spec"]["ports"]:
            assert _port_number(port.get("targetPort", port["port"])) == http_port()
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == http_port()
    assert annotations["prometheus.io/path"] == "/metrics"


def test_volumes_and_mounts_agree() -> None:
    sts, spec, c = statefulset(), pod_spec(), container()
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert not claims & set(volumes)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) == claims | set(volumes)
    # The root file system is read-only: the writable mounts are the state and /tmp only.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {state_mount(), "/tmp"}
    for v in volumes.values():
        if "configMap" in v:
            one("ConfigMap", v["configMap"]["name"])
        if "secret" in v:
            secret = example_secret(v["secret"]["secretName"])
            for item in v["secret"].get("items", []):
                assert item["key"] in secret, item


def state_mount() -> str:
    """The mount path of the StatefulSet's volume claim (there is one)."""
    (claim,) = statefulset()["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    return str(mount["mountPath"])


def test_the_pod_runs_as_the_images_user_on_the_images_paths() -> None:
    dockerfile = DOCKERFILE.read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    sc = pod_spec()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert (sc["runAsUser"], sc["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert sc["fsGroup"] == int(user[2])
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert container()["securityContext"]["capabilities"]["drop"] == ["ALL"]
    state_dir = re.search(r"STREAMPROC_STATE_DIR=(\S+)", dockerfile)
    assert state_dir is not None and state_dir[1] == state_mount()
    assert f'VOLUME ["{state_mount()}"]' in dockerfile
    exposed = re.search(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    assert exposed is not None and int(exposed[1]) == http_port()
    assert re.search(r'^ENTRYPOINT \["streamproc"\]$', dockerfile, re.MULTILINE)
    args = container()["args"]
    assert args[0] == "run"
    assert (ROOT / Path(*args[1].split(":")[0].split("."))).with_suffix(".py").is_file()


# -- the environment ----------------------------------------------------------------------------
def example_secret(name: str) -> dict[str, str]:
    secret = one("Secret", name)
    return {**secret.get("stringData", {}), **secret.get("data", {})}


def config_map_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container().get("envFrom", []):
        assert set(source) == {"configMapRef"}, "envFrom only from the ConfigMap"
        env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    return env


def setting_names() -> set[str]:
    """Every STREAMPROC_* variable the settings read: the instance settings, whose base
    class holds the Kafka connection's."""
    connection_fields = set(connection.ConnectionSettings.model_fields)
    settings_fields = set(Settings.model_fields)
    assert connection_fields <= settings_fields
    return {ENV_PREFIX + name.upper() for name in settings_fields | connection_fields}


def _is_secret(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return annotation is pydantic.SecretStr or pydantic.SecretStr in typing.get_args(annotation)


def test_every_streamproc_variable_is_a_setting() -> None:
    known = setting_names()
    env = container()["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    from_config = config_map_env()
    assert not set(names) & set(from_config), "a variable in both env and the ConfigMap"
    for name in [*names, *from_config]:
        if name.startswith(ENV_PREFIX):
            assert name in known, f"{name} is not a setting (streamproc/config.py)"
    # Other variables exist only for $(NAME) expansions, defined before their first use.
    for i, entry in enumerate(env):
        if not entry["name"].startswith(ENV_PREFIX):
            later = " ".join(e.get("value", "") for e in env[i + 1 :])
            assert f"$({entry['name']})" in later, f"{entry['name']} is never used"
        for ref in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
            assert ref in names[:i] or ref in from_config, f"$({ref}) is not defined before"


def test_secrets_come_from_files_where_the_setting_has_a_file_twin() -> None:
    fields = set(Settings.model_fields)
    for name, value in config_map_env().items():
        setting = name.removeprefix(ENV_PREFIX).lower()
        assert not _is_secret(setting), f"{name} is a secret: never in a ConfigMap ({value!r})"
    for entry in container()["env"]:
        setting = entry["name"].removeprefix(ENV_PREFIX).lower()
        if setting not in fields or not _is_secret(setting):
            continue
        assert f"{setting}_file" not in fields, f"use {entry['name']}_FILE"
        assert "value" not in entry, f"{entry['name']} must come from a Secret"
        assert set(entry["valueFrom"]) == {"secretKeyRef"}
    file_settings = [e for e in container()["env"] if e["name"].endswith("_FILE")]
    assert {e["name"] for e in file_settings} >= {
        "STREAMPROC_SASL_PASSWORD_FILE",
        "STREAMPROC_HTTP_AUTH_TOKEN_FILE",
    }


def pod_environment(tmp_path: Path) -> dict[str, str]:
    """The container's environment as the kubelet builds it: the ConfigMap, then ``env`` in
    order (fieldRefs, secretKeyRefs, $(NAME) expansions). Paths into the Secret's mount are
    moved under ``tmp_path``, holding the example Secret's values."""
    env = dict(config_map_env())
    fields = {"metadata.name": POD_NAME, "metadata.namespace": POD_NAMESPACE}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for entry in container()["env"]:
        source = entry.get("valueFrom")
        if source is None:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], entry["value"])
        elif "fieldRef" in source:
            value = fields[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["secretKeyRef"]
            value = example_secret(ref["name"])[ref["key"]]
        if entry["name"].endswith("_FILE"):
            mount_path, file_name = value.rsplit("/", 1)
            volume = volumes[mounts[mount_path]]["secret"]
            items = {i["path"]: i["key"] for i in volume.get("items", [])}
            key = items[file_name] if items else file_name
            target = tmp_path / mount_path.lstrip("/") / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(example_secret(volume["secretName"])[key] + "\n")
            value = str(target)
        env[entry["name"]] = value
    return env


@pytest.fixture
def pod_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an instance of the StatefulSet loads, from its environment only."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in pod_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_the_pods_environment_loads_as_settings(pod_settings: Settings) -> None:
    s = pod_settings
    assert s.instance_id == POD_NAME
    assert str(s.state_dir) == state_mount()
    assert (s.http_host, s.http_port) == ("0.0.0.0", http_port())
    (volume,) = [v["secret"] for v in pod_spec()["volumes"] if "secret" in v]
    secret = example_secret(volume["secretName"])
    assert s.secret("sasl_password") == secret["sasl-password"]
    assert s.secret("http_auth_token") == secret["http-auth-token"]
    assert s.http_registry_signing_key is not None
    # The advertised URL is the pod's name under the headless Service, in the form every
    # other instance accepts from the registry.
    url = advertised_url(s.http_advertised_url, s.http_host, http_port())
    endpoint = parse_endpoint(url)
    service = statefulset()["spec"]["serviceName"]
    assert (endpoint.scheme, endpoint.host, endpoint.port) == (
        "http",
        f"{POD_NAME}.{service}.{POD_NAMESPACE}.svc",
        http_port(),
    )


def test_the_grace_period_covers_the_prestop_sleep_and_the_shutdown_timeout(
    pod_settings: Settings,
) -> None:
    shutdown_ms = pod_settings.shutdown_timeout_ms
    pre_stop = container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = pre_stop["sleep"]["seconds"]
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        sleep_s = int(command[1])
    assert 0 < sleep_s < 30
    grace_s = pod_spec()["terminationGracePeriodSeconds"]
    assert grace_s * 1000 > sleep_s * 1000 + shutdown_ms


# -- the Grafana dashboard --------------------------------------------------------------------
@functools.cache
def engine_counter_names() -> frozenset[str]:
    """Counters the engine increments: ``metrics.inc("..._total", ...)`` and the ``count`` /
    ``_count`` functions handed the same method, wherever they are called in streamproc/."""
    names = set()
    for path in (ROOT / "streamproc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in ("inc", "count", "_count")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and re.fullmatch(r"[a-z][a-z0-9_]*_total", first.value)
            ):
                names.add(first.value)
    return frozenset(names)


def test_the_counter_scan_finds_every_documented_counter() -> None:
    """The scan above is not silently blind: it finds every counter the exporter documents."""
    assert set(_ENGINE_HELP) <= engine_counter_names()


_SERIES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_metric_names() -> set[str]:
    """Every series name /metrics can show: rendered by the real exporter from a snapshot
    with every part filled and every engine counter present, then parsed back. A family's
    series names follow from its TYPE (``_total`` for counters, ``_bucket``/``_sum``/``_count``
    for histograms), whether or not the snapshot gave it samples."""
    snap = Snapshot(
        app_id="wordcount",
        instance_id=POD_NAME,
        guarantee="exactly_once",
        state="running",
        joined=True,
        published_at_ms=2_000,
        started_at_ms=1_000,
        partitions=(PartitionStatus("text-lines", 0, "0_0", "running", 5, 6, 9, 3),),
        tasks=(TaskStatus("0_0", 0, 0, "running", 1_500, 500, False),),
        restoring=(RestoreStatus("0_1", "counts", "wordcount-counts-changelog", 1, 10, 100, 90),),
        stores=(StoreStatus("counts", 0, 2048, 512, 33),),
        restored_records=10,
        restored_bytes=100,
        checkpoint=CheckpointStatus(1, 0, 0.02, 11, 300, 1_700_000_000_000),
        counters={(name, ()): 1.0 for name in engine_counter_names()},
        produced_by_partition={("word-counts", 0): (7, 70)},
        gauges={("standby_tasks", ()): 1.0,
                ("standby_lag_records", (("store", "counts"), ("task", "1_1"))): 4.0},
    )
    metrics = InstanceMetrics(StatusBoard(snap, stuck_after_s=60.0))
    metrics.observe_checkpoint(0.02, 11, 300)
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SERIES[family.type])
    return names


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr}"
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{\w+\}|\$\w+", " ", text)  # Grafana variables
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (their strings are gone)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )  # label lists
    text = re.sub(r"(?<![\w:])\d[\w.]*", " ", text)  # numbers and durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group()
        if word.lower() in _PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        names.add(word)
    return names


def variable_query_names(query: str) -> set[str]:
    """Metric names a Grafana Prometheus variable query selects."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    if m:
        return promql_metric_names(m[1])
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    assert m, f"unexpected variable query {query!r}"
    return promql_metric_names(m[1])


def test_promql_names_are_found_past_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, topic) (rate(a_bucket{x="b(c)", y=~"$v"}'
        "[$__rate_interval]))) * on (instance) group_left (instance_id) info_metric "
        'offset 5m or vector(0) / ignoring(x) count_values("le", b:recorded) > bool 1e3'
    )
    assert promql_metric_names(expr) == {"a_bucket", "info_metric", "b:recorded"}
    assert variable_query_names('label_values(m{app_id="$app"}, instance)') == {"m"}
    assert variable_query_names("label_values(app_id)") == set()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row's
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def _variable_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_metric_names()
    assert "streamproc_records_consumed_total" in exported  # the render worked
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_exprs():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(title)
    for var in variables().values():
        if var["type"] == "query":
            for name in variable_query_names(_variable_query(var)):
                used.setdefault(name, set()).add(f"variable {var['name']}")
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"not exported by streamproc: {unknown}"
    # The panels the dashboard is for, by what they read.
    assert {
        "streamproc_records_consumed_total",
        "streamproc_records_produced_total",
        "streamproc_consumer_lag_records",
        "streamproc_checkpoint_duration_seconds_bucket",
        "streamproc_checkpoint_failures_total",
        "streamproc_restore_remaining_records",
        "streamproc_records_failed_total",
        "streamproc_late_records_total",
        "streamproc_state_sst_bytes",
        "streamproc_rebalances_total",
        "streamproc_standby_lag_records",
    } <= set(used)


def test_the_dashboard_is_a_grafana_model_on_its_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"]
    vars_ = variables()
    assert vars_["datasource"]["type"] == "datasource"
    assert vars_["datasource"]["query"] == "prometheus"
    assert "app_id" in _variable_query(vars_["app"])
    instance = vars_["instance"]
    assert "$app" in _variable_query(instance)
    # "All" must expand to the chosen application's instances, not to every target.
    assert instance["includeAll"] and not instance.get("allValue")
    builtin = {"__rate_interval", "__interval", "__range"}
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t["datasource"] == panel["datasource"]
            refs = set(re.findall(r"\$\{?(\w+)\}?", t["expr"]))
            assert refs <= set(vars_) | builtin, (panel["title"], refs)
            # Every query is narrowed to the chosen instances.
            assert 'instance=~"$instance"' in t["expr"], (panel["title"], t["expr"])
