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
    __slots__ = ("path", "kind", "size", "mtime_ns", "version", "target")
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
    path: str
    kind: Entry.Kind
    size: int
    mtime_ns: int
    version: str
    target: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[Entry.Kind, str]] = ..., size: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., version: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("dataset_id", "path")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("dataset_id", "path")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("dataset_id", "path", "version", "index", "file_size")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    path: str
    version: str
    index: int
    file_size: int
    def __init__(self, dataset_id: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[str] = ..., index: _Optional[int] = ..., file_size: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("file", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: BlockFile
    data: bytes
    def __init__(self, file: _Optional[_Union[BlockFile, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

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
