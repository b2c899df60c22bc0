#!/usr/bin/env python3
"""Lints, renders and validates the Stampede Helm chart, without a cluster.

For each value set below: check the values against values.schema.json, `helm lint --strict`,
render every template (Helm's own engine, from the helm-python-sdk wheel), validate each
rendered manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors) for the oldest Kubernetes the chart supports and the newest known, then run
the chart's own assertions (drain sizing, probes, security context, ...). Value sets that must
be refused are checked to fail with the expected message.

Custom resources (ServiceMonitor, PrometheusRule) have no schema there: they are parsed and
checked by hand, and reported as skipped for schema validation.

Besides the value sets: the schema's `config` keys must be exactly the node's settings
(node/src/config/settings.rs); docs/deploy.md's auth-tls-values.yaml must be the AUTH_TLS value
set below; the alert rules (files/prometheus-rules.yaml) and the Grafana dashboard
(files/grafana-dashboard.json) may query only series and label values node/src/metrics.rs
produces, and with promtool installed they are checked by `promtool check rules`, the rules' unit
tests (prometheus-rules.test.yaml) run, and every dashboard query is parsed.

    helm/tests/check.sh                      # venv + requirements + this script
    python3 helm/tests/check_chart.py -v     # print every rendered manifest

Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "stampede"
REPO = HERE.parent.parent
RELEASE = "demo"
NAMESPACE = "messaging"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()) + ".0"]
# API groups with no schema in kubernetes-validate (custom resources).
CRD_GROUPS = {"monitoring.coreos.com"}

Docs = list[dict[str, Any]]


def documented_env_vars() -> set[str]:
    """The STAMPEDE_* variables docs/configuration.md lists: the ConfigMap may hold only these."""
    text = (REPO / "docs" / "configuration.md").read_text()
    return set(re.findall(r"`(STAMPEDE_[A-Z0-9_]+)`", text))


def node_settings() -> list[str]:
    """Every setting name of the node, from node/src/config/settings.rs (the `settings!` table)."""
    text = (REPO / "node" / "src" / "config" / "settings.rs").read_text()
    names = re.findall(r'^\s+[A-Z_]+: (?:Value|Computed)\("[^"]*"\), "([a-z0-9-]+)",', text, re.M)
    assert len(names) > 40, f"found only {len(names)} settings in settings.rs: has its table changed form?"
    return names


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def check_schema_lists_every_setting() -> None:
    """The schema's `config` keys are exactly the node's settings: a new setting must be added to
    the chart, and a key that is no setting (a typo) is refused."""
    config = schema()["properties"]["config"]
    assert config.get("additionalProperties") is False, "config must refuse unknown keys"
    listed, settings = set(config["properties"]), set(node_settings())
    assert listed == settings, (
        f"values.schema.json config keys differ from node/src/config/settings.rs: "
        f"missing {sorted(settings - listed)}, not settings {sorted(listed - settings)}"
    )


RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
RULES_TESTS = HERE / "prometheus-rules.test.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana-dashboard.json"
# Which label_enum! of metrics.rs (or enum of destination.rs) gives each label's values.
LABEL_ENUMS = {"transport": "Transport", "reason": "DropReason", "event": "EngineEvent"}


def metric_series() -> set[str]:
    """The series names node/src/metrics.rs exposes: stampede_<name> for gauges,
    stampede_<name>_total for counters (prometheus-client's suffix)."""
    text = (REPO / "node" / "src" / "metrics.rs").read_text()
    assert 'with_prefix("stampede")' in text, "metrics.rs no longer registers under stampede_"
    series = set()
    for name, var in re.findall(r'registry\.register\(\s*"(\w+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', text, re.S):
        declared = re.search(rf"let {var}\s*=\s*([^;]+);", text)
        assert declared, f"metrics.rs: cannot find how {var} is made"
        kind = declared.group(1)
        if "Counter" in kind:
            series.add(f"stampede_{name}_total")
        elif "Gauge" in kind:
            series.add(f"stampede_{name}")
        else:
            raise AssertionError(f"metrics.rs: {name} is neither a counter nor a gauge: {kind}")
    assert len(series) >= 10, f"found only {sorted(series)} in metrics.rs"
    return series


def label_values() -> dict[str, set[str]]:
    text = (REPO / "node" / "src" / "metrics.rs").read_text()
    enums = {m.group(1): set(re.findall(r'= "([a-z_]+)",', m.group(2)))
             for m in re.finditer(r"label_enum! \{.*?(\w+) \{(.*?)\}\s*\}", text, re.S)}
    values = {label: enums[enum] for label, enum in LABEL_ENUMS.items()}
    destination = (REPO / "node" / "src" / "destination.rs").read_text()
    values["kind"] = set(re.findall(r'Kind::\w+ => "([a-z]+)"', destination))
    assert all(values.values()), values
    return values


def check_promql(expr: str, where: str) -> None:
    """Every stampede_* series an expression names exists, with label values that exist."""
    series, labels = metric_series(), label_values()
    names = set(re.findall(r"\bstampede_[a-z_]+", expr))
    assert names, f"{where}: no stampede_* metric in {expr!r}"
    unknown = names - series
    assert not unknown, f"{where}: {sorted(unknown)} are no metrics of node/src/metrics.rs (it has {sorted(series)})"
    for label, value in re.findall(r'\b(transport|reason|event|kind)\s*=~?\s*"([^"]*)"', expr):
        for v in value.split("|"):
            assert v in labels[label], f"{where}: {label}={v!r} never occurs (values: {sorted(labels[label])})"


def check_rules_file() -> None:
    """The alert rules: structure by hand, every metric real; promtool check + unit tests if present."""
    rules = yaml.safe_load(RULES_FILE.read_text())
    assert set(rules) == {"groups"}, sorted(rules)
    names = []
    for group in rules["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, sorted(rule)
            where = f"rule {rule['alert']}"
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
            if "for" in rule:
                assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), f"{where}: for {rule['for']!r}"
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, where
            assert set(rule["annotations"]) == {"summary", "description"}, where
            if "stampede_" in rule["expr"]:
                check_promql(rule["expr"], where)
            else:
                assert 'up{job=~".*stampede.*"}' in rule["expr"], f"{where}: neither a stampede_* metric nor up"
            names.append(rule["alert"])
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    promtool = shutil.which("promtool")
    if promtool:
        for args in (["check", "rules", str(RULES_FILE)], ["test", "rules", str(RULES_TESTS)]):
            run = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=HERE)
            assert run.returncode == 0, f"promtool {' '.join(args[:2])}: {run.stdout}{run.stderr}"


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r}", target["expr"]))
    return exprs


