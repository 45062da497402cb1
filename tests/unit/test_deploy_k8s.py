"""deploy/k8s/: every manifest validates against the Kubernetes API schemas (kubernetes-
validate's bundled, offline JSON schemas, strict: an unknown field fails) and the custom
resources against the CRD schemas kept in deploy/schemas/ (strict the same way, as kubectl's
server-side field validation is); then what the schemas cannot see: secrets only by
reference, env names the code reads, probes on the routes the code serves, KEDA on the
workers' own consumer group and topic."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.kafka.topics import load_topic_specs
from pipeline.providers.deployments import load_deployments
from pipeline.catalog import load_catalog
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = REPO / "deploy" / "schemas"
PROD_OVERLAY = REPO / "deploy" / "topics.prod.yaml"
# Oldest and newest Kubernetes the manifests are checked against (KEDA 2.20 and Strimzi
# 1.x support 1.32+ at the time of writing).
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): "strimzi-kafkatopic-v1.json",
    ("kafka.strimzi.io/v1", "Kafka"): "strimzi-kafka-v1.json",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "strimzi-kafkanodepool-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
}
NOT_RESOURCES = {"kustomization.yaml"}     # kustomize's own file, checked below
SECRET_WORDS = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|WEBHOOK", re.I)


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_RESOURCES:
            continue
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield f"{path.name}#{index}:{doc['kind']}/{doc['metadata']['name']}", doc


MANIFESTS = dict(manifests())


def of_kind(*kinds: str) -> dict[str, dict[str, Any]]:
    return {k: d for k, d in MANIFESTS.items() if d["kind"] in kinds}


def strict(schema: Any) -> Any:
    """A CRD's structural schema as kubectl's strict field validation applies it: an object
    that lists its properties (and does not preserve unknown fields) takes no others."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    schema = strict(json.loads((SCHEMAS / CRD_SCHEMAS[api_version, kind]).read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict[str, Any], version: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(doc)
        # the CRD schema says only "metadata: object": hold it to ObjectMeta's rules
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_is_valid(name: str, version: str) -> None:
    validate(MANIFESTS[name], version)


def test_every_kind_has_a_schema_here() -> None:
    """No manifest slips past validation for want of a schema."""
    builtin = {(d["apiVersion"], d["kind"]) for d in MANIFESTS.values()} - set(CRD_SCHEMAS)
    for api_version, kind in sorted(builtin):
        doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError:
            pass      # found the schema; a bare object may well be invalid


@pytest.mark.parametrize("name, mutate", [
    ("worker.yaml#0:Deployment/llmpipe-worker",
     lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={})),
    ("worker.yaml#0:Deployment/llmpipe-worker",
     lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].update(cpu=[1])),
    ("keda.yaml#0:ScaledObject/llmpipe-worker", lambda d: d["spec"].update(maxReplicas=3)),
    ("keda.yaml#0:ScaledObject/llmpipe-worker",
     lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=200)),
    ("topics.yaml#0:KafkaTopic/llm.requests", lambda d: d["spec"].update(partitions=0)),
    ("topics.yaml#0:KafkaTopic/llm.requests", lambda d: d["spec"].update(replica=3)),
    ("kafka.yaml#1:Kafka/llmpipe", lambda d: d["spec"]["kafka"].update(listener=[])),
])
def test_validation_catches_mistakes(name: str, mutate) -> None:
    """The validators are not vacuous: a typo or a wrong type fails."""
    doc = copy.deepcopy(MANIFESTS[name])
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, KUBERNETES_VERSIONS[-1])


def test_kustomization_lists_every_namespaced_app_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    own_namespace = {"kafka.yaml", "topics.yaml"}      # applied into the Kafka cluster's namespace
    files = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert listed == files - own_namespace
    assert all(d["metadata"].get("namespace") == "kafka"
               for k, d in MANIFESTS.items() if k.split("#")[0] in own_namespace)
    assert all("namespace" not in d["metadata"]
               for k, d in MANIFESTS.items() if k.split("#")[0] in listed)


# --- what the schemas cannot check ---------------------------------------------------------

def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in of_kind("Deployment", "StatefulSet").items():
        for c in doc["spec"]["template"]["spec"]["containers"]:
            yield f"{name}/{c['name']}", c


def llmpipe_containers() -> dict[str, dict[str, Any]]:
    return {n: c for n, c in containers() if c["image"] == "llmpipe"}


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def config_map(name: str) -> dict[str, str]:
    [doc] = [d for d in of_kind("ConfigMap").values() if d["metadata"]["name"] == name]
    return doc["data"]


