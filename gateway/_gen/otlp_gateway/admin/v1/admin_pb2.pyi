from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATE_UNSPECIFIED: _ClassVar[BackendState]
    BACKEND_STATE_UP: _ClassVar[BackendState]
    BACKEND_STATE_RETRYING: _ClassVar[BackendState]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_LIVE: _ClassVar[ReplicaState]
    REPLICA_STATE_STALE: _ClassVar[ReplicaState]
BACKEND_STATE_UNSPECIFIED: BackendState
BACKEND_STATE_UP: BackendState
BACKEND_STATE_RETRYING: BackendState
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_LIVE: ReplicaState
REPLICA_STATE_STALE: ReplicaState

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "open")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    open: bool
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., open: _Optional[bool] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "api_keys", "backends", "resource_attributes", "red_metrics", "drop_rules", "quota_items_per_second", "quota_bytes_per_second", "accepted_items", "refused_requests")
    class ResourceAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    RED_METRICS_FIELD_NUMBER: _ClassVar[int]
    DROP_RULES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    api_keys: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    resource_attributes: _containers.ScalarMap[str, str]
    red_metrics: bool
    drop_rules: int
    quota_items_per_second: float
    quota_bytes_per_second: float
    accepted_items: int
    refused_requests: int
    def __init__(self, name: _Optional[str] = ..., api_keys: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ..., resource_attributes: _Optional[_Mapping[str, str]] = ..., red_metrics: _Optional[bool] = ..., drop_rules: _Optional[int] = ..., quota_items_per_second: _Optional[float] = ..., quota_bytes_per_second: _Optional[float] = ..., accepted_items: _Optional[int] = ..., refused_requests: _Optional[int] = ...) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    def __init__(self, backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("name", "protocol", "endpoint", "service_wide", "state", "last_error", "last_error_time", "durable", "queues", "exported_items", "dropped_items")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_WIDE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    endpoint: str
    service_wide: bool
    state: BackendState
    last_error: str
    last_error_time: float
    durable: bool
    queues: _containers.RepeatedCompositeFieldContainer[Queue]
    exported_items: int
    dropped_items: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., endpoint: _Optional[str] = ..., service_wide: _Optional[bool] = ..., state: _Optional[_Union[BackendState, str]] = ..., last_error: _Optional[str] = ..., last_error_time: _Optional[float] = ..., durable: _Optional[bool] = ..., queues: _Optional[_Iterable[_Union[Queue, _Mapping]]] = ..., exported_items: _Optional[int] = ..., dropped_items: _Optional[int] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("tenant", "batches", "bytes", "max_bytes", "oldest_age_seconds", "exported_items", "dropped_items")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    batches: int
    bytes: int
    max_bytes: int
    oldest_age_seconds: float
    exported_items: int
    dropped_items: int
    def __init__(self, tenant: _Optional[str] = ..., batches: _Optional[int] = ..., bytes: _Optional[int] = ..., max_bytes: _Optional[int] = ..., oldest_age_seconds: _Optional[float] = ..., exported_items: _Optional[int] = ..., dropped_items: _Optional[int] = ...) -> None: ...

class ListRecentErrorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRecentErrorsResponse(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[RecentError]
    def __init__(self, errors: _Optional[_Iterable[_Union[RecentError, _Mapping]]] = ...) -> None: ...

class RecentError(_message.Message):
    __slots__ = ("time", "kind", "tenant", "backend", "signal", "message")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    time: float
    kind: str
    tenant: str
    backend: str
    signal: str
    message: str
    def __init__(self, time: _Optional[float] = ..., kind: _Optional[str] = ..., tenant: _Optional[str] = ..., backend: _Optional[str] = ..., signal: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TailRequest(_message.Message):
    __slots__ = ("tenant", "service")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class TailResponse(_message.Message):
    __slots__ = ("rows", "skipped")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AccessRow]
    skipped: int
    def __init__(self, rows: _Optional[_Iterable[_Union[AccessRow, _Mapping]]] = ..., skipped: _Optional[int] = ...) -> None: ...

class AccessRow(_message.Message):
    __slots__ = ("time_unix_nano", "tenant", "service", "span_name", "kind", "status", "status_message", "duration_ms", "http_method", "http_route", "http_status", "trace_id", "span_id")
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SPAN_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHOD_FIELD_NUMBER: _ClassVar[int]
    HTTP_ROUTE_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    time_unix_nano: int
    tenant: str
    service: str
    span_name: str
    kind: str
    status: str
    status_message: str
    duration_ms: float
    http_method: str
    http_route: str
    http_status: int
    trace_id: str
    span_id: str
    def __init__(self, time_unix_nano: _Optional[int] = ..., tenant: _Optional[str] = ..., service: _Optional[str] = ..., span_name: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., status_message: _Optional[str] = ..., duration_ms: _Optional[float] = ..., http_method: _Optional[str] = ..., http_route: _Optional[str] = ..., http_status: _Optional[int] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("cluster", "replicas", "fleet_config_digest", "not_listed", "warnings")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    FLEET_CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NOT_LISTED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    cluster: Cluster
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    fleet_config_digest: str
    not_listed: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster: _Optional[_Union[Cluster, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., fleet_config_digest: _Optional[str] = ..., not_listed: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("configured", "name", "redis_up", "redis_down_since", "last_error", "heartbeat_interval_seconds")
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REDIS_UP_FIELD_NUMBER: _ClassVar[int]
    REDIS_DOWN_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    configured: bool
    name: str
    redis_up: bool
    redis_down_since: float
    last_error: str
    heartbeat_interval_seconds: float
    def __init__(self, configured: _Optional[bool] = ..., name: _Optional[str] = ..., redis_up: _Optional[bool] = ..., redis_down_since: _Optional[float] = ..., last_error: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("id", "listen", "admin", "version", "config_digest", "started", "seen", "queue_bytes", "accepted_per_second", "refused_per_second", "quota_mode", "state", "is_self", "drift")
    ID_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REFUSED_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IS_SELF_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    id: str
    listen: str
    admin: str
    version: str
    config_digest: str
    started: float
    seen: float
    queue_bytes: int
    accepted_per_second: float
    refused_per_second: float
    quota_mode: str
    state: ReplicaState
    is_self: bool
    drift: bool
    def __init__(self, id: _Optional[str] = ..., listen: _Optional[str] = ..., admin: _Optional[str] = ..., version: _Optional[str] = ..., config_digest: _Optional[str] = ..., started: _Optional[float] = ..., seen: _Optional[float] = ..., queue_bytes: _Optional[int] = ..., accepted_per_second: _Optional[float] = ..., refused_per_second: _Optional[float] = ..., quota_mode: _Optional[str] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., is_self: _Optional[bool] = ..., drift: _Optional[bool] = ...) -> None: ...