def check_dashboard_file() -> None:
    """The Grafana dashboard: its panels query metrics that exist, through the datasource variable."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    exprs = dashboard_exprs()
    for where, expr in exprs:
        if "stampede_" in expr:
            check_promql(expr, where)
    promtool = shutil.which("promtool")
    if promtool:
        # promtool parses PromQL in rules files: the queries as recording rules, Grafana's variables
        # replaced by what they stand for.
        def concrete(expr: str) -> str:
            return expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")

        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": concrete(expr)} for i, (_, expr) in enumerate(exprs)
        ]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(rules, f)
            f.flush()
            run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        assert run.returncode == 0, f"promtool cannot parse a dashboard query: {run.stdout}{run.stderr}"


def b64(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def env_entry(docs: Docs, name: str) -> dict[str, Any]:
    matches = [e for e in container(docs).get("env", []) if e["name"] == name]
    assert len(matches) == 1, f"expected one env entry {name}, found {len(matches)}"
    return matches[0]


def find(docs: Docs, kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} named *{name_suffix}, found {len(matches)}"
    return matches[0]


def settings_cm(docs: Docs) -> dict[str, Any]:
    """The ConfigMap of settings (not the Grafana dashboard's)."""
    return find(docs, "ConfigMap", f"{RELEASE}-stampede")


def kinds(docs: Docs) -> list[str]:
    return sorted(d["kind"] for d in docs)


def broker(docs: Docs) -> dict[str, Any]:
    return find(docs, "Deployment")


def container(docs: Docs) -> dict[str, Any]:
    return broker(docs)["spec"]["template"]["spec"]["containers"][0]


def env_names(docs: Docs) -> set[str]:
    return {e["name"] for e in container(docs).get("env", [])}


def common_checks(docs: Docs, values: dict[str, Any]) -> None:
    """What every broker Deployment must satisfy, whatever the values."""
    merged = values
    dep = broker(docs)
    pod = dep["spec"]["template"]["spec"]
    c = container(docs)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness must probe /readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness must probe /healthz"
    assert c["readinessProbe"]["httpGet"]["port"] == "admin" == c["livenessProbe"]["httpGet"]["port"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["admin"] == merged["ports"]["admin"] and ports["ws"] == merged["ports"]["websocket"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, sc
    assert "ALL" in sc["capabilities"]["drop"], sc
    assert pod["securityContext"]["runAsNonRoot"] is True, pod["securityContext"]
    assert c.get("resources"), "the broker container must have resources"

    # Drain timeline: preStop sleep, then SIGTERM and the drain period, all within the grace period.
    drain = merged["drain"]
    pre = c["lifecycle"]["preStop"]
    slept = pre["sleep"]["seconds"] if "sleep" in pre else int(pre["exec"]["command"][-1])
    assert slept == drain["preStopSleepSeconds"], pre
    grace = pod["terminationGracePeriodSeconds"]
    if merged.get("terminationGracePeriodSeconds") is None:
        assert grace == drain["preStopSleepSeconds"] + drain["periodSeconds"] + drain["marginSeconds"], grace
    assert grace > slept + drain["periodSeconds"], f"grace {grace}s leaves no time to drain"

    cm = settings_cm(docs)
    assert cm["data"]["STAMPEDE_DRAIN_PERIOD"] == f"{drain['periodSeconds']}s"
    unknown = set(cm["data"]) - documented_env_vars()
    assert not unknown, f"ConfigMap keys that are no documented setting: {sorted(unknown)}"
    assert "STAMPEDE_NODE_ID" in env_names(docs)

    # Selectors: the Services and the PDB select the broker pods, never the in-chart Redis.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for d in docs:
        selector = None
        if d["kind"] == "Service" and not d["metadata"]["name"].endswith("-redis"):
            selector = d["spec"]["selector"]
        elif d["kind"] == "PodDisruptionBudget":
            selector = d["spec"]["selector"]["matchLabels"]
        if selector is not None:
            assert all(pod_labels.get(k) == v for k, v in selector.items()), (d["metadata"]["name"], selector)
            assert selector.get("app.kubernetes.io/component") == "broker", selector

    check_service_monitor(docs, merged)
    check_network_policies(docs)

    # No Redis password and no secret setting lands in a ConfigMap.
    for value in cm["data"].values():
        assert "redis://" not in value and "rediss://" not in value, "Redis URL in the ConfigMap"
    for name in SECRET_SETTINGS:
        env = "STAMPEDE_" + name.upper().replace("-", "_")
        assert env not in cm["data"], f"{env} (a secret) in the ConfigMap"
        secret_value = merged.get("config", {}).get(name)
        if secret_value:
            assert all(secret_value not in v for v in cm["data"].values()), f"the {name} value in the ConfigMap"
            assert secret_value not in yaml.safe_dump(dep), f"the {name} value in the Deployment"


# Fields of a Prometheus Operator ServiceMonitor endpoint (monitoring.coreos.com/v1 Endpoint) the
# chart may render: a misspelt field would be dropped by the API server, or refused.
SERVICE_MONITOR_ENDPOINT_FIELDS = {
    "port", "path", "interval", "scrapeTimeout", "authorization", "relabelings", "metricRelabelings",
}


def check_service_monitor(docs: Docs, values: dict[str, Any]) -> dict[str, Any] | None:
    """The ServiceMonitor, if any, checked by hand (no schema): it selects the admin Service."""
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if not monitors:
        return None
    (sm,) = monitors
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints"}, sorted(sm["spec"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS, sorted(endpoint)
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics", endpoint
    if "authorization" in endpoint:
        auth = endpoint["authorization"]
        assert auth["type"] == "Bearer" and set(auth["credentials"]) == {"name", "key"}, auth
    admin = find(docs, "Service", "-admin")
    assert all(admin["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, sm["spec"]["namespaceSelector"]
    return sm


def pod_templates(docs: Docs) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def check_network_policies(docs: Docs) -> None:
    """Each NetworkPolicy selects pods of the release, and every port it names is one of theirs."""
    for np in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = np["spec"]["podSelector"]["matchLabels"]
        selected = [pt for pt in pod_templates(docs) if all(pt["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        assert len(selected) == 1, f"NetworkPolicy {np['metadata']['name']} selects {len(selected)} pod templates"
        ports = {p.get("name") for c in selected[0]["spec"]["containers"] for p in c.get("ports", [])}
        ports |= {p["containerPort"] for c in selected[0]["spec"]["containers"] for p in c.get("ports", [])}
        for rule in np["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["port"] in ports, f"NetworkPolicy {np['metadata']['name']}: port {port['port']} is no port of its pods"


def sm_token(docs: Docs) -> dict[str, str] | None:
    sm = find(docs, "ServiceMonitor")
    auth = sm["spec"]["endpoints"][0].get("authorization")
    return auth["credentials"] if auth else None


def check_defaults(docs: Docs, values: dict[str, Any]) -> None:
    assert kinds(docs) == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "Service", "ServiceAccount"]
    ), kinds(docs)
    assert broker(docs)["spec"]["replicas"] == 3
    assert "STAMPEDE_REDIS_URL" in env_names(docs)
    svc = find(docs, "Service", "stampede")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"ws": 8080, "stomp": 61613}
    admin = find(docs, "Service", "-admin")
    assert [p["port"] for p in admin["spec"]["ports"]] == [9090]
    assert broker(docs)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def check_everything_on(docs: Docs, values: dict[str, Any]) -> None:
    assert "replicas" not in broker(docs)["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == broker(docs)["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    ing = find(docs, "Ingress")
    annotations = ing["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert annotations[f"nginx.ingress.kubernetes.io/{key}"] == "3600", annotations
    # SockJS: one session's HTTP requests reach one pod (cookie affinity, kept when pods are added).
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie", annotations
    assert annotations["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent", annotations
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"] == "stampede-node", annotations
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-change-on-failure"] == "true", annotations
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-secure"] == "true", "ingress.tls: a secure cookie"
    assert "nginx.ingress.kubernetes.io/session-cookie-samesite" not in annotations
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in annotations, "the nodes speak plain HTTP here"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": broker(docs)["metadata"]["name"], "port": {"name": "ws"}}, backend
    assert ing["spec"]["tls"][0]["secretName"] == "stampede-tls"
    sm = find(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    admin = find(docs, "Service", "-admin")
    assert all(admin["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert "namespace" not in sm["metadata"], "the ServiceMonitor goes to the release's namespace"
    assert admin["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # config.admin-token: the chart's Secret holds it, and Prometheus sends it.
    assert sm_token(docs) == {"name": find(docs, "Secret")["metadata"]["name"], "key": "admin-token"}, sm_token(docs)


def check_internal_redis(docs: Docs, values: dict[str, Any]) -> None:
    sts = find(docs, "StatefulSet", "-redis")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes", args
    svc = find(docs, "Service", "-redis")
    secret = find(docs, "Secret")
    url = b64(secret, "redis-url")
    assert url == f"redis://{svc['metadata']['name']}:6379", url
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert redis_labels["app.kubernetes.io/component"] == "redis"
    assert all(redis_labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def check_custom(docs: Docs, values: dict[str, Any]) -> None:
    c = container(docs)
    assert c["resources"] == values["resources"], c["resources"]
    assert c["image"] == "registry.example.com/stampede:1.2.3"
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    pod = broker(docs)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 60 + 10
    cm = settings_cm(docs)["data"]
    assert cm["STAMPEDE_STOMP_LISTEN"] == "off"
    assert cm["STAMPEDE_MAX_CONNECTIONS"] == "50000"
    assert cm["STAMPEDE_SLOW_CONSUMER"] == "drop"
    assert cm["STAMPEDE_HISTORY"] == "/topic/prices/*=1000,10m; /topic/chat.*=50"
    assert cm["STAMPEDE_QUEUE"] == "/queue/*-user*=10m,auto-delete; /queue/reply.*=auto-delete"
    assert cm["STAMPEDE_DRAIN_PERIOD"] == "60s"
    assert not [d for d in docs if d["kind"] == "Secret"], "an existing Secret is used, none rendered"
    ref = next(e for e in c["env"] if e["name"] == "STAMPEDE_REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "redis-credentials", "key": "url"}, ref
    svc = find(docs, "Service", "stampede")
    assert svc["spec"]["type"] == "LoadBalancer" and [p["name"] for p in svc["spec"]["ports"]] == ["ws"]
    assert [p["name"] for p in c["ports"]] == ["ws", "admin"]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] == "default"
    assert {"name": "RUST_LOG", "value": "info,stampede=debug"} in c["env"]


def check_single_memory_node(docs: Docs, values: dict[str, Any]) -> None:
    assert broker(docs)["spec"]["replicas"] == 1
    assert "STAMPEDE_REDIS_URL" not in env_names(docs)
    assert not [d for d in docs if d["kind"] == "Secret"]


JWT_SECRET = "0123456789abcdef0123456789abcdef-hs256"
ADMIN_TOKEN = "admin-token-0123456789"
BACKEND_SECRET = "backend-secret-0123456789"


def check_secret_settings_in_config(docs: Docs, values: dict[str, Any]) -> None:
    """The secret settings given under config go into the chart's Secret, not the ConfigMap."""
    secret = find(docs, "Secret")
    assert b64(secret, "jwt-secret") == JWT_SECRET and b64(secret, "admin-token") == ADMIN_TOKEN
    assert b64(secret, "app-backend-secret") == BACKEND_SECRET
    assert b64(secret, "redis-url") == "redis://redis:6379"
    for name in ("STAMPEDE_JWT_SECRET", "STAMPEDE_ADMIN_TOKEN", "STAMPEDE_APP_BACKEND_SECRET"):
        ref = env_entry(docs, name)["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": name[len("STAMPEDE_"):].lower().replace("_", "-")}, ref
    cm = settings_cm(docs)["data"]
    assert cm["STAMPEDE_WS_ORIGINS"] == "https://app.example.com,https://admin.example.com", cm
    assert cm["STAMPEDE_JWT_AUDIENCE"] == "stampede"
    assert cm["STAMPEDE_PRESENCE"] == "/topic/chat.*,/user/*/queue/status", cm
    assert cm["STAMPEDE_APP_PREFIXES"] == "/app/,/rpc/", cm
    assert cm["STAMPEDE_APP_HTTP"] == "/rpc/orders/*=http://orders:8000/rpc,/app/search=https://search.example.com/q"
    assert cm["STAMPEDE_CONNECT_HOOK"] == "http://auth:8000/hooks/connect"
    assert cm["STAMPEDE_METRICS_PUBLIC"] == "true"
    assert cm["STAMPEDE_ACL"] == "role:traders publish /queue/orders; * subscribe /topic/public.*"
    assert sm_token(docs) is None, "metrics-public: Prometheus needs no token"


def check_existing_secrets(docs: Docs, values: dict[str, Any]) -> None:
    """Each secret setting from the user's own Secret: a secretKeyRef, nothing in any chart object."""
    for setting, ref in values["existingSecrets"].items():
        env = "STAMPEDE_" + setting.upper().replace("-", "_")
        assert env_entry(docs, env)["valueFrom"]["secretKeyRef"] == ref, env
    secret = find(docs, "Secret")
    assert set(secret["data"]) == {"redis-url"}, f"the chart's Secret holds {sorted(secret['data'])}"


# The settings that name files: mounted from Secrets with extraVolumes / extraVolumeMounts.
FILE_SETTINGS = ["users-file", "jwt-public-key", "jwt-jwks", "tls-cert", "tls-key"]

# docs/deploy.md's "Authentication and TLS" example: every file from a Secret volume, every secret
# setting from an existing Secret, more settings from envFrom.
AUTH_TLS: dict[str, Any] = {
    "config": {
        "users-file": "/etc/stampede/auth/users",
        "jwt-jwks": "/etc/stampede/auth/jwks.json",
        "jwt-public-key": "/etc/stampede/jwt/public.pem",
        "tls-cert": "/etc/stampede/tls/tls.crt",
        "tls-key": "/etc/stampede/tls/tls.key",
        "jwt-audience": "stampede",
        "ws-origins": ["https://app.example.com"],
    },
    "existingSecrets": {
        "jwt-secret": {"name": "stampede-auth", "key": "jwt-secret"},
        "admin-token": {"name": "stampede-admin", "key": "token"},
    },
    "acl": ["role:traders publish,subscribe /topic/prices/*"],
    "extraVolumes": [
        {"name": "tls", "secret": {"secretName": "stampede-tls"}},
        {"name": "auth", "secret": {"secretName": "stampede-auth", "items": [{"key": "users", "path": "users"}, {"key": "jwks.json", "path": "jwks.json"}]}},
        {"name": "jwt", "configMap": {"name": "stampede-jwt-public-key"}},
    ],
    "extraVolumeMounts": [
        {"name": "tls", "mountPath": "/etc/stampede/tls", "readOnly": True},
        {"name": "auth", "mountPath": "/etc/stampede/auth", "readOnly": True},
        {"name": "jwt", "mountPath": "/etc/stampede/jwt", "readOnly": True},
    ],
    "envFrom": [{"secretRef": {"name": "stampede-settings"}}, {"configMapRef": {"name": "stampede-extra", "optional": True}, "prefix": "STAMPEDE_"}],
    "serviceMonitor": {"enabled": True},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/session-cookie-max-age": "3600"},
        "hosts": [{"host": "stomp.example.com", "paths": [{"path": "/ws", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "stomp-example-com-tls", "hosts": ["stomp.example.com"]}],
        "sockjsAffinity": {"cookieSameSite": "None"},
    },
    "networkPolicy": {
        "enabled": True,
        "clientFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "adminFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
}


def check_docs_example() -> None:
    """docs/deploy.md's auth-tls-values.yaml is the value set the checker renders (AUTH_TLS)."""
    text = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(r"^    # auth-tls-values\.yaml\n((?:    .*\n|\n)+)", text, re.M)
    assert match, "docs/deploy.md: no indented block starting with '# auth-tls-values.yaml'"
    documented = yaml.safe_load("\n".join(line[4:] for line in match.group(1).splitlines()))
    assert documented == AUTH_TLS, "docs/deploy.md's auth-tls-values.yaml differs from AUTH_TLS in check_chart.py"


def check_auth_tls(docs: Docs, values: dict[str, Any]) -> None:
    c = container(docs)
    pod = broker(docs)["spec"]["template"]["spec"]
    assert c["envFrom"][0] == {"configMapRef": {"name": settings_cm(docs)["metadata"]["name"]}}, c["envFrom"]
    assert c["envFrom"][1:] == values["envFrom"], c["envFrom"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in values["extraVolumes"]:
        assert volumes[v["name"]] == v, volumes
    assert "emptyDir" in volumes["tmp"], "the chart's /tmp volume is kept"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for m in values["extraVolumeMounts"]:
        assert mounts[m["mountPath"]] == m, mounts
    assert mounts["/tmp"]["name"] == "tmp"
    cm = settings_cm(docs)["data"]
    for setting in FILE_SETTINGS:
        path = cm["STAMPEDE_" + setting.upper().replace("-", "_")]
        assert path == values["config"][setting], (setting, path)
        under = [m for m in values["extraVolumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert under, f"{setting} {path} lies under no extraVolumeMounts mountPath"
    check_existing_secrets(docs, values)
    assert sm_token(docs) == values["existingSecrets"]["admin-token"], sm_token(docs)
    annotations = find(docs, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS", "the nodes speak TLS: so must the controller"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-samesite"] == "None", annotations
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-max-age"] == "3600", "the user's annotations are kept"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600", "and the defaults"
    np = find(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"], "egress is left open unless asked"
    clients, admin = np["spec"]["ingress"]
    assert [p["port"] for p in clients["ports"]] == ["ws", "stomp"]
    assert clients["from"] == values["networkPolicy"]["clientFrom"]
    assert admin == {"ports": [{"port": "admin", "protocol": "TCP"}], "from": values["networkPolicy"]["adminFrom"]}, admin


def check_network_policy_egress(docs: Docs, values: dict[str, Any]) -> None:
    broker_np = find(docs, "NetworkPolicy", "stampede")
    assert broker_np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    clients, admin = broker_np["spec"]["ingress"]
    assert "from" not in clients, "clientFrom []: clients from anywhere"
    assert admin["from"] == [{"podSelector": {}}], "default adminFrom: the release's namespace"
    dns, redis, *extra = broker_np["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns, dns
    redis_pod = find(docs, "StatefulSet", "-redis")["spec"]["template"]["metadata"]["labels"]
    to = redis["to"][0]["podSelector"]["matchLabels"]
    assert all(redis_pod.get(k) == v for k, v in to.items()) and to["app.kubernetes.io/component"] == "redis", to
    assert extra == values["networkPolicy"]["egress"]["extraRules"], extra
    redis_np = find(docs, "NetworkPolicy", "-redis")
    broker_pod = broker(docs)["spec"]["template"]["metadata"]["labels"]
    allowed = redis_np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert all(broker_pod.get(k) == v for k, v in allowed.items()) and allowed["app.kubernetes.io/component"] == "broker"


def check_service_monitor_elsewhere(docs: Docs, values: dict[str, Any]) -> None:
    sm = find(docs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm_token(docs) == values["serviceMonitor"]["bearerTokenSecret"], sm_token(docs)
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["relabelings"] == values["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == values["serviceMonitor"]["metricRelabelings"]


def check_no_sockjs_affinity(docs: Docs, values: dict[str, Any]) -> None:
    annotations = find(docs, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"] == "mine", "an annotation given wins"
    assert not [k for k in annotations if k.endswith("/affinity") or "affinity-mode" in k], annotations
    assert find(docs, "Service", "stampede")["spec"]["sessionAffinity"] == "ClientIP"


def check_monitoring_files(docs: Docs, values: dict[str, Any]) -> None:
    rule = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"], "the PrometheusRule differs from the rules file"
    assert rule["metadata"]["namespace"] == "monitoring" and rule["metadata"]["labels"]["release"] == "prometheus"
    cm = find(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Messaging"}
    assert json.loads(cm["data"]["stampede.json"]) == json.loads(DASHBOARD_FILE.read_text()), "the dashboard ConfigMap differs from the file"


BASE: dict[str, Any] = {}

# (name, values, check, minimum Kubernetes version of the schemas to validate against)
CASES: list[tuple[str, dict[str, Any], Callable[[Docs, dict[str, Any]], None], str]] = [
    ("defaults", {}, check_defaults, "1.25.0"),
    (
        "hpa + servicemonitor + ingress",
        {
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 20, "targetMemoryUtilizationPercentage": 80},
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "adminService": {"prometheusAnnotations": True},
            "config": {"admin-token": ADMIN_TOKEN},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "stomp.example.com", "paths": [{"path": "/ws", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "stampede-tls", "hosts": ["stomp.example.com"]}],
            },
        },
        check_everything_on,
        "1.25.0",
    ),
    (
        "in-chart redis",
        {"redis": {"internal": {"enabled": True, "persistence": {"size": "2Gi"}}}, "replicaCount": 2},
        check_internal_redis,
        "1.25.0",
    ),
    (
        "custom resources, settings, existing secret",
        {
            "image": {"repository": "registry.example.com/stampede", "tag": "1.2.3", "pullPolicy": "Always"},
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
            "redis": {"existingSecret": "redis-credentials", "existingSecretKey": "url"},
            "config": {"max-connections": 50000, "slow-consumer": "drop", "log-format": "text"},
            "history": ["/topic/prices/*=1000,10m", "/topic/chat.*=50"],
            "queues": ["/queue/*-user*=10m,auto-delete", "/queue/reply.*=auto-delete"],
            "stomp": {"enabled": False},
            "drain": {"periodSeconds": 60, "preStopSleepSeconds": 5, "marginSeconds": 10, "useSleepAction": True},
            "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"]},
            "podDisruptionBudget": {"enabled": False},
            "serviceAccount": {"create": False},
            "extraEnv": [{"name": "RUST_LOG", "value": "info,stampede=debug"}],
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "brokers", "effect": "NoSchedule"}],
        },
        check_custom,
        # The preStop sleep action is Kubernetes 1.30+.
        "1.30.0",
    ),
    ("single in-memory node", {"redis": {"url": ""}, "replicaCount": 1}, check_single_memory_node, "1.25.0"),
    (
        "secret settings under config",
        {
            "config": {
                "jwt-secret": JWT_SECRET,
                "admin-token": ADMIN_TOKEN,
                "app-backend-secret": BACKEND_SECRET,
                "metrics-public": True,
                "jwt-audience": "stampede",
                "ws-origins": ["https://app.example.com", "https://admin.example.com"],
                "presence": ["/topic/chat.*", "/user/*/queue/status"],
                "app-prefixes": ["/app/", "/rpc/"],
                "app-http": ["/rpc/orders/*=http://orders:8000/rpc", "/app/search=https://search.example.com/q"],
                "connect-hook": "http://auth:8000/hooks/connect",
                "session-events": "/app/session-events",
            },
            "acl": ["role:traders publish /queue/orders", "* subscribe /topic/public.*"],
            "serviceMonitor": {"enabled": True},
        },
        check_secret_settings_in_config,
        "1.25.0",
    ),
    (
        "secret settings from existing Secrets",
        {
            "existingSecrets": {
                "jwt-secret": {"name": "stampede-jwt", "key": "hs256"},
                "admin-token": {"name": "stampede-admin", "key": "token"},
                "app-backend-secret": {"name": "stampede-apps", "key": "backend"},
            },
        },
        check_existing_secrets,
        "1.25.0",
    ),
    ("auth and TLS from Secrets (docs/deploy.md)", AUTH_TLS, check_auth_tls, "1.25.0"),
    (
        "servicemonitor in another namespace",
        {
            "config": {"admin-token": ADMIN_TOKEN},
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "bearerTokenSecret": {"name": "stampede-metrics-token", "key": "token"},
                "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
                "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "stampede_frames_.*", "action": "drop"}],
            },
        },
        check_service_monitor_elsewhere,
        "1.25.0",
    ),
    (
        "ingress without sockjs affinity, service ClientIP affinity",
        {
            "ingress": {
                "enabled": True,
                "sockjsAffinity": {"enabled": False},
                "annotations": {"nginx.ingress.kubernetes.io/session-cookie-name": "mine"},
            },
            "service": {"sessionAffinity": "ClientIP"},
        },
        check_no_sockjs_affinity,
        "1.25.0",
    ),
    (
        "alert rules and Grafana dashboard",
        {
            "prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prometheus"}},
            "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Messaging"}},
        },
        check_monitoring_files,
        "1.25.0",
    ),
    (
        "network policies, egress restricted, in-chart redis",
        {
            "redis": {"internal": {"enabled": True}},
            "networkPolicy": {
                "enabled": True,
                "egress": {
                    "enabled": True,
                    "extraRules": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443, "protocol": "TCP"}]}],
                },
            },
        },
        check_network_policy_egress,
        "1.25.0",
    ),
]

# Value sets the chart must refuse: (name, values, a piece of the expected message).
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("no redis with 3 replicas", {"redis": {"url": ""}}, "need Redis"),
    ("no redis with autoscaling", {"redis": {"url": ""}, "replicaCount": 1, "autoscaling": {"enabled": True}}, "need Redis"),
    ("redis-url in config", {"config": {"redis-url": "redis://x:6379"}}, "redis-url"),
    ("replicaCount not a number", {"replicaCount": "three"}, "replicaCount"),
    ("unknown top-level value", {"replicas": 3}, "replicas"),
    ("bad redis scheme", {"redis": {"url": "http://redis:6379"}}, "url"),
    ("bad history rule", {"history": ["/queue/jobs=10"]}, "history"),
    ("bad queue rule", {"queues": ["/topic/x=10m"]}, "queues"),
    ("both PDB bounds", {"podDisruptionBudget": {"minAvailable": 2}}, "not both"),
    ("misspelt config key", {"config": {"max-conections": 100}}, "max-conections"),
    ("config key that is a chart value", {"config": {"drain-period": "10s"}}, "drain.periodSeconds"),
    ("bad enum setting", {"config": {"slow-consumer": "slow"}}, "slow-consumer"),
    ("duration without a unit", {"config": {"connect-timeout": 10}}, "connect-timeout"),
    ("bad size", {"config": {"max-frame-size": "2 megabytes"}}, "max-frame-size"),
    ("bad acl rule", {"acl": ["traders publish"]}, "acl"),
    ("bad presence pattern", {"config": {"presence": ["chat.*"]}}, "presence"),
    ("app prefix without its slashes", {"config": {"app-prefixes": "app"}}, "app-prefixes"),
    ("app-http route without a URL", {"config": {"app-http": ["/app/rpc/*"]}}, "app-http"),
    ("hook that is no http URL", {"config": {"connect-hook": "auth:8000/hook"}}, "connect-hook"),
    ("short backend secret", {"config": {"app-backend-secret": "short"}}, "app-backend-secret"),
    ("mount of no volume", {"extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}]}, "certs"),
    ("extra volume named tmp", {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, "extraVolumes"),
    ("envFrom without a source", {"envFrom": [{"prefix": "X_"}]}, "envFrom"),
    (
        "SameSite=None cookie without TLS",
        {"ingress": {"enabled": True, "sockjsAffinity": {"cookieSameSite": "None"}}},
        "ingress.tls",
    ),
    (
        "egress restricted, no way to Redis",
        {"networkPolicy": {"enabled": True, "egress": {"enabled": True}}},
        "extraRules",
    ),
    (
        "servicemonitor elsewhere without its token",
        {"config": {"admin-token": ADMIN_TOKEN}, "serviceMonitor": {"enabled": True, "namespace": "monitoring"}},
        "bearerTokenSecret",
    ),
    (
        "secret setting twice",
        {"config": {"admin-token": ADMIN_TOKEN}, "existingSecrets": {"admin-token": {"name": "mine"}}},
        "not both",
    ),
]

# The settings whose values are secrets: never in the ConfigMap.
SECRET_SETTINGS = ["jwt-secret", "admin-token", "app-backend-secret"]


def render(chart: Any, values: dict[str, Any]) -> tuple[Docs, dict[str, str]]:
    chart.validate_schema(values)
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: Docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            assert text.strip(), "NOTES.txt rendered empty"
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict) and "kind" in doc, f"{path}: not a Kubernetes object"
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs, rendered


def validate_schemas(docs: Docs, min_version: str, notes: list[str]) -> None:
    def key(v: str) -> tuple[int, ...]:
        return tuple(map(int, v.split(".")))

    versions = sorted({min_version, *[v for v in KUBE_VERSIONS if key(v) >= key(min_version)]}, key=key)
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        if group in CRD_GROUPS:
            notes.append(f"{name}: custom resource ({doc['apiVersion']}), no schema: checked by hand only")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                raise AssertionError(f"{name} invalid for Kubernetes {version} at {path}: {e.message}") from None


def lint(values: dict[str, Any]) -> list[str]:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    problems = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += list(report.get("errors") or [])
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print the rendered manifests")
    args = parser.parse_args()

    failures: list[str] = []
    notes: list[str] = []
    print(f"chart {CHART} (Helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)})")
    promtool = "with promtool" if shutil.which("promtool") else "promtool not installed: structure only"
    for name, check_fn in [
        ("schema lists every node setting", check_schema_lists_every_setting),
        ("docs/deploy.md's auth-tls-values.yaml is the checked value set", check_docs_example),
        (f"alert rules ({promtool})", check_rules_file),
        (f"Grafana dashboard ({promtool})", check_dashboard_file),
    ]:
        try:
            check_fn()
            print(f"ok    {name}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {e}")
            print(f"FAIL  {name}: {e}")
    with helm.Chart.load(str(CHART)) as chart:
        defaults = chart.values
        for name, values, check, min_version in CASES:
            try:
                problems = lint(values)
                assert not problems, "helm lint --strict: " + "; ".join(problems)
                docs, rendered = render(chart, values)
                if args.verbose:
                    for path, text in sorted(rendered.items()):
                        print(f"--- {path}\n{text}")
                validate_schemas(docs, min_version, notes)
                merged = chart.merge_values(copy.deepcopy(values)) if values else copy.deepcopy(defaults)
                common_checks(docs, merged)
                check(docs, values)
                print(f"ok    {name}: {len(docs)} objects ({', '.join(kinds(docs))})")
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next case runs
                failures.append(f"{name}: {e}")
                print(f"FAIL  {name}: {e}")
                if args.verbose:
                    traceback.print_exc()
        for name, values, expected in REFUSED:
            try:
                render(chart, values)
            except Exception as e:  # noqa: BLE001
                if expected.lower() in str(e).lower():
                    print(f"ok    refused: {name}")
                else:
                    failures.append(f"refused {name}: failed, but not with {expected!r}: {e}")
                    print(f"FAIL  refused {name}: wrong message: {e}")
                continue
            failures.append(f"refused {name}: the chart rendered it")
            print(f"FAIL  refused {name}: the chart rendered it")

    for note in sorted(set(notes)):
        print(f"note  {note}")
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    print(f"\nall {len(CASES)} value sets and {len(REFUSED)} refusals passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
