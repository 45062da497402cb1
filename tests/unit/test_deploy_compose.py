"""deploy/docker-compose.yml against the compose-spec JSON schema kept in deploy/schemas/
(the schema `docker compose config` validates with), and against the code: commands that
exist, env names the code reads, provider keys for the workers that call providers, files
that the mounts and the build name."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.catalog import load_catalog
from pipeline.cli import build_parser
from pipeline.providers.deployments import load_deployments
from tests.unit.test_deploy_k8s import names_the_code_reads

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())     # resolves the <<: merge keys as compose does


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_compose_spec() -> None:
    validator().validate(compose())


@pytest.mark.parametrize("mutate", [
    lambda c: c["services"]["worker"].update(enviroment={}),
    lambda c: c["services"]["worker"].update(depends_on="kafka"),
    lambda c: c["services"]["clickhouse"]["ulimits"].update(nofile={"soft": 1024}),
])
def test_schema_catches_mistakes(mutate) -> None:
    doc = copy.deepcopy(compose())
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(doc)


def llmpipe_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if "build" in s}


def test_pipeline_services_run_real_commands_with_real_settings() -> None:
    parser, known = build_parser(), names_the_code_reads()
    services = llmpipe_services()
    assert set(services) == {"worker", "ledger", "gateway"}
    for name, service in services.items():
        command = service["command"]
        assert command[0] == "llmpipe"
        parser.parse_args(command[1:])                  # exits (fails) on an unknown option
        env = service["environment"]
        assert {k for k in env if k.startswith("LLMPIPE_")} - known == set(), name
        assert env["LLMPIPE_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert (REPO / service["build"]["dockerfile"]).exists()
        assert (DEPLOY / service["build"]["context"]).resolve() == REPO


def test_provider_keys_only_where_providers_are_called() -> None:
    key_envs = {d.api_key_env for d in load_deployments(load_catalog()).by_id.values() if d.api_key_env}
    services = llmpipe_services()
    assert key_envs <= set(services["worker"]["environment"])
    for name in ("ledger", "gateway"):
        assert not key_envs & set(services[name]["environment"]), name
    for name, service in services.items():
        for key, value in service["environment"].items():
            if key in key_envs or "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}: {key} must come from the environment"
    assert "${CLICKHOUSE_PASSWORD" in services["ledger"]["environment"]["LLMPIPE_CLICKHOUSE_DSN"]
    assert services["worker"]["environment"]["LLMPIPE_APP_ID"] != \
        services["ledger"]["environment"]["LLMPIPE_APP_ID"]


def test_mounted_files_exist_and_prometheus_scrapes_the_services() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = set()
    for job in prometheus["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{n}:{sd['port']}" for n in sd["names"]}
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
    services = llmpipe_services()
    expected = {f"{n}:{s['environment']['LLMPIPE_WEB_PORT']}" for n, s in services.items()
                if s["command"][1] == "worker"}
    gateway = services["gateway"]["command"]
    expected.add(f"gateway:{gateway[gateway.index('--port') + 1]}")
    assert targets == expected


def test_the_ledger_fetches_as_the_split_stack_does() -> None:
    from pipeline.dev.stack import LEDGER_FETCH
    services = llmpipe_services()
    ledger = services["ledger"]["environment"]
    assert int(ledger["LLMPIPE_FETCH_MIN_BYTES"]) == LEDGER_FETCH["fetch_min_bytes"]
    assert int(ledger["LLMPIPE_FETCH_MAX_WAIT_MS"]) == LEDGER_FETCH["fetch_max_wait_ms"]
    assert "LLMPIPE_FETCH_MIN_BYTES" not in services["worker"]["environment"]