def names_the_code_reads() -> set[str]:
    """Every LLMPIPE_* variable named in pipeline/ (code and config)."""
    found: set[str] = set()
    for path in (REPO / "pipeline").rglob("*"):
        if path.suffix in (".py", ".yaml"):
            found |= set(re.findall(r"LLMPIPE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return found


def test_secrets_are_referenced_never_inlined() -> None:
    assert of_kind("Secret") == {}, "Secrets are created by the operator (deploy/README.md), not committed"
    for name, data in ((d["metadata"]["name"], d["data"]) for d in of_kind("ConfigMap").values()):
        assert not [k for k in data if SECRET_WORDS.search(k)], name
    for name, c in containers():
        for var in c.get("env", []):
            if SECRET_WORDS.search(var["name"]) and not var["name"].endswith("_DSN"):
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{name}: {var['name']}"
        dsn = env(c).get("LLMPIPE_CLICKHOUSE_DSN")
        if dsn:     # the password in it comes from a Secret-backed variable, expanded by the kubelet
            assert "$(CLICKHOUSE_PASSWORD)" in dsn["value"]
            assert "secretKeyRef" in env(c)["CLICKHOUSE_PASSWORD"]["valueFrom"]


def test_front_workers_get_every_provider_key_from_the_secret() -> None:
    key_envs = {d.api_key_env for d in load_deployments(load_catalog()).by_id.values() if d.api_key_env}
    assert key_envs
    [worker] = [c for n, c in llmpipe_containers().items() if "llmpipe-worker" in n]
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env(worker).items()
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert key_envs <= set(refs)
    assert {refs[k]["name"] for k in key_envs} == {"llmpipe-provider-keys"}
    assert all(not refs[k].get("optional") for k in key_envs)   # the worker refuses to start without


def test_env_names_are_ones_the_code_reads() -> None:
    known = names_the_code_reads()
    used = set(config_map("llmpipe-settings"))
    for _, c in llmpipe_containers().items():
        used |= {n for n in env(c) if n.startswith("LLMPIPE_")}
    assert used - known == set()
    assert "LLMPIPE_AGENTS" in known and "LLMPIPE_CLICKHOUSE_DSN" in known


def test_workers_split_as_the_code_expects() -> None:
    settings = Settings()
    web_port = int(config_map("llmpipe-settings")["LLMPIPE_WEB_PORT"])
    agents, groups = {}, {}
    for name, c in llmpipe_containers().items():
        if c["command"][:2] != ["llmpipe", "worker"]:
            continue
        agents[name] = set(env(c)["LLMPIPE_AGENTS"]["value"].split(","))
        groups[name] = env(c)["LLMPIPE_APP_ID"]["value"]
        assert {p["containerPort"] for p in c["ports"]} == {web_port}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] == "/llmpipe/health/", (name, probe)
        assert c["resources"]["requests"] and c["resources"]["limits"]
    assert sorted(map(sorted, agents.values())) == [["batcher", "dispatch", "intake"], ["ledger", "monitor"]]
    assert len(set(groups.values())) == 2 and settings.app_id in groups.values()
    assert config_map("llmpipe-settings")["LLMPIPE_WEB_HOST"] == "0.0.0.0"


def test_gateway_probes_and_port_match_its_command() -> None:
    [(name, c)] = [(n, c) for n, c in llmpipe_containers().items() if c["command"][1] == "gateway"]
    port = int(c["command"][c["command"].index("--port") + 1])
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert env(c)["LLMPIPE_GATEWAY_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert not [n for n in env(c) if n.endswith("_API_KEY")], "the gateway never calls a provider"


def test_every_llmpipe_pod_is_scraped_on_its_metrics_port() -> None:
    for name, doc in of_kind("Deployment", "StatefulSet").items():
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        ports = {p["containerPort"] for c in doc["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}
        assert int(annotations["prometheus.io/port"]) in ports, name
        assert annotations["prometheus.io/path"] == "/metrics"


def test_keda_scales_the_front_workers_on_their_own_lag() -> None:
    [scaled] = of_kind("ScaledObject").values()
    target = scaled["spec"]["scaleTargetRef"]
    [worker] = [d for d in of_kind("Deployment").values() if d["metadata"]["name"] == target["name"]]
    assert "replicas" not in worker["spec"], "the HPA owns the replica count"
    [container] = worker["spec"]["template"]["spec"]["containers"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env(container)["LLMPIPE_APP_ID"]["value"]
    assert meta["topic"] == "llm.requests"
    assert meta["bootstrapServers"] == config_map("llmpipe-settings")["LLMPIPE_KAFKA_BOOTSTRAP"]
    # the kafka scaler's metadata names (kedacore/keda v2.20.2 pkg/scalers/kafka_scaler.go)
    assert set(meta) <= {"bootstrapServers", "consumerGroup", "topic", "partitionLimitation",
                         "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
                         "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset",
                         "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
                         "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion"}
    specs = {s.name: s for s in load_topic_specs(overlay=PROD_OVERLAY)}
    front = min(specs["llm.requests"].partitions, specs["llm.routed"].partitions)
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= front


def test_kafka_cluster_matches_what_the_topics_and_config_expect() -> None:
    [kafka] = of_kind("Kafka").values()
    [pool] = of_kind("KafkaNodePool").values()
    bootstrap = config_map("llmpipe-settings")["LLMPIPE_KAFKA_BOOTSTRAP"]
    name, namespace = kafka["metadata"]["name"], kafka["metadata"]["namespace"]
    plain = [l for l in kafka["spec"]["kafka"]["listeners"] if not l["tls"]]
    assert bootstrap == f"{name}-kafka-bootstrap.{namespace}.svc:{plain[0]['port']}"
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
    for topic in of_kind("KafkaTopic").values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == name
        assert topic["spec"]["replicas"] <= pool["spec"]["replicas"]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False


def test_the_ledger_fetches_as_the_split_stack_does() -> None:
    """deploy/'s ledger and DevStack.start_split's (LEDGER_FETCH) wait alike; front
    workers keep the 1-byte minimum of the request path."""
    from pipeline.dev.stack import LEDGER_FETCH
    for name, c in llmpipe_containers().items():
        if c["command"][:2] != ["llmpipe", "worker"]:
            continue
        found = env(c)
        if "ledger" in found["LLMPIPE_AGENTS"]["value"]:
            assert int(found["LLMPIPE_FETCH_MIN_BYTES"]["value"]) == LEDGER_FETCH["fetch_min_bytes"]
            assert int(found["LLMPIPE_FETCH_MAX_WAIT_MS"]["value"]) == LEDGER_FETCH["fetch_max_wait_ms"]
        else:
            assert "LLMPIPE_FETCH_MIN_BYTES" not in found, name
