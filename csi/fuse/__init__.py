"""The per-volume FUSE filesystem process (`python -m csi.fuse`).

`fs.DatasetFs` answers kernel requests from a dataset reader, `metadata.MetadataCache` keeps
the source's tree for the metadata TTL, and `daemon` mounts, reports READY/ERROR and serves.
"""
