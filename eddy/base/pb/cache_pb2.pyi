from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenDatasetRequest(_message.Message):
    __slots__ = ("parameters", "secrets", "volume_id")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.ScalarMap[str, str]
    secrets: _containers.ScalarMap[str, str]
    volume_id: str
    def __init__(self, parameters: _Optional[_Mapping[str, str]] = ..., secrets: _Optional[_Mapping[str, str]] = ..., volume_id: _Optional[str] = ...) -> None: ...

class OpenDatasetResponse(_message.Message):
    __slots__ = ("dataset_id", "block_size", "metadata_ttl", "immutable", "read_ahead")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_TTL_FIELD_NUMBER: _ClassVar[int]
    IMMUTABLE_FIELD_NUMBER: _ClassVar[int]
    READ_AHEAD_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    block_size: int
    metadata_ttl: float
    immutable: bool
    read_ahead: int
    def __init__(self, dataset_id: _Optional[str] = ..., block_size: _Optional[int] = ..., metadata_ttl: _Optional[float] = ..., immutable: _Optional[bool] = ..., read_ahead: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("path", "kind", "size", "mtime_ns", "version", "target", "mode", "uid", "gid")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FILE: _ClassVar[Entry.Kind]
        DIR: _ClassVar[Entry.Kind]
        SYMLINK: _ClassVar[Entry.Kind]
    FILE: Entry.Kind
    DIR: Entry.Kind
    SYMLINK: Entry.Kind
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: Entry.Kind
    size: int
    mtime_ns: int
    version: str
    target: str
    mode: int
    uid: int
    gid: int
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[Entry.Kind, str]] = ..., size: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., version: _Optional[str] = ..., target: _Optional[str] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("dataset_id", "path")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("entry", "fresh_for")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    FRESH_FOR_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    fresh_for: float
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., fresh_for: _Optional[float] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("dataset_id", "path")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("entries", "fresh_for")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FRESH_FOR_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    fresh_for: float
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., fresh_for: _Optional[float] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("dataset_id", "path", "version", "index", "file_size", "following", "next_files")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    NEXT_FILES_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    version: str
    index: int
    file_size: int
    following: int
    next_files: int
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[str] = ..., index: _Optional[int] = ..., file_size: _Optional[int] = ..., following: _Optional[int] = ..., next_files: _Optional[int] = ...) -> None: ...

class FileBlock(_message.Message):
    __slots__ = ("path", "version", "file")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: str
    file: BlockFile
    def __init__(self, path: _Optional[str] = ..., version: _Optional[str] = ..., file: _Optional[_Union[BlockFile, _Mapping]] = ...) -> None: ...

class BlockFile(_message.Message):
    __slots__ = ("path", "offset", "length", "checksum")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    length: int
    checksum: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class LocateResponse(_message.Message):
    __slots__ = ("file", "data", "following", "next_files")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    NEXT_FILES_FIELD_NUMBER: _ClassVar[int]
    file: BlockFile
    data: bytes
    following: _containers.RepeatedCompositeFieldContainer[BlockFile]
    next_files: _containers.RepeatedCompositeFieldContainer[FileBlock]
    def __init__(self, file: _Optional[_Union[BlockFile, _Mapping]] = ..., data: _Optional[bytes] = ..., following: _Optional[_Iterable[_Union[BlockFile, _Mapping]]] = ..., next_files: _Optional[_Iterable[_Union[FileBlock, _Mapping]]] = ...) -> None: ...

class ReportCorruptRequest(_message.Message):
    __slots__ = ("dataset_id", "path", "version", "index")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    version: str
    index: int
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ReportCorruptResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangedRequest(_message.Message):
    __slots__ = ("dataset_id", "paths", "load", "tree")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    load: bool
    tree: bool
    def __init__(self, dataset_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., load: _Optional[bool] = ..., tree: _Optional[bool] = ...) -> None: ...

class ChangedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExtentRequest(_message.Message):
    __slots__ = ("dataset_id", "path", "version", "file_size", "wait")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    version: str
    file_size: int
    wait: float
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[str] = ..., file_size: _Optional[int] = ..., wait: _Optional[float] = ...) -> None: ...

class ExtentResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class PreloadTarget(_message.Message):
    __slots__ = ("volume_id", "dataset_id")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    dataset_id: str
    def __init__(self, volume_id: _Optional[str] = ..., dataset_id: _Optional[str] = ...) -> None: ...

class PreloadRequest(_message.Message):
    __slots__ = ("target", "paths", "workers")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    target: PreloadTarget
    paths: _containers.RepeatedScalarFieldContainer[str]
    workers: int
    def __init__(self, target: _Optional[_Union[PreloadTarget, _Mapping]] = ..., paths: _Optional[_Iterable[str]] = ..., workers: _Optional[int] = ...) -> None: ...

class PreloadJob(_message.Message):
    __slots__ = ("dataset_id", "paths", "state", "listing", "files_total", "files_done", "bytes_total", "bytes_cached", "bytes_fetched", "blocks_skipped", "started", "finished", "message")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LISTING_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_CACHED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    state: str
    listing: bool
    files_total: int
    files_done: int
    bytes_total: int
    bytes_cached: int
    bytes_fetched: int
    blocks_skipped: int
    started: float
    finished: float
    message: str
    def __init__(self, dataset_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., listing: _Optional[bool] = ..., files_total: _Optional[int] = ..., files_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_cached: _Optional[int] = ..., bytes_fetched: _Optional[int] = ..., blocks_skipped: _Optional[int] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("wait",)
    WAIT_FIELD_NUMBER: _ClassVar[int]
    wait: float
    def __init__(self, wait: _Optional[float] = ...) -> None: ...

class DatasetStatus(_message.Message):
    __slots__ = ("dataset_id", "source", "volumes", "size_known", "ufs_total_bytes", "ufs_files", "cached_bytes", "capacity_known", "capacity", "phase", "hits", "misses", "tier_bytes", "preload", "message")
    class TierBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    SIZE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    UFS_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    UFS_FILES_FIELD_NUMBER: _ClassVar[int]
    CACHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    TIER_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    source: str
    volumes: _containers.RepeatedScalarFieldContainer[str]
    size_known: bool
    ufs_total_bytes: int
    ufs_files: int
    cached_bytes: int
    capacity_known: bool
    capacity: int
    phase: str
    hits: int
    misses: int
    tier_bytes: _containers.ScalarMap[str, int]
    preload: PreloadJob
    message: str
    def __init__(self, dataset_id: _Optional[str] = ..., source: _Optional[str] = ..., volumes: _Optional[_Iterable[str]] = ..., size_known: _Optional[bool] = ..., ufs_total_bytes: _Optional[int] = ..., ufs_files: _Optional[int] = ..., cached_bytes: _Optional[int] = ..., capacity_known: _Optional[bool] = ..., capacity: _Optional[int] = ..., phase: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., tier_bytes: _Optional[_Mapping[str, int]] = ..., preload: _Optional[_Union[PreloadJob, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("datasets", "tier_used", "tier_size", "tier_held", "mounts", "tiers")
    class TierUsedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TierSizeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TierHeldEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    TIER_USED_FIELD_NUMBER: _ClassVar[int]
    TIER_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIER_HELD_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetStatus]
    tier_used: _containers.ScalarMap[str, int]
    tier_size: _containers.ScalarMap[str, int]
    tier_held: _containers.ScalarMap[str, int]
    mounts: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetStatus, _Mapping]]] = ..., tier_used: _Optional[_Mapping[str, int]] = ..., tier_size: _Optional[_Mapping[str, int]] = ..., tier_held: _Optional[_Mapping[str, int]] = ..., mounts: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., tiers: _Optional[_Iterable[str]] = ...) -> None: ...

class VolumeMount(_message.Message):
    __slots__ = ("volume_id", "abnormal", "message")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    ABNORMAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    abnormal: bool
    message: str
    def __init__(self, volume_id: _Optional[str] = ..., abnormal: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
