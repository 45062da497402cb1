"""Schema ids for the Confluent wire format: a local registry built from schemas/avro,
or a Confluent-compatible Schema Registry over its REST API when one is configured."""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

import fastavro
import httpx

from pipeline.events.schemas import SchemaVersion, load_schemas


class UnknownSchema(LookupError):
    """A schema id that no registry knows."""


class Registry(Protocol):
    def writer_id(self, name: str, subject: str) -> int: ...
    def reader(self, name: str) -> Any: ...
    def writer(self, schema_id: int) -> Any: ...


class LocalRegistry:
    """Ids are CRC-32 fingerprints of each schema version's canonical form; the current
    file of each record is the reader schema, every version (history included) can be read."""

    def __init__(self, versions: dict[tuple[str, int], SchemaVersion] | None = None):
        self.versions = versions if versions is not None else load_schemas()
        self._by_id = {v.schema_id: v for v in self.versions.values()}
        self._current = {name: v for (name, ver), v in self.versions.items() if ver == 0}

    def current(self, name: str) -> SchemaVersion:
        try:
            return self._current[name]
        except KeyError:
            raise UnknownSchema(f"no schema named {name!r} in schemas/avro") from None

    def writer_id(self, name: str, subject: str) -> int:
        return self.current(name).schema_id

    def reader(self, name: str) -> Any:
        return self.current(name).parsed

    def writer(self, schema_id: int) -> Any:
        version = self._by_id.get(schema_id)
        if version is None:
            raise UnknownSchema(f"schema id {schema_id} is not in the local registry")
        return version.parsed


class SchemaRegistryClient:
    """Registers the current schemas under ``<topic>-value`` subjects (TopicNameStrategy)
    and fetches writer schemas by id, caching both. Uses the Confluent REST API."""

    CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, local: LocalRegistry | None = None,
                 client: httpx.Client | None = None, auth: tuple[str, str] | None = None):
        self.local = local or LocalRegistry()
        self._http = client or httpx.Client(base_url=url.rstrip("/"), timeout=10.0, auth=auth)
        self._ids: dict[tuple[str, str], int] = {}
        self._writers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def writer_id(self, name: str, subject: str) -> int:
        key = (name, subject)
        if key not in self._ids:
            with self._lock:
                body = {"schema": json.dumps(self.local.current(name).schema)}
                resp = self._http.post(f"/subjects/{subject}/versions", json=body,
                                       headers={"Content-Type": self.CONTENT_TYPE})
                if resp.status_code >= 400:
                    raise UnknownSchema(
                        f"schema registry refused {name} under {subject}: "
                        f"HTTP {resp.status_code} {resp.text[:200]}")
                self._ids[key] = int(resp.json()["id"])
                self._writers[self._ids[key]] = self.local.reader(name)
        return self._ids[key]

    def reader(self, name: str) -> Any:
        return self.local.reader(name)

    def writer(self, schema_id: int) -> Any:
        if schema_id not in self._writers:
            with self._lock:
                resp = self._http.get(f"/schemas/ids/{schema_id}")
                if resp.status_code == 404:
                    raise UnknownSchema(f"schema id {schema_id} is not in the schema registry")
                resp.raise_for_status()
                self._writers[schema_id] = fastavro.parse_schema(json.loads(resp.json()["schema"]))
        return self._writers[schema_id]
