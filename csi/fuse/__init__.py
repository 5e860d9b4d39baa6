"""The per-volume FUSE filesystem process (`python -m csi.fuse`).

`fs.DatasetFs` answers kernel requests from a dataset reader (keeping the source's tree in a
`cache_engine.metadata.MetadataCache` for the metadata TTL), and `daemon` mounts, reports
READY/ERROR and serves.
"""
