"""deploy/kubernetes rendered by kustomize (base and both overlays) and validated offline.

Built-in kinds are validated against the Kubernetes 1.30 OpenAPI schemas that the kubernetes-validate
package ships, in strict mode (unknown fields are errors). The Prometheus operator's ServiceMonitor and
PrometheusRule are custom resources whose schemas it does not have: they are checked structurally here
(apiVersion, kind, the fields the operator requires, and that they select what they should).
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from lifecycle.settings import SERVICE_SECRETS, Settings, recipient_facing_problems

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"
TARGETS = ["base", "overlays/small", "overlays/large"]
KUBERNETES_VERSION = "1.30.0"
SERVICES = {"ingest": 8080, "stager": 8081, "dispatcher": 8082, "bounces": 2526}
# where Prometheus scrapes each service: ingest and bounces on their own metrics port, never their public one
METRICS_PORTS = {"ingest": 8083, "stager": 8081, "dispatcher": 8082, "bounces": 8084}
# the Kafka consumer groups: no more pods than partitions
CONSUMERS = ("stager", "dispatcher")
SECRET_SETTINGS = {"DATABASE_URL", "API_KEYS", "ADMIN_KEYS", "SIGNING_SECRET", "SIGNING_KEYS", "SMTP_PASSWORD",
                   "SHOPIFY_SECRETS"}
SECRET_NAME = "lifecycle-secrets"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

Resource = dict[str, Any]


@cache
def _render(kustomize: Path, target: str) -> tuple[Resource, ...]:
    result = subprocess.run([str(kustomize), "build", str(KUBERNETES / target)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, f"kustomize build {target}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest, kustomize: Path) -> tuple[str, tuple[Resource, ...]]:
    target: str = request.param
    return target, _render(kustomize, target)


def _of(resources: tuple[Resource, ...], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def _component(resource: Resource) -> str:
    component: str = resource["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def _config(resources: tuple[Resource, ...]) -> Resource:
    [config] = [r for r in resources
                if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("lifecycle-config")]
    return config


def _pod_spec(resource: Resource) -> Resource:
    spec: Resource = resource["spec"]["template"]["spec"]
    return spec


def test_kustomize_renders_every_kind(rendered: tuple[str, tuple[Resource, ...]]) -> None:
    _, resources = rendered
    kinds = sorted({r["kind"] for r in resources})
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "PodDisruptionBudget",
                            "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"])
    assert {_component(d) for d in _of(resources, "Deployment").values()} == set(SERVICES)
    assert not [r for r in resources if r["kind"] == "Secret"], "secret values are never shipped"
    assert not [r for r in resources if r["kind"] in ("StatefulSet", "PersistentVolumeClaim")], \
        "Kafka and PostgreSQL are external"


def test_every_builtin_resource_is_valid_for_kubernetes(rendered: tuple[str, tuple[Resource, ...]]) -> None:
    target, resources = rendered
    problems = []
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message}")
    assert problems == [], f"{target}:\n" + "\n".join(problems)


def test_the_validator_does_reject_a_bad_resource() -> None:
    """So that a validator accepting anything cannot pass the test above."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x", "imagee": "y"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_operator_resources_are_well_formed(rendered: tuple[str, tuple[Resource, ...]]) -> None:
    _, resources = rendered
    [monitor] = _of(resources, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels", "podTargetLabels"}
    services = _of(resources, "Service")
    selected = [s for s in services.values()
                if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert sorted(_component(s) for s in selected) == sorted(SERVICES)
    # the job label of the scraped series is each Service's component: the names the alert rules use
    assert all(spec["jobLabel"] in s["metadata"]["labels"] for s in selected)
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        assert endpoint["path"] == "/metrics"
        for service in selected:
            [scraped] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
            assert scraped["port"] == METRICS_PORTS[_component(service)], _component(service)

    [rule] = _of(resources, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert isinstance(alert["expr"], str) and alert["labels"]["severity"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_every_deployment_is_probed_drained_bounded_and_unprivileged(
        rendered: tuple[str, tuple[Resource, ...]]) -> None:
    target, resources = rendered
    config = _config(resources)["data"]
    images = set()
    for name, deployment in _of(resources, "Deployment").items():
        service = _component(deployment)
        pod = _pod_spec(deployment)
        [container] = pod["containers"]
        images.add(container["image"])
        assert container["args"] == [service]
        port = int(config[f"LIFECYCLE_{service.upper()}_PORT"])
        assert port == SERVICES[service]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if service == "ingest":
            assert ports == {"http": port, "metrics": int(config["LIFECYCLE_INGEST_METRICS_PORT"])}
            assert ports["metrics"] == METRICS_PORTS["ingest"]
        elif service == "bounces":  # SMTP, and probes and metrics on the port named http
            assert ports == {"smtp": port, "http": int(config["LIFECYCLE_BOUNCES_METRICS_PORT"])}
            assert ports["http"] == METRICS_PORTS["bounces"]
        else:
            assert ports == {"http": port}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= (60 if service == "dispatcher" else 15), f"{target} {name}: {grace} s to drain"
        assert int(container["lifecycle"]["preStop"]["exec"]["command"][1]) < grace
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False
        assert "replicas" not in deployment["spec"], f"{name}: the HorizontalPodAutoscaler owns replicas"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            deployment["spec"]["template"]["metadata"]["labels"].items()
    [job] = _of(resources, "Job").values()
    images.add(job["spec"]["template"]["spec"]["containers"][0]["image"])
    assert len(images) == 1, f"one image for every service and the migration: {images}"
    for kubernetes_service in _of(resources, "Service").values():
        component = _component(kubernetes_service)
        assert sorted(p["port"] for p in kubernetes_service["spec"]["ports"]) == sorted(
            {SERVICES[component], METRICS_PORTS[component]})
        assert kubernetes_service["spec"]["selector"]["app.kubernetes.io/component"] == component


def test_settings_come_from_the_config_map_and_secrets_from_the_operators_secret(
        rendered: tuple[str, tuple[Resource, ...]]) -> None:
    _, resources = rendered
    config = _config(resources)
    data: dict[str, str] = config["data"]
    settings = {key.removeprefix("LIFECYCLE_").lower(): value for key, value in data.items()
                if key != "LIFECYCLE_SECRETS_DIR"}
    assert all(key.startswith("LIFECYCLE_") for key in data)
    assert sorted(set(settings) - set(Settings.model_fields)) == [], "ConfigMap keys that are no setting"
    configured = Settings.model_validate(settings)  # every value is one the services accept
    # production: an https public URL (List-Unsubscribe) and the postal address of the footers, or no service starts
    assert configured.public_url.startswith("https://") and configured.sender_address
    assert all(recipient_facing_problems(configured, service) == [] for service in SERVICE_SECRETS)
    assert not {f"LIFECYCLE_{s}" for s in SECRET_SETTINGS} & set(data), "secrets do not go in the ConfigMap"
    assert data["LIFECYCLE_INGEST_HOST"] == "0.0.0.0"
    assert data["LIFECYCLE_CLOCK"] == "system"
    assert data["LIFECYCLE_ENVIRONMENT"] == "production", "production refuses the development secrets"

    wanted = {
        "ingest": {"lifecycle_database_url", "lifecycle_api_keys", "lifecycle_admin_keys", "lifecycle_signing_secret",
                   "lifecycle_signing_keys", "lifecycle_shopify_secrets"},
        "stager": {"lifecycle_database_url", "lifecycle_signing_secret", "lifecycle_signing_keys"},
        "dispatcher": {"lifecycle_database_url", "lifecycle_signing_secret", "lifecycle_signing_keys",
                       "lifecycle_smtp_password"},
        "bounces": {"lifecycle_database_url", "lifecycle_signing_secret", "lifecycle_signing_keys"},
        "migrate": {"lifecycle_database_url"},
    }
    workloads = [*_of(resources, "Deployment").values(), *_of(resources, "Job").values()]
    for workload in workloads:
        pod = _pod_spec(workload)
        [container] = pod["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        for variable in container.get("env", []):
            assert variable["name"].removeprefix("LIFECYCLE_") not in SECRET_SETTINGS or "value" not in variable
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
        assert mount["mountPath"] == data["LIFECYCLE_SECRETS_DIR"] and mount["readOnly"] is True
        [volume] = [v for v in pod["volumes"] if v["name"] == "secrets"]
        sources = [s["secret"] for s in volume["projected"]["sources"]]
        assert {s["name"] for s in sources} == {SECRET_NAME}
        keys = {item["key"] for s in sources for item in s["items"]}
        assert all(item["key"] == item["path"] for s in sources for item in s["items"])
        assert keys == wanted[_component(workload)], _component(workload)
        optional = {item["key"] for s in sources if s.get("optional") for item in s["items"]}
        # the SMTP password only for SMTP AUTH, the signing keys only once keys are rotated, the Shopify
        # secrets only for Shopify's webhooks
        assert optional <= {"lifecycle_smtp_password", "lifecycle_signing_keys", "lifecycle_shopify_secrets"}, \
            "a required secret must not be optional"


def test_consumers_scale_up_to_the_partition_count_and_ingest_on_cpu(
        rendered: tuple[str, tuple[Resource, ...]]) -> None:
    target, resources = rendered
    partitions = int(_config(resources)["data"]["LIFECYCLE_TOPIC_PARTITIONS"])
    deployments = _of(resources, "Deployment")
    autoscalers = {_component(h): h for h in _of(resources, "HorizontalPodAutoscaler").values()}
    assert set(autoscalers) == set(SERVICES)
    for service, hpa in autoscalers.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment" and spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
        if service in CONSUMERS:
            assert spec["maxReplicas"] <= partitions, \
                f"{target}: {service} scales to {spec['maxReplicas']} pods for {partitions} partitions"
    budgets = _of(resources, "PodDisruptionBudget").values()
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()], \
            f"no PodDisruptionBudget for {deployment['metadata']['name']}"


def test_the_migration_phase_applies_alone_with_what_the_job_needs(rendered: tuple[str, tuple[Resource, ...]]) -> None:
    """`kubectl apply -l lifecycle/phase=migrate` (docs/operations.md) must bring the Job and what it uses."""
    _, resources = rendered
    phase = [r for r in resources if r["metadata"].get("labels", {}).get("lifecycle/phase") == "migrate"]
    [job] = [r for r in phase if r["kind"] == "Job"]
    pod = _pod_spec(job)
    assert pod["containers"][0]["args"] == ["migrate"] and pod["restartPolicy"] == "Never"
    names = {(r["kind"], r["metadata"]["name"]) for r in phase}
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    assert ("ConfigMap", pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]) in names
    assert {r["kind"] for r in phase} == {"Job", "ServiceAccount", "ConfigMap"}


def test_overlays_size_the_services_and_live_in_their_namespace(kustomize: Path) -> None:
    small, large = (_render(kustomize, t) for t in ("overlays/small", "overlays/large"))
    for resources in (small, large):
        assert {r["metadata"].get("namespace") for r in resources} == {"lifecycle"}

    def max_replicas(resources: tuple[Resource, ...]) -> dict[str, int]:
        return {_component(h): h["spec"]["maxReplicas"] for h in _of(resources, "HorizontalPodAutoscaler").values()}

    small_max, large_max = max_replicas(small), max_replicas(large)
    assert all(small_max[s] < large_max[s] for s in SERVICES)
    assert int(_config(large)["data"]["LIFECYCLE_TOPIC_PARTITIONS"]) > int(
        _config(small)["data"]["LIFECYCLE_TOPIC_PARTITIONS"])
